"""What keeps ipyllm's own time per call small must not change what a call sees: the frozen settings and
the ledger's path are kept only while they are still true."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import ipyllm
from ipyllm import _api
from ipyllm._config import LLMConfig, SettingError
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
