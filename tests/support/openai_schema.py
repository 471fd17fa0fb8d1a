"""Validates tunehub's answers against OpenAI's own JSON schemas (a JSON-Schema 2020-12 validator).

OpenAI's document still marks optional values with OpenAPI 3.0's `nullable: true`; those are rewritten to
`type: [T, "null"]` (adding null to a sibling `enum`) so that OpenAI's own examples validate.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

DRAFT = "https://json-schema.org/draft/2020-12/schema"
DATA = Path(__file__).resolve().parent.parent / "data" / "openai_schemas.json"


def rewrite_nullable(node):
    if isinstance(node, dict):
        node = {key: rewrite_nullable(value) for key, value in node.items()}
        if node.pop("nullable", False):
            if "type" in node:
                kind = node["type"]
                node["type"] = [*kind, "null"] if isinstance(kind, list) else [kind, "null"]
                if "enum" in node and None not in node["enum"]:
                    node["enum"] = [*node["enum"], None]
            else:
                node = {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [rewrite_nullable(value) for value in node]
    return node


@cache
def _schemas() -> dict:
    return rewrite_nullable(json.loads(DATA.read_text())["schemas"])


@cache
def _validator(name: str) -> Draft202012Validator:
    schemas = _schemas()
    document = {"components": {"schemas": schemas}}
    resource = Resource.from_contents({"$schema": DRAFT, **document})
    registry = Registry().with_resource("urn:openai", resource)
    schema = {"$schema": DRAFT, "$ref": f"urn:openai#/components/schemas/{name}"}
    return Draft202012Validator(schema, registry=registry)


def validate(instance: dict, name: str) -> None:
    """Raise jsonschema.ValidationError unless `instance` is a valid OpenAI `name` object."""
    _validator(name).validate(copy.deepcopy(instance))
