"""The request file (``_jobfile``): a line per request as live map would send it, split at the provider's limits,
and the output and error files read back by ``custom_id``."""

from __future__ import annotations

import json

import pytest

import ipyllm
from ipyllm._jobfile import ENDPOINT, parse_results, request_body, request_line, split


def test_a_line_is_the_live_calls_body_without_what_only_the_client_needs(clean_config: ipyllm.LLMConfig) -> None:
    clean_config.update(api_key="sk-never-in-a-file-1234", base_url="http://127.0.0.1:9/v1", temperature=0.3, max_tokens=40)
    settings = clean_config.snapshot()
    messages = [{"role": "user", "content": "hi"}]
    body = request_body(settings, "gpt-4o-mini", messages, {"top_p": 0.5, "extra_body": {"seed": 7}}, cap=None)
    assert body == {"model": "gpt-4o-mini", "messages": messages, "temperature": 0.3, "max_tokens": 40, "top_p": 0.5, "seed": 7}
    capped = request_body(settings, "gpt-4o-mini", messages, {}, cap=12)
    assert capped["max_tokens"] == 12
    line = json.loads(request_line("key-1", body))
    assert line == {"custom_id": "key-1", "method": "POST", "url": ENDPOINT, "body": body}
    assert b"sk-never" not in request_line("key-1", capped)


def test_files_split_before_a_limit_on_lines_or_bytes() -> None:
    lines = [(f"k{i}", b"x" * 9 + b"\n") for i in range(25)]
    files = list(split(lines, max_requests=10, max_bytes=1000))
    assert [keys for keys, _ in files] == [[f"k{i}" for i in range(s, min(s + 10, 25))] for s in (0, 10, 20)]
    assert [len(data) for _, data in files] == [100, 100, 50]
    by_bytes = list(split(lines, max_requests=100, max_bytes=35))
    assert [len(keys) for keys, _ in by_bytes] == [3] * 8 + [1] and all(len(data) <= 35 for _, data in by_bytes)
    with pytest.raises(ValueError, match="more than a batch file may hold"):
        list(split([("big", b"y" * 50)], max_bytes=40))


def test_results_are_read_by_custom_id_answers_failures_and_rows_that_never_ran() -> None:
    answer = {
        "choices": [{"message": {"content": "positive"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 1},
    }
    output = json.dumps({"custom_id": "a", "response": {"status_code": 200, "body": answer}, "error": None}).encode() + b"\n"
    failed = {"error": {"message": "Invalid request", "type": "invalid_request_error"}}
    errors = b"\n".join(
        json.dumps(line).encode()
        for line in (
            {"custom_id": "b", "response": {"status_code": 400, "body": failed}, "error": None},
            {"custom_id": "c", "response": None, "error": {"code": "batch_expired", "message": "not run"}},
        )
    )
    found = parse_results(output, errors + b"\nnot json\n")
    assert set(found) == {"a", "b", "c"}
    assert found["a"].error is None and found["a"].text == "positive" and found["a"].tokens() == (12, 1)
    assert found["a"].finish_reason == "stop"
    assert found["b"].error == "400: Invalid request" and found["b"].text == ""
    assert found["c"].error == "batch_expired: not run"
