"""The session configuration: defaults, environment, validation, atomic updates, secrecy, and its snapshots (kept
while no setting changes, so a call pays little for them)."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import ipyllm
from ipyllm._config import SETTING_NAMES, LLMConfig
from ipyllm._locations import Memory
from ipyllm._secrets import Secret
from ipyllm.errors import SettingError

from ..conftest import SECRET


def test_defaults_match_the_spec() -> None:
    fresh = LLMConfig()
    assert fresh.model == "gpt-4o-mini"
    assert fresh.embedding_model == "text-embedding-3-small"
    assert (fresh.num_retries, fresh.retry_min_wait, fresh.retry_max_wait, fresh.timeout) == (5, 3.0, 60.0, 600.0)
    assert fresh.api_key is None and fresh.base_url is None and fresh.budget_usd is None
    assert fresh.cache is False and fresh.prices == {}
    assert (fresh.image_detail, fresh.table_token_budget) == ("auto", 2000)
    assert fresh.processes == 1, "one process: helpers only when asked for"
    assert SETTING_NAMES[-3:] == ("prices", "image_detail", "table_token_budget"), "in SPEC section 2's order"


def test_environment_variables_are_read() -> None:
    environ = {
        "LLM_MODEL": "ollama/llama3",
        "LLM_API_KEY": SECRET,
        "LLM_BASE_URL": "http://localhost:11434/",
        "LLM_API_VERSION": "2024-02-01",
        "LLM_EMBEDDING_MODEL": "text-embedding-3-large",
        "LLM_EMBEDDING_DEPLOYMENT_NAME": "embed-prod",
        "LLM_NUM_RETRIES": "2",
        "LLM_RETRY_MIN_WAIT": "0.5",
        "LLM_RETRY_MAX_WAIT": "4",
        "LLM_TIMEOUT": "30",
        "LLM_BUDGET_USD": "1.5",
        "LLM_DAILY_BUDGET_USD": "10",
        "LLM_USAGE_DB": ":memory:",
        "LLM_CACHE": "on",
        "LLM_PROCESSES": "2",
    }
    cfg = LLMConfig(environ=environ)
    assert cfg.model == "ollama/llama3"
    assert cfg.api_key is not None and cfg.api_key.reveal() == SECRET
    assert cfg.base_url == "http://localhost:11434"
    assert cfg.api_version == "2024-02-01"
    assert cfg.embedding_model == "text-embedding-3-large" and cfg.embedding_deployment == "embed-prod"
    assert (cfg.num_retries, cfg.retry_min_wait, cfg.retry_max_wait, cfg.timeout) == (2, 0.5, 4.0, 30.0)
    assert (cfg.budget_usd, cfg.daily_budget_usd, cfg.usage_db, cfg.cache) == (1.5, 10.0, Memory(), True)
    assert cfg.processes == 2 and cfg.snapshot().processes == 2


def test_a_bad_environment_variable_is_said_once_and_keeps_the_default(capfd: pytest.CaptureFixture[str]) -> None:
    cfg = LLMConfig(environ={"LLM_NUM_RETRIES": "lots", "LLM_MODEL": "gpt-4o"})
    assert cfg.num_retries == 5 and cfg.model == "gpt-4o"
    assert capfd.readouterr().err.splitlines() == [
        "ipyllm: ignoring LLM_NUM_RETRIES: num_retries must be a whole number from 0 to 100 (got 'lots'); the old value stays."
    ]


def test_config_files_win_over_the_environment() -> None:
    from traitlets.config import Config

    c = Config()
    c.LLMConfig.model = "from-config-file"
    cfg = LLMConfig(config=c, environ={"LLM_MODEL": "from-env", "LLM_NUM_RETRIES": "1"})
    assert cfg.model == "from-config-file"
    assert cfg.num_retries == 1


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("num_retries", "abc", "num_retries must be a whole number from 0 to 100 (got 'abc')"),
        ("num_retries", -1, "num_retries must be a whole number from 0 to 100 (got -1)"),
        ("num_retries", 2.5, "num_retries must be a whole number"),
        ("temperature", 3, "temperature must be a number from 0 to 2 (got 3)"),
        ("temperature", True, "temperature must be a number from 0 to 2 (got True)"),
        ("budget_usd", -0.01, "budget_usd must be a number of US dollars >= 0 (got -0.01)"),
        ("daily_budget_usd", "nan", "daily_budget_usd must be a number of US dollars >= 0"),
        ("retry_min_wait", 61, "retry_min_wait must be at most retry_max_wait (60 s) (got 61)"),
        ("retry_max_wait", 1, "retry_max_wait must be at least retry_min_wait (3 s) (got 1)"),
        ("base_url", "localhost:8000", "base_url must be an http:// or https:// URL"),
        ("max_tokens", 0, "max_tokens must be a whole number from 1"),
        ("timeout", 0, "timeout must be a number of seconds from 0.001 to 86400"),
        ("cache", "maybe", "cache must be on or off"),
        ("prices", {"m": {"input": 1}}, "prices must be a dict"),
        ("model", "", "model must be a model name"),
        ("image_detail", "medium", "image_detail must be one of auto, low, high (got 'medium')"),
        ("image_detail", 1, "image_detail must be one of auto, low, high (got 1)"),
        ("table_token_budget", 0, "table_token_budget must be a whole number >= 1 (got 0)"),
        ("table_token_budget", "lots", "table_token_budget must be a whole number >= 1 (got 'lots')"),
        ("table_token_budget", 20.5, "table_token_budget must be a whole number >= 1 (got 20.5)"),
        ("processes", 0, "processes must be a whole number from 1 to 64 (got 0)"),
        ("processes", "two", "processes must be a whole number from 1 to 64 (got 'two')"),
        ("processes", 1.5, "processes must be a whole number from 1 to 64 (got 1.5)"),
        ("processes", True, "processes must be a whole number from 1 to 64 (got True)"),
        ("prices", {"llava": {"supports_vision": "yes"}}, "prices must be a dict"),
        ("prices", {"llava": {"input_cost_per_token": 0, "supports_audio": True}}, "prices must be a dict"),
    ],
)
def test_invalid_values_are_refused_in_one_line_and_the_old_value_stays(name: str, value: object, message: str) -> None:
    cfg = LLMConfig()
    old = getattr(cfg, name)
    with pytest.raises(SettingError) as caught:
        setattr(cfg, name, value)
    assert message in str(caught.value)
    assert str(caught.value).endswith("the old value stays.")
    assert "\n" not in str(caught.value)
    assert caught.value._render_traceback_() == [f"SettingError: {caught.value}"]
    assert getattr(cfg, name) == old or (isinstance(old, float) and math.isnan(old))


def test_strings_are_parsed_like_the_environment() -> None:
    cfg = LLMConfig()
    cfg.update(num_retries="3", temperature="0.7", cache="yes", max_tokens="256")
    assert (cfg.num_retries, cfg.temperature, cfg.cache, cfg.max_tokens) == (3, 0.7, True, 256)
    cfg.update(temperature="", max_tokens=None)
    assert cfg.temperature is None and cfg.max_tokens is None


def test_update_is_all_or_nothing() -> None:
    cfg = LLMConfig()
    with pytest.raises(SettingError, match="temperature"):
        cfg.update(model="gpt-4o", temperature=9)
    assert cfg.model == "gpt-4o-mini"
    # Moving both waits at once is fine even though the first alone would pass the old maximum.
    cfg.update(retry_min_wait=100, retry_max_wait=200)
    assert (cfg.retry_min_wait, cfg.retry_max_wait) == (100, 200)


def test_an_unknown_setting_suggests_the_close_one() -> None:
    with pytest.raises(SettingError, match=r"no setting named .temprature.: did you mean temperature\?"):
        LLMConfig().update(temprature=1)


def test_changes_are_observable() -> None:
    cfg = LLMConfig()
    seen: list[tuple[str, object]] = []
    cfg.observe(lambda change: seen.append((change["name"], change["new"])), names=["model"])
    cfg.model = "gpt-4o"
    assert seen == [("model", "gpt-4o")]


def test_snapshot_applies_and_validates_overrides_without_touching_the_session() -> None:
    cfg = LLMConfig()
    settings = cfg.snapshot(model="gpt-4o", temperature="0.2")
    assert (settings.model, settings.temperature) == ("gpt-4o", 0.2)
    assert cfg.model == "gpt-4o-mini" and cfg.temperature is None
    with pytest.raises(SettingError, match="temperature must be a number from 0 to 2"):
        cfg.snapshot(temperature=5)


def test_prices_accept_a_base_model_or_per_token_prices() -> None:
    cfg = LLMConfig()
    cfg.prices = {"my-deploy": "gpt-4o-mini", "local": {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}}
    assert cfg.prices["my-deploy"] == "gpt-4o-mini"


def test_prices_also_declare_what_a_model_takes_without_touching_its_price() -> None:
    from ipyllm._pricemap import declared, model_prices, session_price

    cfg = LLMConfig()
    free = {"input_cost_per_token": 0, "output_cost_per_token": 0}
    cfg.prices = {"llava": {**free, "supports_vision": True}, "ollama/pdfs": {"supports_pdf_input": True, "supports_vision": False}}
    prices = cfg.snapshot().prices
    assert declared("llava", prices, "supports_vision") is True and declared("ollama/llava", prices, "supports_vision") is True
    assert declared("llava", prices, "supports_pdf_input") is None, "not declared: litellm's model info decides"
    assert declared("ollama/pdfs", prices, "supports_pdf_input") is True and declared("ollama/pdfs", prices, "supports_vision") is False
    # Only the numbers are prices: the flags never reach litellm's custom_cost_per_token.
    assert session_price("llava", prices) == free and model_prices("llava", prices) == free
    # Flags alone leave the model as it was priced: unknown here (a budget still refuses it until it has a price).
    assert session_price("ollama/pdfs", prices) is None and model_prices("ollama/pdfs", prices) is None


def test_the_flags_in_prices_do_not_change_what_a_call_costs() -> None:
    from ipyllm._cost import custom_price, price

    cfg = LLMConfig()
    rates = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}
    cfg.prices = {"local": {**rates, "supports_vision": True, "supports_pdf_input": False}, "gpt-4o-mini": {"supports_vision": True}}
    settings = cfg.snapshot()
    assert custom_price(settings, "local") == rates
    assert price(settings, "local", "openai", 1000, 100) == pytest.approx(1000 * 1e-6 + 100 * 2e-6)
    plain = LLMConfig().snapshot()
    assert price(settings, "gpt-4o-mini", "openai", 1000, 100) == price(plain, "gpt-4o-mini", "openai", 1000, 100) > 0


def test_image_detail_and_table_token_budget_parse_from_text(ip: Any) -> None:
    ip.run_line_magic("llm_config", "image_detail=LOW table_token_budget=500")
    assert (ipyllm.config.image_detail, ipyllm.config.table_token_budget) == ("low", 500)
    settings = ipyllm.config.snapshot(image_detail="high")
    assert (settings.image_detail, settings.table_token_budget) == ("high", 500)
    with capture_output() as captured:
        ip.run_line_magic("llm_config", "--show")
    shown = dict(line.split(None, 1) for line in captured.stdout.splitlines() if line.strip())
    assert (shown["image_detail"], shown["table_token_budget"]) == ("low", "500")
    with pytest.raises(UsageError, match=r"^image_detail must be one of auto, low, high \(got 'huge'\); the old value stays\.$"):
        ip.run_line_magic("llm_config", "image_detail=huge")
    assert ipyllm.config.image_detail == "low"
    ip.run_line_magic("llm_config", 'prices={"llava": {"input_cost_per_token": 0, "output_cost_per_token": 0, "supports_vision": True}}')
    assert ipyllm.config.prices["llava"]["supports_vision"] is True


def test_the_key_is_masked_everywhere_it_could_be_displayed() -> None:
    cfg = LLMConfig()
    cfg.api_key = SECRET
    assert isinstance(cfg.api_key, Secret)
    for shown in (repr(cfg), str(cfg), repr(cfg.api_key), str(cfg.api_key), f"{cfg.api_key}", repr(cfg.snapshot()), repr(cfg.settings())):
        assert SECRET not in shown
    assert "****" in repr(cfg)
    # %config LLMConfig prints the class help with current values.
    assert SECRET not in LLMConfig.class_get_help(cfg)
    # A refused key is not echoed either.
    with pytest.raises(SettingError) as caught:
        cfg.api_key = "sk-has a space"
    assert "sk-has" not in str(caught.value)
    assert cfg.api_key.reveal() == SECRET


def test_the_package_exposes_one_shared_config() -> None:
    import ipyllm._config as module

    assert ipyllm.config is module.config
    assert set(SETTING_NAMES) == set(ipyllm.config.traits(config=True))


def test_a_setting_of_the_wrong_type_is_one_line(clean_config: Any) -> None:
    with pytest.raises(ipyllm.SettingError) as caught:
        ipyllm.config.prices = "x"
    assert caught.value._render_traceback_() == [
        "SettingError: prices must be a dict {model: base_model} or {model: {'input_cost_per_token': x, 'output_cost_per_token': y}}, "
        "the latter also with 'supports_vision' / 'supports_pdf_input': True or False "
        "(got 'x'); the old value stays."
    ]
    assert ipyllm.config.prices == {}


# -- snapshots: kept while no setting changes (ipyllm's own time per call) --------------------------------------


def test_a_snapshot_is_kept_until_a_setting_changes() -> None:
    config = LLMConfig()
    first = config.snapshot()
    assert config.snapshot() is first, "no change, no new snapshot"
    config.model = "gpt-4o"
    assert config.snapshot().model == "gpt-4o"
    config.update(temperature=0.5, max_tokens=10)
    assert (config.snapshot().temperature, config.snapshot().max_tokens) == (0.5, 10)


def test_an_observer_of_the_configuration_sees_the_new_value_in_a_snapshot() -> None:
    config = LLMConfig()
    config.snapshot()
    seen: list[str] = []
    config.observe(lambda change: seen.append(config.snapshot().model), "model")
    config.model = "gpt-4o"
    assert seen == ["gpt-4o"]


def test_overrides_are_validated_for_the_call_only() -> None:
    config = LLMConfig()
    config.update(retry_min_wait=1, retry_max_wait=2)
    frozen = config.snapshot(retry_min_wait=10, retry_max_wait=20, model="gpt-4o")
    assert (frozen.retry_min_wait, frozen.retry_max_wait, frozen.model) == (10, 20, "gpt-4o")
    assert (config.retry_min_wait, config.retry_max_wait, config.model) == (1, 2, "gpt-4o-mini")
    with pytest.raises(SettingError, match="retry_min_wait"):
        config.snapshot(retry_min_wait=10)
    assert config.snapshot().model == "gpt-4o-mini"
    other = LLMConfig(model="gpt-4o")
    assert other.snapshot(temperature=1).model == "gpt-4o", "the scratch starts from the configuration asked"


def test_snapshots_with_overrides_from_several_threads_do_not_mix() -> None:
    config = LLMConfig()
    results: dict[int, float] = {}

    def work(index: int) -> None:
        for _ in range(50):
            results[index] = config.snapshot(temperature=index / 10).temperature
            assert results[index] == index / 10

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: i / 10 for i in range(8)}
