"""Structured output over real HTTP to the stub server: response_format or an instruction, validation, columns."""

from __future__ import annotations

from typing import Literal

import pandas as pd
import pytest
from pydantic import BaseModel

import ipyllm
from ipyllm._schema import Schema
from ipyllm.testing import Fault, StubServer

from ..helpers import chat_requests


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    product: str
    words: int


PERSON = {
    "title": "Person",
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def test_complete_with_a_pydantic_model_sends_response_format_and_parses(live: StubServer) -> None:
    reply = ipyllm.complete("product: lamp. A positive review of it.", schema=Review)
    assert isinstance(reply.parsed, Review)
    assert reply.parsed.sentiment == "positive" and reply.parsed.product == "lamp"
    sent = chat_requests(live)[0].body
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"]["additionalProperties"] is False  # litellm's strict form


def test_complete_with_a_json_schema_dict(live: StubServer) -> None:
    reply = ipyllm.complete("name: Ada, born long ago", schema=PERSON)
    assert reply.parsed == {"name": "Ada", "age": 7}  # the stub's integers count the prompt's words and marks
    assert chat_requests(live)[0].body["response_format"]["json_schema"]["name"] == "Person"


def test_an_invalid_reply_raises_invalid_output_with_the_raw_text(live: StubServer) -> None:
    live.script(Fault.reply('{"sentiment": "furious", "product": "lamp", "words": 2}'))
    with pytest.raises(ipyllm.InvalidOutputError) as raised:
        ipyllm.complete("a review", schema=Review)
    error = raised.value
    assert error.raw == '{"sentiment": "furious", "product": "lamp", "words": 2}'
    assert "sentiment" in error.detail and error._render_traceback_()[0].startswith("InvalidOutputError: the reply does not fit Review")
    assert error.usage is not None and error.usage.status == "ok"  # the call itself succeeded and was paid for


def test_a_model_without_schema_support_gets_an_instruction(live: StubServer) -> None:
    live.script(Fault.reply('```json\n{"name": "Bo", "age": 3}\n```'))
    reply = ipyllm.complete("who?", schema=PERSON, model="openai/stub-local")
    assert reply.parsed == {"name": "Bo", "age": 3}  # a code fence around the JSON is accepted
    sent = chat_requests(live)[0].body
    assert "response_format" not in sent
    assert sent["messages"][0]["role"] == "system" and "JSON schema" in sent["messages"][0]["content"]


def test_map_with_a_schema_returns_one_column_per_field_and_invalid_rows_as_errors(live: StubServer) -> None:
    ipyllm.config.update(retry_min_wait=0.05, retry_max_wait=1)
    reviews = pd.DataFrame(
        {"text": ["product: kettle. Positive, works.", "product: toaster. Negative, broke.", "product: fan. Neutral."]},
        index=pd.Index(["c", "a", "b"], name="id"),
    )
    live.script(Fault.reply("not json at all"))  # the first row's reply (concurrency 1)
    result = ipyllm.map("Review: {text}", reviews, schema=Review, concurrency=1, progress=False)
    assert list(result.columns) == ["sentiment", "product", "words"]
    assert result.index.equals(reviews.index)
    assert result.loc["c"].isna().all()
    assert result.loc["a", "sentiment"] == "negative" and result.loc["a", "product"] == "toaster"
    assert result.loc["b", "sentiment"] == "neutral" and result["words"].dtype == "Int64"
    batch = ipyllm.last_batch()
    assert batch is not None
    assert batch.errors["c"].startswith("invalid_output: ") and "JSON" in batch.errors["c"] and batch.errors[["a", "b"]].isna().all()
    assert batch.raw["c"] == "not json at all"
    # A reply that did not fit is not kept as an answer: the same map sends that row again, and only it.
    sent = len(chat_requests(live))
    again = ipyllm.map("Review: {text}", reviews, schema=Review, concurrency=1, progress=False)
    assert len(chat_requests(live)) == sent + 1 and again.notna().all().all()


def test_schema_argument_errors() -> None:
    with pytest.raises(ipyllm.SettingError, match="pydantic model class or a JSON-schema dict"):
        Schema.of("not a schema")
    with pytest.raises(ipyllm.SettingError, match="schema= or response_format="):
        Schema.of(PERSON).apply([], {"response_format": {"type": "json_object"}}, native=True)
