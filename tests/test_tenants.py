"""Tenant settings: defaults from the environment, overrides in KV, followed by every cache."""

from __future__ import annotations

import asyncio
import os
import sys

from bus import tenants
from bus.client import Bus
from bus.config import BusConfig
from bus.tenants import TenantDefaults, TenantSettingsCache
from schemas.tenants import Budgets, Quotas, TenantSettings
from tests.conftest import wait_until


def test_defaults_come_from_the_environment_and_a_setting_overrides_only_its_field() -> None:
    defaults = TenantDefaults.from_env({"AGENTBUS_QUOTA_TASKS": "5", "AGENTBUS_BUDGET_USD_PER_DAY": "2.5"})
    assert defaults.quotas.tasks == 5
    assert defaults.quotas.streams == 100
    assert defaults.budgets.usd_per_day == 2.5
    effective = defaults.resolve(TenantSettings(quotas=Quotas(streams=3), budgets=Budgets(tokens_per_day=10)))
    assert (effective.quotas.tasks, effective.quotas.streams) == (5, 3)
    assert (effective.budgets.tokens_per_day, effective.budgets.usd_per_day) == (10, 2.5)
    assert effective.agents is None


async def test_a_cache_follows_changes_written_by_another_connection(bus_config: BusConfig) -> None:
    writer = await Bus.connect(bus_config)
    reader = await Bus.connect(bus_config)
    cache = TenantSettingsCache(reader, TenantDefaults())
    await cache.start()
    try:
        assert cache.get("acme").quotas.tasks == 1000
        await tenants.write(writer, "acme", TenantSettings(quotas=Quotas(tasks=2), agents=("assistant",)))

        async def seen() -> bool:
            return cache.get("acme").quotas.tasks == 2

        await wait_until(seen, timeout=2.0, what="the cache to see the new quota")
        assert cache.get("acme").agents == ("assistant",)
        assert cache.get("other").quotas.tasks == 1000
        assert (await tenants.read(writer, "acme")).quotas.tasks == 2
    finally:
        await cache.stop()
        await reader.close()
        await writer.close()


async def test_the_tenants_command_sets_and_shows_settings(bus_config: BusConfig) -> None:
    env = {
        **os.environ,
        "NATS_URL": ",".join(bus_config.servers),
        "AGENTBUS_NATS_CREDENTIALS": str(bus_config.credentials_dir),
    }

    async def agentbus(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bus.cli", "tenants", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
        return proc.returncode or 0, out.decode()

    code, out = await agentbus("set", "acme", '{"quotas": {"tasks": 7}, "budgets": {"usd_per_day": 1.5}}')
    assert code == 0, out
    assert '"tasks":7' in out and '"usd_per_day":1.5' in out
    bus = await Bus.connect(bus_config)
    try:
        assert (await tenants.read(bus, "acme")).quotas.tasks == 7
    finally:
        await bus.close()
    code, out = await agentbus("set", "acme", '{"quotas": {"tasks": "many"}}')
    assert code != 0 and "not tenant settings" in out
    code, out = await agentbus("show", "acme")
    assert code == 0 and '"tasks":7' in out and "in effect" in out
