"""The model picker: an ipywidgets panel bound both ways to the session configuration (SPEC section 6).

The picker holds no settings of its own. Every value a user enters goes through ``ipyllm.config`` (the
traits parse the strings and refuse bad values in one line, shown in the picker, which then shows the
config's value again); every change to the config, from ``%llm_config``, ``%config``, ``ipyllm.config``
or another picker, moves it at once. The API key is handed to the config and cleared from the widget,
so no widget state (and no notebook saved with widget state) ever holds it. The spend line listens to
the session's ledger and counts every call, whatever made it.

Picking a model: the provider dropdown chooses which of litellm's chat models the list shows; the
search box filters the list, and a name that is not in the catalogue (a deployment, a local model) is
offered as the list's first entry, with the provider's prefix (``llama3`` with ``ollama`` gives
``ollama/llama3``). Clicking an entry makes it the session's model.
"""

from __future__ import annotations

import functools
import html
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets
from traitlets import TraitError

from ipyllm import _api
from ipyllm._budget import user_name
from ipyllm._config import Settings, config
from ipyllm._cost import price
from ipyllm._display import format_cost
from ipyllm._litellm import check_environment, load_litellm, resolve_provider
from ipyllm._models import Catalogue, catalogue
from ipyllm._usage import UsageRow

__all__ = ["Catalogue", "ModelInfo", "Picker", "catalogue", "describe_model", "picker"]

#: Settings typed into a text field: name -> (label, placeholder shown while unset).
TEXT_SETTINGS: dict[str, tuple[str, str]] = {
    "base_url": ("Base URL", "provider default (e.g. http://localhost:11434 for Ollama)"),
    "temperature": ("Temperature", "provider default (0 to 2)"),
    "max_tokens": ("Max tokens", "provider default"),
    "budget_usd": ("Budget (USD)", "no limit for this session"),
}

#: Config settings the picker shows or depends on.
WATCHED = ("model", "api_key", "prices", *TEXT_SETTINGS)

_LABEL_WIDTH = "110px"
_WIDTH = "600px"
#: Lines of text (model info, messages, spend) start under the fields, not under their labels.
_INDENTED = {"width": "480px", "margin": "2px 0 2px 120px"}


# -- litellm's catalogue (shared with %llm_models, in ipyllm._models) ---------------------------------


def provider_of(model: str, base_url: str | None) -> str | None:
    """The catalogue's provider for ``model``, else the one litellm routes it to, else None."""
    return catalogue().provider_of.get(model) or resolve_provider(model, base_url)


def typed_model(text: str, provider: str | None) -> str | None:
    """The model name a typed text stands for: catalogue names and ``prefix/name`` as typed, else prefixed."""
    name = text.strip()
    if not name or any(c.isspace() for c in name):
        return None
    known = catalogue()
    if name in known.provider_of or "/" in name or provider is None or provider not in known.prefixes:
        return name
    return f"{provider}/{name}"


def matching(names: Iterable[str], search: str) -> list[str]:
    """Names containing every word of ``search`` (case-insensitive)."""
    words = search.lower().split()
    return [name for name in names if all(word in name.lower() for word in words)]


# -- what the picker says about a model ----------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """Prices per million tokens (NaN: unknown), context window (None: unknown) and key availability."""

    model: str
    provider: str | None
    input_per_million: float
    output_per_million: float
    context_window: int | None
    key_available: bool
    key_note: str

    def summary(self) -> str:
        """Two lines: the model, its provider and context window; its prices per million tokens."""
        context = "unknown" if self.context_window is None else f"{self.context_window:,} tokens"
        return (
            f"{self.model} ({self.provider or 'provider unknown'}) · context window {context}\n"
            f"per 1M tokens: input {_per_million(self.input_per_million)} · output {_per_million(self.output_per_million)}"
        )


def _per_million(cost: float) -> str:
    return "unknown" if math.isnan(cost) else format_cost(cost)


