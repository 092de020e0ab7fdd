"""The ``%llm`` / ``%%llm``, ``%llm_config``, ``%llm_usage``, ``%llm_chat`` and ``%llm_models`` magics.

The only module that raises ``UsageError`` (IPython's own class: IPython prints a subclass with a full
traceback). Pure logic comes first; the thin ``Magics`` class follows the ``# IPython connectivity`` line.
"""

from __future__ import annotations

import ast
import io
import itertools
import json
import keyword
import math
import re
import shlex
import string
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from ipyllm import _api
from ipyllm._chat import cell_key, chat_reset, conversation
from ipyllm._config import SETTING_NAMES, config, unknown_setting
from ipyllm._cost import estimate
from ipyllm._display import FORMATS, LiveOutput, footer, note_bundle, render
from ipyllm._engine import Reply, as_messages
from ipyllm._litellm import warm_up
from ipyllm._locations import LOCATIONS, default_usage_db
from ipyllm._models import models
from ipyllm._notices import said
from ipyllm.errors import Interrupted, InvalidInputError, LLMError, SettingError, StreamBrokenError

if TYPE_CHECKING:
    import argparse

    import pandas as pd

__all__ = ["LLMMagics", "load", "unload"]


# -- prompts -------------------------------------------------------------------------------------------


class _Namespace(Mapping[str, Any]):
    """The user namespace as ``str.format`` sees it; a missing name is reported, not left as is."""

    def __init__(self, namespace: Mapping[str, Any]) -> None:
        self._namespace = namespace

    def __getitem__(self, name: str) -> Any:
        if name not in self._namespace:
            raise UsageError(f"unknown name {{{name}}} in the prompt: define {name} first, or write {{{{ and }}}} for literal braces")
        return self._namespace[name]

    def __iter__(self) -> Any:
        return iter(self._namespace)

    def __len__(self) -> int:
        return len(self._namespace)


