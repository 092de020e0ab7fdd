"""Bad input refused before anything is sent: prompt and message shapes, texts to embed, keywords.

Each check raises ``InvalidInputError`` with one line naming what was wrong and the accepted form; nothing
is sent and no usage row is written. The keyword check asks litellm what the model accepts
(``get_supported_openai_params``) besides litellm's own call arguments, so a typo is caught with its close
match while every real parameter still passes; provider-specific extras go through ``extra_body=``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from ipyllm._litellm import call_arguments, provider_parameters
from ipyllm.errors import InvalidInputError

__all__ = ["ROLES", "check_encodable", "check_keywords", "check_prompt", "check_texts"]

#: The roles of OpenAI-style messages (litellm translates them for other providers).
ROLES = ("system", "user", "assistant", "tool", "developer", "function")
_MESSAGE_FORM = "[{'role': 'user', 'content': 'Hello'}, ...]"
_PROMPT_FORM = f"a prompt string, or a list of messages like {_MESSAGE_FORM}"
# Accepted besides the provider's parameters and litellm's own: provider extras and request plumbing.
_ALWAYS = frozenset({"extra_body", "extra_headers", "extra_query", "drop_params", "stream_options", "tools", "tool_choice"})
_INSTEAD = {
    "dry_run": "dry_run is not a keyword of {caller} (it would be sent): use ipyllm.estimate(prompt, ...) to see what a call "
    "would cost without sending it, or %%llm --dry-run",
}


def _kind(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def check_prompt(prompt_or_messages: Any) -> None:
    """A non-empty string, or a non-empty list of messages with a known role and content each."""
    value = prompt_or_messages
    if isinstance(value, str):
        if not value.strip():
            raise InvalidInputError(f"the prompt is empty: pass {_PROMPT_FORM}")
        return
    if isinstance(value, (bytes, bytearray)):
        raise InvalidInputError("the prompt is bytes: decode it first, e.g. prompt.decode('utf-8'), and pass the string")
    if isinstance(value, Mapping):
        raise InvalidInputError("the prompt is one message (a dict): pass a list of messages, e.g. [{'role': 'user', ...}], or a string")
    if not isinstance(value, Sequence):
        raise InvalidInputError(f"the prompt is {_kind(value)}: pass {_PROMPT_FORM}")
    if not value:
        raise InvalidInputError(f"the list of messages is empty: pass at least one, e.g. {_MESSAGE_FORM}")
    for index, message in enumerate(value):
        _check_message(index, message)


def _check_message(index: int, message: Any) -> None:
    where = f"message {index}"
    if not isinstance(message, Mapping):
        raise InvalidInputError(
            f"{where} is {_kind(message)} {message!r:.40}: each message is a dict like {{'role': 'user', 'content': 'Hello'}}"
        )
    role = message.get("role")
    if role is None:
        raise InvalidInputError(f"{where} has no 'role': give one of {', '.join(ROLES)}")
    if role not in ROLES:
        close = difflib.get_close_matches(str(role), ROLES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InvalidInputError(f"{where} has the unknown role {role!r}: {hint}roles are {', '.join(ROLES)}")
    content = message.get("content")
    if "content" not in message and not (role == "assistant" and (message.get("tool_calls") or message.get("function_call"))):
        raise InvalidInputError(f"{where} ({role}) has no 'content': e.g. {{'role': {role!r}, 'content': 'Hello'}}")
    if content is None and role != "assistant":
        raise InvalidInputError(f"{where} ({role}) has content None: give a string, or a list of content parts")
    if content is not None and not isinstance(content, (str, list)):
        raise InvalidInputError(f"{where} ({role}) has content of type {_kind(content)}: give a string, or a list of content parts")


def _strings(messages: Sequence[Mapping[str, Any]]) -> Any:
    """Every text in the messages, with where it is: content strings and text parts."""
    for index, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, str):
            yield f"message {index} ({message.get('role')})", content
        elif isinstance(content, list):
            for number, part in enumerate(content):
                text = part.get("text") if isinstance(part, Mapping) else part
                if isinstance(text, str):
                    yield f"message {index} ({message.get('role')}), part {number}", text


def check_encodable(messages: Sequence[Mapping[str, Any]] | None = None, texts: Sequence[str] | None = None) -> None:
    """Every text must be valid UTF-8: a lone surrogate (a file name read with ``surrogateescape``) is named."""
    items = list(_strings(messages or [])) + [(f"text {i}", t) for i, t in enumerate(texts or [])]
    for where, text in items:
        try:
            text.encode("utf-8")
            continue
        except UnicodeEncodeError as error:
            position = error.start
        # Raised outside the except block: the one line says it all.
        raise InvalidInputError(
            f"{where} cannot be sent as UTF-8: position {position} holds {text[position]!r}, a lone surrogate (text read with "
            "errors='surrogateescape', e.g. a file name?): repair it, e.g. text.encode('utf-8', 'surrogateescape')"
            ".decode('utf-8', 'replace')"
        )


def check_texts(texts: Any) -> list[str]:
    """Texts to embed: a non-empty string, or a non-empty list of non-empty strings."""
    form = "a string, or a list of strings"
    if isinstance(texts, str):
        items = [texts]
    elif isinstance(texts, (bytes, bytearray)) or isinstance(texts, Mapping) or not isinstance(texts, Sequence):
        raise InvalidInputError(f"the texts to embed are {_kind(texts)}: pass {form}")
    else:
        items = list(texts)
    if not items:
        raise InvalidInputError(f"nothing to embed (an empty list): pass {form}")
    for index, text in enumerate(items):
        if not isinstance(text, str):
            raise InvalidInputError(f"text {index} is {_kind(text)}, not a string: pass {form}")
        if not text.strip():
            raise InvalidInputError(f"text {index} is empty: providers refuse empty texts; drop it or put words in it")
    check_encodable(texts=items)
    return items


def check_keywords(kind: str, model: str, provider: str | None, extra: Mapping[str, Any], caller: str | None = None) -> None:
    """Refuse keywords neither the model's provider nor litellm accepts, naming the close match.

    ``caller`` is the function the user called (``map``, ``estimate``, ...), named in the refusal; by default
    ``complete`` for a chat and ``embed`` for an embedding.
    """
    what = caller or ("complete" if kind == "chat" else "embed")
    for name in extra:
        if name in _INSTEAD and what in ("complete", "acomplete"):
            raise InvalidInputError(_INSTEAD[name].format(caller=what))
    if not extra or provider is None:
        return  # an unknown model: litellm's own error about it says more than a keyword check could
    provider_names = provider_parameters(kind, model, provider)
    known = provider_names | call_arguments(kind) | _ALWAYS
    for name in extra:
        if name in known:
            continue
        close = difflib.get_close_matches(name, sorted(provider_names | _ALWAYS), n=1) or difflib.get_close_matches(
            name, sorted(known), n=1
        )
        hint = f"did you mean {close[0]}? " if close else ""
        raise InvalidInputError(
            f"{what}() got the unknown keyword {name!r}: {hint}litellm.get_supported_openai_params({model!r}) lists what "
            f"{model} takes; send provider-specific extras as extra_body={{{name!r}: ...}}"
        )
