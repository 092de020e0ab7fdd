"""The stub's Files and Batches APIs (``ipyllm.testing._batches``, ``_batchroutes``), through litellm's own batch
functions over real HTTP: a whole batch's life, per-line failures, expiry, cancellation, a refused file, statuses
moved on by time, scripts sent from another process, faults on the API, and the record of what was asked.

Expected answers are worked out here from the stub's rule (``"[{model}] {last user message}"``, tokens counted as
words and punctuation marks), or taken from a live call to the same stub with the same body.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import litellm
import openai
import pytest

from ipyllm.testing import BatchScript, Fault, StubServer, count_tokens, script_remote


def request_line(custom_id: str, text: str, model: str = "gpt-4o-mini", url: str = "/v1/chat/completions") -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": model, "messages": [{"role": "user", "content": text}]}}


def jsonl(lines: list[Any]) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


class Client:
    """litellm's batch functions, pointed at the stub (and without the openai SDK's own retries)."""

    def __init__(self, stub: StubServer) -> None:
        self.stub = stub
        self.kw: dict[str, Any] = {"custom_llm_provider": "openai", "api_base": stub.base_url, "api_key": "sk-stub", "max_retries": 0}

    def submit(self, lines: list[Any], endpoint: str = "/v1/chat/completions", **extra: Any) -> Any:
        uploaded = litellm.create_file(file=("rows.jsonl", jsonl(lines)), purpose="batch", **self.kw)
        return litellm.create_batch(completion_window="24h", endpoint=endpoint, input_file_id=uploaded.id, **extra, **self.kw)  # type: ignore[arg-type]

    def retrieve(self, batch_id: str) -> Any:
        return litellm.retrieve_batch(batch_id=batch_id, **self.kw)

    def poll(self, batch: Any, limit: int = 20) -> tuple[Any, list[str]]:
        """Retrieve until the batch ends: the last answer and every status seen (the create's first)."""
        seen = [batch.status]
        while batch.status not in ("completed", "expired", "cancelled", "failed") and len(seen) <= limit:
            batch = self.retrieve(batch.id)
            seen.append(batch.status)
        return batch, seen

    def read(self, file_id: str | None) -> list[dict[str, Any]]:
        assert file_id is not None
        content = litellm.file_content(file_id=file_id, **self.kw)
        return [json.loads(line) for line in content.content.decode().splitlines()]


@pytest.fixture
def client(stub: StubServer) -> Client:
    return Client(stub)


def test_a_batch_runs_its_course_through_litellm_and_answers_each_line_as_the_live_route(stub: StubServer, client: Client) -> None:
    lines = [request_line(f"row-{i}", f"tell me about otter number {i}") for i in range(5)]
    batch = client.submit(lines, metadata={"map": "otters"})
    assert batch.status == "validating" and batch.metadata == {"map": "otters"} and batch.endpoint == "/v1/chat/completions"
    assert batch.request_counts.total == 0 and batch.output_file_id is None

    batch, seen = client.poll(batch)
    assert seen == ["validating", "in_progress", "finalizing", "completed"], "one status per retrieve, by default"
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (5, 5, 0)
    assert batch.error_file_id is None and batch.errors is None
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert batch.expires_at == batch.created_at + 24 * 3600

    output = client.read(batch.output_file_id)
    assert sorted(row["custom_id"] for row in output) == [f"row-{i}" for i in range(5)]
    for row in output:
        number = row["custom_id"].removeprefix("row-")
        body = row["response"]["body"]
        assert row["error"] is None and row["response"]["status_code"] == 200 and row["response"]["request_id"].startswith("req_")
        assert body["choices"][0]["message"]["content"] == f"[gpt-4o-mini] tell me about otter number {number}"
        # 3 for the user's turn, 5 words and the number, 3 for the reply's
        assert body["usage"]["prompt_tokens"] == 3 + 6 + 3 and body["usage"]["completion_tokens"] == count_tokens(
            f"[gpt-4o-mini] tell me about otter number {number}"
        )

    live = litellm.completion(model="openai/gpt-4o-mini", api_base=stub.base_url, api_key="sk-stub", messages=lines[3]["body"]["messages"])
    batched = next(row["response"]["body"] for row in output if row["custom_id"] == "row-3")
    assert batched["choices"][0]["message"]["content"] == live.choices[0].message.content
    assert (batched["usage"]["prompt_tokens"], batched["usage"]["completion_tokens"]) == (
        live.usage.prompt_tokens,
        live.usage.completion_tokens,
    )
    assert batch.usage.input_tokens == sum(row["response"]["body"]["usage"]["prompt_tokens"] for row in output)

    assert len(stub.requests_to("/v1/files")) == 1 and len(stub.requests_to("/v1/batches")) == 1, "one upload, one create"
    assert stub.requests_to("/v1/files")[0].body == {"purpose": "batch", "filename": "rows.jsonl", "bytes": len(jsonl(lines))}
    assert len(stub.requests_to(f"/v1/batches/{batch.id}", method="GET")) == 3
    assert stub.requests_to("/v1/batches")[0].body["input_file_id"] == batch.input_file_id


def test_the_input_file_comes_back_and_files_and_batches_are_listed_and_deleted(client: Client) -> None:
    lines = [request_line("only", "hello")]
    first = client.submit(lines)
    second = client.submit(lines)
    assert litellm.file_content(file_id=first.input_file_id, **client.kw).content == jsonl(lines)
    stored = litellm.file_retrieve(file_id=first.input_file_id, **client.kw)
    assert (stored.purpose, stored.bytes, stored.filename) == ("batch", len(jsonl(lines)), "rows.jsonl")

    listed = litellm.list_batches(limit=1, **client.kw)
    assert [b.id for b in listed.data] == [second.id] and listed.has_more, "the newest first"
    after = litellm.list_batches(limit=5, after=second.id, **client.kw)
    assert [b.id for b in after.data] == [first.id] and not after.has_more

    assert litellm.file_delete(file_id=first.input_file_id, **client.kw).deleted
    with pytest.raises(openai.NotFoundError):
        litellm.file_retrieve(file_id=first.input_file_id, **client.kw)


def test_lines_fail_by_position_or_by_what_they_say(stub: StubServer, client: Client) -> None:
    stub.script_batches(BatchScript(fail_lines=(1,), fail_matching="boom", fail_message="This model is not available (stub)"))
    lines = [request_line(f"r{i}", text) for i, text in enumerate(["fine", "also fine", "boom goes this one", "fine again"])]
    batch, _ = client.poll(client.submit(lines))
    assert batch.status == "completed" and (batch.request_counts.completed, batch.request_counts.failed) == (2, 2)
    assert [row["custom_id"] for row in client.read(batch.output_file_id)] == ["r0", "r3"]
    errors = client.read(batch.error_file_id)
    assert [row["custom_id"] for row in errors] == ["r1", "r2"]
    for row in errors:
        assert row["error"] is None and row["response"]["status_code"] == 400
        assert row["response"]["body"]["error"]["message"] == "This model is not available (stub)"


def test_an_expired_batch_keeps_the_lines_it_finished(stub: StubServer, client: Client) -> None:
    stub.script_batches(BatchScript(end="expired", progress=2, fail_lines=(1,)))
    batch = client.submit([request_line(f"r{i}", f"row {i}") for i in range(5)])
    in_progress = client.retrieve(batch.id)
    assert in_progress.status == "in_progress" and (in_progress.request_counts.completed, in_progress.request_counts.failed) == (1, 1)
    batch, seen = client.poll(in_progress)
    assert seen == ["in_progress", "expired"] and batch.expired_at is not None and batch.completed_at is None
    assert [row["custom_id"] for row in client.read(batch.output_file_id)] == ["r0"]
    errors = {row["custom_id"]: row for row in client.read(batch.error_file_id)}
    assert errors["r1"]["response"]["status_code"] == 400, "a line that ran and failed"
    for name in ("r2", "r3", "r4"):
        assert errors[name]["response"] is None and errors[name]["error"]["code"] == "batch_expired"
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (5, 1, 4)


def test_a_cancelled_batch_goes_through_cancelling_and_keeps_what_was_done(stub: StubServer, client: Client) -> None:
    stub.script_batches(BatchScript(hold=True, progress=2))
    batch = client.submit([request_line(f"r{i}", f"row {i}") for i in range(4)])
    for _ in range(5):
        batch = client.retrieve(batch.id)
    assert batch.status == "in_progress", "held until released"
    cancelling = litellm.cancel_batch(batch_id=batch.id, **client.kw)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    batch, seen = client.poll(cancelling)
    assert seen == ["cancelling", "cancelled"] and batch.cancelled_at is not None
    assert [row["custom_id"] for row in client.read(batch.output_file_id)] == ["r0", "r1"]
    assert [(row["custom_id"], row["error"]["code"]) for row in client.read(batch.error_file_id)] == [
        ("r2", "batch_cancelled"),
        ("r3", "batch_cancelled"),
    ]
    with pytest.raises(openai.ConflictError, match="Cannot cancel a batch with status 'cancelled'"):
        litellm.cancel_batch(batch_id=batch.id, **client.kw)


def test_a_held_batch_goes_on_once_released(stub: StubServer, client: Client) -> None:
    stub.script_batches(BatchScript(hold=True))
    batch = client.submit([request_line("a", "x")])
    assert [client.retrieve(batch.id).status for _ in range(3)] == ["in_progress"] * 3
    stub.release_batches()
    assert client.poll(client.retrieve(batch.id))[1] == ["finalizing", "completed"]


def test_a_malformed_file_fails_validation_with_its_errors(client: Client) -> None:
    good = request_line("a", "fine")
    lines = [
        good,
        "{not json",
        {"method": "POST", "url": "/v1/chat/completions", "body": good["body"]},
        good,
        request_line("b", "x", url="/v1/embeddings"),
    ]
    batch, seen = client.poll(client.submit(lines))
    assert seen == ["validating", "failed"] and batch.failed_at is not None and batch.output_file_id is None
    errors = [(error.code, error.line, error.param) for error in batch.errors.data]
    assert errors == [
        ("invalid_json_line", 2, None),
        ("missing_required_parameter", 3, "custom_id"),
        ("duplicate_custom_id", 4, "custom_id"),
        ("invalid_url", 5, "url"),
    ]
    with pytest.raises(openai.BadRequestError, match="only '24h'"):
        litellm.create_batch(completion_window="1h", endpoint="/v1/chat/completions", input_file_id=batch.input_file_id, **client.kw)  # type: ignore[arg-type]


def test_a_scripted_progression_moves_on_with_time_not_retrieves(stub: StubServer, client: Client) -> None:
    stub.script_batches(BatchScript(seconds=0.4))
    batch = client.submit([request_line("a", "x")])
    started = time.monotonic()
    seen = [batch.status]
    while seen[-1] != "completed" and time.monotonic() - started < 10:
        time.sleep(0.05)
        status = client.retrieve(batch.id).status
        if status != seen[-1]:
            seen.append(status)
    assert time.monotonic() - started >= 3 * 0.4 - 0.1
    assert seen == ["validating", "in_progress", "finalizing", "completed"]


def test_polls_say_how_many_answers_show_each_status(stub: StubServer, client: Client) -> None:
    stub.script_batches(BatchScript(polls=2))
    _, seen = client.poll(client.submit([request_line("a", "x")]))
    assert seen == ["validating", "validating", "in_progress", "in_progress", "finalizing", "finalizing", "completed"]


def test_another_process_scripts_batches_over_http(stub: StubServer, client: Client) -> None:
    script_remote(stub.url, batches=[BatchScript(fail_lines=(0,)), "hold,progress=1"])
    first, _ = client.poll(client.submit([request_line("a", "x"), request_line("b", "y")]))
    assert (first.request_counts.completed, first.request_counts.failed) == (1, 1)
    second = client.submit([request_line("a", "x")])
    assert [client.retrieve(second.id).status for _ in range(2)] == ["in_progress", "in_progress"]
    script_remote(stub.base_url, release=True)
    assert client.poll(client.retrieve(second.id))[0].status == "completed"


def test_api_faults_answer_before_the_request_acts(stub: StubServer, client: Client) -> None:
    batch = client.submit([request_line("a", "x")])
    stub.script_api(Fault.status(503), Fault.rate_limit(retry_after=1))
    with pytest.raises(openai.InternalServerError):
        client.retrieve(batch.id)
    with pytest.raises(openai.RateLimitError):
        client.retrieve(batch.id)
    assert client.retrieve(batch.id).status == "in_progress", "the failed polls moved nothing on"
    assert [r.fault for r in stub.requests_to(f"/v1/batches/{batch.id}", method="GET")] == ["status", "status", ""]


def test_embeddings_and_cached_prefixes_in_batch_lines(stub: StubServer, client: Client) -> None:
    line = {
        "custom_id": "e",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small", "input": "otters swim"},
    }
    embedded, _ = client.poll(client.submit([line], endpoint="/v1/embeddings"))
    row = client.read(embedded.output_file_id)[0]["response"]["body"]
    assert row["object"] == "list" and row["usage"]["prompt_tokens"] == 2

    stub.prompt_caching = True
    shared = " ".join(f"rule{i}" for i in range(1500))
    lines = [
        {
            **request_line(f"r{i}", ""),
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": shared}, {"role": "user", "content": f"row {i}"}]},
        }
        for i in range(3)
    ]
    batch, _ = client.poll(client.submit(lines))
    cached = [
        (row["response"]["body"]["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        for row in client.read(batch.output_file_id)
    ]
    # shared: 3 + 1,500 + 3 + "row" = 1,507 tokens, counted in 128s: 1,408
    assert cached == [0, 1408, 1408] and batch.usage.input_tokens_details["cached_tokens"] == 2 * 1408


def test_batches_from_many_threads_each_run_their_own_course(stub: StubServer, client: Client) -> None:
    def one(n: int) -> tuple[str, list[str]]:
        batch, _ = client.poll(client.submit([request_line(f"t{n}-{i}", f"thread {n} row {i}") for i in range(3)]))
        return batch.id, [row["custom_id"] for row in client.read(batch.output_file_id)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert len({batch_id for batch_id, _ in results}) == 8
    assert [sorted(ids) for _, ids in results] == [[f"t{n}-{i}" for i in range(3)] for n in range(8)]
    assert len(stub.requests_to("/v1/files")) == 8 and len(stub.requests_to("/v1/batches")) == 8
    assert len(litellm.list_batches(limit=100, **client.kw).data) == 8


def test_litellm_hands_on_the_openai_sdks_own_errors_for_the_batch_api(stub: StubServer, client: Client) -> None:
    """What a caller must catch: litellm's batch functions raise the openai SDK's exceptions, not litellm's."""
    with pytest.raises(openai.NotFoundError) as missing:
        client.retrieve("batch_nope")
    assert not isinstance(missing.value, litellm.exceptions.NotFoundError)
    with pytest.raises(openai.NotFoundError, match="No such File object"):
        litellm.create_batch(completion_window="24h", endpoint="/v1/chat/completions", input_file_id="file-nope", **client.kw)


def test_a_batch_script_reads_its_command_line_form() -> None:
    parsed = BatchScript.parse("polls=2,seconds=0.5,hold,progress=3,fail_lines=1;4,fail_matching=boom,end=expired")
    assert parsed == BatchScript(polls=2, seconds=0.5, hold=True, progress=3, fail_lines=(1, 4), fail_matching="boom", end="expired")
    assert BatchScript.from_dict(parsed.to_dict()) == parsed
    with pytest.raises(ValueError, match="unknown batch setting 'poll'"):
        BatchScript.parse("poll=2")
    with pytest.raises(ValueError, match="not 'done'"):
        BatchScript.parse("end=done")
