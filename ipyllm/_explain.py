"""What went wrong, said in one line: litellm's exception turned into one of ipyllm's errors, with the provider's
own words (the key removed) and what to do next; the key checked before sending; an unknown model's close
matches or what a ``base_url`` server offers."""

from __future__ import annotations

import difflib
import os
import re
from typing import Protocol

from ipyllm._config import Settings
from ipyllm._litellm import check_environment, model_names
from ipyllm._models import server_models
from ipyllm._parts import scrub_data_urls
from ipyllm._retry import describe, is_missing_key, is_permanent
from ipyllm.errors import (
    AuthenticationError,
    LLMError,
    MissingKeyError,
    ProviderUnavailableError,
    RateLimitError,
    RequestRejectedError,
    UnknownModelError,
)

__all__ = ["Destination", "check_key", "explain", "provider_words", "redact", "unknown_model_message"]


class Destination(Protocol):
    """What an explanation needs to know of a call: what it asked for, and where it went."""

    kind: str
    model: str
    settings: Settings
    #: The model as litellm was asked for it (``azure/<deployment>`` for Azure embeddings).
    target: str

    @property
    def provider(self) -> str | None: ...

    @property
    def where(self) -> str: ...


_KEY_PATTERN = re.compile(r"\b(sk-[A-Za-z0-9_\-]{2})[A-Za-z0-9_\-]{6,}")
# Environment variables whose values are credentials (OPENAI_API_KEY, AZURE_AD_TOKEN, AWS_SECRET_ACCESS_KEY, ...).
_SECRET_VARIABLE = re.compile(r"(_API_KEY|_KEY|_TOKEN|_SECRET|_PASSWORD)$|SECRET_ACCESS_KEY$")


def redact(text: str, settings: Settings | None = None) -> str:
    """Remove the session's key, any credential variable's value, anything shaped like a key, and image data (a
    provider that echoes a data URL back), from text."""
    text = scrub_data_urls(text)
    secrets = [str.__str__(settings.api_key.reveal())] if settings is not None and settings.api_key else []
    secrets += [value for name, value in os.environ.items() if _SECRET_VARIABLE.search(name) and len(value) >= 8]
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "****")
    return _KEY_PATTERN.sub(r"\1****", text)


_PREFIXES = (
    re.compile(r"^(litellm\.)?\w+(Error|Exception|Timeout)?: "),  # litellm.AuthenticationError: AuthenticationError:
    re.compile(r"^\w+Exception - "),  # OpenAIException - the server's words
    re.compile(r"^Error code: \d+ - "),
)


