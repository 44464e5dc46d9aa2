"""Prometheus metrics: scraped over HTTP from the gateway and from actors after real traffic, read with
prometheus-client's own text parser."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic_ai.models.test import TestModel

from bus import subjects
from bus.config import BusConfig
from bus.embedded import free_port
from bus.headers import Trace
from bus.metrics import MetricsConfig, MetricsServer
from bus.supervisor import ACTORS
from tests.conftest import ROOT, ActorProcess, Platform, wait_until

Start = Callable[..., Awaitable[Platform]]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def bus_config(bus_config: BusConfig) -> BusConfig:
    """Consumers' backlog read every 0.2 s, so a scrape soon shows it."""
    return dataclasses.replace(bus_config, metrics_interval_s=0.2)


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every sample of `name` with these labels (and any others)."""
    return sum(v for (n, got), v in samples.items() if n == name and labels.items() <= dict(got).items())


def labelled(samples: Samples, name: str) -> list[Mapping[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


@contextlib.contextmanager
def actor_metrics() -> Iterator[str]:
    """The in-process actors' metrics (they share this process's registry) served on a free port: its URL."""
    server = MetricsServer(MetricsConfig(port=free_port()))
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}/metrics"
    finally:
        server.stop()


async def chat_turn(client: httpx.AsyncClient, message: str) -> str:
    """A turn in a new conversation, answered: the conversation's id."""
    conversation: str = (await client.post("/v1/conversations", json={})).json()["id"]
    turn = await client.post(f"/v1/conversations/{conversation}/messages", json={"message": message})
    assert turn.status_code == 200, turn.text
    return conversation


async def scrape(url: str, **headers: str) -> Samples:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def test_gateway_and_actor_metrics_after_a_chat_turn_a_tool_call_a_dead_letter_and_a_task(
    start_platform: Start,
) -> None:
    platform = await start_platform(
        TestModel(call_tools=["current_time"], custom_output_text="It is now."), background=True
    )
    with actor_metrics() as actor_url:
        before = await scrape(actor_url)
        async with platform.client() as client:
            conversation = await chat_turn(client, "What time is it?")
            # a dead letter: a command the conversation actor cannot decode
            subject = subjects.conversation_command("t1", conversation)
            await platform.bus.js.publish(subject, b'{"type":"nonsense"}', headers=Trace(tenant="t1").headers())
            # a task due in a moment, told in-app when it is done
            due = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
            task = await client.post(
                "/v1/tasks",
                json={
                    "task_type": "scheduled",
                    "prompt": "Tick",
                    "run_at": due,
                    "notification_config": {"channels": ["in_app"]},
                },
            )
            assert task.status_code == 201, task.text
            gateway = await scrape(f"{platform.url}/metrics")

            async def all_seen() -> bool:
                now = await scrape(actor_url)
                return (
                    value(now, "agentbus_deliveries_total", channel="in_app", result="delivered")
                    > value(before, "agentbus_deliveries_total", channel="in_app", result="delivered")
                    and value(now, "agentbus_dead_letters_total", actor="conversation", reason="undecodable")
                    > value(before, "agentbus_dead_letters_total", actor="conversation", reason="undecodable")
                    and any(
                        labels["consumer"] == "conversation-cmd"
                        for labels in labelled(now, "agentbus_consumer_pending_messages")
                    )
                )

            await wait_until(all_seen, timeout=30, what="the task's delivery, the dead letter and the backlog")
        after = await scrape(actor_url)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = "/v1/conversations/{conversation_id}/messages"
    assert value(gateway, "agentbus_http_requests_total", method="POST", route=route, status="200") >= 1
    assert value(gateway, "agentbus_http_request_duration_seconds_count", method="POST", route=route, status="200") >= 1
    assert not any(
        conversation in labels.get("route", "") for labels in labelled(gateway, "agentbus_http_requests_total")
    )

    assert grew("agentbus_runs_total", agent="assistant", model="test", status="completed") >= 2  # the turn, the task
    assert grew("agentbus_tokens_total", agent="assistant", model="test", direction="input") > 0
    assert grew("agentbus_tokens_total", agent="assistant", model="test", direction="output") > 0
    assert grew("agentbus_tool_calls_total", tool="current_time", outcome="ok") >= 1
    assert grew("agentbus_messages_handled_total", actor="executor", kind="executor.cmd", outcome="acked") >= 2
    assert grew("agentbus_messages_handled_total", actor="conversation", kind="conversation.cmd", outcome="acked") >= 1
    assert (
        grew("agentbus_messages_handled_total", actor="conversation", kind="conversation.cmd", outcome="dead_lettered")
        == 1
    )
    assert grew("agentbus_handler_duration_seconds_count", actor="executor", kind="executor.cmd") >= 2
    assert grew("agentbus_dead_letters_total", actor="conversation", reason="undecodable") == 1
    assert grew("agentbus_deliveries_total", channel="in_app", result="delivered") == 1
    assert grew("agentbus_scheduler_fire_lag_seconds_count") >= 1
    assert value(after, "agentbus_scheduler_fire_lag_seconds_bucket", le="+Inf") >= 1
    backlog = labelled(after, "agentbus_consumer_pending_messages")
    assert {"stream": "AB_CONVERSATION_CMD", "consumer": "conversation-cmd"} in backlog
    # no label anywhere carries a tenant or an entity id
    for name, labels in after:
        assert all(v not in ("t1", conversation) for _, v in labels), (name, labels)


