"""The session configuration: one traitlets object shared by the magics, the widget and the Python API.

Precedence, lowest first: built-in default < ``LLM_*`` environment variable < ``ipython_config.py`` /
``%config`` < an explicit assignment. Every trait parses strings (so the environment, ``%llm_config
key=value`` and the widget all go through the same code) and refuses a bad value with one line naming the
setting and what is allowed; the old value stays.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from traitlets import Bool, Dict, TraitType, validate
from traitlets.config import Configurable

from ipyllm._locations import ACCEPTED, LOCATIONS, Location, LocationError, SQLiteFile, parse_location
from ipyllm._notices import notice
from ipyllm._pricemap import CAPABILITY_KEYS, PRICE_KEYS, close_names, priceable
from ipyllm._secrets import Secret
from ipyllm.errors import SettingError, UnknownSettingError

__all__ = ["LLMConfig", "Settings", "config"]


# -- trait types that parse strings and explain refusals -------------------------------------------


class _Setting(TraitType[Any, Any]):
    """A trait whose ``allowed`` text appears in the one-line refusal."""

    allowed = "a valid value"

    def __init__(self, default_value: Any = None, *, allowed: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("allow_none", default_value is None)
        super().__init__(default_value, **kwargs)
        if allowed is not None:
            self.allowed = allowed
        self.tag(config=True)

    def refuse(self, value: Any) -> SettingError:
        return SettingError.refused(self.name or "setting", value, self.allowed)

    def error(self, obj: Any, value: Any, error: Exception | None = None, info: str | None = None) -> Any:
        raise self.refuse(value)

    def validate(self, obj: Any, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip() and self.allow_none):
            if self.allow_none:
                return None
            raise self.refuse(value)
        return self.parse(value)

    def parse(self, value: Any) -> Any:
        raise NotImplementedError


class Number(_Setting):
    def __init__(
        self, default_value: float | None = None, *, low: float, high: float = math.inf, integer: bool = False, **kwargs: Any
    ) -> None:
        self.low, self.high, self.integer = low, high, integer
        what = "a whole number" if integer else "a number"
        upper = "" if math.isinf(high) else f" to {high:g}"
        allowed = f"{what} from {low:g}{upper}" if upper else f"{what} >= {low:g}"
        super().__init__(default_value, allowed=kwargs.pop("allowed", allowed), **kwargs)

    def parse(self, value: Any) -> float | int:
        if isinstance(value, bool):
            raise self.refuse(value)
        try:
            number = float(value.strip()) if isinstance(value, str) else float(value)
        except (TypeError, ValueError):
            raise self.refuse(value) from None
        if not math.isfinite(number):
            # inf would pass a ">= 0" check, and a budget of inf is no limit while it looks like one.
            unset = "; None unsets it" if self.allow_none else ""
            raise SettingError.refused(self.name or "setting", value, f"{self.allowed}, and finite{unset}")
        if not self.low <= number <= self.high:
            raise self.refuse(value)
        if self.integer:
            if not number.is_integer():
                raise self.refuse(value)
            return int(number)
        return number


class Text(_Setting):
    def parse(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.refuse(value)
        return value.strip()


class Choice(_Setting):
    """One of a few words (any case, spaces around ignored)."""

    def __init__(self, default_value: str, *, choices: tuple[str, ...], **kwargs: Any) -> None:
        self.choices = choices
        super().__init__(default_value, allowed=f"one of {', '.join(choices)}", **kwargs)

    def parse(self, value: Any) -> str:
        word = value.strip().lower() if isinstance(value, str) else None
        if word not in self.choices:
            raise self.refuse(value)
        return word


class URL(_Setting):
    allowed = "an http:// or https:// URL, e.g. http://localhost:11434"

    def parse(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.refuse(value)
        text = value.strip()
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc or " " in text:
            raise self.refuse(value)
        return text.rstrip("/")


class Ledger(_Setting):
    """Where the ledger is, parsed once: a ``SQLiteFile``, a ``Server`` or ``Memory`` (see ``ipyllm._locations``);
    a string or a path is parsed, a location is kept as it is."""

    allowed = ACCEPTED

    def parse(self, value: Any) -> Location:
        if isinstance(value, LOCATIONS):
            return value
        if isinstance(value, os.PathLike):
            return SQLiteFile(value)
        if not isinstance(value, str):
            raise self.refuse(value)
        try:
            return parse_location(value)
        except LocationError as error:
            raise self.refuse(error.shown) from None  # the value shown with its password masked


class Key(_Setting):
    allowed = "a non-empty string without spaces"

    def parse(self, value: Any) -> Secret:
        if not isinstance(value, str):
            raise self.refuse(value)
        plain = str.__str__(value.reveal()) if isinstance(value, Secret) else value.strip()
        if any(c.isspace() for c in plain):
            raise self.refuse(value)
        return Secret(plain)


_PRICES_ALLOWED = (
    "a dict {model: base_model} or {model: {'input_cost_per_token': x, 'output_cost_per_token': y}}, "
    "the latter also with 'supports_vision' / 'supports_pdf_input': True or False"
)


class Prices(Dict):  # type: ignore[type-arg]
    """A dict of prices; anything else is refused in one line, like every other setting."""

    def error(self, obj: Any, value: Any, error: Exception | None = None, info: str | None = None) -> Any:
        raise SettingError.refused(self.name or "prices", value, _PRICES_ALLOWED)


class Flag(Bool):  # type: ignore[type-arg]
    _TRUE = {"1", "true", "yes", "on"}
    _FALSE = {"0", "false", "no", "off", ""}

    def __init__(self, default_value: bool = False, **kwargs: Any) -> None:
        super().__init__(default_value, **kwargs)
        self.tag(config=True)

    def validate(self, obj: Any, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in self._TRUE | self._FALSE:
            return value.strip().lower() in self._TRUE
        raise SettingError.refused(self.name or "setting", value, "on or off (true/false, 1/0, yes/no)")


# -- the configuration ---------------------------------------------------------------------------------

#: Setting name -> environment variable read at start.
ENVIRONMENT = {
    "model": "LLM_MODEL",
    "api_key": "LLM_API_KEY",
    "base_url": "LLM_BASE_URL",
    "api_version": "LLM_API_VERSION",
    "embedding_model": "LLM_EMBEDDING_MODEL",
    "embedding_deployment": "LLM_EMBEDDING_DEPLOYMENT_NAME",
    "num_retries": "LLM_NUM_RETRIES",
    "retry_min_wait": "LLM_RETRY_MIN_WAIT",
    "retry_max_wait": "LLM_RETRY_MAX_WAIT",
    "timeout": "LLM_TIMEOUT",
    "budget_usd": "LLM_BUDGET_USD",
    "daily_budget_usd": "LLM_DAILY_BUDGET_USD",
    "user_daily_budget_usd": "LLM_USER_DAILY_BUDGET_USD",
    "usage_db": "LLM_USAGE_DB",
    "user": "LLM_USER",
    "cache": "LLM_CACHE",
    "batch_poll_min_wait": "LLM_BATCH_POLL_MIN_WAIT",
    "batch_poll_max_wait": "LLM_BATCH_POLL_MAX_WAIT",
    "processes": "LLM_PROCESSES",
}


def _checked_prices(prices: dict[str, Any]) -> dict[str, Any]:
    """The ``prices`` setting, each entry checked: a base model litellm can price, or a dict of rates and flags."""
    for model, price in prices.items():
        if isinstance(price, str) and price.strip():
            # A base model litellm cannot price would leave the model unpriced without a word (a set lookup
            # once the price map is read; every call with overrides validates the prices again).
            if not priceable(price):
                close = close_names(price)
                hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
                raise SettingError(
                    f"prices: litellm has no price for the base model {price!r} (of {model!r}): {hint}"
                    "name a model in litellm's price map, or give {'input_cost_per_token': x, 'output_cost_per_token': y}; "
                    "the old value stays.",
                    "prices",
                )
            continue
        if isinstance(price, dict) and price and set(price) <= {*PRICE_KEYS, *CAPABILITY_KEYS}:
            # A dict of flags alone declares what the model takes and leaves its price as it was (unknown for a
            # model litellm cannot price, so a budget still refuses it until it gets one).
            rates = [v for k, v in price.items() if k in PRICE_KEYS]
            flags = [v for k, v in price.items() if k in CAPABILITY_KEYS]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in rates) and all(
                isinstance(v, bool) for v in flags
            ):
                continue
        raise SettingError.refused("prices", {model: price}, _PRICES_ALLOWED)
    return dict(prices)


class LLMConfig(Configurable):
    """ipyllm's session configuration (``ipyllm.config``).

    Settable as attributes, with ``%llm_config key=value``, ``%config LLMConfig.key = value``, in
    ``ipython_config.py`` (``c.LLMConfig.key = value``), in the model picker, and from ``LLM_*`` variables.
    """

    model = Text(
        "gpt-4o-mini", allowed="a model name litellm knows, e.g. gpt-4o-mini or ollama/llama3", help="Model for chat calls (LLM_MODEL)."
    )
    api_key = Key(None, help="API key (LLM_API_KEY); unset: the provider's own variable, e.g. OPENAI_API_KEY. Never shown.")
    base_url = URL(None, help="API base URL for a proxy, Azure or a local server (LLM_BASE_URL).")
    api_version = Text(None, allowed="an API version string, e.g. 2024-02-01", help="API version, for Azure (LLM_API_VERSION).")
    embedding_model = Text(
        "text-embedding-3-small", allowed="an embedding model name", help="Model for ipyllm.embed (LLM_EMBEDDING_MODEL)."
    )
    embedding_deployment = Text(
        None, allowed="an Azure deployment name", help="Azure deployment for embeddings (LLM_EMBEDDING_DEPLOYMENT_NAME)."
    )
    num_retries = Number(5, low=0, high=100, integer=True, help="Retries after the first attempt (LLM_NUM_RETRIES).")
    retry_min_wait = Number(3.0, low=0, high=3600, help="Shortest wait between attempts, seconds (LLM_RETRY_MIN_WAIT).")
    retry_max_wait = Number(60.0, low=0, high=3600, help="Longest wait between attempts, seconds (LLM_RETRY_MAX_WAIT).")
    timeout = Number(
        600.0, low=0.001, high=86400, allowed="a number of seconds from 0.001 to 86400", help="Seconds per attempt (LLM_TIMEOUT)."
    )
    temperature = Number(None, low=0, high=2, help="Sampling temperature; unset: the provider's default.")
    max_tokens = Number(None, low=1, high=10_000_000, integer=True, help="Most tokens in a reply; unset: the provider's default.")
    system = Text(None, allowed="a string", help="System prompt sent before every chat call.")
    budget_usd = Number(None, low=0, allowed="a number of US dollars >= 0", help="Spending limit for this session, USD (LLM_BUDGET_USD).")
    daily_budget_usd = Number(
        None,
        low=0,
        allowed="a number of US dollars >= 0",
        help="Spending limit since local midnight, all sessions, USD (LLM_DAILY_BUDGET_USD).",
    )
    user_daily_budget_usd = Number(
        None,
        low=0,
        allowed="a number of US dollars >= 0",
        help="Spending limit since local midnight for this user, all sessions, USD (LLM_USER_DAILY_BUDGET_USD).",
    )
    usage_db = Ledger(
        None,
        help=(
            "Usage ledger (LLM_USAGE_DB): a SQLite file, :memory:, or a team's postgresql://user@host:5432/dbname "
            "(password never shown); unset: a file in the Jupyter data directory. Read back as a SQLiteFile, Server or Memory."
        ),
    )
    user = Text(None, allowed="a user name", help="Who the usage rows name (LLM_USER); unset: JUPYTERHUB_USER, else the login name.")
    cache = Flag(False, help="Answer identical requests from the local cache (LLM_CACHE).")
    batch_poll_min_wait = Number(
        5.0, low=0, high=3600, help="First wait between two looks at a provider batch, seconds (LLM_BATCH_POLL_MIN_WAIT)."
    )
    batch_poll_max_wait = Number(
        60.0, low=0, high=3600, help="Longest wait between two looks at a provider batch, seconds (LLM_BATCH_POLL_MAX_WAIT)."
    )
    processes = Number(
        1,
        low=1,
        high=64,
        integer=True,
        help=(
            "Processes a map spreads litellm's work over when it names none (LLM_PROCESSES); above 1, with %load_ext, "
            "the helper processes start at once, so that the first map finds them ready."
        ),
    )
    prices = Prices(
        {},
        help=(
            "Prices for models litellm cannot price: {model: base_model} or "
            "{model: {'input_cost_per_token': x, 'output_cost_per_token': y}}; the dict may also declare what the model "
            "takes, with litellm's names: 'supports_vision': True (images), 'supports_pdf_input': True (PDFs)."
        ),
    ).tag(config=True)
    image_detail = Choice(
        "auto", choices=("auto", "low", "high"), help="The image detail asked of the provider, where it has one: auto, low or high."
    )
    table_token_budget = Number(2000, low=1, integer=True, help="Most tokens a DataFrame or Series interpolated into a prompt may take.")

    def __init__(self, *, environ: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        self._version = 0
        self._frozen: tuple[int, Settings] | None = None
        for name in kwargs:
            if not hasattr(type(self), name):
                raise unknown_setting(name)  # traitlets would pass it on to object.__init__ with a warning
        super().__init__(**kwargs)
        if environ is not None:
            self.load_environment(environ, skip=set(kwargs))

    def load_environment(self, environ: Mapping[str, str], skip: Collection[str] = ()) -> None:
        """Apply ``LLM_*`` variables to settings not set by config files or arguments.

        A bad variable does not stop ipyllm from loading: it is reported in one warning and skipped.
        """
        configured = set(self.config.get(type(self).__name__, {}))
        for name, variable in ENVIRONMENT.items():
            if name in skip or name in configured or variable not in environ:
                continue
            try:
                setattr(self, name, environ[variable])
            except SettingError as error:
                notice(f"ignoring {variable}: {error}")

    # -- validation across settings --------------------------------------------------------------------
    @validate("retry_min_wait", "retry_max_wait", "batch_poll_min_wait", "batch_poll_max_wait")
    def _check_waits(self, proposal: Any) -> float:
        value = proposal["value"]
        name = proposal["trait"].name
        first, last = (f"{name.rsplit('_', 2)[0]}_min_wait", f"{name.rsplit('_', 2)[0]}_max_wait")
        low = value if name == first else getattr(self, first)
        high = value if name == last else getattr(self, last)
        if low > high:
            if name == first:
                raise SettingError.refused(name, value, f"at most {last} ({high:g} s)")
            raise SettingError.refused(name, value, f"at least {first} ({low:g} s)")
        return value

    @validate("prices")
    def _check_prices(self, proposal: Any) -> dict[str, Any]:
        return _checked_prices(proposal["value"])

    # -- attributes ------------------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        # A typo (config.budget = 0 for budget_usd) would otherwise be a plain attribute, and the limit never set.
        # traitlets' own state starts with "_"; its traits (config, parent) and methods are on the class.
        if not name.startswith("_") and not hasattr(type(self), name):
            raise unknown_setting(name)
        super().__setattr__(name, value)

    # -- several at once -------------------------------------------------------------------------------
    def update(self, **values: Any) -> None:
        """Set several settings at once: all are applied, or none (the first refusal is raised)."""
        unknown = [name for name in values if name not in SETTING_NAMES]
        if unknown:
            raise unknown_setting(unknown[0])
        with self.hold_trait_notifications():
            for name, value in values.items():
                setattr(self, name, value)

    def settings(self) -> dict[str, Any]:
        """The current values, by name (the key stays a masked ``Secret``)."""
        return {name: getattr(self, name) for name in SETTING_NAMES}

    def snapshot(self, **overrides: Any) -> Settings:
        """Freeze the settings for one call, with per-call overrides validated like any setting.

        Every call takes one, so the frozen settings are kept until a setting changes, and overrides are
        validated on a scratch configuration kept per thread (making one takes longer than a call's own work).
        Settings ``using()`` applies in this context come under the overrides.
        """
        overlays = _overlays.get()
        if overlays and id(self) in overlays:
            overrides = {**overlays[id(self)], **overrides}
        if overrides:
            scratch = getattr(_scratch, "config", None)
            if scratch is None:
                scratch = _scratch.config = LLMConfig()
            scratch.update(**self.settings())
            scratch.update(**overrides)
            return Settings(**scratch.settings())
        version = self._version
        frozen = self._frozen
        if frozen is None or frozen[0] != version:
            # The version is read before the values: settings changed meanwhile leave a stale entry unused.
            frozen = self._frozen = (version, Settings(**self.settings()))
        return frozen[1]

    def notify_change(self, change: Any) -> None:
        # Before any observer runs: an observer that takes a snapshot must see the new value.
        self._version = getattr(self, "_version", 0) + 1
        super().notify_change(change)

    @contextmanager
    def using(self, **values: Any) -> Iterator[LLMConfig]:
        """Apply settings to the calls made in this ``with`` block, in this context only.

        The calls of the block (and of the asyncio tasks it starts) see them; other threads, and the
        configuration's own attributes, do not: ``config.model`` still reads the shared setting. The values are
        checked at once, like any setting (a refused value raises before the block starts).
        """
        unknown = [name for name in values if name not in SETTING_NAMES]
        if unknown:
            raise unknown_setting(unknown[0])
        overlays = _overlays.get() or {}
        merged = {**overlays.get(id(self), {}), **values}
        self.snapshot(**merged)  # refused here, not at the first call
        token = _overlays.set({**overlays, id(self): merged})
        try:
            yield self
        finally:
            _overlays.reset(token)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.settings().items() if value not in (None, {}))
        return f"LLMConfig({shown})"


def unknown_setting(name: str) -> UnknownSettingError:
    import difflib

    close = difflib.get_close_matches(name, SETTING_NAMES, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return UnknownSettingError(f"no setting named {name!r}: {hint}settings are {', '.join(SETTING_NAMES)}", name)


@dataclass(frozen=True)
class Settings:
    """The settings of one call, frozen: what the client reads (it never sees the live object)."""

    model: str
    api_key: Secret | None
    base_url: str | None
    api_version: str | None
    embedding_model: str
    embedding_deployment: str | None
    num_retries: int
    retry_min_wait: float
    retry_max_wait: float
    timeout: float
    temperature: float | None
    max_tokens: int | None
    system: str | None
    budget_usd: float | None
    daily_budget_usd: float | None
    user_daily_budget_usd: float | None
    usage_db: Location | None
    user: str | None
    cache: bool
    batch_poll_min_wait: float = 5.0
    batch_poll_max_wait: float = 60.0
    processes: int = 1
    prices: dict[str, Any] = field(default_factory=dict)
    image_detail: str = "auto"
    table_token_budget: int = 2000


#: Setting names in the order they are documented and shown.
SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Settings))
assert set(SETTING_NAMES) == set(LLMConfig.class_traits(config=True)), "Settings and LLMConfig must list the same settings"

#: Settings ``using()`` applies to the calls of one context (a thread, an asyncio task) only, per configuration.
_overlays: ContextVar[dict[int, dict[str, Any]] | None] = ContextVar("ipyllm-config-overlays", default=None)

#: Scratch configurations that validate per-call overrides, one per thread.
_scratch = threading.local()

#: The one configuration object of this session.
config = LLMConfig(environ=os.environ)
