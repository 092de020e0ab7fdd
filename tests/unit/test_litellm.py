"""What ipyllm takes from litellm beyond its public API, pinned: an upgrade that drops one fails here, loudly,
rather than quietly turning a speed-up off or a retry on. Each of these is used in ``ipyllm/_litellm.py`` only.

And what the adapter does with them: litellm builds no logging payload that no callback reads, and a callback the
user registered still sees every call."""

from __future__ import annotations

import contextvars
import inspect
import logging
from pathlib import Path
from typing import Any

import pytest

import ipyllm
from ipyllm import _litellm
from ipyllm.testing import StubServer

from ..helpers import wait_until


@pytest.fixture(scope="module")
def litellm():  # type: ignore[no-untyped-def]
    return _litellm.load_litellm()


def test_the_internal_call_flag_that_skips_the_logging_payload(litellm) -> None:  # type: ignore[no-untyped-def]
    from litellm._internal_context import is_internal_call

    assert isinstance(is_internal_call, contextvars.ContextVar)
    with _litellm.unlogged(litellm):
        assert is_internal_call.get() is True
    assert not is_internal_call.get()


@pytest.mark.parametrize("name", _litellm.CALLBACK_LISTS)
def test_the_callback_lists_read_to_know_whether_anyone_listens(litellm, name: str) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(getattr(litellm, name), list), f"litellm.{name} is no longer a list of callbacks"


def test_the_truthy_zero_max_retries_of_the_openai_embedding_path(litellm) -> None:  # type: ignore[no-untyped-def]
    # litellm's OpenAI embedding path reads `max_retries or litellm.DEFAULT_MAX_RETRIES`: a plain 0 becomes 2.
    source = Path(inspect.getfile(litellm.llms.openai.openai)).read_text()
    assert "max_retries or" in source, "litellm no longer turns max_retries=0 into its default: NO_RETRIES may go"
    assert _litellm.NO_RETRIES == 0 and bool(_litellm.NO_RETRIES) is True


def test_the_environment_defaults_that_keep_its_import_offline(litellm) -> None:  # type: ignore[no-untyped-def]
    package = Path(inspect.getfile(litellm)).parent
    sources = "\n".join(path.read_text(errors="replace") for path in package.rglob("*.py") if path.stat().st_size < 2_000_000)
    for name in _litellm._OFFLINE_DEFAULTS:
        assert name in sources, f"litellm no longer reads {name}"


def test_the_loggers_it_writes_to_are_quiet(litellm) -> None:  # type: ignore[no-untyped-def]
    from litellm._logging import verbose_logger, verbose_proxy_logger, verbose_router_logger

    names = {verbose_logger.name, verbose_router_logger.name, verbose_proxy_logger.name}
    assert names <= {"LiteLLM", "LiteLLM Router", "LiteLLM Proxy"}
    assert all(logging.getLogger(name).level == logging.CRITICAL for name in names)


def test_the_private_attributes_read_from_responses_and_streams(litellm) -> None:  # type: ignore[no-untyped-def]
    response = litellm.completion(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], mock_response="ok")
    assert isinstance(_litellm.hidden_params(response), dict) and "response_cost" in _litellm.hidden_params(response)
    from litellm.litellm_core_utils.streaming_handler import CustomStreamWrapper

    assert "self.chunks" in inspect.getsource(CustomStreamWrapper), "the stream wrapper no longer keeps the provider's chunks"
    assert isinstance(litellm.REPEATED_STREAMING_CHUNK_LIMIT, int)


def test_the_helpers_it_imports_from_its_submodules(litellm) -> None:  # type: ignore[no-untyped-def]
    from litellm.types.utils import all_litellm_params
    from litellm.utils import type_to_response_format_param

    assert "api_base" in set(all_litellm_params) and callable(type_to_response_format_param)
    assert "timeout" in _litellm.call_arguments("chat")


# -- litellm's logging payload: built only when a callback reads it ---------------------------------------------


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
    # litellm's worker runs the callbacks when it gets to them: seconds on a loaded machine, not a fixed sleep
    wait_until(lambda: "sync" in seen and "async" in seen, 30, "the user's litellm callback to see the sync and the async call")


def test_a_warm_up_that_fails_says_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first call imports litellm again and says what is wrong; a script that ends during the background import
    (litellm's imports then raise "can't register atexit after shutdown") prints no traceback."""
    primed: list[Any] = []

    def interrupted(count_tokens: bool = True) -> Any:
        raise RuntimeError("can't register atexit after shutdown")

    monkeypatch.setattr(_litellm, "load_litellm", interrupted)
    monkeypatch.setattr(_litellm, "_prime_tokens", primed.append)
    assert _litellm._warm_up() is None
    assert primed == []