class _PromptFormatter(string.Formatter):
    """``str.format`` over the user namespace; a field that cannot be filled is named in one line."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> tuple[Any, Any]:
        import _string  # the field-name parser str.format itself uses

        first, rest = _string.formatter_field_name_split(field_name)
        if isinstance(first, int) or not first:
            raise UsageError(
                f"{{{field_name}}}: positional fields are not supported, name a variable (write {{{{ and }}}} for literal braces)"
            )
        value, path = kwargs[first], first
        for is_attribute, key in rest:
            try:
                value = getattr(value, key) if is_attribute else value[key]
            except IndexError:
                size = f" (length {len(value)})" if hasattr(value, "__len__") else ""
                raise UsageError(f"{{{field_name}}}: index {key} is out of range for {path}{size}") from None
            except KeyError:
                raise UsageError(f"{{{field_name}}}: {path} has no key {key!r}") from None
            except AttributeError:
                raise UsageError(f"{{{field_name}}}: {path} has no attribute {key!r}") from None
            except TypeError as error:
                raise UsageError(f"{{{field_name}}}: cannot look up [{key}] in {path} ({error})") from None
            path += f".{key}" if is_attribute else f"[{key}]"
        return value, first


def interpolate(template: str, namespace: Mapping[str, Any]) -> str:
    """Replace ``{name}`` (and ``{In[3]}``, ``{obj.attr}``, ``{x:.2f}``) from the namespace; ``{{ }}`` are braces."""
    formatter = _PromptFormatter()
    try:
        if any(field == "" for _, field, _, _ in formatter.parse(template)):
            raise UsageError("{}: positional fields are not supported, name a variable (write {{ and }} for literal braces)")
        return formatter.vformat(template, (), _Namespace(namespace))
    except UsageError:
        raise
    except (IndexError, KeyError) as error:
        raise UsageError(f"cannot fill {error} in the prompt: write {{{{ and }}}} for literal braces") from None
    except (ValueError, AttributeError, TypeError) as error:
        raise UsageError(f"cannot fill the prompt's {{...}} fields ({error}): write {{{{ and }}}} for literal braces") from None


def parse_options(parser: argparse.ArgumentParser, options: str) -> argparse.Namespace:
    """Parse options with shell quoting (``-s "Be brief."``); argparse errors become ``UsageError``."""
    try:
        words = shlex.split(options)
    except ValueError as error:
        raise UsageError(f"cannot read the options ({error}): close the quote") from None
    return parser.parse_args(words)


def split_prompt(parser: argparse.ArgumentParser, line: str) -> tuple[str, str]:
    """Split ``-m gpt-4o -t 0.2 What's up?`` into its options and the prompt, kept exactly as typed.

    Options come first; the prompt starts at the first word that is not an option or an option's
    value (``--`` ends the options explicitly, for a prompt that starts with a dash).
    """
    takes_value = {name: action.nargs != 0 for name, action in parser._option_string_actions.items()}
    stream = io.StringIO(line)
    lexer = shlex.shlex(stream, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    end_of_options = 0
    expecting_value = False
    while True:
        try:
            token = lexer.get_token()
        except ValueError:  # an unbalanced quote belongs to the prompt
            break
        if token is None or token == lexer.eof:
            end_of_options = len(line)
            break
        position = stream.tell()
        if expecting_value:
            expecting_value = False
        elif token == "--":
            return line[:end_of_options], line[position:].strip()
        elif token.startswith("-") and len(token) > 1:
            # An unknown option stays with the options, so that argparse names it.
            expecting_value = takes_value.get(token.split("=", 1)[0], False) and "=" not in token
        else:
            break
        end_of_options = position
    return line[:end_of_options].strip(), line[end_of_options:].strip()


# -- settings from the magic line ---------------------------------------------------------------------

_NONE_WORDS = {"none", "null", "unset", ""}


_ASSIGNMENT = re.compile(r"\s*(?P<name>[^\s=]+)=")
_CLOSING = {"{": "}", "[": "]"}


def split_assignments(line: str) -> list[tuple[str, str]]:
    """``model=gpt-4o system="Be brief." prices={"m": "gpt-4o"}`` -> name/value pairs, quotes removed.

    A value is a quoted string, a bracketed literal (kept whole, spaces and quotes included), or a word.
    """
    pairs = []
    position = 0
    while position < len(line.rstrip()):
        match = _ASSIGNMENT.match(line, position)
        if match is None:
            word = line[position:].split()[0]
            raise UsageError(f"expected setting=value, got {word!r}: e.g. %llm_config model=gpt-4o temperature=0.2")
        start = match.end()
        opener = line[start : start + 1]
        if opener in ("'", '"'):
            end = line.find(opener, start + 1)
            if end < 0:
                raise UsageError(f"the value of {match['name']} has no closing {opener}")
            value, position = line[start + 1 : end], end + 1
        elif opener in _CLOSING:
            depth, end = 0, start
            while end < len(line):
                depth += {opener: 1, _CLOSING[opener]: -1}.get(line[end], 0)
                end += 1
                if depth == 0:
                    break
            value, position = line[start:end], end
        else:
            end = start
            while end < len(line) and not line[end].isspace():
                end += 1
            value, position = line[start:end], end
        pairs.append((match["name"], value))
    return pairs


def parse_assignments(line: str) -> dict[str, Any]:
    """``model=gpt-4o temperature=0.2 max_tokens=none`` -> values for ``config.update``."""
    values: dict[str, Any] = {}
    for name, value in split_assignments(line):
        if name not in SETTING_NAMES:
            raise UsageError(str(unknown_setting(name)))
        trait = config.traits()[name]
        if name == "prices":
            try:
                values[name] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise UsageError('prices must be a Python dict, e.g. prices={"my-model": "gpt-4o-mini"}') from None
        elif trait.allow_none and value.strip().lower() in _NONE_WORDS:
            values[name] = None
        else:
            values[name] = value
    return values


def settings_text() -> str:
    """The settings, one per line, the key masked."""
    width = max(map(len, SETTING_NAMES))
    lines = []
    for name, value in config.settings().items():
        if isinstance(value, LOCATIONS):
            value = str(value)  # the file's path, :memory:, a server's URL with its password masked
        elif name == "usage_db" and value is None:
            value = f"unset: {default_usage_db()}"  # where the rows go meanwhile
        shown = "unset" if value is None else repr(value) if not isinstance(value, str) or name == "api_key" else value
        lines.append(f"{name:<{width}}  {shown}")
    return "\n".join(lines)


# -- usage ---------------------------------------------------------------------------------------------


GROUPINGS = ("model", "day", "cell", "batch", "user", "host")


def usage_table(frame: pd.DataFrame, by: str = "model") -> pd.DataFrame:
    """Spend grouped by model, day (local) or cell: calls, tokens, cost, errors, retries, mean latency, total."""
    import pandas as pd

    counts = ["calls", "input_tokens", "output_tokens", "errors", "retries"]
    columns = ["calls", "input_tokens", "output_tokens", "cost_usd", "errors", "retries", "mean_latency_s"]
    if frame.empty:
        empty = pd.DataFrame({c: [0] for c in columns}, index=pd.Index(["total"], name=by)).astype(dict.fromkeys(counts, "Int64"))
        return empty.assign(cost_usd=0.0, mean_latency_s=math.nan)
    if by == "day":
        key = frame["timestamp"].dt.tz_convert(datetime.now().astimezone().tzinfo).dt.date.rename("day")
    elif by == "cell" and frame["session"].nunique() > 1:
        # Cell 2 of one session is not cell 2 of another.
        key = (frame["session"] + " In[" + frame["cell"].astype("string").fillna("-") + "]").rename("cell")
    else:
        key = frame[by]
    work = frame.assign(errors=(frame["status"] == "error").astype("Int64"), retries=(frame["attempts"] - 1).clip(lower=0))
    grouped = work.groupby(key, sort=True, dropna=False)
    table = pd.DataFrame(
        {
            "calls": grouped.size(),
            "input_tokens": grouped["prompt_tokens"].sum(),
            "output_tokens": grouped["completion_tokens"].sum(),
            "cost_usd": grouped["cost_usd"].sum(min_count=1),
            "errors": grouped["errors"].sum(),
            "retries": grouped["retries"].sum(),
            "mean_latency_s": grouped["latency_s"].mean(),
        }
    )
    total = table.drop(columns="mean_latency_s").sum(numeric_only=True, min_count=1)
    total["mean_latency_s"] = work["latency_s"].mean()
    table.index = table.index.astype(object)
    table = pd.concat([table, total.rename("total").to_frame().T])
    table.index.name = by
    return table.astype(dict.fromkeys(counts, "Int64"))


def plot_usage(frame: pd.DataFrame) -> Any:
    """Cumulative cost over time and cost by model (needs matplotlib)."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install matplotlib (or pip install 'ipyllm[plot]')") from None
    figure, (over_time, by_model) = plt.subplots(1, 2, figsize=(11, 3.6))
    costs = frame.assign(cost_usd=frame["cost_usd"].fillna(0.0)).sort_values("timestamp")
    if costs.empty:
        over_time.text(0.5, 0.5, "no calls yet", ha="center", va="center", transform=over_time.transAxes)
    else:
        local = costs["timestamp"].dt.tz_convert(datetime.now().astimezone().tzinfo).dt.tz_localize(None)
        over_time.step(local, costs["cost_usd"].cumsum(), where="post")
        spend = costs.groupby("model")["cost_usd"].sum().sort_values()
        by_model.barh(spend.index.astype(str), spend.to_numpy())
    over_time.set_title("cumulative cost (USD)")
    over_time.tick_params(axis="x", labelrotation=30)
    by_model.set_title("cost by model (USD)")
    figure.tight_layout()
    plt.close(figure)  # shown once, by the magic
    return figure


