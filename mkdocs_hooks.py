"""MkDocs hook: the README's links are checked like the pages' own.

The README lives outside ``docs/``, so MkDocs neither renders nor validates it. After the pages are rendered
(each with the anchor ids it holds), this hook reads the README's relative links and warns, which
``--strict`` makes an error, when a linked file is missing or a linked docs page lacks the anchor.
Links with a scheme (``https://...``) are not checked.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger("mkdocs.hooks.readme_links")

# Markdown inline links and images: ](target) or ](target "title").
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")

_anchors: dict[str, set[str]] = {}


def on_pre_build(config: Any) -> None:
    _anchors.clear()


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    _anchors[page.file.src_uri] = set(page.present_anchor_ids or ())
    return html


def on_post_build(config: Any) -> None:
    root = Path(config.config_file_path).resolve().parent
    docs = Path(config.docs_dir).resolve()
    readme = root / "README.md"
    for target in LINK.findall(readme.read_text(encoding="utf-8")):
        url = urlsplit(target)
        if url.scheme or url.netloc:
            continue
        if not url.path:
            log.warning(f"README.md links to '{target}': anchors within the README are not checked; link a docs page instead")
            continue
        path = (root / unquote(url.path)).resolve()
        if not path.exists():
            shown = path.relative_to(root) if path.is_relative_to(root) else path
            log.warning(f"README.md links to '{target}', but {shown} does not exist")
            continue
        if not url.fragment:
            continue
        page = path.relative_to(docs).as_posix() if path.is_relative_to(docs) else None
        if page not in _anchors:
            log.warning(f"README.md links to '{target}': only anchors in the docs pages can be checked")
        elif unquote(url.fragment) not in _anchors[page]:
            log.warning(f"README.md links to '{target}', but there is no anchor '#{url.fragment}' on {page}")