async def test_a_priced_turn_adds_its_cost_and_tokens_to_the_counters(start_platform: Start) -> None:
    from tests.test_usage import INPUT_TOKENS, OUTPUT_TOKENS, PRICED, _price, answering

    platform = await start_platform(answering(PRICED))
    with actor_metrics() as url:
        before = await scrape(url)
        async with platform.client() as client:
            await chat_turn(client, "Hi")
        after = await scrape(url)

    def grew(name: str, **labels: str) -> float:
        """The growth of every sample of `name` with these labels (and any others)."""
        return total(after, name, **labels) - total(before, name, **labels)

    assert grew("agentbus_cost_usd_total", agent="assistant") == pytest.approx(_price(PRICED))
    assert grew("agentbus_tokens_total", agent="assistant", direction="input") == INPUT_TOKENS
    assert grew("agentbus_tokens_total", agent="assistant", direction="output") == OUTPUT_TOKENS


async def test_gateway_metrics_need_the_token_when_one_is_set_and_refuse_other_binds_without(
    start_platform: Start,
) -> None:
    guarded = await start_platform(TestModel(), metrics_token="scrape-me")
    async with httpx.AsyncClient(base_url=guarded.url, timeout=10) as http:
        refused = await http.get("/metrics")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        assert (await http.get("/metrics", headers={"Authorization": f"Bearer {guarded.key}"})).status_code == 401
        samples = await scrape(f"{guarded.url}/metrics", Authorization="Bearer scrape-me")
        assert any(name == "agentbus_http_requests_total" for name, _ in samples)
    public = await start_platform(TestModel(), host="0.0.0.0")  # as configured; uvicorn still binds loopback here
    async with httpx.AsyncClient(base_url=public.url, timeout=10) as http:
        forbidden = await http.get("/metrics")
        assert forbidden.status_code == 403 and "AGENTBUS_METRICS_TOKEN" in forbidden.json()["error"]["message"]


async def test_an_actor_process_serves_its_metrics_on_its_port(spawn_actor: Callable[..., ActorProcess]) -> None:
    port = free_port()
    child = spawn_actor("notifier", {"AGENTBUS_METRICS_PORT": str(port), "AGENTBUS_METRICS_INTERVAL": "0.2"})

    async def backlog_shown() -> bool:
        try:
            samples = await scrape(f"http://127.0.0.1:{port}/metrics")
        except httpx.TransportError:
            return False
        consumers = labelled(samples, "agentbus_consumer_pending_messages")
        return {"stream": "AB_NOTIFIER_CMD", "consumer": "notifier-cmd"} in consumers

    await wait_until(backlog_shown, timeout=30, what="the notifier's /metrics")
    child.stop()
    assert child.proc is not None and child.proc.returncode == 0, child.log()


