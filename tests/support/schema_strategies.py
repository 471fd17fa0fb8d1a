"""Hypothesis strategies from the JSON Schemas of the hub's own OpenAPI document (`app.openapi()`), for
fuzzing the API: values that follow the schema, and values that break it in the ways clients do (a
field dropped, an unknown field added, a value of the wrong type, a number out of range).

Covers the subset of JSON Schema that pydantic writes: type, enum, const, anyOf/oneOf/allOf, $ref
(#/components/schemas/... and #/$defs/...), properties/required/additionalProperties, items,
minItems/maxItems, minLength/maxLength, minimum/maximum/exclusiveMinimum/exclusiveMaximum.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
ANY_JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


class SchemaStrategies:
    def __init__(self, openapi: dict[str, Any]) -> None:
        self.components = openapi.get("components", {}).get("schemas", {})

    def _resolve(self, ref: str, defs: dict) -> dict:
        name = ref.rsplit("/", 1)[-1]
        return defs.get(name) or self.components[name]

    def valid(self, schema: dict, defs: dict | None = None, depth: int = 0) -> st.SearchStrategy:
        """Values that follow `schema` (mostly: pydantic's own checks, such as model validators, are not
        in the schema)."""
        defs = {**(defs or {}), **schema.get("$defs", {})}
        if "$ref" in schema:
            return st.deferred(lambda: self.valid(self._resolve(schema["$ref"], defs), defs, depth + 1))
        if "const" in schema:
            return st.just(schema["const"])
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return st.one_of([self.valid(s, defs, depth) for s in schema[key]])
        if "allOf" in schema:
            return self.valid(schema["allOf"][0], defs, depth)
        kind = schema.get("type")
        if isinstance(kind, list):
            return st.one_of([self.valid({**schema, "type": k}, defs, depth) for k in kind])
        if kind == "null":
            return st.none()
        if kind == "boolean":
            return st.booleans()
        if kind == "integer":
            low, high = schema.get("minimum"), schema.get("maximum")
            if "exclusiveMinimum" in schema:
                low = schema["exclusiveMinimum"] + 1
            return st.integers(
                min_value=None if low is None else int(low),
                max_value=None if high is None else min(int(high), 2**63 - 1),
            )
        if kind == "number":
            low = schema.get("minimum", schema.get("exclusiveMinimum"))
            high = schema.get("maximum", schema.get("exclusiveMaximum"))
            return st.floats(
                min_value=low,
                max_value=high,
                exclude_min="exclusiveMinimum" in schema,
                exclude_max="exclusiveMaximum" in schema,
                allow_nan=False,
                allow_infinity=False,
            )
        if kind == "string":
            return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40))
        if kind == "array":
            items = schema.get("items", {})
            low = schema.get("minItems", 0)
            high = min(schema.get("maxItems", low + 3), low + 3)
            inner = self.valid(items, defs, depth + 1) if depth < 6 else st.nothing()
            return st.lists(inner, min_size=low, max_size=high) if depth < 6 else st.just([])
        if kind == "object" or "properties" in schema:
            properties = schema.get("properties", {})
            required = [k for k in schema.get("required", []) if k in properties]
            optional = [k for k in properties if k not in required]
            if depth >= 6:
                return st.just({})
            extra = schema.get("additionalProperties")
            base = st.fixed_dictionaries(
                {k: self.valid(properties[k], defs, depth + 1) for k in required},
                optional={k: self.valid(properties[k], defs, depth + 1) for k in optional},
            )
            if extra and isinstance(extra, dict) and not properties:
                return st.dictionaries(st.text(max_size=10), self.valid(extra, defs, depth + 1), max_size=3)
            if extra is True or (extra is None and not properties):
                return st.dictionaries(st.text(max_size=10), ANY_JSON, max_size=3)
            return base
        return ANY_JSON  # {} or an unknown construct: anything goes

    def broken(self, schema: dict, defs: dict | None = None) -> st.SearchStrategy:
        """Values that follow `schema` but for one change clients get wrong, or any JSON at all."""
        defs = {**(defs or {}), **schema.get("$defs", {})}

        valid = self.valid(schema, defs)

        @st.composite
        def one_change(draw) -> Any:
            value = draw(valid)
            if not isinstance(value, dict) or not value:
                return draw(ANY_JSON)
            value = dict(value)
            key = draw(st.sampled_from(sorted(value)))
            change = draw(st.sampled_from(["drop", "unknown", "retype", "huge", "negative"]))
            if change == "drop":
                del value[key]
            elif change == "unknown":
                value[draw(st.text(min_size=1, max_size=12))] = draw(ANY_JSON)
            elif change == "retype":
                value[key] = draw(ANY_JSON)
            elif change == "huge":
                value[key] = draw(st.sampled_from([2**63, 10**30, 1e308, "x" * 5000, [0] * 200]))
            else:
                value[key] = draw(st.sampled_from([-1, -(2**63), -1e308, -0.5]))
            return value

        return st.one_of(one_change(), ANY_JSON)
