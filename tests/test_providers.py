"""The model part of the agents file: providers by name, chains, balanced groups, settings (no servers needed)."""

from __future__ import annotations

from pathlib import Path

from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.openai import OpenAIChatModel

from actors.executor.agents import load_providers, load_specs
from actors.executor.models import OFFLINE, resolve_model
from actors.executor.providers import ModelSettingsSpec, chain_of, env_providers

FILE = """
[providers.local]
base_url = "http://127.0.0.1:9/v1"
[providers.claude]
base_url = "http://127.0.0.1:9"
api = "anthropic"

[agents.support]
model = [["local:llama", { model = "local:llama", base_url = "http://127.0.0.1:10/v1", weight = 2 }], "claude:haiku"]
model_settings = { max_tokens = 100, temperature = 0.1, timeout_s = 5 }
"""


def test_a_chain_of_a_balanced_group_and_a_fallback_on_named_providers(tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    path.write_text(FILE)
    spec = load_specs(path)["support"]
    groups = chain_of(spec.model)
    assert [[(d.model, d.weight) for d in g] for g in groups] == [
        [("local:llama", 1), ("local:llama", 2)],
        [("claude:haiku", 1)],
    ]
    resolved = resolve_model(spec.model, providers=load_providers(path))
    assert resolved.route is not None and not resolved.offline
    deployments = resolved.route.deployments
    assert [(d.name, d.position, d.weight) for d in deployments] == [
        ("local:llama", 0, 1), ("local:llama@http://127.0.0.1:10/v1", 0, 2), ("claude:haiku", 1, 1),
    ]  # fmt: skip
    assert isinstance(deployments[0].model, OpenAIChatModel) and isinstance(deployments[2].model, AnthropicModel)
    assert resolved.name == "local:llama | local:llama@http://127.0.0.1:10/v1 > claude:haiku"
    settings = spec.model_settings.resolve(max_tokens=4096, timeout_s=120)
    assert settings == {"max_tokens": 100, "temperature": 0.1, "request_timeout": 5, "max_retries": 0}


def test_an_agent_that_sets_nothing_gets_the_default_output_cap() -> None:
    assert ModelSettingsSpec().resolve(max_tokens=4096, timeout_s=120) == {
        "max_tokens": 4096, "request_timeout": 120, "max_retries": 0,
    }  # fmt: skip


def test_providers_from_the_environment() -> None:
    found = env_providers({"AGENTBUS_PROVIDER_VLLM": "http://gpu:8000/v1", "OTHER": "x"})
    assert list(found) == ["vllm"] and found["vllm"].base_url == "http://gpu:8000/v1"
    assert found["vllm"].api_key_env == "VLLM_API_KEY"


def test_a_provider_without_credentials_is_left_out_and_with_none_left_the_offline_model_says_why() -> None:
    resolved = resolve_model(["qwen:qwen-max", "nosuch:model", "nocolon"])
    assert resolved.offline and resolved.name == OFFLINE
    assert "ALIBABA_API_KEY" in resolved.reason and "nosuch:model" in resolved.reason and "nocolon" in resolved.reason
