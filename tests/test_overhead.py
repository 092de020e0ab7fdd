"""What keeps ipyllm's own time per call small must not change what a call sees: the frozen settings and
the ledger's path are kept only while they are still true."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import ipyllm
from ipyllm import _api, _litellm
from ipyllm._config import LLMConfig
from ipyllm.errors import SettingError
from ipyllm.testing import StubServer


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


def test_the_default_ledger_follows_the_jupyter_data_directory(live: StubServer, tmp_path: Path, monkeypatch: Any) -> None:
    for name in ("one", "two"):
        monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / name))
        ipyllm.complete("hello")
        assert (tmp_path / name / "ipyllm" / "usage.sqlite").exists()
    assert _api.session.store() is not None and _api.session.store().count() == 1


def _count_litellm_logging(monkeypatch: Any) -> list[str]:
    """Each run of litellm's success handlers (the logging payload it builds for its callbacks)."""
    from litellm.litellm_core_utils.litellm_logging import Logging

    ran: list[str] = []
    sync, coroutine = Logging.success_handler, Logging.async_success_handler

    def success_handler(self: Any, *args: Any, **kwargs: Any) -> Any:
        ran.append("sync")
        return sync(self, *args, **kwargs)

    async def async_success_handler(self: Any, *args: Any, **kwargs: Any) -> Any:
        ran.append("async")
        return await coroutine(self, *args, **kwargs)

    monkeypatch.setattr(Logging, "success_handler", success_handler)
    monkeypatch.setattr(Logging, "async_success_handler", async_success_handler)
    return ran


def _settle() -> None:
    """litellm hands its logging to a thread pool (sync calls) or a worker task: give it time to run."""
    import time

    time.sleep(0.5)


def test_litellm_builds_no_logging_payload_that_no_callback_reads(live: StubServer, monkeypatch: Any) -> None:
    import asyncio

    ran = _count_litellm_logging(monkeypatch)
    ipyllm.complete("hello")
    asyncio.run(ipyllm.acomplete("hello async"))
    _settle()
    assert ran == [], "litellm's success handler ran with no callback to read its payload"
    assert len(live.requests) == 2
    frame = ipyllm.usage()
    assert frame["cost_usd"].notna().all() and (frame["status"] == "ok").all(), "the price is litellm's, computed all the same"


def test_a_litellm_callback_the_user_registered_still_sees_every_call(live: StubServer, monkeypatch: Any) -> None:
    import asyncio

    import litellm
    from litellm.integrations.custom_logger import CustomLogger

    seen: list[str] = []

    class Recorder(CustomLogger):  # type: ignore[misc] - litellm's base class is untyped
        def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
            seen.append("sync")

        async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
            seen.append("async")

    for name in _litellm.CALLBACK_LISTS:  # litellm files a callback in its other lists too: all are put back after
        monkeypatch.setattr(litellm, name, [])
    litellm.callbacks.append(Recorder())
    ipyllm.complete("hello")
    asyncio.run(ipyllm.acomplete("hello async"))
    _settle()
    assert "sync" in seen and "async" in seen, f"the user's litellm callback saw {seen}"
