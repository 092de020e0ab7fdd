"""A batch's rows, prepared in the calling thread: each row's messages, then its call prepared as any call is.

The template is checked against the first row before anything is sent (a field the data does not have, a format
spec that does not fit, a callable that raises); a later row whose template fails, or whose template fields hold
a missing value, is not sent, and says why. Each row then becomes a ``Prepared`` call (its cache key, its row
filed by the batch), with its cached answer looked up 64 rows at a time, in one query.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

from ipyllm._attach import prepare_media
from ipyllm._batchcost import batch_price
from ipyllm._batchdata import Fields, MissingValue, fill, is_missing, rows_of, template_fields, template_prefix
from ipyllm._calls import Prepared, cached_entries
from ipyllm._cost import count_tokens, estimate
from ipyllm._engine import as_messages
from ipyllm._litellm import load_litellm, resolve_provider
from ipyllm._promptcache import CachePlan, estimate_cache_hits, plan_prompt_cache, shared_messages
from ipyllm._records import Records
from ipyllm._routes import BATCH_WINDOW, BatchEstimate, Route, live_wall_time
from ipyllm._schema import Schema
from ipyllm._session import Session
from ipyllm._validate import check_keywords
from ipyllm.errors import InvalidInputError, SettingError

__all__ = ["Rows"]

#: Per row: its position, its messages (None when the row is not sent) and why not.
Filled = tuple[int, list[dict[str, Any]] | None, str | None]


class Rows:
    """The rows of one batch: its settings and extra arguments, the schema's shape, and each row's messages.

    Raises ``SettingError`` before anything is sent: a template that is not one, data that is not rows, an
    unknown keyword, a template that does not fit the first row.
    """

    def __init__(
        self,
        session: Session,
        template: str | Callable[[Any], Any],
        data: Any,
        schema: Any,
        overrides: dict[str, Any],
        missing: str = "skip",
        caller: str = "map",
        helpers: bool = False,
    ) -> None:
        if not (isinstance(template, str) or callable(template)):
            raise SettingError("template must be a str with {field}s or a callable row -> prompt or messages", "template")
        if isinstance(template, str) and not template.strip():
            raise SettingError("the template is empty: write the prompt, with {field}s from the data, e.g. 'Summarize: {text}'", "template")
        if missing not in ("skip", "send"):
            raise SettingError(
                f"missing must be 'skip' (rows with a missing value in a template field are not sent) or 'send' (sent as text), "
                f"not {missing!r}",
                "missing",
            )
        self.session = session
        self.index, self.total, self.rows = rows_of(data)
        # A str template's fields are checked for missing values (None, NaN, NA, NaT) row by row; a callable
        # template gets the row as it is and handles its own.
        self.missing_fields = template_fields(template) if isinstance(template, str) and missing == "skip" else ()
        if not helpers:
            # litellm imported here, before the first row: its seconds do not land in a row's latency. With helper
            # processes the rows need it only for what they send (a prompt cache, keywords, a schema, images); the
            # calls go out through the first helper ready, or through this process once its litellm is.
            load_litellm()
        self.settings, extra = session.split_overrides(overrides)
        if extra:  # as complete() checks them: a typo such as max_token would be sent with every row, and billed
            check_keywords("chat", self.settings.model, resolve_provider(self.settings.model, self.settings.base_url), extra, caller)
        self.shape = Schema.of(schema) if schema is not None else None
        self.native = self.shape.native(self.settings) if self.shape is not None else False
        if self.shape is not None:
            _, extra = self.shape.apply([], extra, self.native)
        self.extra = extra
        self.template = template
        # The first row is filled here, so that a template that does not fit the data fails before sending.
        self._first = True
        filled = self._fill()
        head = next(filled, None)
        self._first = False
        self.filled: Iterator[Filled] = itertools.chain([head] if head else [], filled)
        self.cache = self._cache_plan()

    def messages(self, fields: Fields, row: Any) -> list[dict[str, Any]]:
        """The row's messages, the shared part first: the system prompt and a schema's instruction, then the prompt,
        which begins with the template's constant text."""
        filled = fill(self.template, fields, row, self.settings.table_token_budget)
        if isinstance(self.template, str) and isinstance(filled, list):
            filled = [{"role": "user", "content": filled}]  # the prompt's parts: one user message, not a list of messages
        return prepare_media(self.settings, self._shaped(as_messages(filled, self.settings.system)))

    def _shaped(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.shape is not None and not self.native:
            messages, _ = self.shape.apply(messages, {}, native=False)
        return messages

    def _cache_plan(self) -> CachePlan | None:
        """The map's prompt caching, decided once: its shared prefix is the system prompt, a schema's instruction and
        the template's text before its first ``{field}`` (a callable template's rows are not known to share anything)."""
        if not isinstance(self.template, str) or self.total < 2:
            return None
        text = template_prefix(self.template)
        text = text if text.strip() else ""
        return plan_prompt_cache(
            self.settings, self._shaped(as_messages(text, self.settings.system)), text, self.total, self.settings.prices
        )

    def _fill(self) -> Iterator[Filled]:
        """Per row: its position, its messages (None when its template failed, or a field it fills is missing) and why."""
        for position, (fields, row) in enumerate(self.rows):
            try:
                absent = next((name for name in self.missing_fields if is_missing(fields[name])), None)
                if absent is not None:
                    yield position, None, MissingValue(absent)
                    continue
                yield position, self.messages(fields, row), None
            except SettingError as error:
                if self._first:
                    raise
                yield position, None, f"template: {error}"
            except InvalidInputError as error:  # an image the model cannot take, or cannot be read
                if self._first:
                    raise
                yield position, None, str(error)
            except Exception as error:  # a user's callable or a format spec that does not fit this row
                if self._first:
                    raise SettingError(f"the template fails on the first row ({type(error).__name__}: {error})", "template") from None
                yield position, None, f"template: {type(error).__name__}: {error}"

    def calls(
        self, record: Callable[..., None], records: Records, resume: bool, keyed: bool = False
    ) -> Iterator[tuple[int, Prepared | None, Any, dict[str, Any] | None]]:
        """The rows, each prepared as any call is (its cache key, its row filed by ``record``), and, when resuming,
        their cached answers: looked up 64 rows at a time, in one query, rather than one query per row on the loop.
        ``keyed``: every row keyed, whether or not it resumes (a provider batch's lines are named by their keys)."""
        settings, keyed = self.settings, keyed or resume or self.settings.cache
        while chunk := list(itertools.islice(self.filled, 64)):
            calls = [
                None if messages is None else Prepared.of("chat", settings, messages, self.extra, record, keyed=keyed)
                for _, messages, _ in chunk
            ]
            hits = cached_entries(calls, records) if resume else {}
            for (position, _, problem), call in zip(chunk, calls, strict=True):
                hit = hits.get(call.key) if call is not None and call.key is not None else None
                yield position, call, problem, hit

    def estimate(self, concurrency: int = 8) -> BatchEstimate:
        """What the rows may cost (``map(dry_run=True)``), nothing sent: every row's prompt counted and priced three
        ways (live at list price, live with the expected prompt-cache hits, batch), each from the prompts alone to
        every row's output at its cap, with its wall time and, under a budget, whether it fits (``_routes``)."""
        settings = self.settings
        provider = resolve_provider(settings.model, settings.base_url)
        tokens: list[int] = []
        low = high = 0.0
        output_tokens = 0
        first: list[dict[str, Any]] | None = None
        for _, messages, _problem in self.filled:
            if messages is None:
                continue
            first = first if first is not None else messages
            guess = estimate(settings, messages)
            tokens.append(guess.prompt_tokens)
            low += guess.input_cost
            high += guess.upper_bound()
            output_tokens = max(output_tokens, guess.output_tokens)
        sent, prompt = len(tokens), sum(tokens)
        output_usd = high - low
        prefix = self._prefix_tokens(first)
        cached = estimate_cache_hits(settings.model, provider, prefix, [max(t - prefix, 0) for t in tokens], sent, prices=settings.prices)
        in_batch = batch_price(settings, settings.model, provider, prompt, 0).usd
        batch_high = batch_price(settings, settings.model, provider, prompt, output_tokens * sent)
        latencies = [
            row.latency_s for row in self.session.ledger.rows(self.session.id) if row.model == settings.model and row.status == "ok"
        ]
        live_wall = live_wall_time(sent, concurrency, latencies)
        routes = (
            Route("live", "live, list price", low, high, f"{prompt:,} prompt tokens at the input price", live_wall),
            Route(
                "cached",
                "live, with cache hits",
                cached.cached_usd,
                cached.cached_usd + output_usd,
                f"{cached.read_tokens:,} of them read from the cache, {cached.write_tokens:,} written ({'; '.join(cached.assumptions)})",
                live_wall_time(sent, concurrency, latencies, first_alone=self.cache is not None),
            ),
            Route(
                "batch",
                "batch",
                in_batch,
                batch_high.usd,
                f"{prompt:,} prompt tokens, {batch_high.note}",
                f"within {BATCH_WINDOW} h, the provider's window (often minutes); no live rate limit",
            ),
        )
        room = self.session.budgets.room(settings)
        return BatchEstimate(settings.model, self.total, prompt, low, high, output_tokens, routes, room)

    def _prefix_tokens(self, messages: list[dict[str, Any]] | None) -> int:
        """The tokens every row sends first (system prompt, schema instruction, the template's constant text)."""
        if messages is None or not isinstance(self.template, str):
            return 0
        if self.cache is not None:
            return self.cache.prefix_tokens
        shared = shared_messages(messages, template_prefix(self.template))
        return count_tokens(self.settings.model, shared) if shared else 0
