"""Notebooks that run anywhere: a real provider when one is configured, the stub server otherwise."""

from __future__ import annotations

from typing import Any

from ipyllm._config import config
from ipyllm._litellm import check_environment, resolve_provider
from ipyllm._locations import SQLiteFile, default_usage_db
from ipyllm.testing._server import StubServer

__all__ = ["offline_unless_configured", "provider_configured"]

#: The stub server started by ``offline_unless_configured`` (kept, so that re-running the cell reuses it).
_offline: StubServer | None = None


def provider_configured() -> str | None:
    """How a real provider is configured for this session, in a few words; None when it is not.

    A provider counts as configured when the session has an API key (``LLM_API_KEY``, ``%llm_config``,
    the picker) or a base URL (``LLM_BASE_URL``: a proxy or a local server), or when litellm finds the
    model's own key variable (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ...) in the environment. A model of a
    local server that needs no key (``ollama/llama3``) counts too.
    """
    if config.base_url:
        return f"the server at {config.base_url} (base_url)"
    provider = resolve_provider(config.model, None)
    where = f"{provider or 'the provider'} (model {config.model})"
    if config.api_key:
        return f"{where}, with the session's API key"
    check = check_environment(config.model)
    if provider is not None and check.in_environment:
        return f"{where}, with its key from the environment"
    if provider is not None and check.keyless:
        return f"{where}, a local server that needs no key"
    return None


def offline_unless_configured(*, always: bool = False) -> StubServer | None:
    """Point the session at a local stub server unless a real provider is configured; say which in one line.

    The first cell of ipyllm's notebooks, so that they run unchanged with a real provider and offline
    without one. When a provider is configured (see ``provider_configured``), nothing changes and None is
    returned. Otherwise a ``StubServer`` is started (once per kernel: a re-run reuses it) and the session
    points at it: ``base_url``, a dummy ``api_key``, and ``gpt-4o-mini`` unless the model is already an
    OpenAI-style name. Stub calls are priced as the model's real calls would be (nothing is spent) and go
    to a ledger file of their own, ``stub-usage.sqlite`` beside the default one, so they never count
    against real spend or ``daily_budget_usd``; an explicit ``usage_db`` is kept.

    Parameters
    ----------
    always
        Use the stub server even when a provider is configured (a notebook that scripts faults).

    Returns
    -------
    StubServer or None
        The running stub server, to script faults with ``stub.script(...)``; None with a real provider.
    """
    global _offline
    reused = _offline is not None and _offline._server is not None and config.base_url == _offline.base_url
    configured = None if reused else provider_configured()
    if configured is not None and not always:
        print(f"ipyllm: calls go to {configured}: real calls, which a paid provider charges for (budget_usd caps the spend).")
        return None
    if _offline is None or _offline._server is None:
        _offline = StubServer().start()
    settings: dict[str, Any] = {"base_url": _offline.base_url, "api_key": "sk-stub"}
    if resolve_provider(config.model, None) != "openai":
        settings["model"] = "gpt-4o-mini"
    if config.usage_db is None:
        settings["usage_db"] = SQLiteFile(default_usage_db().path.with_name("stub-usage.sqlite"))
    config.update(**settings)
    reason = "this notebook scripts its faults" if always else "no provider is configured"
    advice = "" if always else " To use a real model, set OPENAI_API_KEY or LLM_API_KEY (and LLM_MODEL), then restart the kernel."
    print(
        f"ipyllm: replies come from the local stub server at {_offline.base_url} ({reason}): they echo the prompt, "
        f"nothing is spent, and costs show what {config.model} would charge.{advice}"
    )
    return _offline
