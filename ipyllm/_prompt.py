"""Reading a ``%llm`` line: its options, its prompt, and the prompt's ``{name}`` fields filled from the namespace.

Pure logic for the magics (no display, no model call); bad input is a ``UsageError`` in one line.
"""

from __future__ import annotations

import io
import re
import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from ipyllm._attach import PartFormatter, assemble
from ipyllm.errors import InvalidInputError

if TYPE_CHECKING:
    import argparse

__all__ = ["interpolate", "is_one_llm_line", "keep_question_marks", "parse_options", "split_prompt"]


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


class _PromptFormatter(PartFormatter):
    """``str.format`` over the user namespace; a field that cannot be filled is named in one line; a figure, an
    image or a file becomes a content part, a DataFrame a table (``_attach.PartFormatter``)."""

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


def interpolate(template: str, namespace: Mapping[str, Any], table_budget: int = 2000) -> str | list[dict[str, Any]]:
    """Replace ``{name}`` (and ``{In[3]}``, ``{obj.attr}``, ``{x:.2f}``, ``{_}``, ``{Out[2]}``) from the namespace;
    ``{{ }}`` are braces. The prompt's text, or its content parts when a field holds an image or a file."""
    formatter = _PromptFormatter(table_budget)
    try:
        if any(field == "" for _, field, _, _ in formatter.parse(template)):
            raise UsageError("{}: positional fields are not supported, name a variable (write {{ and }} for literal braces)")
        return assemble(formatter.vformat(template, (), _Namespace(namespace)), formatter.parts)
    except UsageError:
        raise
    except InvalidInputError as error:
        raise UsageError(str(error)) from None
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


def is_one_llm_line(source: str) -> bool:
    """Whether a cell's source is one ``%llm`` line (``answer = %llm ...``), comments and blank lines aside."""
    lines = [line for line in source.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return len(lines) == 1 and _LINE_MAGIC.match(lines[0]) is not None