def test_the_example_prometheus_config_scrapes_every_process_compose_runs() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["observability"]
    mount = next(v for v in prometheus["volumes"] if v.endswith(":/etc/prometheus/prometheus.yml:ro"))
    config = yaml.safe_load((ROOT / mount.split(":")[0]).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    scraped = {(name, sd["port"]) for job in jobs.values() for sd in job["dns_sd_configs"] for name in sd["names"]}
    for actor in ACTORS:
        assert (actor, int(services[actor]["environment"]["AGENTBUS_METRICS_PORT"])) in scraped
        assert services[actor]["environment"]["AGENTBUS_METRICS_HOST"] == "0.0.0.0"
    gateway = jobs["agentbus-gateway"]
    assert ("gateway", int(services["gateway"]["environment"]["AGENTBUS_PORT"])) in scraped
    assert gateway["authorization"]["credentials_file"] == "/run/secrets/metrics_token"
    assert prometheus["secrets"] == ["metrics_token"]
    assert compose["secrets"]["metrics_token"] == {"environment": "AGENTBUS_METRICS_TOKEN"}


@pytest.mark.skipif(sys.platform != "linux", reason="agentbus run's test helpers read /proc")
async def test_agentbus_run_gives_each_actor_a_metrics_port_and_prints_them(tmp_path: Path) -> None:
    from tests.test_cli import _embedded_env, agentbus_run

    env = _embedded_env()
    async with agentbus_run(tmp_path, env) as run:
        await run.ready()
        (line,) = [line for line in run.lines if "metrics: " in line]
        urls = dict(part.split() for part in line.split("metrics: ", 1)[1].split(", "))
        assert set(urls) == {*ACTORS, "gateway"}
        assert urls["gateway"] == f"http://127.0.0.1:{env['AGENTBUS_PORT']}/metrics"
        assert len(set(urls.values())) == len(urls)  # a port each

        async def executor_backlog() -> bool:
            consumers = labelled(await scrape(urls["executor"]), "agentbus_consumer_pending_messages")
            return any(c["stream"] == "AB_EXECUTOR_CMD" for c in consumers)

        await wait_until(executor_backlog, timeout=30, what="the executor's metrics")
        assert any(name == "agentbus_http_requests_total" for name, _ in await scrape(urls["gateway"]))
        run.follow()
        await run.stop()
    assert run.proc.returncode == 0


async def test_a_park_and_its_decision_are_counted(start_platform: Start, tmp_path: Path) -> None:
    from tests.test_approvals_http import Mailer, _pending, _platform, _streamed_turn

    platform = await _platform(start_platform, tmp_path, Mailer())
    with actor_metrics() as url:
        before = await scrape(url)
        async with platform.client() as client:
            turn = asyncio.create_task(_streamed_turn(client))
            approval = await _pending(client)
            denied = await client.post(f"/v1/approvals/{approval['id']}", json={"decision": "deny", "reason": "no"})
            assert denied.status_code == 200, denied.text
            assert (await asyncio.wait_for(turn, 30))[-1]["event"] == "completed"
        after = await scrape(url)
    assert value(after, "agentbus_runs_parked_total") - value(before, "agentbus_runs_parked_total") == 1
    decided = "agentbus_approvals_decided_total"
    assert value(after, decided, status="denied") - value(before, decided, status="denied") == 1
    assert value(after, decided, status="approved") == value(before, decided, status="approved")


PROMETHEUS = Path("/usr/bin/prometheus")


@pytest.mark.skipif(not PROMETHEUS.exists(), reason="no Prometheus at /usr/bin/prometheus (apt install prometheus)")
async def test_a_real_prometheus_scrapes_the_gateway_with_its_token_and_an_actor(
    start_platform: Start, tmp_path: Path
) -> None:
    """Debian's Prometheus server scrapes the gateway (bearer token) and the actors' port, and its query API
    answers with the platform's series: what an operator's own Prometheus sees."""
    platform = await start_platform(TestModel(custom_output_text="Hello!", call_tools=[]), metrics_token="scrape-me")
    web = free_port()
    with actor_metrics() as actors_url:
        async with platform.client() as client:
            await chat_turn(client, "Hi")
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {
                    "job_name": "gateway",
                    "authorization": {"credentials": "scrape-me"},
                    "static_configs": [{"targets": [platform.url.removeprefix("http://")]}],
                },
                {"job_name": "actors", "static_configs": [{"targets": [actors_url.split("/")[2]]}]},
            ],
        }
        (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        log = (tmp_path / "prometheus.log").open("wb")
        server = await asyncio.create_subprocess_exec(
            str(PROMETHEUS),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{web}", timeout=5) as prometheus:

                async def query(expr: str) -> list[dict[str, Any]]:
                    answer = (await prometheus.get("/api/v1/query", params={"query": expr})).json()
                    assert answer["status"] == "success", answer
                    return list(answer["data"]["result"])

                async def both_up() -> bool:
                    try:
                        if (await prometheus.get("/-/ready")).status_code != 200:
                            return False  # starting: its API answers 503 in plain text until it is ready
                        found = await query("up")
                    except httpx.TransportError:
                        return False  # not listening yet
                    return sorted((r["metric"]["job"], r["value"][1]) for r in found) == [
                        ("actors", "1"),
                        ("gateway", "1"),
                    ]

                await wait_until(both_up, timeout=60, interval=0.5, what="Prometheus to scrape both targets")
                # what Prometheus stored is what the endpoints say (counters of this test process, which other
                # tests in it have counted too; nothing adds to these two after the turn)
                route = "/v1/conversations/{conversation_id}/messages"
                own = await scrape(f"{platform.url}/metrics", Authorization="Bearer scrape-me")
                turns = await query(f'sum(agentbus_http_requests_total{{job="gateway",route="{route}",status="200"}})')
                runs = await query('sum(agentbus_runs_total{job="actors",agent="assistant",status="completed"})')
                handled = await query('sum by (actor) (agentbus_messages_handled_total{job="actors"})')
        finally:
            server.terminate()  # by its own pid; it stops in well under a second
            await asyncio.wait_for(server.wait(), timeout=30)
            log.close()
    expected_turns = total(own, "agentbus_http_requests_total", route=route, status="200")
    assert expected_turns >= 1 and [float(r["value"][1]) for r in turns] == [expected_turns]
    expected_runs = total(own, "agentbus_runs_total", agent="assistant", status="completed")
    assert expected_runs >= 1 and [float(r["value"][1]) for r in runs] == [expected_runs]
    assert {"conversation", "executor"} <= {r["metric"]["actor"] for r in handled}
