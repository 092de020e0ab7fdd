"""A batch's data: rows in (DataFrame, Series, list; the template filled per row) and results out.

``Batch`` is what ``ipyllm.last_batch()`` returns: the result aligned to the input's index, per-row errors,
raw replies, counters and the summary line. Knows nothing of scheduling (``_batchrun``) or display.
"""

from __future__ import annotations

import math
import string
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ipyllm._attach import fill_parts
from ipyllm._budget import usd
from ipyllm._engine import Reply
from ipyllm._progress import Tally
from ipyllm._savings import saved_usd
from ipyllm._schema import Schema
from ipyllm._session import Session
from ipyllm.errors import InvalidOutputError, SettingError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Batch",
    "Fields",
    "MissingValue",
    "fill",
    "is_missing",
    "rows_of",
    "template_fields",
    "template_prefix",
]


@dataclass
class Batch:
    """One run of ``map``: its id, per-row outcome, the result, and the counters behind the summary line.

    ``result`` is the Series (or, with a schema, DataFrame) aligned to the input; ``errors`` says, per row,
    why it has no answer (NA where it has one); ``raw`` is every reply's text (also of replies that did not
    fit the schema); ``usage()`` is the batch's usage rows.
    """

    id: str
    index: Any
    tally: Tally
    shape: Schema | None = None
    #: The session that ran it (its rows are the batch's usage).
    session: Session | None = field(default=None, repr=False)
    replies: list[str | None] = field(default_factory=list)
    parsed: list[Any] = field(default_factory=list)
    row_errors: list[str | None] = field(default_factory=list)
    budget_message: str | None = None
    #: The note of the last reply a budget's output cap cut short (``tally.cut`` counts them).
    cut_message: str | None = None
    stop_reason: str | None = None
    result: Any = None
    summary: str = ""
    #: The provider batches whose rows are this map's (``map(via="batch")``): their rows carry those ids.
    provider_batches: tuple[str, ...] = ()

    # -- each row's outcome, as the run reaches it -----------------------------------------------------------------
    def answered(self, position: int, reply: Reply) -> bool:
        """A reply: its text kept and parsed against the schema; False when it does not fit (the row's error says so)."""
        self.replies[position] = reply.text
        if self.shape is not None:
            try:
                self.parsed[position] = self.shape.parse(reply.text)
            except InvalidOutputError as error:
                self.row_errors[position] = f"invalid_output: {error.detail}"
                self.tally.failed += 1
                return False
        if reply.usage.status == "cached":
            self.tally.cached += 1
        else:
            self.tally.answered += 1
        return True

    def failed(self, position: int, why: str) -> None:
        self.row_errors[position] = why
        self.tally.failed += 1

    def skipped(self, position: int, why: MissingValue) -> None:
        """A row with a missing value in a template field: not sent, not a failure."""
        self.row_errors[position] = why
        self.tally.missing += 1

    def not_sent(self, position: int) -> None:
        self.row_errors[position] = "not sent"
        self.tally.not_sent += 1

    def interrupted(self, position: int) -> None:
        self.row_errors[position] = "interrupted"
        self.tally.interrupted += 1

    # -- what the user reads ------------------------------------------------------------------------------------------
    @property
    def errors(self) -> pd.Series:
        import pandas as pd

        return pd.Series(pd.array(self.row_errors, dtype="string"), index=self.index, name="error")

    @property
    def raw(self) -> pd.Series:
        import pandas as pd

        return pd.Series(pd.array(self.replies, dtype="string"), index=self.index, name="raw")

    def usage(self) -> pd.DataFrame:
        assert self.session is not None
        frame = self.session.records.frame()
        return frame[frame["batch"].isin([self.id, *self.provider_batches])].reset_index(drop=True)

    @property
    def saved_usd(self) -> float:
        """What prompt caching and batch pricing saved against list price (``%llm_usage``'s ``saved_usd``, for this
        batch's rows); NaN when its model has no price."""
        assert self.session is not None
        return float(saved_usd(self.usage(), self.session.config.prices).sum(min_count=1))

    def build_result(self) -> Any:
        import pandas as pd

        if self.shape is None:
            self.result = pd.Series(
                pd.array([r if e is None else None for r, e in zip(self.replies, self.row_errors, strict=False)], dtype="string"),
                index=self.index,
                name="reply",
            )
        else:
            columns: dict[str, list[Any]] = {name: [] for name in self.shape.fields}
            for value in self.parsed:
                fields = self.shape.columns(value) if value is not None else {}
                for name in columns:
                    columns[name].append(fields.get(name))
            self.result = pd.DataFrame(columns, index=self.index).convert_dtypes()
        self.result.attrs["batch"] = self.id
        return self.result

    def failure_kinds(self) -> Counter[str]:
        kinds: Counter[str] = Counter()
        for error in self.row_errors:
            if error is not None and error not in ("interrupted", "not sent") and not isinstance(error, MissingValue):
                kinds[error.split(":", 1)[0]] += 1
        return kinds

    def missing_message(self) -> str | None:
        """``3 of 100 rows not sent: a missing value in {text} (missing="send" sends them as text)``; None when none."""
        fields = Counter(error.field for error in self.row_errors if isinstance(error, MissingValue))
        if not fields:
            return None
        where = " or ".join(f"{{{name}}}" for name, _ in fields.most_common())
        return (
            f"{sum(fields.values()):,} of {self.tally.total:,} rows not sent: a missing value in {where} "
            '(missing="send" sends them as text)'
        )

    def summarize(self) -> str:
        t = self.tally
        parts = [f"{t.answered + t.cached:,} answered" + (f" ({t.cached:,} from the cache)" if t.cached else "")]
        if t.failed:
            parts.append(f"{t.failed:,} failed")
        if t.missing:
            parts.append(f"{t.missing:,} skipped (missing values)")
        if t.not_sent:
            parts.append(f"{t.not_sent:,} not sent")
        if t.interrupted:
            parts.append(f"{t.interrupted:,} interrupted")
        pauses = f" · {t.pauses} rate-limit pause{'s' if t.pauses != 1 else ''}" if t.pauses else ""
        saved = self.saved_usd if t.discounted and self.session is not None else math.nan
        saving = f" (saved {usd(saved)} against list price)" if saved > 0 else ""
        self.summary = (
            f"ipyllm.map batch {self.id}: {t.total:,} rows, {', '.join(parts)} · {usd(t.spent) if t.spent else '$0'}{saving} · "
            f"{t.elapsed:.1f} s ({t.rate:.1f} rows/s){pauses}"
        )
        return self.summary

    def failure_message(self) -> str | None:
        kinds = self.failure_kinds()
        if not kinds:
            return None
        why = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
        return (
            f"{sum(kinds.values()):,} of {self.tally.total:,} rows failed ({why}): they are <NA>; ipyllm.last_batch().errors says why, "
            "and running the same map again sends only the rows without an answer"
        )

    def interrupted_message(self) -> str:
        t = self.tally
        return (
            f"batch {self.id} interrupted after {t.answered + t.cached:,} of {t.total:,} rows ({t.interrupted:,} calls cancelled, "
            f"{usd(t.spent)} spent): the partial result is ipyllm.last_batch().result; run the same map again to resume"
        )


