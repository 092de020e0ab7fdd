"""The API key as the session keeps it (``Secret``) and as the provider call gets it (``RevealedKey``).

A ``Secret`` is a ``str`` whose *text* is the masked key, so every place that prints, formats or serialises it
shows the mask; its *value* is the key. Equality and hashing follow the value and agree with each other: two
secrets are equal when their keys are, and a secret equals nothing else (not its masked text, not the key as a
plain string), so ``secret == "****abcd"`` is False though ``str(secret) == "****abcd"``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RevealedKey", "Secret"]


def _mask(plain: str) -> str:
    return "****" + plain[-4:] if len(plain) >= 16 else "****"


class RevealedKey(str):
    """The key in plain text, as handed to litellm: its text is the key, its ``repr`` is masked.

    litellm and the OpenAI SDK keep this object in their frames while a request runs, so a traceback that
    prints locals (``%xmode Verbose``), or a dict of arguments shown with ``repr``, shows ``'****'``.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(_mask(str.__str__(self)))


class Secret(str):
    """The API key as the session keeps it: a string whose *text* is the masked form (``****`` and at most
    the last four characters), so ``repr``, ``str``, ``json.dumps`` and formatting never show the key.

    ``reveal()`` gives the key for the one place that needs it, the provider call. ``==`` compares keys: two
    secrets are equal when their keys are, and a secret equals no plain string (neither its masked text nor
    the key itself); equal secrets hash alike. ``copy`` and ``deepcopy`` return the same object; pickling is refused, since a
    pickle would hold the key in plain text.
    """

    _key: RevealedKey
    #: The text a Secret shows for its plain value.
    _masked_text = staticmethod(_mask)

    def __new__(cls, plain: str) -> Secret:
        text = plain.reveal() if isinstance(plain, Secret) else str.__str__(plain)
        secret = super().__new__(cls, cls._masked_text(text))
        secret.__dict__["_key"] = RevealedKey(text)
        return secret

    def reveal(self) -> RevealedKey:
        return self._key

    def masked(self) -> str:
        return str.__str__(self)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a Secret cannot be changed")

    def __eq__(self, other: object) -> bool:
        # False, not NotImplemented, for anything but a Secret: Python would then ask str.__eq__, which compares
        # the masked text, and a Secret would equal its mask while their hashes differ.
        return isinstance(other, Secret) and str.__eq__(self._key, other._key)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return str.__hash__(self._key)  # equal secrets have equal keys

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: Any) -> Secret:
        return self

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("the API key cannot be pickled (a pickle would hold it in plain text): set LLM_API_KEY where it is loaded")
