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
``ollama/llama3``). Clicking an entry makes it the session's model. What the picker says (the list, the
model's prices and key, the spend) is made in ``ipyllm._pickerinfo``; this module binds it to the widgets.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
from traitlets import TraitError

from ipyllm import _api
from ipyllm._budget import user_name
from ipyllm._config import config
from ipyllm._models import Catalogue, catalogue
from ipyllm._pickerinfo import ModelInfo, SpendTally, describe_model, info_html, model_choices, provider_of
from ipyllm._usage import UsageRow

__all__ = ["Catalogue", "ModelInfo", "Picker", "SpendLine", "catalogue", "describe_model", "picker"]

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
        self.fields = _text_fields(style, wide)
        self.api_key = widgets.Password(description="API key", continuous_update=False, style=style, layout=wide)
        self.message = widgets.HTML(layout=widgets.Layout(**_INDENTED))
        self.spend = SpendLine(layout=widgets.Layout(**_INDENTED))
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

        with self._syncing():
            self._follow_model()
            for name in TEXT_SETTINGS:
                self.fields[name].value = _shown(getattr(config, name))
            self._show_key()
            self.spend.show()

        self.provider.observe(self._on_filter, names="value")
        self.search.observe(self._on_filter, names="value")
        self.models.observe(self._on_model, names="value")
        self.api_key.observe(self._on_key, names="value")
        for name, field in self.fields.items():
            field.observe(functools.partial(self._on_field, name), names="value")
        config.observe(self._on_config, names=list(WATCHED))

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

    def _on_filter(self, change: dict[str, Any]) -> None:
        # Another provider, or another search: the list follows.
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
                self.spend.show()

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
        current = config.model
        shown = model_choices(self.provider.value, self.search.value, current, config.base_url)
        with self.models.hold_sync():
            self.models.index = None
            self.models.options = shown
            if any(value == current for _, value in shown):
                self.models.value = current

    def _show_info(self) -> None:
        self.info.value = info_html(describe_model(config.snapshot()))

    def _show_key(self) -> None:
        self.api_key.placeholder = (
            "set for this session: type another to replace it" if config.api_key else "not set: type a key (or set LLM_API_KEY)"
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        # Where widgets cannot show (a terminal, a notebook viewer), one line instead of the widget's repr.
        bundle = dict(super()._repr_mimebundle_(**kwargs))
        bundle["text/plain"] = f"ipyllm model picker (model {config.model}): a Jupyter widget; %llm_config --show lists the settings"
        return bundle

    # -- lifecycle -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Unbind from the config and the ledger (the spend line's), and close every part of the picker."""
        if not self._closed:
            self._closed = True
            config.unobserve(self._on_config, names=list(WATCHED))
            for child in self.children:
                child.close()
        super().close()


def _text_fields(style: dict[str, str], layout: widgets.Layout) -> dict[str, widgets.Text]:
    """The text field of each of ``TEXT_SETTINGS``, applied when the user presses Enter or leaves it."""
    return {
        name: widgets.Text(
            description=label,
            placeholder=placeholder,
            continuous_update=False,
            style=style,
            layout=layout,
            tooltip="Enter or leave the field to apply; empty: unset",
        )
        for name, (label, placeholder) in TEXT_SETTINGS.items()
    }


class SpendLine(widgets.HTML):
    """The session's spend so far, counted from its ledger as each call ends, whatever made it; ``close()`` stops listening."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._closed = False
        self._tally = SpendTally()
        session = _api.session
        for row in session.ledger.rows(session.id):
            self._tally.count(row)
        self._unsubscribe: Callable[[], None] | None = session.ledger.subscribe(self._on_row)

    def _on_row(self, row: UsageRow) -> None:
        # Called in the thread that recorded the call (a worker thread for ipyllm.map).
        if row.session != _api.session.id or self._closed:
            return
        self._tally.count(row)
        self.show()

    def show(self) -> None:
        """Show the spend again (the budget in it may have changed)."""
        user = config.user or user_name()
        text = self._tally.text(config.budget_usd, user, _api.session.records.spend_today(user))
        self.value = f"<b>{html.escape(text)}</b>"

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
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