# -- the rows ------------------------------------------------------------------------------------------------


class MissingValue(str):
    """Why a row was not sent: a field its template fills is missing (``None``, ``NaN``, ``NA``, ``NaT``).

    Not a failure: such rows are counted apart, and ``missing="send"`` sends them as text instead.
    """

    field: str

    def __new__(cls, field: str) -> MissingValue:
        reason = super().__new__(cls, f"missing value in {{{field}}}")
        reason.field = field
        return reason


def is_missing(value: Any) -> bool:
    """A missing scalar: ``None``, ``NaN``, ``pd.NA``, ``NaT`` (a list or an object is a value, whatever it holds)."""
    if value is None:
        return True
    if isinstance(value, str):
        return False
    if isinstance(value, float):
        return math.isnan(value)
    if type(value) in (int, bool, list, tuple, dict, bytes):
        return False  # a list of plain values needs no pandas (seconds to import in a fresh kernel)
    import pandas as pd

    return bool(pd.api.types.is_scalar(value) and pd.isna(value))


def template_fields(template: str) -> tuple[str, ...]:
    """The names a str template fills, in order: ``{text}``, ``{row.name}`` (``row``), ``{width}`` in a format spec.

    Empty when the template's braces do not parse: ``str.format`` then says so on the first row.
    """
    import _string  # the field-name parser str.format itself uses

    names: list[str] = []
    try:
        for _, field, spec, _ in string.Formatter().parse(template):
            if field is None:
                continue
            root = _string.formatter_field_name_split(field)[0]
            if isinstance(root, str) and root and root not in names:
                names.append(root)
            if spec and "{" in spec:
                names += [name for name in template_fields(spec) if name not in names]
    except ValueError:
        return ()
    return tuple(names)