def describe_model(settings: Settings) -> ModelInfo:
    """Prices, context window and key availability of ``settings.model``, from litellm's catalogue.

    Prices come from the same function that prices calls (so ``prices`` apply); nothing is guessed.
    """
    litellm = load_litellm()
    model = settings.model
    routed = resolve_provider(model, settings.base_url)
    provider = routed or catalogue().provider_of.get(model)
    context: int | None = None
    try:
        window = litellm.get_model_info(model, custom_llm_provider=routed).get("max_input_tokens")
        context = int(window) if isinstance(window, (int, float)) and window > 0 else None
    except Exception:
        context = None
    available, note = key_status(model, provider, settings)
    return ModelInfo(
        model=model,
        provider=provider,
        input_per_million=price(settings, model, routed, 1_000_000, 0),
        output_per_million=price(settings, model, routed, 0, 1_000_000),
        context_window=context,
        key_available=available,
        key_note=note,
    )


def key_status(model: str, provider: str | None, settings: Settings) -> tuple[bool, str]:
    """Whether a key is there for the model's provider: the session's own, or litellm's environment check."""
    if settings.api_key:
        return True, "key: set for this session (LLM_API_KEY, %llm_config or this picker)"
    check = check_environment(model)
    if check.in_environment:
        return True, f"key: found in the environment for {provider or 'this provider'}"
    if check.keyless:
        return True, "key: none needed (a local server)"
    wanted = " or ".join(["LLM_API_KEY", *check.missing[:2]])
    return False, f"key: none for {provider or 'this provider'}: set {wanted}, or type one below"