def provider_words(exc: BaseException, settings: Settings | None = None, limit: int = 160) -> str:
    """The provider's own words on one line, without litellm's prefixes, the key removed, shortened to ``limit``."""
    body = getattr(exc, "body", None)
    text = body.get("message") if isinstance(body, dict) and isinstance(body.get("message"), str) else None
    if not text:
        text = str(getattr(exc, "message", None) or exc)
        text = text.split(" Original exception:")[0]
        for _ in range(4):
            for prefix in _PREFIXES:
                text = prefix.sub("", text.strip())
    line = " ".join(redact(text, settings).split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def explain(exc: BaseException, call: Destination, attempts: int) -> LLMError:
    """Turn what litellm raised into one of ipyllm's errors: what the provider said (key removed, one line) and
    what to do next. The result never refers to ``exc``, which can repeat the key."""
    settings, model = call.settings, call.model
    if isinstance(exc, LLMError):
        return exc
    status = getattr(exc, "status_code", None)
    status = int(status) if isinstance(status, (int, str)) and str(status).isdigit() else None
    name = type(exc).__name__
    provider = call.provider or "the provider"  # whose key it is
    where = call.where  # who answered
    said = provider_words(exc, settings)
    tries = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
    key_variable = _key_variable(call)
    key_hint = f"set LLM_API_KEY{f' or {key_variable}' if key_variable else ''}, or ipyllm.config.api_key"

    def error(cls: type[LLMError], what: str, advice: str) -> LLMError:
        # One line: what happened: "what the provider said"; what to do.
        told = f'{what}: "{said}"; {advice}' if said else f"{what}: {advice}"
        return cls(told, status_code=status, provider_message=said)

    if is_missing_key(exc):
        return MissingKeyError(f"no API key for {provider}: {key_hint}", status_code=status)
    if status in (401, 403) or name in ("AuthenticationError", "PermissionDeniedError"):
        return error(AuthenticationError, f"{where} refused the API key ({status})", f"check it, or {key_hint}")
    if "LLM Provider NOT provided" in str(exc) or status == 404 or name == "NotFoundError":
        sent = status == 404  # else litellm refused the name before sending it
        setting = "embedding_model" if call.kind == "embedding" else "model"
        advice = unknown_model_message(
            model, said if sent else "", base_url=settings.base_url, api_key=settings.api_key, sent=sent, setting=setting
        )
        return UnknownModelError(advice, status_code=status, provider_message=said)
    if name == "ContextWindowExceededError":
        return error(
            RequestRejectedError, f"the prompt is longer than {model}'s context window", "shorten it or choose a model with a larger one"
        )
    if name == "ContentPolicyViolationError":
        return error(RequestRejectedError, f"{where} refused the request under its content policy", "rephrase the prompt")
    if status == 429:
        return error(RateLimitError, f"rate limited (429) {tries}", "wait a minute and run again, or raise num_retries / retry_max_wait")
    reason = describe(exc)
    if reason == "litellm's repeated-chunk guard":
        return error(LLMError, "litellm's repeated-chunk guard stopped the reply (the model sent one piece over and over)", "try again")
    if reason == "the stream broke before any text":
        return error(
            ProviderUnavailableError,
            f"the reply stream from {where} broke before any text {tries}",
            "try again later, or call without streaming",
        )
    if reason == "connection error":
        return ProviderUnavailableError(
            f"could not connect to {where} {tries}: check that it is up and that base_url is right",
            status_code=status,
            provider_message=said,
        )
    if reason == "gateway timeout (504)":
        return error(
            ProviderUnavailableError,
            f"{where} answered 504 gateway timeout {tries}",
            "a gateway before the model gave up waiting; try again later",
        )
    if reason == "request timeout (408) from the server":
        return error(
            ProviderUnavailableError, f"{where} answered 408 request timeout {tries}", "the server gave up on the request; try again later"
        )
    if reason == "timed out":
        return ProviderUnavailableError(
            f"no answer within {settings.timeout:g} s {tries} from {where}: try again later, or raise timeout (LLM_TIMEOUT)",
            status_code=status,
            provider_message=said,
        )
    if status is not None and status >= 500 and is_permanent(exc):
        return error(
            ProviderUnavailableError,
            f"{where} cannot serve this request ({status}, not retried: no retry can fix it)",
            "change the server's setup or the model",
        )
    if status is not None and status >= 500:
        return error(ProviderUnavailableError, f"{where} failed with {status} {tries}", "the provider is having trouble; try again later")
    if status is not None and 400 <= status < 500:
        return error(RequestRejectedError, f"{where} rejected the request ({status})", "fix what it names and run again")
    return error(LLMError, f"{name} from {where}", "see what it says, and run again")


def check_key(call: Destination) -> None:
    """Before sending: with no session key and no base_url, the provider's key variable must be set.

    Only for providers whose key is an ``*_API_KEY`` variable: AWS and Google find credentials in files too,
    and Azure takes Azure AD credentials instead of a key.
    """
    check = check_environment(call.target or call.model)
    wanted = [name for name in check.missing if name.endswith("_API_KEY")]
    if check.in_environment or check.keyless or not wanted:
        return
    if call.provider == "azure" and any(os.environ.get(name) for name in ("AZURE_AD_TOKEN", "AZURE_CLIENT_SECRET", "AZURE_USERNAME")):
        return  # Azure AD credentials stand in for the key
    provider = call.provider or "the provider"
    raise MissingKeyError(f"no API key for {provider}: set LLM_API_KEY or {wanted[0]}, or ipyllm.config.api_key")


def _key_variable(call: Destination) -> str | None:
    """The provider's own key variable (``OPENAI_API_KEY``, ...), from litellm's environment check."""
    missing = check_environment(call.model).missing
    if missing:
        return missing[0]
    return f"{call.provider.upper()}_API_KEY" if call.provider else None


def unknown_model_message(
    model: str,
    provider_said: str = "",
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    sent: bool = True,
    setting: str = "model",
) -> str:
    """What to do about a model the provider does not serve: close matches, or what the ``base_url`` server offers.

    With ``base_url`` set, the server's own list (``GET {base_url}/models``) names the alternatives; the
    advice to use ``openai/<name>`` with ``base_url`` is only given to a user who has not done so already.
    ``sent`` is False when litellm refused the name before any request (no provider prefix it knows);
    ``setting`` is the one to change (``embedding_model`` for an embedding call).
    """
    said = f" ({provider_said})" if provider_said else ""
    if base_url:
        offered = server_models(base_url, api_key, timeout=5.0)
        bare = model.removeprefix("openai/")
        if offered and bare in offered:
            if not sent:
                return f"the server at {base_url} serves {bare!r}{said}: name it openai/{bare}, so that litellm sends it there"
            where = f"the server at {base_url}"
            return f"{where} does not serve {model!r}{said}, though it lists it: check base_url (OpenAI-style ones end in /v1)"
        if offered:
            close = difflib.get_close_matches(bare, offered, n=3, cutoff=0.6)
            shown = ", ".join(offered[:5]) + (f", ... and {len(offered) - 5} more" if len(offered) > 5 else "")
            example = f"e.g. %llm_config {setting}=openai/{(close or offered)[0].removeprefix('openai/')}"
            if not sent:  # litellm did not know the name: the closest names the server offers
                hint = f"did you mean {', '.join(close)}? " if close else ""
                return f"unknown model {model!r}{said}: {hint}the server at {base_url} offers: {shown}: {example}"
            return f"the server at {base_url} does not serve {model!r}{said}; it offers: {shown}: use one of them, {example}"
        if model.startswith("openai/"):
            return f"the server at {base_url} does not serve {model!r}{said}: check the name against the server's own model list"
    names = model_names()
    if model in names:
        return f"the provider does not serve {model!r}{said}: check that your account, deployment or server offers it"
    matches = difflib.get_close_matches(model, names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(matches)}? " if matches else ""
    return f"unknown model {model!r}{said}: {hint}For an OpenAI-compatible server use openai/{model.split('/')[-1]} with base_url"
