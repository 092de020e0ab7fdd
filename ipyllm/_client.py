"""One logical model call through litellm: arguments, the retry policy, streaming, tokens and cost.

What a call cost (and what one would cost) is worked out in ``_cost``; its names are re-exported here.

litellm is imported on first use (its import takes seconds), with its price map read from the bundled
copy unless the user chose otherwise, and with its banners off. The client knows nothing of pandas or
IPython: every call hands exactly one ``UsageRow`` to its ``report`` callback, whatever the outcome, and
the layer above decides where the row goes.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from ipyllm._config import Settings
from ipyllm._cost import (
    DEFAULT_OUTPUT_TOKENS,
    Estimate,
    cached_tokens,
    call_cost,
    custom_price,
    estimate,
    estimate_embedding,
    price,
    provider_usage,
    usage_field,
)
from ipyllm._errors import (
    AuthenticationError,
    LLMError,
    MissingKeyError,
    ProviderUnavailableError,
    RateLimitError,
    RequestRejectedError,
    StreamBrokenError,
    UnknownModelError,
)
from ipyllm._ledger import UsageRow
from ipyllm._retry import RetryNote, describe, is_missing_key, retrying

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "Client",
    "Embeddings",
    "Estimate",
    "Reply",
    "custom_price",
    "estimate",
    "estimate_embedding",
    "load_litellm",
    "price",
    "resolve_provider",
    "warm_up",
]

Messages = list[dict[str, Any]]
Report = Callable[[UsageRow], Any]

# Without these, litellm fetches its price map, blog posts and header lists from the network at import.
_OFFLINE_DEFAULTS = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
}
_litellm: ModuleType | None = None
_import_lock = threading.Lock()


def load_litellm() -> ModuleType:
    """Import and quieten litellm once, whichever thread asks first."""
    global _litellm
    if _litellm is None:
        with _import_lock:
            if _litellm is None:
                for name, value in _OFFLINE_DEFAULTS.items():
                    os.environ.setdefault(name, value)
                import litellm

                # Pydantic complains about litellm's own types the first time they are used.
                warnings.filterwarnings("ignore", message=r".*`ReadOnly` qualifier", category=UserWarning)
                litellm.suppress_debug_info = True
                litellm.set_verbose = False
                for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
                    logging.getLogger(name).setLevel(logging.CRITICAL)
                _litellm = litellm
    return _litellm


def warm_up() -> threading.Thread:
    """Import litellm in a background thread, so the first call does not stall."""
    thread = threading.Thread(target=load_litellm, name="ipyllm-warm-up", daemon=True)
    thread.start()
    return thread


class Reply(str):
    """A model's reply: ``str()`` is the text; ``.usage`` is the call's usage row.

    Also carries ``.messages`` (what was sent) and ``.response`` (litellm's raw response).
    """

    usage: UsageRow
    messages: Messages
    response: Any
    #: How Jupyter shows the reply: markdown, text, code, json or html.
    display_format: str

    def __new__(cls, text: str, usage: UsageRow, messages: Messages | None = None, response: Any = None) -> Reply:
        reply = super().__new__(cls, text)
        reply.usage = usage
        reply.messages = messages or []
        reply.response = response
        reply.display_format = "markdown"
        return reply

    @property
    def text(self) -> str:
        return str.__str__(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from ipyllm._display import footer, render

        return render(self.text, self.display_format, footer(self.usage))


class Embeddings(list[list[float]]):
    """One vector per input text; ``.usage`` is the call's usage row."""

    usage: UsageRow

    def __init__(self, vectors: Sequence[list[float]], usage: UsageRow) -> None:
        super().__init__(vectors)
        self.usage = usage


def as_messages(prompt_or_messages: str | Sequence[dict[str, Any]], system: str | None) -> Messages:
    """A prompt becomes one user message; the session's system prompt goes first unless one is there."""
    if isinstance(prompt_or_messages, str):
        messages: Messages = [{"role": "user", "content": prompt_or_messages}]
    else:
        messages = [dict(m) for m in prompt_or_messages]
    if system and not any(m.get("role") == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    return messages


_KEY_PATTERN = re.compile(r"\b(sk-[A-Za-z0-9_\-]{2})[A-Za-z0-9_\-]{6,}")


def redact(text: str, settings: Settings | None) -> str:
    """Remove the session's key, and anything shaped like a key, from text shown or stored."""
    if settings is not None and settings.api_key:
        text = text.replace(settings.api_key.reveal(), "****")
    return _KEY_PATTERN.sub(r"\1****", text)


def _provider_message(exc: BaseException) -> str:
    """The provider's own words, without litellm's prefixes, on one line."""
    text = str(getattr(exc, "message", None) or exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^(litellm\.)?\w+(Error|Exception|Timeout)?: ", "", text)
    text = re.sub(r"^(litellm\.)?\w+(Error|Exception): ", "", text)
    text = re.sub(r"^\w+Exception - ", "", text)
    return text[:200]


@dataclass
class _Call:
    """What the retry loop needs to know about the call it runs."""

    kind: str
    model: str
    settings: Settings
    row: UsageRow
    start: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    #: An embedding call's input, counted locally when the provider reports no usage.
    texts: list[str] | None = None


class Client:
    """Runs calls through litellm with ipyllm's retry policy.

    Parameters
    ----------
    completion, embedding
        Stand-ins for ``litellm.completion`` / ``litellm.embedding`` (tests inject them).
    sleep
        How retry waits are spent (tests inject a recorder instead of sleeping).
    """

    def __init__(
        self,
        completion: Callable[..., Any] | None = None,
        embedding: Callable[..., Any] | None = None,
        sleep: Callable[[float], Any] = time.sleep,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._completion = completion
        self._embedding = embedding
        self.sleep = sleep
        self.clock = clock

    # -- public ----------------------------------------------------------------------------------------
    def chat(
        self,
        settings: Settings,
        messages: Messages,
        *,
        report: Report,
        stream: bool = False,
        on_text: Callable[[str], Any] | None = None,
        on_retry: Callable[[RetryNote], Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Reply:
        """One chat call, retried; ``on_text`` receives each streamed piece."""
        litellm = load_litellm()
        kwargs = self._common_arguments(settings, settings.model)
        kwargs["messages"] = messages
        if settings.temperature is not None:
            kwargs["temperature"] = settings.temperature
        if settings.max_tokens is not None:
            kwargs["max_tokens"] = settings.max_tokens
        kwargs.update(extra or {})
        completion = self._completion or litellm.completion
        call = self._begin("chat", settings.model, settings)

        def attempt() -> Any:
            if not stream:
                return completion(**kwargs)
            return self._stream_once(completion, kwargs, on_text)

        response = self._run(call, attempt, on_retry, report, messages)
        text = response.choices[0].message.content or ""
        return Reply(text, call.row, messages, response)

    def embed(
        self,
        settings: Settings,
        texts: list[str],
        *,
        report: Report,
        on_retry: Callable[[RetryNote], Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Embeddings:
        """One embeddings call, retried (Azure: the ``embedding_deployment`` with ``api_version``)."""
        litellm = load_litellm()
        model = settings.embedding_model
        target = f"azure/{settings.embedding_deployment}" if settings.embedding_deployment else model
        kwargs = self._common_arguments(settings, target)
        kwargs["max_retries"] = _NO_RETRIES
        kwargs["input"] = texts
        kwargs.update(extra or {})
        embedding = self._embedding or litellm.embedding
        call = self._begin("embedding", model, settings, target)
        call.texts = texts
        response = self._run(call, lambda: embedding(**kwargs), on_retry, report, None)
        vectors = [item["embedding"] if isinstance(item, dict) else item.embedding for item in response.data]
        return Embeddings(vectors, call.row)

    # -- the call --------------------------------------------------------------------------------------
    def _common_arguments(self, settings: Settings, model: str) -> dict[str, Any]:
        # max_retries=0: the OpenAI SDK must not retry beneath our policy (num_retries is never passed).
        kwargs: dict[str, Any] = {"model": model, "timeout": settings.timeout, "max_retries": 0}
        if settings.api_key:
            kwargs["api_key"] = settings.api_key.reveal()
        if settings.base_url:
            kwargs["api_base"] = settings.base_url
        if settings.api_version:
            kwargs["api_version"] = settings.api_version
        return kwargs

    def _begin(self, kind: str, model: str, settings: Settings, target: str | None = None) -> _Call:
        row = UsageRow(kind=kind, model=model, provider=resolve_provider(target or model, settings.base_url))
        return _Call(kind, model, settings, row, start=self.clock())

    def _stream_once(self, completion: Callable[..., Any], kwargs: dict[str, Any], on_text: Callable[[str], Any] | None) -> Any:
        litellm = load_litellm()
        chunks: list[Any] = []
        pieces: list[str] = []
        stream = completion(stream=True, stream_options={"include_usage": True}, **kwargs)
        try:
            for chunk in stream:
                chunks.append(chunk)
                delta = chunk.choices[0].delta.content if chunk.choices else None
                if delta:
                    pieces.append(delta)
                    if on_text is not None:
                        on_text(delta)
        except Exception as exc:
            if not pieces:
                raise  # nothing shown yet: the retry policy decides
            raise StreamBrokenError(f"the reply broke off after {len(pieces)} pieces ({describe(exc)})", partial="".join(pieces)) from exc
        response = litellm.stream_chunk_builder(chunks, messages=kwargs["messages"])
        # litellm's stream wrapper yields a usage chunk even when the provider sent none (it counts the tokens
        # itself, silently), and stamps its own price into it. The provider's own chunks, which the wrapper keeps
        # in ``chunks``, tell what really arrived: the reply carries that usage, or none (then ipyllm counts and
        # says so).
        response.usage = provider_usage(getattr(stream, "chunks", None), chunks)
        return response

    def _run(
        self,
        call: _Call,
        attempt: Callable[[], Any],
        on_retry: Callable[[RetryNote], Any] | None,
        report: Report,
        messages: Messages | None,
    ) -> Any:
        settings, row = call.settings, call.row
        policy = retrying(settings.num_retries, settings.retry_min_wait, settings.retry_max_wait, sleep=self.sleep, on_retry=on_retry)
        row.attempts = 0

        def counted() -> Any:
            row.attempts += 1
            return attempt()

        try:
            response = policy(counted)
            row.latency_s = self.clock() - call.start
            self._record_usage(call, response, messages)
            return response
        except KeyboardInterrupt:
            row.status, row.error = "interrupted", "KeyboardInterrupt: interrupted by the user"
            raise
        except Exception as exc:
            error = explain(exc, call, row.attempts)
            row.status, row.error = "error", f"{type(error).__name__}: {error.message}"
            if isinstance(error, StreamBrokenError) and messages is not None:
                self._count_locally(call, messages, error.partial)
            error.usage = row
            raise error from exc
        finally:
            if row.status != "ok":
                row.latency_s = self.clock() - call.start
            report(row)

    def _record_usage(self, call: _Call, response: Any, messages: Messages | None) -> None:
        usage = usage_field(response, "usage")
        prompt, completion = usage_field(usage, "prompt_tokens"), usage_field(usage, "completion_tokens")
        # litellm fills a usage the provider did not send with zeros; no real prompt has zero tokens.
        if not prompt:
            if messages is not None:
                self._count_locally(call, messages, response.choices[0].message.content or "", response)
            elif call.texts is not None:
                self._count_texts_locally(call, call.texts, response)
            return
        self._set_tokens(call, int(prompt), int(completion or 0), usage=usage, response=response)

    def _count_locally(self, call: _Call, messages: Messages, text: str, response: Any = None) -> None:
        litellm = load_litellm()
        prompt = litellm.token_counter(model=call.model, messages=messages)
        completion = litellm.token_counter(model=call.model, text=text, count_response_tokens=True) if text else 0
        self._set_tokens(call, prompt, completion, response=response, estimated=True)

    def _count_texts_locally(self, call: _Call, texts: list[str], response: Any) -> None:
        litellm = load_litellm()
        tokens = sum(int(litellm.token_counter(model=call.model, text=text)) for text in texts)
        self._set_tokens(call, tokens, 0, response=response, estimated=True)

    def _set_tokens(
        self, call: _Call, prompt: int | None, completion: int, *, usage: Any = None, response: Any = None, estimated: bool = False
    ) -> None:
        """Fill the row's tokens and cost; ``usage`` is what the provider reported (None when counted locally)."""
        row = call.row
        row.prompt_tokens, row.completion_tokens = prompt, completion
        row.total_tokens = (prompt or 0) + completion
        row.cached_tokens = None if usage is None else cached_tokens(usage)
        row.tokens_estimated = estimated
        row.cost_usd = call_cost(call.settings, call.model, row.provider, prompt or 0, completion, call.kind, usage, response)


#: ``max_retries`` for embeddings: zero, but true. litellm's OpenAI embedding path reads
#: ``max_retries or litellm.DEFAULT_MAX_RETRIES`` (``llms/openai/openai.py``), so a plain 0 becomes 2 and the
#: OpenAI SDK sends every attempt three times beneath ipyllm's policy.
class _NoRetries(int):
    def __bool__(self) -> bool:
        return True


_NO_RETRIES = _NoRetries(0)


@functools.lru_cache(maxsize=256)
def resolve_provider(model: str, base_url: str | None) -> str | None:
    """The provider litellm routes ``model`` to (``openai``, ``anthropic``, ``azure``, ...), or None.

    Memoized: litellm's lookup scans its endpoint list (about 1 ms) and depends only on these two.
    """
    try:
        return str(load_litellm().get_llm_provider(model, api_base=base_url)[1])
    except Exception:
        return None


def model_names() -> list[str]:
    """Every model name litellm's price map knows."""
    litellm = load_litellm()
    return sorted(set(litellm.model_cost) - {"sample_spec"})


def explain(exc: BaseException, call: _Call, attempts: int) -> LLMError:
    """Turn what litellm raised into one of ipyllm's errors: what happened, what to do next."""
    settings, model = call.settings, call.model
    if isinstance(exc, LLMError):
        return exc
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    provider = call.row.provider or "the provider"
    said = redact(_provider_message(exc), settings)
    tries = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
    key_variable = _key_variable(call)
    key_hint = f"set LLM_API_KEY{f' or {key_variable}' if key_variable else ''}, or ipyllm.config.api_key"

    if is_missing_key(exc):
        return MissingKeyError(f"no API key for {provider}: {key_hint}", status_code=status)
    if status in (401, 403) or name in ("AuthenticationError", "PermissionDeniedError"):
        return AuthenticationError(f"{provider} refused the API key ({status}): check it, or {key_hint}", status_code=status)
    if "LLM Provider NOT provided" in str(exc) or status == 404 or name == "NotFoundError":
        return UnknownModelError(unknown_model_message(model, said if status == 404 else ""), status_code=status)
    if name == "ContextWindowExceededError":
        return RequestRejectedError(
            f"the prompt is longer than {model}'s context window: shorten it or choose a model with a larger one", status_code=status
        )
    if name == "ContentPolicyViolationError":
        return RequestRejectedError(f"{provider} refused the request under its content policy: {said}", status_code=status)
    if status == 429:
        return RateLimitError(
            f"rate limited (429) {tries}: wait a minute and run again, or raise num_retries / retry_max_wait", status_code=status
        )
    reason = describe(exc)
    if reason == "connection error":
        where = settings.base_url or provider
        return ProviderUnavailableError(
            f"could not connect to {where} {tries}: check that it is up and that base_url is right", status_code=status
        )
    if reason in ("timed out", "gateway timeout (504)"):
        return ProviderUnavailableError(
            f"{reason}: no answer within {settings.timeout:g} s {tries}: try again later, or raise timeout (LLM_TIMEOUT)",
            status_code=status,
        )
    if isinstance(status, int) and status >= 500:
        return ProviderUnavailableError(
            f"{provider} failed with {status} {tries}: the provider is having trouble; try again later", status_code=status
        )
    if isinstance(status, int) and 400 <= status < 500:
        return RequestRejectedError(f"{provider} rejected the request ({status}): {said}", status_code=status)
    return LLMError(f"{name}: {said}", status_code=status if isinstance(status, int) else None)


@dataclass(frozen=True)
class KeyCheck:
    """litellm's environment check for a model: is a key there, and which variables are missing."""

    in_environment: bool
    missing: tuple[str, ...]

    @property
    def keyless(self) -> bool:
        """Only a server address is missing (Ollama and other local servers need no key)."""
        return bool(self.missing) and all(name.endswith(("_API_BASE", "_BASE_URL")) for name in self.missing)


def check_environment(model: str) -> KeyCheck:
    """Whether the provider's own key variable (``OPENAI_API_KEY``, ...) is set, via ``litellm.validate_environment``."""
    try:
        check = load_litellm().validate_environment(model)
    except Exception:
        return KeyCheck(False, ())
    return KeyCheck(bool(check.get("keys_in_environment")), tuple(str(name) for name in check.get("missing_keys") or ()))


def _key_variable(call: _Call) -> str | None:
    """The provider's own key variable (``OPENAI_API_KEY``, ...), from litellm's environment check."""
    missing = check_environment(call.model).missing
    if missing:
        return missing[0]
    return f"{call.row.provider.upper()}_API_KEY" if call.row.provider else None


def unknown_model_message(model: str, provider_said: str = "") -> str:
    import difflib

    names = model_names()
    said = f" ({provider_said})" if provider_said else ""
    if model in names:
        return f"the provider does not serve {model!r}{said}: check that your account, deployment or server offers it"
    matches = difflib.get_close_matches(model, names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(matches)}? " if matches else ""
    return f"unknown model {model!r}{said}: {hint}For an OpenAI-compatible server use openai/{model.split('/')[-1]} with base_url"