_LINE_MAGIC = re.compile(r"^(?P<indent>\s*)(?P<target>[\w.]+\s*=\s*)?%llm(?P<rest>\s.*\S)\s*$")


def keep_question_marks(lines: list[str]) -> list[str]:
    """``%llm What is pi?`` must send the question, not open IPython's help for ``pi``.

    IPython reads a line ending in ``?`` as a help request; this rewrites such ``%llm`` lines into the
    magic call first. ``%llm?`` alone still shows the magic's help.
    """
    rewritten = []
    for line in lines:
        match = _LINE_MAGIC.match(line.rstrip("\n"))
        if match is None or not match["rest"].rstrip().endswith("?") or match["rest"].strip() in ("?", "??"):
            rewritten.append(line)
            continue
        newline = "\n" if line.endswith("\n") else ""
        call = f"get_ipython().run_line_magic('llm', {match['rest'].strip()!r})"
        rewritten.append(f"{match['indent']}{match['target'] or ''}{call}{newline}")
    return rewritten


# -- IPython connectivity -------------------------------------------------------------------------------


@magics_class
class LLMMagics(Magics):
    """ipyllm's magics; the session configuration is ``ipyllm.config`` (also ``%config LLMConfig``)."""

    shell: Any

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.cell_id: str | None = None
        self.picker: Callable[[], Any] = lambda: None
        self.cell_source: str | None = None
        self.run = 0

    def pre_run_cell(self, info: Any) -> None:
        # The running cell: its id when the frontend sends one, and its source (for --chat and for output cleanup).
        self.cell_id = getattr(info, "cell_id", None)
        self.cell_source = getattr(info, "raw_cell", None)
        self.run = next(_runs)

    def post_run_cell(self, result: Any) -> None:
        # A magic called outside a cell (run_line_magic from code) must not take the last cell for its own.
        self.cell_id = self.cell_source = None

    # -- %llm / %%llm ----------------------------------------------------------------------------------
    @magic_arguments()
    @argument("-m", "--model", help="model for this call only; the session setting is unchanged")
    @argument("-s", "--system", help="system prompt for this call")
    @argument("-t", "--temperature", help="sampling temperature for this call (0 to 2)")
    @argument("--max-tokens", dest="max_tokens", help="most tokens in the reply, for this call")
    @argument("-f", "--format", default="markdown", choices=FORMATS, help="how the reply is shown (default: markdown)")
    @argument("-o", "--output", metavar="VAR", help="also store the reply text in the user namespace as VAR")
    @argument("--no-stream", action="store_true", help="wait for the whole reply instead of streaming it into the cell")
    @argument("--chat", action="store_true", help="continue this session's conversation (a re-run cell replaces its turn)")
    @argument("--dry-run", action="store_true", help="send nothing: show the model, messages, token count and estimated cost")
    @argument("--no-cache", action="store_true", help="send the request even when the cache holds an identical one")
    @argument("--map", metavar="DATA", help="%%%%llm only: the cell body is a template run over every row of DATA (see ipyllm.map)")
    @argument("--concurrency", type=int, default=8, metavar="N", help="with --map: most calls in flight (default 8)")
    @argument("--processes", type=int, default=1, metavar="N", help="with --map: spread litellm's work over N processes (default 1)")
    @argument("--schema", metavar="NAME", help="with --map: a pydantic model or JSON-schema dict; one column per field")
    @argument(
        "--missing",
        choices=("skip", "send"),
        default="skip",
        help="with --map: rows with a missing value (None, NaN, NA, NaT) in a {field} are not sent (skip, default) or sent as text",
    )
    @argument("prompt", nargs="*", help="the prompt (line magic); {name} is filled from the user namespace")
    @no_var_expand
    @line_cell_magic
    def llm(self, line: str, cell: str | None = None) -> Reply | None:
        """Send a prompt to the session's model and show the reply as it arrives.

        ``%llm [options] PROMPT`` sends the rest of the line and returns the reply (``answer = %llm ...``);
        ``%%llm [options]`` sends the cell body. ``{name}`` in the prompt is replaced by ``name`` from the
        user namespace (``{{`` and ``}}`` are literal braces). Under the reply, a footer gives the model,
        tokens, cost, latency and attempts. ``%%llm --map DATA [-o NAME]`` sends the body once per row of
        DATA, its ``{field}``s filled from the row's columns (see ``ipyllm.map``), and shows the first rows.
        """
        parser = self.llm.parser
        if cell is None:
            options, template = split_prompt(parser, line)
        else:
            options, template = line, cell.strip()
        args = parse_options(parser, options)
        if cell is not None and args.prompt:
            raise UsageError("%%llm takes options on its first line and the prompt in the cell body: move the words below")
        if not template.strip():
            raise UsageError("nothing to send: write a prompt after %llm, or in the body of a %%llm cell")
        if args.output is not None and (not args.output.isidentifier() or keyword.iskeyword(args.output)):
            raise UsageError(f"-o needs a variable name, got {args.output!r}")
        overrides = {
            k: v
            for k, v in {"model": args.model, "system": args.system, "temperature": args.temperature, "max_tokens": args.max_tokens}.items()
            if v is not None
        }
        if args.map is not None or args.schema is not None:
            run_map(self.shell, args, template, overrides, cell is not None)
            return None
        prompt = interpolate(template, self.shell.user_ns)
        key = cell_key(self.cell_id, self.cell_source)
        history = conversation.history(key, self.run) if args.chat else []
        messages = [*history, {"role": "user", "content": prompt}]
        if args.dry_run:
            try:
                settings, _ = _api.session.split_overrides(overrides)
            except SettingError as error:
                raise UsageError(str(error)) from None
            self._dry_run(settings, as_messages(messages, settings.system))
            return None

        # Only %%llm streams into the cell: the line magic's value is the reply (shown once, or assigned).
        output = LiveOutput(self.shell.display_pub, can_clear=self._cell_is_this_call(cell))
        fmt = args.format
        pieces: list[str] = []

        def on_text(piece: str) -> None:
            pieces.append(piece)
            if cell is not None:
                output.show(render("".join(pieces), "text" if fmt == "json" else fmt))

        warnings_before = said()
        try:
            reply = _api.session.chat(
                messages,
                source="magic",
                stream=not args.no_stream,
                on_text=on_text,
                on_retry=lambda note: output.show(note_bundle(str(note)), final=True),
                on_loading=lambda: output.show(note_bundle("loading litellm (first call in this kernel)…"), final=True),
                use_cache=not args.no_cache,
                **overrides,
            )
        except StreamBrokenError as error:
            output.show(render(error.partial.rstrip() + " …", fmt, "the reply broke off here"), final=True)
            raise
        except Interrupted as error:
            # What came stays in the cell, its footer saying it was interrupted; a note with nothing after it goes.
            if error.partial and error.usage is not None:
                output.show(render(error.partial.rstrip() + " …", "text" if fmt == "json" else fmt, footer(error.usage)), final=True)
            else:
                output.can_clear &= said() == warnings_before
                output.withdraw("interrupted")
            raise
        except (LLMError, KeyboardInterrupt) as error:
            output.can_clear &= said() == warnings_before
            attempts = getattr(getattr(error, "usage", None), "attempts", None)
            output.withdraw("interrupted" if isinstance(error, KeyboardInterrupt) else f"gave up after {attempts or 'several'} attempts")
            raise
        except SettingError as error:
            raise UsageError(str(error)) from None
        reply.display_format = fmt
        if args.chat:
            conversation.record(self.cell_id, prompt, reply.text, reply.usage, key=key, run=self.run)
        if args.output:
            self.shell.user_ns[args.output] = reply
        if cell is None:
            # The retry notes step aside for the returned value (shown by IPython, or assigned); clearing the cell
            # would take a one-line note (an empty answer's) with them.
            output.can_clear &= said() == warnings_before and not reply.note
            output.withdraw(f"answered after {reply.usage.attempts} attempts")
            return reply
        output.show(reply._repr_mimebundle_(), final=True)
        return None

    def _cell_is_this_call(self, cell: str | None) -> bool:
        """Whether this call is all the running cell does, so clearing the cell's output loses nothing else.

        A ``%%llm`` cell is; a line magic is when the cell is that one line (``answer = %llm ...``).
        """
        if cell is not None:
            return True
        if self.cell_source is None:
            return False
        lines = [line for line in self.cell_source.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        return len(lines) == 1 and _LINE_MAGIC.match(lines[0]) is not None

    def _dry_run(self, settings: Any, messages: list[dict[str, Any]]) -> None:
        guess = estimate(settings, messages)
        # A total for the input, a rate for the output and the most it may bill: nothing to misread.
        summary = f"dry run, nothing sent · {guess.model} ({guess.provider or 'provider unknown'}) · {guess.describe()}"
        body = json.dumps(messages, indent=2, ensure_ascii=False)
        bundle = render(body, "json", summary)
        self.shell.display_pub.publish(data=bundle, metadata={})

    # -- %llm_config ------------------------------------------------------------------------------------
    @magic_arguments()
    @argument("--show", action="store_true", help="print the settings, the API key masked")
    @argument("assignments", nargs="*", help="setting=value pairs, e.g. model=gpt-4o temperature=0.2 (none unsets)")
    @line_magic
    def llm_config(self, line: str) -> None:
        """Show or change the session configuration (shared with the model picker and ``ipyllm.config``).

        ``%llm_config`` alone shows the model picker; ``%llm_config model=gpt-4o temperature=0.2`` sets
        settings (all or none: a refused value changes nothing); ``%llm_config --show`` prints them with the
        key masked.
        """
        show = re.search(r"(^|\s)--show(\s|$)", line) is not None
        assignments = re.sub(r"(^|\s)--show(?=\s|$)", " ", line).strip()
        if assignments.startswith("-"):
            parse_argstring(self.llm_config, line)  # reports the unknown option in argparse's words
        if assignments:
            values = parse_assignments(assignments)
            try:
                config.update(**values)
            except SettingError as error:
                raise UsageError(str(error)) from None
            if values.get("api_key"):
                print("api_key set. A key typed into a cell is saved with the notebook: prefer LLM_API_KEY or the picker.")
            if not show:
                return
        if not show:
            from IPython.display import display

            display(self.picker())
            return
        print(settings_text())

    # -- %llm_usage ------------------------------------------------------------------------------------
    @magic_arguments()
    @argument("--all", action="store_true", help="include earlier sessions from the ledger (usage_db)")
    @argument("--by", choices=GROUPINGS, default="model", help="group by model (default), day, cell, batch, user or host")
    @argument("--plot", action="store_true", help="draw cost over time and by model (needs matplotlib)")
    @line_magic
    def llm_usage(self, line: str) -> pd.DataFrame | None:
        """Show the spend so far: calls, tokens, cost (USD), errors, retries and mean latency, with a total."""
        args = parse_options(self.llm_usage.parser, line)
        frame = _api.usage(all_sessions=args.all)
        if args.plot:
            figure = plot_usage(frame)
            self.shell.display_pub.publish(data=_figure_bundle(figure), metadata={})
            return None
        return usage_table(frame, args.by)

    # -- %llm_chat -------------------------------------------------------------------------------------
    @magic_arguments()
    @argument("--reset", action="store_true", help="forget the conversation and start a new one (the usage rows stay)")
    @line_magic
    def llm_chat(self, line: str) -> None:
        """Show the ``--chat`` conversation: each turn with its tokens and cost; ``--reset`` starts a new one.

        The same in Python: ``ipyllm.chat_history()`` (a DataFrame) and ``ipyllm.chat_reset()``.
        """
        args = parse_options(self.llm_chat.parser, line)
        if args.reset:
            forgotten = chat_reset()
            print(f"new conversation: {forgotten} turn{'s' if forgotten != 1 else ''} forgotten (their usage rows stay)")
            return
        self.shell.display_pub.publish(data=conversation.bundle(), metadata={})

    # -- %llm_models -----------------------------------------------------------------------------------
    @magic_arguments()
    @argument("-p", "--provider", help="only this provider's models (litellm's catalogue, even with base_url set)")
    @argument("filter", nargs="*", help="words the model name must contain, e.g. gpt 4o")
    @line_magic
    def llm_models(self, line: str) -> pd.DataFrame:
        """List models with their context window and prices in USD per 1M tokens (``ipyllm.models()``).

        litellm's catalogue; with ``base_url`` set, the models the server lists at ``GET {base_url}/models``.
        """
        args = parse_options(self.llm_models.parser, line)
        try:
            return models(" ".join(args.filter) or None, provider=args.provider)
        except ValueError as error:
            raise UsageError(str(error)) from None


def run_map(shell: Any, args: argparse.Namespace, template: str, overrides: dict[str, Any], is_cell: bool) -> None:
    """``%%llm --map DATA``: the body as a template over DATA's rows; a preview of the first rows, the result in ``-o``."""
    from IPython.display import display

    if args.map is None:
        raise UsageError("--schema goes with --map: %%llm --map DATA --schema NAME")
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


def _figure_bundle(figure: Any) -> dict[str, Any]:
    import base64

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return {"image/png": base64.b64encode(buffer.getvalue()).decode(), "text/plain": "<ipyllm usage plot>"}


def load(shell: Any, picker: Callable[[], Any]) -> None:
    """Register the magics on ``shell``; make ``ipyllm.config`` reachable through ``%config``.

    ``picker`` makes the model picker that ``%llm_config`` shows (``ipyllm.picker``: ipywidgets is imported only
    when a picker is first shown, so that ``%load_ext`` stays fast).
    """
    magics = LLMMagics(shell)
    magics.picker = picker
    shell.register_magics(magics)
    shell.events.register("pre_run_cell", magics.pre_run_cell)
    shell.events.register("post_run_cell", magics.post_run_cell)
    if keep_question_marks not in shell.input_transformers_cleanup:
        shell.input_transformers_cleanup.append(keep_question_marks)
    if config not in shell.configurables:
        shell.configurables.append(config)
    if shell not in _configured:
        # ipython_config.py (c.LLMConfig.x = ...) wins over the environment, as everywhere in Jupyter; applied
        # on the first load only, so that %reload_ext keeps what the session set since.
        _configured.add(shell)
        if type(config).__name__ in shell.config:
            config.update_config(shell.config)
    _loaded[id(shell)] = magics
    warm_up()


def unload(shell: Any) -> None:
    """Remove the magics; the configuration, the conversation and the usage rows stay."""
    magics = _loaded.pop(id(shell), None)
    if magics is None:
        return
    for event, callback in (("pre_run_cell", magics.pre_run_cell), ("post_run_cell", magics.post_run_cell)):
        try:
            shell.events.unregister(event, callback)
        except ValueError:
            pass
    for kind, names in magics.magics.items():
        for name in names:
            shell.magics_manager.magics[kind].pop(name, None)
    shell.magics_manager.registry.pop(type(magics).__name__, None)
    if config in shell.configurables:
        shell.configurables.remove(config)
    if keep_question_marks in shell.input_transformers_cleanup:
        shell.input_transformers_cleanup.remove(keep_question_marks)


_loaded: dict[int, LLMMagics] = {}
#: Numbers the cell runs of the process (not of one load: turns recorded before a reload keep theirs).
_runs = itertools.count(1)
#: Shells whose configuration (ipython_config.py, %config) has been applied: once per shell, not per load.
_configured: weakref.WeakSet[Any] = weakref.WeakSet()
