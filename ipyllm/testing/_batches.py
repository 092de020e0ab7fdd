"""OpenAI's Files and Batches APIs as the stub keeps them: uploaded files, batches and how each batch runs.

A batch goes ``validating`` -> ``in_progress`` -> ``finalizing`` -> ``completed``, one status per retrieve
(``GET /v1/batches/{id}``; the create's answer shows ``validating``) or one per ``seconds``, as its
``BatchScript`` says; the next batch created takes the next scripted ``BatchScript`` (the default one when none
is queued). When it ends, each input line is answered as the live route answers the same body (the stub's
``answer`` callable): in the output file as ``{"id", "custom_id", "response": {"status_code": 200,
"request_id", "body"}, "error": null}``; a line that fails (``fail_lines``, ``fail_matching``) in the error file
as ``{"id", "custom_id", "response": {"status_code": 400, "request_id", "body": {"error": {...}}}, "error":
null}``; a line that never ran (expiry, cancellation) in the error file as ``{"id", "custom_id", "response":
null, "error": {"code": "batch_expired" | "batch_cancelled", "message"}}``. ``output_file_id`` /
``error_file_id`` stay None when the file would be empty. ``request_counts.failed`` counts the lines in the error
file. An input file that is not one JSON request per line (``custom_id`` unique, ``method`` POST, ``url`` the
batch's endpoint, ``body`` with a ``model``) fails validation: status ``failed`` with ``errors``.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["BatchScript", "Batches", "StoredFile", "validate_lines"]

_RUNNING = ("validating", "in_progress", "finalizing")
_TERMINAL = ("completed", "expired", "cancelled", "failed")
_NEVER_RAN = {
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
}


@dataclass(frozen=True)
class BatchScript:
    """How one batch runs.

    polls
        Answers that show each running status (the create's answer counts for ``validating``): 1 moves on at every
        retrieve, so three retrieves reach ``completed``. ``cancelling`` lasts one retrieve.
    seconds
        When given, the status moves on every ``seconds`` instead (``cancelling`` too), whatever the retrieves.
    hold
        Stay ``in_progress`` until ``StubServer.release_batches()`` (``POST /_stub/release``).
    progress
        Lines done while ``in_progress`` (shown in ``request_counts``); an expired or cancelled batch keeps them.
    fail_lines, fail_matching
        Lines that fail: by position (0 is the first line), or whose ``custom_id`` or body JSON the regular
        expression matches; each gets HTTP ``fail_status`` with ``fail_message`` in the error file.
    end
        ``completed``, ``expired`` (after ``in_progress``, with the ``progress`` lines done) or ``failed`` (after
        ``validating``, with ``errors``, as a file OpenAI refuses).
    """

    polls: int = 1
    seconds: float | None = None
    hold: bool = False
    progress: int = 0
    fail_lines: tuple[int, ...] = ()
    fail_matching: str = ""
    fail_status: int = 400
    fail_message: str = "Invalid request (stub)"
    end: str = "completed"

    def __post_init__(self) -> None:
        if self.end not in ("completed", "expired", "failed"):
            raise ValueError(f"a batch ends completed, expired or failed, not {self.end!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchScript:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "fail_lines" in values:
            values["fail_lines"] = tuple(int(n) for n in values["fail_lines"])
        return cls(**values)

    @classmethod
    def parse(cls, text: str) -> BatchScript:
        """The command-line form: ``polls=2,seconds=0.5,hold,progress=3,fail_lines=1;4,fail_matching=boom,end=expired``."""
        values: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for item in filter(None, text.split(",")):
            name, _, value = item.partition("=")
            if name not in types:
                raise ValueError(f"unknown batch setting {name!r}: use {', '.join(types)}")
            if name == "hold":
                values[name] = value.lower() not in ("0", "false", "no")
            elif name == "fail_lines":
                values[name] = tuple(int(n) for n in value.split(";") if n)
            elif name in ("polls", "progress", "fail_status"):
                values[name] = int(value)
            elif name == "seconds":
                values[name] = float(value)
            else:
                values[name] = value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fails(self, index: int, line: dict[str, Any]) -> bool:
        if index in self.fail_lines:
            return True
        pattern = self.fail_matching
        return bool(pattern) and bool(
            re.search(pattern, str(line.get("custom_id", ""))) or re.search(pattern, json.dumps(line.get("body")))
        )


@dataclass
class StoredFile:
    """An uploaded file, or a batch's output or error file."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int = field(default_factory=lambda: int(time.time()))

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


def validate_lines(data: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The input file's requests, and the errors that fail its validation (OpenAI's ``errors.data`` items)."""
    lines: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()

    def error(code: str, message: str, number: int | None, param: str | None = None) -> None:
        errors.append({"code": code, "message": message, "param": param, "line": number})

    for number, raw in enumerate(data.decode(errors="replace").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            error("invalid_json_line", f"This line is not parseable as valid JSON (line {number}).", number)
            continue
        if not isinstance(line, dict):
            error("invalid_json_line", f"This line is not a JSON object (line {number}).", number)
            continue
        for name in ("custom_id", "method", "url", "body"):
            if name not in line:
                error("missing_required_parameter", f"Missing required parameter: '{name}' (line {number}).", number, name)
        custom_id = line.get("custom_id")
        if custom_id in seen:
            error(
                "duplicate_custom_id",
                f"The custom_id for this request is a duplicate of another request (line {number}).",
                number,
                "custom_id",
            )
        if str(line.get("method", "POST")).upper() != "POST":
            error("invalid_request", f"Only POST requests are accepted (line {number}).", number, "method")
        if line.get("url", endpoint) != endpoint:
            error(
                "invalid_url",
                f"The URL provided for this request does not match the batch endpoint {endpoint} (line {number}).",
                number,
                "url",
            )
        body = line.get("body")
        if "body" in line and (not isinstance(body, dict) or not body.get("model")):
            error("missing_required_parameter", f"The request body has no 'model' (line {number}).", number, "body.model")
        seen.add(str(custom_id))
        lines.append(line)
    if not lines and not errors:
        error("empty_file", "The batch input file is empty.", None)
    return lines, errors


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


@dataclass
class _Batch:
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, Any] | None
    script: BatchScript
    lines: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    path: list[str]
    stage: int = 0
    shown: int = 1  # answers that showed the current status
    since: float = field(default_factory=time.monotonic)
    stamps: dict[str, int] = field(default_factory=dict)
    done: int | None = None  # lines done when cancelled
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    usage: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        return self.path[self.stage]

    def payload(self) -> dict[str, Any]:
        """The batch object as the Batches API shows it."""
        created = self.stamps["created"]
        stamp = self.stamps.get
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": next((line["body"].get("model") for line in self.lines if isinstance(line.get("body"), dict)), None),
            "errors": {"object": "list", "data": self.errors} if self.status == "failed" else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": created,
            "in_progress_at": stamp("in_progress"),
            "expires_at": created + 24 * 3600,
            "finalizing_at": stamp("finalizing"),
            "completed_at": stamp("completed"),
            "failed_at": stamp("failed"),
            "expired_at": stamp("expired"),
            "cancelling_at": stamp("cancelling"),
            "cancelled_at": stamp("cancelled"),
            "request_counts": dict(self.counts),
            "usage": self.usage,
            "metadata": self.metadata,
        }


class Batches:
    """The files and batches of one stub server, thread-safe.

    ``answer(endpoint, body)`` answers one request line as the live route would: ``(status_code, body)``.
    """

    def __init__(self, answer: Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]) -> None:
        self._answer = answer
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, _Batch] = {}
        self._scripts: deque[BatchScript] = deque()
        self._released = False
        self._lock = threading.RLock()

    # -- scripting ------------------------------------------------------------------------------------------
    def script(self, *scripts: BatchScript) -> None:
        with self._lock:
            self._scripts.extend(scripts)

    def release(self) -> None:
        """Let every held batch (``BatchScript(hold=True)``), and every later one, go on past ``in_progress``."""
        with self._lock:
            self._released = True

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self._released = False

    # -- files ----------------------------------------------------------------------------------------------
    def add_file(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        stored = StoredFile(_new_id("file-"), filename, purpose, data)
        with self._lock:
            self.files[stored.id] = stored
        return stored

    def get_file(self, file_id: str) -> StoredFile | None:
        with self._lock:
            return self.files.get(file_id)

    def list_files(self) -> list[StoredFile]:
        with self._lock:
            return list(self.files.values())

    def known(self, batch_id: str) -> bool:
        with self._lock:
            return batch_id in self.batches

    def delete_file(self, file_id: str) -> bool:
        with self._lock:
            return self.files.pop(file_id, None) is not None

    # -- batches --------------------------------------------------------------------------------------------
    def create(self, input_file_id: str, endpoint: str, completion_window: str, metadata: dict[str, Any] | None) -> dict[str, Any] | None:
        """The new batch, or None when there is no such input file."""
        with self._lock:
            if input_file_id not in self.files:
                return None
            script = self._scripts.popleft() if self._scripts else BatchScript()
            lines, errors = validate_lines(self.files[input_file_id].data, endpoint)
            if errors or script.end == "failed":
                errors = errors or [
                    {"code": "invalid_request", "message": "The batch failed validation (stub).", "param": None, "line": None}
                ]
                path = ["validating", "failed"]
            elif script.end == "expired":
                path = ["validating", "in_progress", "expired"]
            else:
                path = ["validating", "in_progress", "finalizing", "completed"]
            batch = _Batch(_new_id("batch_"), endpoint, input_file_id, completion_window, metadata, script, lines, errors, path)
            batch.stamps["created"] = int(time.time())
            self.batches[batch.id] = batch
            return batch.payload()

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        with self._lock:
            batch = self.batches[batch_id]
            self._advance(batch, poll=True)
            return batch.payload()

    def cancel(self, batch_id: str) -> dict[str, Any] | None:
        """The batch, now ``cancelling``; None when it has already ended."""
        with self._lock:
            batch = self.batches[batch_id]
            self._advance(batch, poll=False)
            if batch.status not in _RUNNING:
                return None
            batch.done = {"validating": 0, "in_progress": min(batch.script.progress, len(batch.lines))}.get(batch.status, len(batch.lines))
            batch.path = [*batch.path[: batch.stage + 1], "cancelling", "cancelled"]
            self._enter(batch, batch.stage + 1)
            return batch.payload()

    def listing(self, limit: int = 20, after: str | None = None) -> dict[str, Any]:
        """``GET /v1/batches``: the newest first, ``limit`` of them after the batch ``after``."""
        with self._lock:
            ordered = list(reversed(self.batches.values()))
            if after is not None and after in self.batches:
                ordered = ordered[[b.id for b in ordered].index(after) + 1 :]
            page = ordered[:limit]
            for batch in page:
                self._advance(batch, poll=False)
            data = [b.payload() for b in page]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(ordered) > limit,
        }

    # -- running --------------------------------------------------------------------------------------------
    def _held(self, batch: _Batch) -> bool:
        return batch.script.hold and not self._released and batch.status == "in_progress"

    def _advance(self, batch: _Batch, poll: bool) -> None:
        last = len(batch.path) - 1
        if batch.script.seconds is not None:
            while batch.stage < last and not self._held(batch) and time.monotonic() - batch.since >= batch.script.seconds:
                self._enter(batch, batch.stage + 1, since=batch.since + batch.script.seconds)
        elif poll and batch.stage < last and not self._held(batch):
            if batch.shown >= batch.script.polls or batch.status == "cancelling":
                self._enter(batch, batch.stage + 1)
            else:
                batch.shown += 1

    def _enter(self, batch: _Batch, stage: int, since: float | None = None) -> None:
        batch.stage, batch.shown, batch.since = stage, 1, time.monotonic() if since is None else since
        batch.stamps[batch.status] = int(time.time())
        total = len(batch.lines)
        if batch.status == "in_progress":
            done = min(batch.script.progress, total)
            failed = sum(batch.script.fails(i, batch.lines[i]) for i in range(done))
            batch.counts = {"total": total, "completed": done - failed, "failed": failed}
        elif batch.status == "finalizing":
            failed = sum(batch.script.fails(i, line) for i, line in enumerate(batch.lines))
            batch.counts = {"total": total, "completed": total - failed, "failed": failed}
        elif batch.status in ("completed", "expired", "cancelled"):
            done = {"completed": total, "expired": min(batch.script.progress, total)}.get(batch.status, batch.done or 0)
            self._finish(batch, done)

    def _finish(self, batch: _Batch, done: int) -> None:
        output: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        tokens = {"input": 0, "cached": 0, "output": 0}
        body: dict[str, Any]
        for index, line in enumerate(batch.lines):
            row: dict[str, Any] = {"id": _new_id("batch_req_"), "custom_id": line.get("custom_id"), "response": None, "error": None}
            if index >= done:
                code, message = _NEVER_RAN[batch.status]
                row["error"] = {"code": code, "message": message}
                failed.append(row)
                continue
            if batch.script.fails(index, line):
                error = {"message": batch.script.fail_message, "type": "invalid_request_error", "param": None, "code": None}
                status, body = batch.script.fail_status, {"error": error}
            else:
                status, body = self._answer(batch.endpoint, dict(line.get("body") or {}))
            row["response"] = {"status_code": status, "request_id": _new_id("req_"), "body": body}
            (output if status == 200 else failed).append(row)
            if status == 200 and isinstance(body.get("usage"), dict):
                reported = body["usage"]
                tokens["input"] += reported.get("prompt_tokens", 0)
                tokens["output"] += reported.get("completion_tokens", 0)
                tokens["cached"] += (reported.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        batch.usage = {
            "input_tokens": tokens["input"],
            "input_tokens_details": {"cached_tokens": tokens["cached"]},
            "output_tokens": tokens["output"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": tokens["input"] + tokens["output"],
        }
        batch.counts = {"total": len(batch.lines), "completed": len(output), "failed": len(failed)}
        for kind, rows in (("output", output), ("error", failed)):
            if rows:
                data = "".join(json.dumps(row) + "\n" for row in rows).encode()
                stored = self.add_file(f"batch_{batch.id}_{kind}.jsonl", "batch_output", data)
                setattr(batch, f"{kind}_file_id", stored.id)