# -- the widget ----------------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    """A setting as its text field shows it ('' while unset)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class Picker(widgets.VBox):
    """The model picker, bound both ways to ``ipyllm.config``; ``close()`` unbinds it.

    Parameters
    ----------
    rows
        How many models the list shows at once.
    """

    def __init__(self, rows: int = 6, **kwargs: Any) -> None:
        self._updating = 0
        self._closed = False
        self._lock = threading.Lock()
        known = catalogue()
        style = {"description_width": _LABEL_WIDTH}
        wide = widgets.Layout(width=_WIDTH)

        providers = known.providers
        self.provider = widgets.Dropdown(
            options=providers,
            value="openai" if "openai" in providers else None,
            description="Provider",
            style=style,
            layout=wide,
        )
        self.search = widgets.Text(
            description="Model",
            placeholder="search the list, or type a model name (e.g. a deployment or local model)",
            continuous_update=True,
            style=style,
            layout=wide,
        )
        self.models = widgets.Select(options=(), rows=rows, style=style, layout=wide, description=" ")
        self.info = widgets.HTML(layout=widgets.Layout(**_INDENTED))
        self.fields: dict[str, widgets.Text] = {
            name: widgets.Text(
                description=label,
                placeholder=placeholder,
                continuous_update=False,
                style=style,
                layout=wide,
                tooltip="Enter or leave the field to apply; empty: unset",
            )
            for name, (label, placeholder) in TEXT_SETTINGS.items()
        }
        self.api_key = widgets.Password(description="API key", continuous_update=False, style=style, layout=wide)
        self.message = widgets.HTML(layout=widgets.Layout(**_INDENTED))
        self.spend = widgets.HTML(layout=widgets.Layout(**_INDENTED))
        header = widgets.HTML("<b>ipyllm</b> · model picker <span style='color:#777'>(the session configuration)</span>")
        children = [
            header,
            self.provider,
            self.search,
            self.models,
            self.info,
            self.fields["base_url"],
            self.api_key,
            self.fields["temperature"],
            self.fields["max_tokens"],
            self.fields["budget_usd"],
            self.message,
            self.spend,
        ]
        kwargs.setdefault("layout", widgets.Layout(width="fit-content", padding="6px 10px", border="1px solid #ddd"))
        super().__init__(children=children, **kwargs)
        self.add_class("ipyllm-picker")

        self._calls = self._tokens = self._unpriced = 0
        self._cost = 0.0
        session = _api.session
        for row in session.ledger.rows(session.id):
            self._count(row)

        with self._syncing():
            self._follow_model()
            for name in TEXT_SETTINGS:
                self.fields[name].value = _shown(getattr(config, name))
            self._show_key()
            self._show_spend()

        self.provider.observe(self._on_provider, names="value")
        self.search.observe(self._on_search, names="value")
        self.models.observe(self._on_model, names="value")
        self.api_key.observe(self._on_key, names="value")
        for name, field in self.fields.items():
            field.observe(functools.partial(self._on_field, name), names="value")
        config.observe(self._on_config, names=list(WATCHED))
        self._unsubscribe: Callable[[], None] | None = session.ledger.subscribe(self._on_row)

    # -- binding helpers ---------------------------------------------------------------------------------
    def _syncing(self) -> _Syncing:
        """While the picker moves its own widgets, their observers do not write back to the config."""
        return _Syncing(self)

    def _apply(self, name: str, value: Any) -> bool:
        """Set one setting through the config; a refusal is shown here and the config keeps its value."""
        try:
            setattr(config, name, value)
        except TraitError as error:
            self._say(str(error), error=True)
            return False
        self._say("")
        return True

    def _say(self, text: str, *, error: bool = False) -> None:
        color = "#b00" if error else "#080"
        self.message.value = f"<span style='color:{color}'>{html.escape(text)}</span>" if text else ""

    # -- widget -> config ----------------------------------------------------------------------------------
    def _on_field(self, name: str, change: dict[str, Any]) -> None:
        if self._updating:
            return
        self._apply(name, change["new"])
        with self._syncing():
            # Shown as the config holds it: normalised when taken (0.50 -> 0.5), the old value when refused.
            self.fields[name].value = _shown(getattr(config, name))

    def _on_model(self, change: dict[str, Any]) -> None:
        if self._updating or change["new"] is None:
            return
        if not self._apply("model", change["new"]):
            with self._syncing():
                self._fill_list()

    def _on_key(self, change: dict[str, Any]) -> None:
        if self._updating or not change["new"]:
            return
        typed = change["new"]
        with self._syncing():
            # Cleared first, whatever happens next: the widget's state must never keep a key.
            self.api_key.value = ""
        if self._apply("api_key", typed):
            self._say("API key applied to this session; it is not kept in the picker.")
        self._show_key()

    def _on_provider(self, change: dict[str, Any]) -> None:
        if self._updating:
            return
        with self._syncing():
            self._fill_list()

    def _on_search(self, change: dict[str, Any]) -> None:
        if self._updating:
            return
        with self._syncing():
            self._fill_list()

    # -- config -> widget ----------------------------------------------------------------------------------
    def _on_config(self, change: dict[str, Any]) -> None:
        name = change["name"]
        with self._syncing():
            if name in self.fields:
                self.fields[name].value = _shown(change["new"])
            if name == "model" or name == "base_url":
                self._follow_model()
            elif name in ("api_key", "prices"):
                self._show_info()
            if name == "api_key":
                self._show_key()
            if name == "budget_usd":
                self._show_spend()

    def _follow_model(self) -> None:
        """Show the config's model: its provider in the dropdown, selected in the list, its info."""
        provider = provider_of(config.model, config.base_url)
        if provider is not None and provider != self.provider.value:
            if provider not in self.provider.options:
                self.provider.options = sorted([*self.provider.options, provider])
            self.provider.value = provider
        self._fill_list()
        if self.models.value != config.model and self.search.value:
            # A model set elsewhere that the search hides: show the whole list again.
            self.search.value = ""
            self._fill_list()
        self._show_info()

    def _fill_list(self) -> None:
        """The provider's chat models that match the search, the typed name first, the config's model selected."""
        provider = self.provider.value
        names = list(catalogue().chat_models.get(provider, ()))
        current = config.model
        if provider_of(current, config.base_url) == provider and current not in names:
            names.insert(0, current)
        shown: list[tuple[str, str]] = [(name, name) for name in matching(names, self.search.value)]
        typed = typed_model(self.search.value, provider)
        if typed is not None and typed not in names:
            shown.insert(0, (f"{typed}  (as typed)", typed))
        with self.models.hold_sync():
            self.models.index = None
            self.models.options = shown
            if any(value == current for _, value in shown):
                self.models.value = current

    def _show_info(self) -> None:
        info = describe_model(config.snapshot())
        key_color = "#080" if info.key_available else "#b00"
        model, prices = (html.escape(line) for line in info.summary().splitlines())
        key = f"<span style='color:{key_color}'>{html.escape(info.key_note)}</span>"
        self.info.value = f"<div style='line-height:1.45'>{model}<br>{prices}<br>{key}</div>"

    def _show_key(self) -> None:
        self.api_key.placeholder = (
            "set for this session: type another to replace it" if config.api_key else "not set: type a key (or set LLM_API_KEY)"
        )

    # -- the ledger -> spend line ----------------------------------------------------------------------------
    def _count(self, row: UsageRow) -> None:
        with self._lock:
            self._calls += 1
            self._tokens += row.total_tokens or 0
            if math.isnan(row.cost_usd):
                self._unpriced += row.prompt_tokens is not None
            else:
                self._cost += row.cost_usd

    def _on_row(self, row: UsageRow) -> None:
        # Called in the thread that recorded the call (a worker thread for ipyllm.map).
        if row.session != _api.session.id or self._closed:
            return
        self._count(row)
        self._show_spend()

    def _show_spend(self) -> None:
        with self._lock:
            calls, tokens, cost, unpriced = self._calls, self._tokens, self._cost, self._unpriced
        text = f"Session spend: {calls:,} call{'s' if calls != 1 else ''} · {tokens:,} tokens · {format_cost(cost)}"
        if unpriced:
            text += f" + {unpriced} call{'s' if unpriced != 1 else ''} of unknown price"
        if config.budget_usd is not None:
            text += f" of {format_cost(config.budget_usd)} budget"
        user = config.user or user_name()
        today = _api.session.records.spend_today(user)
        if today is not None:  # a team ledger: everyone's spend today, and this user's
            text += f" · today: team {format_cost(today[0])}, {user} {format_cost(today[1])}"
        self.spend.value = f"<b>{html.escape(text)}</b>"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        # Where widgets cannot show (a terminal, a notebook viewer), one line instead of the widget's repr.
        bundle = dict(super()._repr_mimebundle_(**kwargs))
        bundle["text/plain"] = f"ipyllm model picker (model {config.model}): a Jupyter widget; %llm_config --show lists the settings"
        return bundle

    # -- lifecycle -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Unbind from the config and the ledger, and close every part of the picker."""
        if not self._closed:
            self._closed = True
            config.unobserve(self._on_config, names=list(WATCHED))
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
            for child in self.children:
                child.close()
        super().close()


class _Syncing:
    """Context manager counting nested programmatic updates of a picker."""

    def __init__(self, owner: Picker) -> None:
        self.owner = owner

    def __enter__(self) -> None:
        self.owner._updating += 1

    def __exit__(self, *exc: object) -> None:
        self.owner._updating -= 1


def picker() -> Picker:
    """The model picker, bound both ways to ``ipyllm.config``; display it in a notebook cell.

    Waits for litellm's import if it is still running (``%load_ext ipyllm`` starts it in the background).

    Returns
    -------
    Picker
        An ipywidgets ``VBox``; ``close()`` unbinds it from the configuration and the ledger.
    """
    return Picker()
