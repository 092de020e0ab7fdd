"""``%%llm --map DATA``: the cell body run as a template over DATA's rows (``--via batch``: through the provider's Batch
API), and a preview of the first results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from ipyllm import _api
from ipyllm.errors import InvalidInputError, SettingError

if TYPE_CHECKING:
    import argparse

    import pandas as pd

__all__ = ["map_preview", "run_map"]


def run_map(shell: Any, args: argparse.Namespace, template: str, overrides: dict[str, Any], is_cell: bool) -> None:
    """``%%llm --map DATA``: the body as a template over DATA's rows; a preview of the first rows, the result in ``-o``."""
    from IPython.display import display

    if args.map is None:
        option = "--schema NAME" if args.schema is not None else "--via batch"
        raise UsageError(f"{option.split()[0]} goes with --map: %%llm --map DATA {option}")
    if not is_cell:
        raise UsageError("--map takes its template from the cell body: use %%llm --map DATA, with the prompt below")
    if args.chat:
        raise UsageError("--map sends each row on its own: it cannot continue a --chat conversation")
    namespace = shell.user_ns
    for option, name in (("--map", args.map), ("--schema", args.schema)):
        if name is not None and name not in namespace:
            raise UsageError(f"{option} {name}: no variable {name!r} in the namespace; define it first")
    data, schema = namespace[args.map], namespace.get(args.schema) if args.schema else None
    try:
        if args.dry_run:
            print(_api.map(template, data, schema=schema, dry_run=True, missing=args.missing, **overrides))
            return
        result = _api.map(
            template,
            data,
            concurrency=args.concurrency,
            processes=args.processes,
            schema=schema,
            resume=not args.no_cache,
            missing=args.missing,
            via=args.via,
            **overrides,
        )
    except (SettingError, InvalidInputError) as error:
        raise UsageError(str(error)) from None
    if args.output:
        namespace[args.output] = result
    display(map_preview(data, result))


def map_preview(data: Any, result: Any, rows: int = 5) -> pd.DataFrame:
    """The first rows of the input beside their replies (or fields)."""
    import pandas as pd

    answers = result.head(rows).to_frame() if isinstance(result, pd.Series) else result.head(rows)
    if isinstance(data, pd.DataFrame):
        inputs = data.head(rows)
    elif isinstance(data, pd.Series):
        inputs = data.head(rows).to_frame(name=data.name if data.name is not None else "value")
    else:
        inputs = pd.DataFrame({"value": list(data)[:rows]})
    clash = set(inputs.columns) & set(answers.columns)
    return inputs.join(answers.rename(columns={c: f"{c}_reply" for c in clash}))
