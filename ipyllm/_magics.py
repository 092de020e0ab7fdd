"""The ``%llm`` / ``%%llm``, ``%llm_config``, ``%llm_usage``, ``%llm_chat`` and ``%llm_models`` magics.

This module is the IPython connectivity: the thin ``Magics`` class, and ``load`` / ``unload``. The logic it
wires to the shell lives in modules of its own: reading the ``%llm`` line and filling its prompt
(``_prompt``), one call and what the cell shows meanwhile (``_llmcall``), ``--map`` (``_mapcell``),
``%llm_config``'s assignments (``_assignments``) and ``%llm_usage``'s table and plot (``_usageview``).
These faces are the only modules that raise ``UsageError`` (IPython's own class: IPython prints a
subclass with a full traceback).
"""

from __future__ import annotations

import itertools
import re
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from ipyllm import _api
from ipyllm._assignments import parse_assignments, settings_text
from ipyllm._chat import cell_key, chat_reset, conversation
from ipyllm._config import config
from ipyllm._display import FORMATS, LiveOutput
from ipyllm._engine import Reply
from ipyllm._helpers import start_early, stop_early
from ipyllm._litellm import warm_up
from ipyllm._llmcall import answer, deliver, dry_run, read_call, with_attachments
from ipyllm._mapcell import run_map
from ipyllm._models import models
from ipyllm._prompt import interpolate, is_one_llm_line, keep_question_marks, parse_options
from ipyllm._usageview import GROUPINGS, figure_bundle, grouped_table, plot_usage
from ipyllm.errors import SettingError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LLMMagics", "load", "unload"]


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
    @argument(
        "--image",
        action="append",
        metavar="VALUE",
        help="attach an image: a variable (figure, PIL image, bytes), a path or a URL; repeatable",
    )
    @argument("--file", action="append", metavar="PATH", help="attach a PDF (models that take PDFs) or a text file; repeatable")
    @argument("--no-cache", action="store_true", help="send the request even when the cache holds an identical one")
    @argument("--map", metavar="DATA", help="%%%%llm only: the cell body is a template run over every row of DATA (see ipyllm.map)")
    @argument("--concurrency", type=int, default=8, metavar="N", help="with --map: most calls in flight (default 8)")
    @argument("--processes", type=int, metavar="N", help="with --map: spread litellm's work over N processes (default: setting processes)")
    @argument("--schema", metavar="NAME", help="with --map: a pydantic model or JSON-schema dict; one column per field")
    @argument(
        "--missing",
        choices=("skip", "send"),
        default="skip",
        help="with --map: rows with a missing value (None, NaN, NA, NaT) in a {field} are not sent (skip, default) or sent as text",
    )
    @argument(
        "--via",
        choices=("live", "batch"),
        default="live",
        help="with --map: a call per row now (live, default), or the provider's Batch API (batch: about half price, within 24 h)",
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
        DATA, its ``{field}``s filled from the row's columns (see ``ipyllm.map``), and shows the first rows;
        ``--via batch`` sends them through the provider's Batch API (run the cell again to attach to the batch).
        """
        args, template, overrides = read_call(self.llm.parser, line, cell)
        if args.map is not None or args.schema is not None or args.via != "live":
            run_map(self.shell, args, template, overrides, cell is not None)
            return None
        prompt = interpolate(template, self.shell.user_ns, config.table_token_budget)
        key = cell_key(self.cell_id, self.cell_source)
        history = conversation.history(key, self.run) if args.chat else []
        messages = with_attachments([*history, {"role": "user", "content": prompt}], args, self.shell.user_ns)
        prompt = messages[-1]["content"]
        if args.dry_run:
            dry_run(self.shell.display_pub, messages, overrides)
            return None
        # Only %%llm streams into the cell: the line magic's value is the reply (shown once, or assigned).
        output = LiveOutput(self.shell.display_pub, can_clear=self._cell_is_this_call(cell))
        reply = answer(messages, args, overrides, output, cell=cell is not None)
        if args.chat:
            conversation.record(self.cell_id, prompt, reply.text, reply.usage, key=key, run=self.run)
        if args.output:
            self.shell.user_ns[args.output] = reply
        return deliver(reply, output, cell=cell is not None)

    def _cell_is_this_call(self, cell: str | None) -> bool:
        """Whether this call is all the running cell does, so clearing the cell's output loses nothing else.

        A ``%%llm`` cell is; a line magic is when the cell is that one line (``answer = %llm ...``).
        """
        if cell is not None:
            return True
        return self.cell_source is not None and is_one_llm_line(self.cell_source)

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
    @argument("--by", choices=GROUPINGS, default="model", help="group by model (default), day, cell, batch, user, host or notebook")
    @argument("--plot", action="store_true", help="draw cost over time and by model (needs matplotlib)")
    @line_magic
    def llm_usage(self, line: str) -> pd.DataFrame | None:
        """Show the spend so far: calls, tokens, cost and saving (USD), errors, retries and mean latency, with a total."""
        args = parse_options(self.llm_usage.parser, line)
        if args.plot:
            figure = plot_usage(_api.usage(all_sessions=args.all))
            self.shell.display_pub.publish(data=figure_bundle(figure), metadata={})
            return None
        # Summed by the database (GROUP BY, on its running totals), never the ledger's rows read into Python.
        return grouped_table(_api.session.records.sums(args.by, args.all), args.by, config.prices)

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
    start_early(config)


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
    stop_early(config)
    if keep_question_marks in shell.input_transformers_cleanup:
        shell.input_transformers_cleanup.remove(keep_question_marks)


_loaded: dict[int, LLMMagics] = {}
#: Numbers the cell runs of the process (not of one load: turns recorded before a reload keep theirs).
_runs = itertools.count(1)
#: Shells whose configuration (ipython_config.py, %config) has been applied: once per shell, not per load.
_configured: weakref.WeakSet[Any] = weakref.WeakSet()
