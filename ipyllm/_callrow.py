"""One logical call as the retry loop sees it, and the one place its usage row is built, whichever way it ended.

``Call.settle`` finishes every call, synchronous or not, streamed or not: an answer gets the provider's tokens
(counted locally when it reports none) and their cost; a failure, ipyllm's one-line error and the tokens the
provider reported; an interrupt, what was sent and received so far, counted locally. Exactly one row is then
handed to the ``report`` callback, and the layer above decides where it goes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ipyllm._answers import endpoint
from ipyllm._config import Settings
from ipyllm._cost import cache_creation_tokens, cached_tokens, call_cost, usage_field
from ipyllm._explain import check_key, explain
from ipyllm._litellm import load_litellm
from ipyllm._usage import UsageRow
from ipyllm.errors import Interrupted, LLMError, StreamBrokenError

__all__ = ["Call", "Messages", "Report"]

Messages = list[dict[str, Any]]
Report = Callable[[UsageRow], Any]


@dataclass
class Call:
    """What the retry loop needs to know about the call it runs, and its row."""

    kind: str
    model: str
    settings: Settings
    row: UsageRow
    #: The clock the call's latency is read from, and when the call started on it.
    clock: Callable[[], float]
    start: float = 0.0
    #: The model as litellm is asked for it (``azure/<deployment>`` for Azure embeddings).
    target: str = ""
    #: Neither a session key nor a server address: the provider's own variable must hold the key.
    check_key: bool = False
    #: What was sent: a chat's messages, or an embedding call's texts (counted locally when the provider reports no usage).
    messages: Messages | None = None
    texts: list[str] | None = None
    #: The streamed text so far (counted and kept when the call is interrupted), and whether it was shown.
    received: list[str] = field(default_factory=list)
    shown: bool = False
    #: Why the answer has no text (``empty_note``), for the reply.
    note: str | None = None

    @property
    def provider(self) -> str | None:
        """The provider litellm resolved."""
        return self.row.provider

    @property
    def where(self) -> str:
        """The endpoint, as every error names it."""
        return endpoint(self.settings.base_url, self.row.provider)

    def collect(self, on_text: Callable[[str], Any] | None) -> Callable[[str], Any]:
        """``on_text``, also keeping each piece in ``received``."""
        self.shown = on_text is not None

        def receive(piece: str) -> None:
            self.received.append(piece)
            if on_text is not None:
                on_text(piece)

        return receive

    # -- the attempts ----------------------------------------------------------------------------------------
    def begin(self) -> None:
        """Before the first attempt: no attempt counted yet, and the provider's key variable checked where it must be."""
        self.row.attempts = 0
        if self.check_key:
            check_key(self)

    def counted(self, attempt: Callable[[], Any]) -> Callable[[], Any]:
        """``attempt``, each run counted; an attempt that broke before any text is retried from the start."""

        def run() -> Any:
            self.row.attempts += 1
            self.received.clear()
            return attempt()

        return run

    def acounted(self, attempt: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        """``counted`` for a coroutine function."""

        async def run() -> Any:
            self.row.attempts += 1
            self.received.clear()
            return await attempt()

        return run

    def failure(self, exc: BaseException, *, cancelled: bool = False) -> BaseException:
        """In the retry loop's ``except`` block: the row of a call that failed or was interrupted, and the exception
        to raise once out of that block (so that nothing chains litellm's exception, which can repeat the key, and
        no frame keeps it). ``cancelled``: an interrupt is raised as it came (a cancelled task must end cancelled)."""
        if _is_interrupt(exc):
            interrupted = self._interrupted()
            return exc if cancelled else interrupted
        if isinstance(exc, Exception):
            return _unchained(self._failed(exc))
        return exc  # SystemExit and the like: the row, then on its way

    def settle(self, response: Any, error: BaseException | None, report: Report, *, cancelled: bool = False) -> Any:
        """The end of the retry loop, sync or async: the row finished and reported, then the response returned or
        ``error`` (from ``failure``) raised."""
        if error is None:
            try:
                self.row.latency_s = self.clock() - self.start
                self._record_usage(response)
            except BaseException as exc:  # a response ipyllm cannot read is the call's error
                error = self.failure(exc, cancelled=cancelled)
        if self.row.status not in ("ok", "interrupted"):  # an interrupted row's latency ends at the interrupt
            self.row.latency_s = self.clock() - self.start
        report(self.row)
        if error is not None:
            raise error
        return response

    # -- the row -----------------------------------------------------------------------------------------------
    def _failed(self, exc: Exception) -> LLMError:
        """The call failed after its attempts: ipyllm's one-line error, and the row says so, with the tokens the
        provider reported (or, for a stream that broke, those counted of what had come)."""
        row = self.row
        error = explain(exc, self, row.attempts)
        row.status, row.error = "error", f"{type(error).__name__}: {error.message}"
        if isinstance(error, StreamBrokenError) and self.messages is not None:
            self._count_locally(error.partial)
        reported = getattr(error, "reported_usage", None)
        if reported is not None:
            self._set_tokens(reported[0], reported[1])
        error.usage = row
        return error

    def _interrupted(self) -> Interrupted:
        """The row of an interrupted call: what was sent and received so far, counted locally, and its cost."""
        row = self.row
        row.latency_s = self.clock() - self.start
        partial = "".join(self.received)
        if partial:
            where = "the partial reply is kept above" if self.shown else "the partial reply is in the exception's .partial"
        else:
            where = "no reply had arrived"
        message = f"interrupted after {row.latency_s:.1f} s; {where}"
        row.status, row.error = "interrupted", f"KeyboardInterrupt: {message}"
        # Once an attempt went out, the provider had the prompt: count it (with whatever text came), so that
        # spend and budgets see it. A count that fails leaves the tokens unknown rather than losing the row.
        if row.attempts and self.messages is not None:
            try:
                self._count_locally(partial)
                row.tokens_estimated = True
            except Exception:
                pass
        return Interrupted(message, partial=partial, usage=row)

    def _record_usage(self, response: Any) -> None:
        usage = usage_field(response, "usage")
        prompt, completion = usage_field(usage, "prompt_tokens"), usage_field(usage, "completion_tokens")
        # litellm fills a usage the provider did not send with zeros; no real prompt has zero tokens.
        if not prompt:
            if self.messages is not None:
                self._count_locally(response.choices[0].message.content or "", response)
            elif self.texts is not None:
                self._count_texts_locally(response)
            return
        self._set_tokens(int(prompt), int(completion or 0), usage=usage, response=response)

    def _count_locally(self, text: str, response: Any = None) -> None:
        litellm = load_litellm()
        prompt = litellm.token_counter(model=self.model, messages=self.messages)
        completion = litellm.token_counter(model=self.model, text=text, count_response_tokens=True) if text else 0
        self._set_tokens(prompt, completion, response=response, estimated=True)

    def _count_texts_locally(self, response: Any) -> None:
        litellm = load_litellm()
        tokens = sum(int(litellm.token_counter(model=self.model, text=text)) for text in self.texts or ())
        self._set_tokens(tokens, 0, response=response, estimated=True)

    def _set_tokens(self, prompt: int | None, completion: int, *, usage: Any = None, response: Any = None, estimated: bool = False) -> None:
        """Fill the row's tokens and cost; ``usage`` is what the provider reported (None when counted locally)."""
        row = self.row
        row.prompt_tokens, row.completion_tokens = prompt, completion
        row.total_tokens = (prompt or 0) + completion
        row.cached_tokens = None if usage is None else cached_tokens(usage)
        row.cache_creation_tokens = None if usage is None else cache_creation_tokens(usage)
        row.tokens_estimated = estimated
        row.cost_usd = call_cost(self.settings, self.model, row.provider, prompt or 0, completion, self.kind, usage, response)


def _is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C, or (on ipyllm's loop) the task cancelled: asyncio is imported only where a coroutine ran."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    import sys

    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


def _unchained(error: LLMError) -> LLMError:
    """The error to raise outside the ``except`` block: neither ``__cause__`` nor ``__context__`` carries litellm's
    exception (which can repeat the key), and a fresh traceback starts above litellm's frames, so IPython shows
    the error's one line."""
    error.__cause__ = error.__context__ = None
    return error.with_traceback(None)
