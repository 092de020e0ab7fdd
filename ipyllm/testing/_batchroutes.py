"""The HTTP routes of OpenAI's Files and Batches APIs on the stub, over the state kept in ``_batches``.

``POST /v1/files`` (multipart: ``purpose``, ``file``), ``GET /v1/files``, ``GET /v1/files/{id}``,
``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``; ``POST /v1/batches``, ``GET /v1/batches`` (``limit``,
``after``), ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel`` (also without the ``/v1``). Errors come in
OpenAI's form.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ipyllm.testing._batches import Batches

__all__ = ["ENDPOINTS", "batch_api", "is_batch_api", "parse_multipart"]

#: The endpoints a batch may run.
ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
_FILES = re.compile(r"^(?:/v1)?/files(?:/(?P<id>[^/]+)(?P<content>/content)?)?/?$")
_BATCHES = re.compile(r"^(?:/v1)?/batches(?:/(?P<id>[^/]+)(?P<cancel>/cancel)?)?/?$")


def is_batch_api(path: str) -> bool:
    return bool(_FILES.match(path) or _BATCHES.match(path))


def parse_multipart(raw: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """A ``multipart/form-data`` body's fields: name -> (filename or None, bytes)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        return {}
    found: dict[str, tuple[str | None, bytes]] = {}
    for part in raw.split(b"--" + match[1].encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        text = head.decode(errors="replace")
        name = re.search(r'\bname="([^"]*)"', text)
        filename = re.search(r'\bfilename="([^"]*)"', text)
        if name is not None:
            found[name[1]] = (filename[1] if filename else None, content.removesuffix(b"\r\n"))
    return found


def _error(status: int, message: str, param: str | None = None) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}


def batch_api(
    batches: Batches, method: str, path: str, query: dict[str, str], raw: bytes, content_type: str
) -> tuple[int, Any, dict[str, Any]]:
    """Answer one request: ``(status, JSON payload or the bytes of a file, the body to record)``."""
    if (files := _FILES.match(path)) is not None:
        return _files(batches, method, files["id"], bool(files["content"]), raw, content_type)
    found = _BATCHES.match(path)
    assert found is not None
    body: dict[str, Any] = {}
    if raw:
        try:
            loaded = json.loads(raw)
            body = loaded if isinstance(loaded, dict) else {"_raw": loaded}
        except json.JSONDecodeError:
            body = {"_raw": raw.decode(errors="replace")}
    batch_id = found["id"]
    if method == "POST" and batch_id is None:
        return (*_create(batches, body), body)
    if method == "GET" and batch_id is None:
        limit = int(query.get("limit") or 20)
        return 200, batches.listing(limit, query.get("after")), body
    if not batches.known(batch_id):
        return (*_error(404, f"No batch found with id '{batch_id}'."), body)
    if method == "GET" and not found["cancel"]:
        return 200, batches.retrieve(batch_id), body
    if method == "POST" and found["cancel"]:
        cancelled = batches.cancel(batch_id)
        if cancelled is None:
            status = batches.batches[batch_id].status
            return (*_error(409, f"Cannot cancel a batch with status '{status}'."), body)
        return 200, cancelled, body
    return (*_error(405, f"{method} is not allowed on {path}"), body)


def _create(batches: Batches, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not body.get(name):
            return _error(400, f"Missing required parameter: '{name}'.", name)
    if body["endpoint"] not in ENDPOINTS:
        return _error(400, f"The stub runs batches on {' and '.join(ENDPOINTS)}, not {body['endpoint']}.", "endpoint")
    if body["completion_window"] != "24h":
        return _error(400, "Invalid 'completion_window': only '24h' is supported.", "completion_window")
    created = batches.create(body["input_file_id"], body["endpoint"], body["completion_window"], body.get("metadata"))
    if created is None:
        return _error(404, f"No such File object: {body['input_file_id']}", "input_file_id")
    return 200, created


def _files(
    batches: Batches, method: str, file_id: str | None, content: bool, raw: bytes, content_type: str
) -> tuple[int, Any, dict[str, Any]]:
    if file_id is None and method == "POST":
        form = parse_multipart(raw, content_type)
        filename, data = form.get("file", (None, b""))
        purpose = form.get("purpose", (None, b""))[1].decode()
        recorded = {"purpose": purpose, "filename": filename, "bytes": len(data)}
        if not purpose or "file" not in form:
            return (*_error(400, "Upload a file with 'file' and 'purpose' (multipart/form-data).", "file"), recorded)
        return 200, batches.add_file(filename or "upload.jsonl", purpose, data).payload(), recorded
    if file_id is None and method == "GET":
        return 200, {"object": "list", "data": [f.payload() for f in batches.list_files()], "has_more": False}, {}
    stored = batches.get_file(str(file_id))
    if stored is None:
        return (*_error(404, f"No such File object: {file_id}", "file_id"), {})
    if method == "GET":
        return 200, (stored.data if content else stored.payload()), {}
    if method == "DELETE" and not content:
        batches.delete_file(stored.id)
        return 200, {"id": stored.id, "object": "file", "deleted": True}, {}
    return (*_error(405, f"{method} is not allowed here"), {})
