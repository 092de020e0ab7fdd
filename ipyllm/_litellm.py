"""The one adapter to litellm: its import, its quiet and offline defaults, its private parts, and what ipyllm asks of it.

Every other module gets litellm through ``load_litellm()`` and uses only its public API; what is private or
fragile lives here, each pinned by a test (``tests/unit/test_litellm.py``) so that an upgrade that drops one
fails loudly:

- ``litellm._internal_context.is_internal_call``: the flag that skips litellm's logging payload;
- the callback lists (``litellm.callbacks``, ``success_callback``, ...), read to know whether anyone listens;
- ``max_retries`` that is zero but true, because litellm's OpenAI embedding path reads ``max_retries or 2``;
- the environment defaults that keep its import offline, and the loggers it writes to.

litellm is imported on first use (its import takes seconds), or by ``warm_up()`` in a background thread.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import warnings
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from types import ModuleType
from typing import Any

__all__ = [
    "BATCH_PROVIDERS",
    "CALLBACK_LISTS",
    "NO_RETRIES",
    "KeyCheck",
    "batch_model",
    "call_arguments",
    "cancel_batch",
    "caps_completion_tokens",
    "check_environment",
    "create_batch",
    "create_file",
    "defer_tokenizers",
    "file_content",
    "has_callbacks",
    "hidden_params",
    "learn_provider",
    "litellm_loaded",
    "load_litellm",
    "max_output_tokens",
    "model_names",
    "prompt_cache_minimum",
    "provider_chunks",
    "provider_of",
    "provider_parameters",
    "repeated_chunk_limit",
    "resolve_provider",
    "response_format",
    "retrieve_batch",
    "supports_prompt_caching",
    "supports_response_schema",
    "unlogged",
    "warm_up",
]

# Without these, litellm fetches its price map, blog posts and header lists from the network at import.
_OFFLINE_DEFAULTS = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
}


_module: ModuleType | None = None
_import_lock = threading.Lock()


def load_litellm(count_tokens: bool = True) -> ModuleType:
    """Import and quieten litellm once, whichever thread asks first; ``count_tokens=False`` leaves its tokenizers
    to load when first used (a helper process never counts tokens, and is ready a second sooner)."""
    global _module
    if _module is None:
        with _import_lock:
            if _module is None:
                for name, value in _OFFLINE_DEFAULTS.items():
                    os.environ.setdefault(name, value)
                import litellm

                # Pydantic complains about litellm's own types the first time they are used.
                warnings.filterwarnings("ignore", message=r".*`ReadOnly` qualifier", category=UserWarning)
                litellm.suppress_debug_info = True
                litellm.set_verbose = False
                for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
                    logging.getLogger(name).setLevel(logging.CRITICAL)
                _prime(litellm, count_tokens)
                _module = litellm
    return _module


#: litellm's lists of logging callbacks: while all are empty, nobody reads what its success handler builds.
CALLBACK_LISTS = (
    "callbacks",
    "success_callback",
    "_async_success_callback",
    "failure_callback",
    "_async_failure_callback",
    "input_callback",
    "_async_input_callback",
    "service_callback",
)


def has_callbacks(litellm: ModuleType) -> bool:
    """Whether the user registered any litellm logging callback."""
    return any(getattr(litellm, name, None) for name in CALLBACK_LISTS)


def unlogged(litellm: ModuleType | None = None) -> AbstractContextManager[Any]:
    """Calls made inside skip litellm's logging payload when no litellm callback is registered.

    After every call litellm builds a logging payload for its callbacks (about 1 ms of CPU per call), on a
    thread of its own that takes the GIL while ipyllm commits the row, or on the event loop for ``acompletion``.
    With no callback registered nobody reads it, so the call runs as one of litellm's internal sub-calls,
    which skip only that step: the response, its usage and its price are the same. A user who registers a
    callback (Langfuse, OpenTelemetry, ...) gets litellm's logging as before.
    """
    litellm = litellm or _module
    if litellm is None or has_callbacks(litellm):
        return nullcontext()
    try:
        from litellm._internal_context import is_internal_call
    except ImportError:  # another litellm version: its logging stays on
        return nullcontext()
    return _internal(is_internal_call)


@contextmanager
def _internal(flag: Any) -> Any:
    token = flag.set(True)
    try:
        yield
    finally:
        flag.reset(token)


def _prime(litellm: ModuleType, count_tokens: bool = True) -> None:
    """Load what litellm loads on its first call (tokenizers, the completion path's modules): seconds that
    would otherwise land, unannounced, in the first call and its ``latency_s``. Nothing is sent."""
    if count_tokens:
        _prime_tokens(litellm)
    try:
        # Not when the user has logging callbacks: they would record the mock call.
        if not has_callbacks(litellm):
            with unlogged(litellm):
                litellm.completion(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "warm up"}], mock_response="ok", max_retries=0
                )
    except Exception:  # a cold first call is slower, not wrong
        pass


def _prime_tokens(litellm: ModuleType) -> None:
    with suppress(Exception):  # a first count is slower, not wrong
        litellm.token_counter(model="gpt-4o-mini", text="warm up")


def litellm_loaded() -> bool:
    """Whether litellm is imported and primed: a call made before then waits for it (seconds)."""
    return _module is not None


#: Set by a batch that sends through helper processes: a warm-up then leaves the tokenizers (a second of CPU beside
#: the batch's calls, in a fresh kernel) to load when a count first needs them.
_tokenizers_wait = threading.Event()


def defer_tokenizers() -> None:
    """A warm-up still under way skips loading the tokenizers (``_warm_up``)."""
    _tokenizers_wait.set()


def _warm_up() -> None:
    """litellm ready for calls first (a map waits for it), then its tokenizers (for estimates and budgets).

    A warm-up that fails says nothing: the first call imports litellm again and reports what is wrong. (A script
    that ends during the import gets "can't register atexit after shutdown" from litellm's imports, not a traceback.)
    """
    try:
        litellm = load_litellm(count_tokens=False)
    except Exception:
        return
    if not _tokenizers_wait.is_set():
        _prime_tokens(litellm)


def warm_up() -> threading.Thread:
    """Import litellm in a background thread, so the first call does not stall."""
    thread = threading.Thread(target=_warm_up, name="ipyllm-warm-up", daemon=True)
    thread.start()
    return thread


@functools.lru_cache(maxsize=256)
def caps_completion_tokens(model: str, base_url: str | None) -> bool:
    """Whether the model's output cap is ``max_completion_tokens``: the reasoning models, whose hidden reasoning
    tokens are billed as output and counted against that cap (litellm says which take it)."""
    litellm = load_litellm()
    provider = resolve_provider(model, base_url)
    try:
        if not litellm.supports_reasoning(model=model, custom_llm_provider=provider):
            return False
        return "max_completion_tokens" in (litellm.get_supported_openai_params(model=model, custom_llm_provider=provider) or ())
    except Exception:
        return False


#: ``max_retries`` for embeddings: zero, but true. litellm's OpenAI embedding path reads
#: ``max_retries or litellm.DEFAULT_MAX_RETRIES`` (``llms/openai/openai.py``), so a plain 0 becomes 2 and the
#: OpenAI SDK sends every attempt three times beneath ipyllm's policy.
class _NoRetries(int):
    def __bool__(self) -> bool:
        return True


NO_RETRIES = _NoRetries(0)


#: Providers resolved by a helper process's litellm (``learn_provider``), while this process's is still importing.
_learned: dict[tuple[str, str | None], str | None] = {}


def resolve_provider(model: str, base_url: str | None) -> str | None:
    """The provider litellm routes ``model`` to (``openai``, ``anthropic``, ``azure``, ...), or None."""
    if (model, base_url) in _learned:
        return _learned[(model, base_url)]
    return _resolved(model, base_url)


@functools.lru_cache(maxsize=256)
def _resolved(model: str, base_url: str | None) -> str | None:
    """Memoized: litellm's lookup scans its endpoint list (about 1 ms) and depends only on these two."""
    return provider_of(load_litellm(), model, base_url)


def provider_of(litellm: ModuleType, model: str, base_url: str | None) -> str | None:
    """``resolve_provider`` with a given litellm (a helper process's, which then tells the calling process)."""
    try:
        return str(litellm.get_llm_provider(model, api_base=base_url)[1])
    except Exception:
        return None


def learn_provider(model: str, base_url: str | None, provider: str | None) -> None:
    """What a helper's litellm resolved: a map's calls can then go out through the helper before this process's
    litellm has finished importing (they would otherwise wait for it, seconds in a fresh kernel)."""
    _learned[(model, base_url)] = provider


def model_names() -> list[str]:
    """Every model name litellm's price map knows."""
    litellm = load_litellm()
    return sorted(set(litellm.model_cost) - {"sample_spec"})


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


@functools.lru_cache(maxsize=256)
def max_output_tokens(model: str, provider: str | None) -> int | None:
    """The model's own maximum output tokens, from litellm's model map; None when unknown.

    Memoized: litellm's lookup takes up to tens of milliseconds for a model it does not know.
    """
    try:
        value = load_litellm().get_model_info(model, custom_llm_provider=provider).get("max_output_tokens")
    except Exception:
        return None
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


@functools.lru_cache(maxsize=4)
def call_arguments(kind: str) -> frozenset[str]:
    """litellm's own call arguments (``chat`` or ``embedding``): the function's signature and the parameters it
    reads from ``**kwargs``."""
    litellm = load_litellm()
    function = litellm.completion if kind == "chat" else litellm.embedding
    names = {name for name in inspect.signature(function).parameters if name != "kwargs"}
    try:
        from litellm.types.utils import all_litellm_params

        names |= set(all_litellm_params)
    except ImportError:  # pragma: no cover - an older litellm
        pass
    return frozenset(names)


def provider_parameters(kind: str, model: str, provider: str | None) -> frozenset[str]:
    """The OpenAI-style parameters litellm says the model's provider takes (``get_supported_openai_params``)."""
    litellm = load_litellm()
    try:
        supported = litellm.get_supported_openai_params(
            model=model, custom_llm_provider=provider, request_type="embeddings" if kind == "embedding" else "chat_completion"
        )
    except Exception:
        supported = None
    names = set(supported or ())
    if kind == "embedding":
        names |= {"dimensions", "encoding_format", "user"}
    return frozenset(names)


@functools.lru_cache(maxsize=256)
def supports_prompt_caching(model: str, provider: str | None) -> bool:
    """Whether litellm's model map says ``model`` caches prompts (``supports_prompt_caching``); False when unknown."""
    load_litellm()
    try:
        from litellm.utils import supports_prompt_caching as supports

        return bool(supports(model=model, custom_llm_provider=provider))
    except Exception:
        return False


@functools.lru_cache(maxsize=256)
def prompt_cache_minimum(model: str, provider: str | None) -> int | None:
    """The shortest prefix ``model`` caches, in tokens, where litellm's model map says (``prompt_cache_min_tokens``);
    None when it does not (litellm's own ``get_prompt_cache_min_tokens`` would answer 1,024 for any model)."""
    try:
        value = load_litellm().get_model_info(model, custom_llm_provider=provider).get("prompt_cache_min_tokens")
    except Exception:
        return None
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def response_format(model_class: Any) -> dict[str, Any]:
    """litellm's ``response_format`` for a pydantic model class: strict mode, additionalProperties false, every
    field required."""
    load_litellm()
    from litellm.utils import type_to_response_format_param

    return dict(type_to_response_format_param(model_class) or {})


def supports_response_schema(model: str, base_url: str | None) -> bool:
    """Whether litellm says ``model`` takes a JSON schema as ``response_format``."""
    try:
        return bool(load_litellm().supports_response_schema(model=model, custom_llm_provider=resolve_provider(model, base_url)))
    except Exception:
        return False


def hidden_params(response: Any) -> dict[str, Any]:
    """litellm's ``response._hidden_params`` (its price, the provider's headers); empty when there are none."""
    private = getattr(response, "__pydantic_private__", None)
    hidden = private.get("_hidden_params") if private else getattr(response, "_hidden_params", None)
    return hidden if isinstance(hidden, dict) else {}


def provider_chunks(stream: Any) -> list[Any] | None:
    """The chunks of a stream as the provider sent them: litellm's stream wrapper keeps them (``chunks``) besides
    what it yields, which includes a usage chunk of its own making."""
    chunks = getattr(stream, "chunks", None)
    return chunks if isinstance(chunks, list) else None


def repeated_chunk_limit() -> int:
    """How many identical pieces in a row make litellm stop a stream."""
    return int(getattr(_module, "REPEATED_STREAMING_CHUNK_LIMIT", 100))


# -- provider Batch APIs ---------------------------------------------------------------------------------------
#: The providers litellm's ``create_batch`` can send a file of requests to (``litellm/batches/main.py``: its
#: ``custom_llm_provider`` choices, and Gemini through its batches config).
BATCH_PROVIDERS = ("openai", "azure", "vertex_ai", "gemini", "bedrock", "mistral", "xai", "hosted_vllm", "litellm_proxy")


def batch_model(model: str, base_url: str | None) -> str:
    """The model as the provider knows it, for a request file's ``body.model`` (``openai/gpt-4o-mini`` -> ``gpt-4o-mini``)."""
    try:
        return str(load_litellm().get_llm_provider(model, api_base=base_url)[0])
    except Exception:
        return model.split("/", 1)[1] if "/" in model else model


def _client_arguments(connection: dict[str, Any]) -> dict[str, Any]:
    """The key, endpoint and API version of a call (``common_arguments``), and no retries of the SDK's own."""
    arguments: dict[str, Any] = {name: connection[name] for name in ("api_key", "api_base", "api_version", "timeout") if name in connection}
    arguments["max_retries"] = 0
    return arguments


def create_file(connection: dict[str, Any], provider: str, filename: str, data: bytes) -> str:
    """Upload a batch's request file (``purpose="batch"``); its file id."""
    litellm = load_litellm()
    with unlogged(litellm):
        uploaded = litellm.create_file(
            file=(filename, data, "application/jsonl"), purpose="batch", custom_llm_provider=provider, **_client_arguments(connection)
        )
    return str(uploaded.id)


def create_batch(connection: dict[str, Any], provider: str, input_file_id: str, model: str, metadata: dict[str, str]) -> Any:
    """Start a batch on an uploaded file of chat requests, in the provider's 24-hour window; the batch (``id``, ``status``, ...)."""
    litellm = load_litellm()
    extra = {} if provider in ("openai", "azure", "hosted_vllm", "litellm_proxy", "xai") else {"model": model}
    with unlogged(litellm):
        return litellm.create_batch(
            completion_window="24h",
            endpoint="/v1/chat/completions",
            input_file_id=input_file_id,
            custom_llm_provider=provider,
            metadata=metadata,
            **extra,
            **_client_arguments(connection),
        )


def retrieve_batch(connection: dict[str, Any], provider: str, batch_id: str) -> Any:
    """The batch as the provider sees it now: ``status``, ``request_counts``, ``output_file_id``, ``error_file_id``."""
    litellm = load_litellm()
    with unlogged(litellm):
        return litellm.retrieve_batch(batch_id=batch_id, custom_llm_provider=provider, **_client_arguments(connection))


def cancel_batch(connection: dict[str, Any], provider: str, batch_id: str) -> Any:
    """Ask the provider to cancel a batch (it goes ``cancelling``, then ``cancelled`` with what had finished)."""
    litellm = load_litellm()
    with unlogged(litellm):
        return litellm.cancel_batch(batch_id=batch_id, custom_llm_provider=provider, **_client_arguments(connection))


def file_content(connection: dict[str, Any], provider: str, file_id: str) -> bytes:
    """A batch's output or error file, whole."""
    litellm = load_litellm()
    with unlogged(litellm):
        content = litellm.file_content(file_id=file_id, custom_llm_provider=provider, **_client_arguments(connection))
    return bytes(getattr(content, "content", content))
