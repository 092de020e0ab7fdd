"""Structured output: a pydantic model or a JSON schema, asked of the model and checked on every reply.

The schema goes out as ``response_format`` (JSON schema mode) where litellm says the model supports it
(``litellm.supports_response_schema``), else as an instruction in the system message. Each reply is
parsed and validated (pydantic for a model class, ``jsonschema`` for a dict, both already installed with
litellm); a reply that does not fit raises ``InvalidOutputError`` with the validation message and the raw
text, never a bare ``ValidationError``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ipyllm._config import Settings
from ipyllm._litellm import response_format, supports_response_schema
from ipyllm.errors import InvalidOutputError, SettingError

__all__ = ["InvalidOutputError", "Schema"]

_FENCE = re.compile(r"^\s*```(?:json)?\s*(?P<body>.*?)\s*```\s*$", re.DOTALL)


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(getattr(error, "message", None) or error).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


#: Schemas found valid, by their JSON text: checking one takes about 2 ms, and complete(schema=...) may run in a loop.
_valid_schemas: set[str] = set()


def _check_json_schema(schema: dict[str, Any]) -> None:
    """The schema against its metaschema, before anything is sent (else a 37-line ``SchemaError`` after the reply was paid for)."""
    import jsonschema

    try:
        text: str | None = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError):
        text = None  # not JSON: checked every time (and refused below if the metaschema says so)
    if text is not None and text in _valid_schemas:
        return
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as error:
        problem = f"at {error.json_path if error.absolute_path else 'the top level'}, {_one_line(error)}"
    else:
        if text is not None and len(_valid_schemas) < 256:
            _valid_schemas.add(text)
        return
    # Raised outside the except block: nothing chained (jsonschema's own error is 37 lines).
    raise SettingError(f"schema is not a valid JSON schema: {problem} (see https://json-schema.org/understanding-json-schema)", "schema")


@dataclass(frozen=True)
class Schema:
    """What a reply must look like: a JSON schema, and the pydantic model it came from (if any)."""

    name: str
    json_schema: dict[str, Any]
    model: Any = None

    @classmethod
    def of(cls, schema: Any) -> Schema:
        """From a pydantic model class or a JSON-schema dict (a ``Schema`` is kept as it is)."""
        if isinstance(schema, Schema):
            return schema
        if isinstance(schema, dict):
            _check_json_schema(schema)
            if not isinstance(schema.get("properties"), dict) and schema.get("type") != "object":
                raise SettingError("schema must be a JSON schema of an object (with 'properties'), or a pydantic model class", "schema")
            name = re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title") or "reply"))[:64]
            return cls(name, schema)
        if isinstance(schema, type) and hasattr(schema, "model_json_schema") and hasattr(schema, "model_validate_json"):
            try:
                return cls(schema.__name__, schema.model_json_schema(), schema)
            except Exception as error:  # pydantic cannot describe a field's type (a PydanticInvalidForJsonSchema, ...)
                problem = f"{type(error).__name__}: {_one_line(error)}"
            # Raised outside the except block: nothing chained, the one line says it all.
            raise SettingError(
                f"schema {schema.__name__} has no JSON schema ({problem}): "
                "use field types JSON can describe (str, int, float, bool, list, dict, nested models)",
                "schema",
            )
        raise SettingError(f"schema must be a pydantic model class or a JSON-schema dict, not {type(schema).__name__}", "schema")

    @property
    def fields(self) -> list[str]:
        """The top-level properties: the columns of a ``map`` with this schema."""
        return list((self.json_schema.get("properties") or {}).keys())

    def response_format(self) -> dict[str, Any]:
        if self.model is not None:
            return response_format(self.model)  # litellm's own translation
        return {"type": "json_schema", "json_schema": {"name": self.name, "schema": self.json_schema}}

    def instruction(self) -> str:
        return "Answer with one JSON object and nothing else (no prose, no code fence) that fits this JSON schema:\n" + json.dumps(
            self.json_schema, ensure_ascii=False
        )

    def native(self, settings: Settings) -> bool:
        """Whether litellm says ``settings.model`` takes a JSON schema as ``response_format``."""
        return supports_response_schema(settings.model, settings.base_url)

    def apply(self, messages: list[dict[str, Any]], extra: dict[str, Any], native: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The messages and extra arguments that ask for this schema: ``response_format``, or an instruction."""
        if "response_format" in extra:
            raise SettingError("pass schema= or response_format=, not both", "schema")
        if native:
            return messages, {**extra, "response_format": self.response_format()}
        messages = [dict(m) for m in messages]
        system = next((m for m in messages if m.get("role") == "system"), None)
        if system is None:
            messages.insert(0, {"role": "system", "content": self.instruction()})
        else:
            system["content"] = f"{system.get('content') or ''}\n\n{self.instruction()}".strip()
        return messages, extra

    def request(
        self, settings: Settings, messages: list[dict[str, Any]], extra: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The messages and extra arguments that ask ``settings.model`` for this schema."""
        return self.apply(messages, extra, self.native(settings))

    def parse(self, text: str) -> Any:
        """The validated object (a model instance, or the decoded dict); ``InvalidOutputError`` if it does not fit."""
        fenced = _FENCE.match(text)
        body = fenced["body"] if fenced else text
        if self.model is not None:
            from pydantic import ValidationError

            try:
                return self.model.model_validate_json(body)
            except ValidationError as error:
                problems = error.errors()
                first = problems[0]
                where = ".".join(str(part) for part in first.get("loc", ())) or "reply"
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                raise InvalidOutputError(f"{where}: {first.get('msg')}{more}", raw=text, schema=self.name) from None
        try:
            value = json.loads(body)
        except ValueError as error:
            raise InvalidOutputError(f"not JSON: {error}", raw=text, schema=self.name) from None
        import jsonschema

        try:
            jsonschema.validate(value, self.json_schema)
        except jsonschema.ValidationError as error:
            where = ".".join(str(part) for part in error.absolute_path) or "reply"
            raise InvalidOutputError(f"{where}: {error.message}", raw=text, schema=self.name) from None
        return value

    def columns(self, value: Any) -> dict[str, Any]:
        """One entry per field of a parsed value (nested models stay objects)."""
        if self.model is not None:
            return {name: getattr(value, name, None) for name in self.fields}
        return {name: value.get(name) if isinstance(value, dict) else None for name in self.fields}
