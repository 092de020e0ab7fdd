"""The Python API: ``ipyllm.Session``, and the module functions (``ipyllm.complete``, ``map``, ``usage``, ...) as thin
wrappers over a default session whose configuration is ``ipyllm.config``.

The default session is looked up at every call (``_api.session``), so a test or a host application can put
another in its place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ipyllm import _batch, _loop
from ipyllm._batchdata import Batch
from ipyllm._batchledger import batches_frame
from ipyllm._batchlink import BatchLink
from ipyllm._calls import estimate_chat
from ipyllm._config import config
from ipyllm._cost import Estimate
from ipyllm._engine import Embeddings, Reply
from ipyllm._litellm import resolve_provider
from ipyllm._provider_batch import ProviderBatch
from ipyllm._retry import RetryNote
from ipyllm._routes import BatchEstimate
from ipyllm._session import Session as _Session
from ipyllm._views import Window, moment
from ipyllm.errors import SettingError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "SESSION_ID",
    "Session",
    "acomplete",
    "amap",
    "batch",
    "batches",
    "complete",
    "embed",
    "estimate",
    "last_batch",
    "map",
    "session",
    "usage",
]


class Session(_Session):
    """A session of its own: its configuration (``.config``), client, ledger and budgets, with the API's functions
    as methods (``complete``, ``acomplete``, ``embed``, ``estimate``, ``map``, ``amap``, ``usage``).

    ``ipyllm.Session(model="gpt-4o", usage_db="team.sqlite", budget_usd=1)`` starts from the ``LLM_*``
    environment variables, not from ``ipyllm.config``; two sessions in one process keep their settings, rows
    and ledgers apart, and each is safe to share between threads. The module functions use a default session
    whose configuration is ``ipyllm.config``.
    """

    def complete(
        self,
        prompt_or_messages: str | Sequence[dict[str, Any]],
        *,
        stream: bool = False,
        on_text: Callable[[str], Any] | None = None,
        on_retry: Callable[[RetryNote], Any] | None = None,
        schema: Any = None,
        images: Any = None,
        files: Any = None,
        **overrides: Any,
    ) -> Reply:
        """Send one chat request, retried, and return the reply.

        Parameters
        ----------
        prompt_or_messages
            A prompt (sent as one user message) or a list of OpenAI-style messages.
        stream
            Receive the reply in pieces; ``on_text`` is called with each.
        on_retry
            Called with a ``RetryNote`` before each retry wait.
        schema
            A pydantic model class or a JSON-schema dict: the reply must be JSON that fits it (sent as
            ``response_format`` where litellm says the model supports it, else as an instruction); the
            validated object is ``reply.parsed``.
        images, files
            Images (figures, ``Axes``, PIL images, ``IPython.display.Image``, H×W×3/4 uint8 arrays, PNG/JPEG/GIF/WebP
            bytes, paths, URLs) and files (PDFs, where the model takes them; text files) sent with the prompt, after
            its text. Messages may also carry OpenAI-style content parts as they are.
        **overrides
            Settings for this call only (``model``, ``temperature``, ``max_tokens``, ``system``, ``cache``, ...);
            other keywords (``top_p``, ``response_format``, ...) go to ``litellm.completion`` once checked against
            what litellm accepts for the model; provider-specific extras go in ``extra_body={...}``.

        Returns
        -------
        Reply
            A ``str`` of the reply text, with ``.usage`` (its usage row), ``.messages`` and ``.response``.

        Raises
        ------
        ipyllm.LLMError
            When the call fails after its retries, or a budget refuses it (a subclass says why; ``.usage`` is
            the row); ``InvalidOutputError`` when the reply does not fit ``schema`` (``.raw`` is its text).
        ipyllm.InvalidInputError
            Before sending (no row): a prompt or message of the wrong shape, text that is not valid UTF-8, an
            unknown keyword (named with its close match).
        """
        return self.chat(
            prompt_or_messages,
            source="api",
            stream=stream,
            on_text=on_text,
            on_retry=on_retry,
            schema=schema,
            images=images,
            files=files,
            **overrides,
        )

    async def acomplete(
        self,
        prompt_or_messages: str | Sequence[dict[str, Any]],
        *,
        on_retry: Callable[[RetryNote], Any] | None = None,
        schema: Any = None,
        images: Any = None,
        files: Any = None,
        **overrides: Any,
    ) -> Reply:
        """``complete`` as a coroutine: ``await ipyllm.acomplete(...)`` does not block the event loop.

        The same call otherwise (reserved against the budgets, retried with the session's policy through
        ``tenacity.AsyncRetrying``, one usage row, the cache); not streamed.
        """
        # Prepared here (the running cell, the settings of the moment), sent from ipyllm's own loop.
        prepared = self.prepare_chat(
            prompt_or_messages, overrides, source="api", schema=schema, caller="acomplete", images=images, files=files
        )
        return await _loop.run(self.achat(prepared, on_retry))  # type: ignore[no-any-return]

    def embed(self, texts: str | Sequence[str], *, on_retry: Callable[[RetryNote], Any] | None = None, **overrides: Any) -> Embeddings:
        """Embed texts with ``embedding_model`` (Azure: ``embedding_deployment`` and ``api_version``).

        ``model=`` is accepted for ``embedding_model=``. Returns one vector per text, with ``.usage``.
        """
        return self.embedding(texts, on_retry, overrides)

    def estimate(
        self, prompt_or_messages: str | Sequence[dict[str, Any]], *, images: Any = None, files: Any = None, **overrides: Any
    ) -> Estimate:
        """What a chat call would cost, without sending it: what ``%%llm --dry-run`` shows.

        Takes what ``complete`` takes (settings for this call as overrides: ``model``, ``max_tokens``,
        ``system``, ...), ``images=`` and ``files=`` included. The prompt's tokens are counted with litellm's
        ``token_counter`` (images by OpenAI's tile formula, with litellm's per-model figures) and priced with
        litellm's price map (or ``prices``).

        Returns
        -------
        Estimate
            ``model``, ``provider``, ``prompt_tokens``, ``input_cost``, ``output_cost_per_token``, ``max_tokens``;
            ``model_max_output``, ``output_tokens`` (``max_tokens``, else the model's maximum output, else 32,768),
            ``max_output_cost`` and ``total`` (the most the call may cost). Costs are NaN where the model has no
            known price.

        Raises
        ------
        ipyllm.InvalidInputError
            As ``complete`` does: a prompt of the wrong shape, an unknown keyword (an estimate that left it out
            would not be the call's).
        """
        return estimate_chat(self.config, prompt_or_messages, overrides, images, files)

    def usage(
        self,
        all_sessions: bool = False,
        *,
        since: Any = None,
        until: Any = None,
        columns: Sequence[str] | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> pd.DataFrame:
        """The usage frame: one row per call, in call order.

        This session's calls; with ``all_sessions``, every call in the ledger (``usage_db``) too. The rows are chosen
        in the database, so a large ledger is never read whole.

        Parameters
        ----------
        all_sessions
            Every session's calls in the ledger, not only this session's.
        since, until
            Calls at or after ``since`` and before ``until``: a datetime (naive: local time), a date, or an ISO 8601
            string.
        columns
            Only these columns (and ``timestamp``), e.g. ``["model", "cost_usd"]``.
        where
            Equality or membership filters on columns, e.g. ``{"model": "gpt-4o", "status": ["ok", "cached"]}``
            (None matches a missing value).

        Raises
        ------
        ipyllm.InvalidInputError
            An unknown column, or a time that is not one.
        """
        window = Window(since=moment(since, "since"), until=moment(until, "until"), where=dict(where or {}))
        return self.records.frame(all_sessions, window, columns)

    def map(self, template: str | Callable[[Any], Any], data: Any, **options: Any) -> Any:
        """One prompt per row of ``data``, sent concurrently; see ``ipyllm.map``."""
        return _batch.map(self, template, data, **options)

    async def amap(self, template: str | Callable[[Any], Any], data: Any, **options: Any) -> Any:
        """``map`` as a coroutine; see ``ipyllm.amap``."""
        return await _batch.amap(self, template, data, **options)

    def batches(self) -> pd.DataFrame:
        """The provider batches recorded in the ledger (``map(via="batch")``, every kernel's), oldest first: id, status,
        provider, model, rows, the provider's counts, when submitted, ended and collected, by whom, and the files."""
        return batches_frame(self.records.batches())

    def batch(self, batch_id: str) -> ProviderBatch:
        """The provider batch ``batch_id`` recorded in the ledger, to ``.wait()`` for, take its ``.result()`` (a Series
        indexed by the rows' cache keys: run the map again for one aligned to its data) or ``.cancel()``."""
        found = self.records.batches(batch_id=batch_id)
        if not found:
            raise SettingError(f"no provider batch {batch_id!r} is recorded in the ledger: ipyllm.batches() lists those that are", "batch")
        record = found[0]
        overrides = {"model": record.model, **({"base_url": record.base_url} if record.base_url else {})}
        settings = self.config.snapshot(**overrides)
        provider = record.provider or resolve_provider(settings.model, settings.base_url) or "openai"
        return ProviderBatch(self, BatchLink(settings, provider, sleep=self.client.sleep), found).refresh()


#: The default session: the one the module functions, the magics and the picker use.
session = Session(config=config)
#: The default session's id, in every row it writes.
SESSION_ID = session.id


def complete(
    prompt_or_messages: str | Sequence[dict[str, Any]],
    *,
    stream: bool = False,
    on_text: Callable[[str], Any] | None = None,
    on_retry: Callable[[RetryNote], Any] | None = None,
    schema: Any = None,
    images: Any = None,
    files: Any = None,
    **overrides: Any,
) -> Reply:
    return session.complete(
        prompt_or_messages, stream=stream, on_text=on_text, on_retry=on_retry, schema=schema, images=images, files=files, **overrides
    )


async def acomplete(
    prompt_or_messages: str | Sequence[dict[str, Any]],
    *,
    on_retry: Callable[[RetryNote], Any] | None = None,
    schema: Any = None,
    images: Any = None,
    files: Any = None,
    **overrides: Any,
) -> Reply:
    return await session.acomplete(prompt_or_messages, on_retry=on_retry, schema=schema, images=images, files=files, **overrides)


def embed(texts: str | Sequence[str], *, on_retry: Callable[[RetryNote], Any] | None = None, **overrides: Any) -> Embeddings:
    return session.embed(texts, on_retry=on_retry, **overrides)


def estimate(prompt_or_messages: str | Sequence[dict[str, Any]], *, images: Any = None, files: Any = None, **overrides: Any) -> Estimate:
    return session.estimate(prompt_or_messages, images=images, files=files, **overrides)


def usage(
    all_sessions: bool = False,
    *,
    since: Any = None,
    until: Any = None,
    columns: Sequence[str] | None = None,
    where: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    return session.usage(all_sessions, since=since, until=until, columns=columns, where=where)


def map(  # noqa: A001 - ipyllm.map, as SPEC names it
    template: str | Callable[[Any], Any],
    data: Any,
    *,
    concurrency: int = 8,
    schema: Any = None,
    errors: str = "keep",
    resume: bool = True,
    progress: bool = True,
    dry_run: bool = False,
    processes: int | None = None,
    missing: str = "skip",
    via: str = "live",
    wait: bool = True,
    **overrides: Any,
) -> Any | BatchEstimate:
    return _batch.map(
        session,
        template,
        data,
        concurrency=concurrency,
        schema=schema,
        errors=errors,
        resume=resume,
        progress=progress,
        dry_run=dry_run,
        processes=processes,
        missing=missing,
        via=via,
        wait=wait,
        **overrides,
    )


async def amap(
    template: str | Callable[[Any], Any],
    data: Any,
    *,
    concurrency: int = 8,
    schema: Any = None,
    errors: str = "keep",
    resume: bool = True,
    progress: bool = True,
    processes: int | None = None,
    missing: str = "skip",
    via: str = "live",
    wait: bool = True,
    **overrides: Any,
) -> Any:
    return await _batch.amap(
        session,
        template,
        data,
        concurrency=concurrency,
        schema=schema,
        errors=errors,
        resume=resume,
        progress=progress,
        processes=processes,
        missing=missing,
        via=via,
        wait=wait,
        **overrides,
    )


def batches() -> pd.DataFrame:
    return session.batches()


def batch(batch_id: str) -> ProviderBatch:
    return session.batch(batch_id)


def last_batch() -> Batch | None:
    """The latest batch of the default session (finished, failed or interrupted): ``.result``, ``.errors``, ``.usage()``."""
    return session.last_batch


# The module functions say what the session's methods say.
complete.__doc__ = Session.complete.__doc__
acomplete.__doc__ = Session.acomplete.__doc__
embed.__doc__ = Session.embed.__doc__
estimate.__doc__ = Session.estimate.__doc__
usage.__doc__ = Session.usage.__doc__
map.__doc__ = _batch.map.__doc__
batches.__doc__ = Session.batches.__doc__
batch.__doc__ = Session.batch.__doc__
amap.__doc__ = _batch.amap.__doc__