def template_prefix(template: str) -> str:
    """The template's constant text before its first ``{field}`` (``{{ }}`` as the braces they stand for): what every
    row's prompt begins with. All of it when it names no field; empty when its braces do not parse."""
    text: list[str] = []
    try:
        for literal, field, _, _ in string.Formatter().parse(template):
            text.append(literal)
            if field is not None:
                break
    except ValueError:
        return ""
    return "".join(text)


class Fields(dict):  # type: ignore[type-arg]
    def __missing__(self, name: str) -> Any:
        fields = ", ".join(sorted(k for k in self if k != "index")) or "none"
        raise SettingError(
            f"the template names {{{name}}}, which the data does not have (its fields: {fields}); write {{{{ }}}} for literal braces",
            "template",
        )


def rows_of(data: Any) -> tuple[Any, int, Iterator[tuple[Any, Any]]]:
    """The input's index, its length, and (fields for a str template, what a callable template gets) per row."""
    # Not imported for a list (seconds in a fresh kernel, while litellm imports): data that is not pandas' needs none.
    pd = sys.modules.get("pandas")

    if pd is not None and isinstance(data, pd.DataFrame):
        names = [str(c) for c in data.columns]

        def frame_rows() -> Iterator[tuple[Any, Any]]:
            for label, values in zip(data.index, data.itertuples(index=False, name=None), strict=False):
                row = dict(zip(names, values, strict=False))
                yield Fields({"index": label, **row}), row

        return data.index, len(data), frame_rows()
    if pd is not None and isinstance(data, pd.Series):
        name = data.name if isinstance(data.name, str) else None

        def series_rows() -> Iterator[tuple[Any, Any]]:
            for label, value in data.items():
                fields = Fields({"index": label, "value": value})
                if name:
                    fields[name] = value
                yield fields, value

        return data.index, len(data), series_rows()
    accepted = "a DataFrame, a Series, or a list (or other iterable) of strings or dicts"
    if data is None or isinstance(data, (str, bytes, dict)):
        raise SettingError(f"data must be {accepted}, not {'None' if data is None else type(data).__name__}", "data")
    if isinstance(data, Sequence):
        items: Sequence[Any] = data
    else:
        try:
            iterator = iter(data)
        except TypeError:
            iterator = None
        if iterator is None:  # refused outside the except block: nothing chained
            raise SettingError(f"data must be {accepted}, not {type(data).__name__}", "data")
        items = list(iterator)

    def item_rows() -> Iterator[tuple[Any, Any]]:
        for position, item in enumerate(items):
            fields = Fields({"index": position, **item}) if isinstance(item, dict) else Fields({"index": position, "value": item})
            yield fields, item

    return range(len(items)), len(items), item_rows()


def fill(template: str | Callable[[Any], Any], fields: Fields, row: Any, table_budget: int = 2000) -> Any:
    """A row's prompt: what a callable template returns, or the str template filled from the row's fields (a field
    holding an image, a PDF or a path to an image file makes the prompt content parts: ``_attach``)."""
    if callable(template):
        return template(row)
    return fill_parts(template, fields, table_budget)
