"""An OpenAI-compatible stub server on loopback, with scripted faults.

Use it to run notebooks and tests offline, without a key and without spending money::

    from ipyllm.testing import StubServer, Fault

    with StubServer() as stub:
        stub.script(Fault.rate_limit(retry_after=1), Fault.status(503))
        ipyllm.config.base_url = stub.base_url
        ipyllm.config.api_key = "sk-stub"
        ipyllm.complete("hello")          # answered on the third request
        assert len(stub.requests) == 3

The server speaks the parts of the OpenAI API that ipyllm uses: ``POST /v1/chat/completions`` (plain
and streamed, with ``usage`` on the last chunk when ``stream_options.include_usage`` is asked for),
``POST /v1/embeddings``, ``GET /v1/models``, and the Azure forms
``/openai/deployments/{name}/chat/completions`` and ``.../embeddings``. Replies are deterministic:
``"[{model}] {echo of the last user message}"`` (``reply_tokens`` makes them longer), cut at the request's
``max_tokens`` / ``max_completion_tokens`` with the finish reason ``length``, as providers do; tokens are
counted as words and punctuation marks. Image and file parts are echoed in place (``[image 640×480]``, read from
the image's header; ``[image <url>]``; ``[file application/pdf N bytes]``) and counted by OpenAI's tile formula
(``ipyllm._parts.image_tokens``; a remote image 85, a file 1 token per 100 bytes); an image that cannot be decoded
is refused with OpenAI's 400 (``invalid_image_format``), streamed or not.
Accounting modes, as real providers differ: no usage in streams (``usage_in_stream=False``, as llama.cpp's
server) or in any answer (``report_usage=False``), prompt tokens served from a prompt cache
(``cached_tokens``), and the call's cost reported by the provider (``usage_cost``, as OpenRouter's
``usage.cost``) or by a proxy (``cost_header``, as litellm's ``x-litellm-response-cost``).

It also keeps OpenAI's Files and Batches APIs (``/v1/files``, ``/v1/batches``; a batch runs as its
``BatchScript`` says: statuses per retrieve or per second, per-line failures, expiry, cancellation; lines answered
as the live route answers them), reports prompt caching (``prompt_caching=True``: OpenAI's ``cached_tokens`` on a
repeated prefix of 1,024 tokens or more), and speaks Anthropic's Messages API (``POST /v1/messages``, plain and
streamed, with ``cache_control`` breakpoints written then read).

Faults are consumed one per model request (chat, embeddings or messages), in order; when the script is empty the
server answers normally. ``POST /_stub/script`` with a JSON list of faults scripts a running server from
another process (the form ``python -m ipyllm.testing`` prints how).

``offline_unless_configured()`` is the first cell of ipyllm's notebooks: it leaves a configured provider
alone, and otherwise starts a stub server and points the session at it, saying so in one line.

The package hands on names from its private modules: ``_faults`` (what a test scripts and reads back),
``_replies`` (the answers' text, usage and JSON, deterministic and free of HTTP), ``_caching`` (the prompt
cache), ``_anthropic`` (the Messages API's answers), ``_batches`` (files and batches, and how a batch runs),
``_batchroutes`` (their HTTP routes), ``_handler`` (the HTTP routes), ``_server`` (``StubServer``), ``_notebooks``
(the offline helper) and ``_cli`` (``python -m ipyllm.testing``).
"""

from __future__ import annotations

# Names public beside __all__ (the command line, remote scripting, the stub's constants) are handed on as X as X.
from ipyllm.testing._batches import BatchScript
from ipyllm.testing._cli import main as main
from ipyllm.testing._faults import Fault, RecordedRequest
from ipyllm.testing._notebooks import offline_unless_configured, provider_configured
from ipyllm.testing._replies import EMBEDDING_DIMENSIONS as EMBEDDING_DIMENSIONS
from ipyllm.testing._replies import STUB_MODELS as STUB_MODELS
from ipyllm.testing._replies import count_tokens, fit_schema
from ipyllm.testing._server import StubServer
from ipyllm.testing._server import script_remote as script_remote

__all__ = [
    "BatchScript",
    "Fault",
    "RecordedRequest",
    "StubServer",
    "count_tokens",
    "fit_schema",
    "offline_unless_configured",
    "provider_configured",
]
