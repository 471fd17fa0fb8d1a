"""Copies the OpenAI response schemas tunehub must match out of OpenAI's OpenAPI document.

    python -m tests.support.extract_openai_schemas [../shared/specs/openapi.json]

Writes tests/data/openai_schemas.json: the named schemas and everything they reference, unchanged, so the
tests validate against OpenAI's own definitions without the 3 MB document.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOTS = [
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
]
OUT = Path(__file__).resolve().parent.parent / "data" / "openai_schemas.json"


def _refs(node) -> set[str]:
    found = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[-1])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def main(source: str = "../shared/specs/openapi.json") -> None:
    document = json.loads(Path(source).read_text())
    schemas = document["components"]["schemas"]
    keep, todo = {}, list(ROOTS)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep[name] = schemas[name]
        todo.extend(_refs(schemas[name]) - keep.keys())
    info = document.get("info", {})
    OUT.write_text(
        json.dumps(
            {"source": f"openai-openapi {info.get('version')}", "schemas": keep}, indent=1, sort_keys=True
        )
    )
    print(f"wrote {len(keep)} schemas to {OUT}")


if __name__ == "__main__":
    main(*sys.argv[1:])
