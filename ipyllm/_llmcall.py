"""One ``%llm`` / ``%%llm`` call: its options read and checked, the dry run, the reply streamed into the cell.

What happens in the cell while a reply comes (the streamed text, retry notes, what is left when the call
fails or is interrupted) is decided here; the ``Magics`` class only wires it to the shell.
"""

from __future__ import annotations

import json
import keyword
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from ipyllm import _api
from ipyllm._attach import attach, prepare_media, shown
from ipyllm._cost import estimate
from ipyllm._display import LiveOutput, footer, note_bundle, render
from ipyllm._engine import Reply, as_messages
from ipyllm._notices import said
from ipyllm._parts import count_images
from ipyllm._prompt import parse_options, split_prompt
from ipyllm.errors import Interrupted, InvalidInputError, LLMError, SettingError, StreamBrokenError

if TYPE_CHECKING:
    import argparse

__all__ = ["answer", "deliver", "dry_run", "read_call", "with_attachments"]

#: The options that override a setting for one call.
_OVERRIDES = ("model", "system", "temperature", "max_tokens")


def read_call(parser: argparse.ArgumentParser, line: str, cell: str | None) -> tuple[argparse.Namespace, str, dict[str, Any]]:
    """The call's options, its prompt template (not yet filled) and its setting overrides; bad input is a ``UsageError``."""
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
    overrides = {name: value for name in _OVERRIDES if (value := getattr(args, name)) is not None}
    return args, template, overrides


def with_attachments(messages: list[dict[str, Any]], args: argparse.Namespace, namespace: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The messages with ``--image`` and ``--file`` added to the last one: each ``--image`` a variable of the namespace,
    a path or a URL (tried in that order), each ``--file`` a path."""
    images = []
    for value in args.image or []:
        if value.isidentifier() and value in namespace:
            images.append(namespace[value])
        elif value.startswith(("http://", "https://")) or os.path.isfile(value):
            images.append(value)
        else:
            raise UsageError(f"--image {value}: no variable, file or URL of that name; define it, or give a path or an https:// URL")
    try:
        return attach(messages, images or None, args.file or None)  # type: ignore[no-any-return]
    except InvalidInputError as error:
        raise UsageError(str(error).replace("images[", "--image [").replace("files[", "--file [")) from None


def dry_run(publisher: Any, messages: list[dict[str, Any]], overrides: dict[str, Any]) -> None:
    """Show what the call would send and cost, sending nothing (each image as ``[image W×H]``)."""
    try:
        settings, _ = _api.session.split_overrides(overrides)
        messages = prepare_media(settings, as_messages(messages, settings.system))
    except (SettingError, InvalidInputError) as error:
        raise UsageError(str(error)) from None
    guess = estimate(settings, messages)
    # A total for the input, a rate for the output and the most it may bill: nothing to misread.
    images = count_images(messages)
    counted = f" (with {images} image{'s' if images != 1 else ''}: OpenAI's tile formula)" if images else ""
    summary = f"dry run, nothing sent · {guess.model} ({guess.provider or 'provider unknown'}) · {guess.describe()}{counted}"
    body = json.dumps(shown(messages), indent=2, ensure_ascii=False)
    publisher.publish(data=render(body, "json", summary), metadata={})


def answer(messages: list[dict[str, Any]], args: argparse.Namespace, overrides: dict[str, Any], output: LiveOutput, *, cell: bool) -> Reply:
    """Send the messages; a ``%%llm`` cell (``cell``) shows the reply as it streams in, and the retry notes.

    A reply that breaks off or is interrupted leaves what came in the cell; a call that fails takes its notes
    back. The exception goes on up.
    """
    fmt = args.format
    pieces: list[str] = []

    def on_text(piece: str) -> None:
        pieces.append(piece)
        if cell:
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
    if not cell:
        # Clearing the cell for the line magic's value (see deliver) would take a warning said during the call,
        # or a one-line note (an empty answer's), with it.
        output.can_clear &= said() == warnings_before and not reply.note
    return reply


def deliver(reply: Reply, output: LiveOutput, *, cell: bool) -> Reply | None:
    """A ``%%llm`` cell shows the reply (None); the line magic returns it, shown by IPython or assigned."""
    if not cell:
        # The retry notes step aside for the returned value.
        output.withdraw(f"answered after {reply.usage.attempts} attempts")
        return reply
    output.show(reply._repr_mimebundle_(), final=True)
    return None
