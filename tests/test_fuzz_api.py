"""Bad input (issue 7, item 3): property-based fuzzing of every JSON API route of a real `tunehub serve`
from the hub's own OpenAPI document (`/openapi.json`), with bodies, path and query parameters that follow
the schema or break it; never a 5xx, and every 4xx in OpenAI's error envelope. Then explicit cases:
oversized, deeply nested, invalid UTF-8 and non-finite JSON, huge counts, unknown fields, and malicious
adapter names and paths.

The adapter path rule (README, Security): only an admin may load an adapter, and an admin may name any local
directory, as with vLLM's /v1/load_lora_adapter; adapter *names* are strictly checked (they become model
ids and registry keys); only safetensors weights are ever read, so a path to other files yields a 400
that names the path and shows none of the file's contents. A symlink out of the adapters directory gives
an admin nothing they could not name directly, so it is not refused.

Bounded: about 600 fuzzed requests (marked slow, about a minute on 2 cores) and a minute of explicit cases.
Run: .venv/bin/python -m pytest tests/test_fuzz_api.py -q
"""

from __future__ import annotations

import json
from collections import Counter
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.openai_schema import validate
from tests.support.schema_strategies import ANY_JSON, SchemaStrategies

EXAMPLES_PER_ROUTE = 30


@pytest.fixture(scope="module")
def openapi(hub) -> dict:
    return httpx.get(f"{hub.url}/openapi.json").json()


@pytest.fixture(scope="module")
def base_id(hub) -> str:
    return httpx.get(f"{hub.url}/v1/models").json()["data"][0]["id"]


def operations(doc: dict) -> list[tuple[str, str, dict]]:
    return [
        (method.upper(), path, op)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def check(response: httpx.Response, what: str) -> None:
    """No 5xx; every error an OpenAI envelope."""
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/json"), what
        body = response.json()
        validate(body, "ErrorResponse")
        assert body["error"]["message"], what


def tame(body, base_id: str, draw) -> object:
    """Keep a fuzzed body cheap and harmless: generations end at EOS (no ignore_eos), half of them name the
    served model, and no real training job is submitted."""
    if isinstance(body, dict):
        if "ignore_eos" in body:
            body["ignore_eos"] = False
        if "model" in body and draw(st.booleans()):
            body["model"] = base_id
        if "stage" in body:
            body["stage"] = f"fuzz-{body['stage']}"  # never one of the real stages
    return body


# the routes of the document when this was written, one test each; routes it gains later are fuzzed by
# test_routes_added_later_are_fuzzed_too. A POST that takes no input at all (POST /v1/adapters/rollback)
# has nothing to fuzz, only side effects on the shared server: it is left out.
ROUTES = [
    ("GET", "/health"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/load_lora_adapter"),
    ("POST", "/v1/unload_lora_adapter"),
    ("GET", "/metrics"),
    ("POST", "/v1/feedback"),
    ("GET", "/v1/feedback"),
    ("GET", "/v1/feedback/{vote_id}"),
    ("GET", "/v1/leaderboard"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{job_id}"),
    ("POST", "/v1/jobs/{job_id}/cancel"),
]


def takes_input(op: dict) -> bool:
    return bool(op.get("parameters") or op.get("requestBody"))


def fuzz(hub, openapi: dict, base_id: str, method: str, path: str) -> Counter:
    """Run the route's fuzzing; returns how often each status came back."""
    statuses: Counter = Counter()
    op = openapi["paths"][path][method.lower()]
    schemas = SchemaStrategies(openapi)
    body_schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    params = op.get("parameters", [])

    @settings(
        max_examples=EXAMPLES_PER_ROUTE,
        deadline=None,
        derandomize=True,  # the same requests in every run: a failure reproduces
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def run(data):
        mode = data.draw(st.sampled_from(["valid", "broken"]))
        url = path
        query = {}
        for param in params:
            schema = param.get("schema", {})
            strategy = schemas.valid(schema) if mode == "valid" else schemas.broken(schema)
            value = data.draw(strategy)
            shown = value if isinstance(value, str) else json.dumps(value)
            if param["in"] == "path":
                url = url.replace("{" + param["name"] + "}", quote(shown or "x", safe=""))
            elif value is not None and (param.get("required") or data.draw(st.booleans())):
                query[param["name"]] = shown
        kwargs: dict = {"params": query}
        if body_schema is not None:
            strategy = schemas.valid(body_schema) if mode == "valid" else schemas.broken(body_schema)
            kwargs["json"] = tame(data.draw(strategy), base_id, data.draw)
        elif method == "POST" and data.draw(st.booleans()):
            kwargs["json"] = data.draw(ANY_JSON)
        response = httpx.request(method, f"{hub.url}{url}", timeout=120, **kwargs)
        statuses[response.status_code] += 1
        check(response, f"{method} {url} {query} {str(kwargs.get('json'))[:300]}")

    run()
    return statuses


@pytest.mark.slow  # about a minute for all the routes together on 2 cores
@pytest.mark.parametrize("method,path", ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_fuzzed_requests_never_get_a_5xx(hub, openapi, base_id, method, path):
    statuses = fuzz(hub, openapi, base_id, method, path)
    if path in ("/v1/chat/completions", "/v1/completions"):  # the fuzzing reaches the engine too
        assert statuses[200] and sum(v for k, v in statuses.items() if k >= 400), statuses


@pytest.mark.slow
def test_routes_added_later_are_fuzzed_too(hub, openapi, base_id):
    later = [
        (m, p) for m, p, op in operations(openapi) if (m, p) not in ROUTES and (m == "GET" or takes_input(op))
    ]
    assert later, "every route is already in ROUTES: this test fuzzes nothing"
    for method, path in later:
        statuses = fuzz(hub, openapi, base_id, method, path)
        assert sum(statuses.values()) > 0 and not any(code >= 500 for code in statuses), (
            method,
            path,
            statuses,
        )


@pytest.mark.slow
@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/feedback", "/v1/jobs"]),
    raw=st.binary(max_size=200) | ANY_JSON.map(lambda v: json.dumps(v).encode()),
)
def test_arbitrary_bytes_never_get_a_5xx(hub, path, raw):
    response = httpx.post(
        f"{hub.url}{path}", content=raw, headers={"content-type": "application/json"}, timeout=60
    )
    check(response, f"POST {path} {raw[:100]!r}")
    assert response.status_code in (400, 404, 413, 422), response.text


# ----- explicit cases ------------------------------------------------------------------------------------


def post_raw(hub, path: str, raw: bytes) -> httpx.Response:
    return httpx.post(
        f"{hub.url}{path}", content=raw, headers={"content-type": "application/json"}, timeout=60
    )


def expect(response: httpx.Response, status: int, *words: str) -> dict:
    check(response, response.request.url.path)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    for word in words:
        assert word in error["message"], error
    return error


def test_an_oversized_body_is_413(hub, base_id):
    # the default limit is 8 MiB (tunehub serve --max-body-bytes)
    body = {"model": base_id, "messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]}
    expect(httpx.post(f"{hub.url}/v1/chat/completions", json=body, timeout=60), 413, "8388608 bytes")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/feedback", "/v1/jobs"])
@pytest.mark.parametrize("depth", [200, 100_000])
def test_deeply_nested_json_is_400(hub, path, depth):
    raw = b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"
    expect(post_raw(hub, path, raw), 400)
    raw = b'{"a":' * depth + b"1" + b"}" * depth
    expect(post_raw(hub, path, raw), 400)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/feedback", "/v1/jobs"])
def test_invalid_utf8_is_400(hub, base_id, path):
    raw = b'{"model": "' + base_id.encode() + b'", "prompt": "\xff\xfe\xc3", "messages": "\xc3\x28"}'
    expect(post_raw(hub, path, raw), 400)


@pytest.mark.parametrize(
    "field,literal",
    [
        ("max_tokens", "NaN"),
        ("max_tokens", "Infinity"),
        ("n", "-Infinity"),
        ("seed", "NaN"),
        ("top_p", "NaN"),
        ("top_k", "-Infinity"),
        ("temperature", "-0.0e999999"),
    ],
)
def test_non_finite_numbers_are_400(hub, base_id, field, literal):
    raw = f'{{"model": "{base_id}", "messages": [{{"role": "user", "content": "Hi"}}], "{field}": {literal}}}'
    raw = raw.encode()
    response = post_raw(hub, "/v1/chat/completions", raw)
    if literal == "-0.0e999999":  # that one is just -0.0: a valid temperature
        assert response.status_code == 200, response.text
        return
    assert expect(response, 400)["param"] == field


@pytest.mark.parametrize(
    "fields,param",
    [
        ({"n": 10**12}, "n"),
        ({"n": -1}, "n"),
        ({"max_tokens": 10**30}, "max_tokens"),
        ({"max_tokens": 2**63}, "max_tokens"),
        ({"max_completion_tokens": -(2**70)}, "max_completion_tokens"),
        ({"seed": 2**64}, "seed"),
        ({"top_k": -2}, "top_k"),
        ({"stop": ["a"] * 1000}, "stop"),
        ({"temperature": 1e308}, "temperature"),
        ({"messages": [{"role": "user", "content": "Hi", "tool_calls": []}]}, "messages.0.tool_calls"),
    ],
)
def test_huge_and_negative_numbers_and_unknown_fields_are_400(hub, base_id, fields, param):
    body = {"model": base_id, "messages": [{"role": "user", "content": "Hi"}], **fields}
    error = expect(httpx.post(f"{hub.url}/v1/chat/completions", json=body, timeout=60), 400)
    assert error["param"] == param or (error["param"] or "").startswith(param), error


@pytest.mark.parametrize(
    "path,param",
    [
        ("/v1/feedback/9223372036854775808", "vote_id"),  # found by the fuzzing: SQLite's integers overflow
        ("/v1/feedback/9223372036854775808/lineage", "vote_id"),
        ("/v1/feedback?offset=18446744073709551616", "offset"),
        ("/v1/feedback/0", "vote_id"),
    ],
)
def test_ids_and_offsets_beyond_sqlite_integers_are_400(hub, path, param):
    assert expect(httpx.get(f"{hub.url}{path}"), 400)["param"].split(".")[-1] == param  # "path.vote_id"


def test_max_tokens_beyond_the_context_is_400_before_any_generation(hub, base_id):
    body = {"model": base_id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10**9}
    expect(httpx.post(f"{hub.url}/v1/chat/completions", json=body, timeout=60), 400, "context length")


@pytest.mark.parametrize(
    "path,body,param",
    [
        (
            "/v1/feedback",
            {"type": "thumbs", "generation": {"generation_id": "x"}, "value": "up", "x": 1},
            "x",
        ),
        ("/v1/jobs", {"stage": "sft", "name": "x", "surprise": True}, "surprise"),
        ("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/tmp", "extra": 1}, "extra"),
        ("/v1/completions", {"model": "m", "prompt": "p", "best_of": 3}, "best_of"),
    ],
)
def test_unknown_fields_are_named(hub, path, body, param):
    error = expect(httpx.post(f"{hub.url}{path}", json=body, timeout=60), 400, "unrecognized")
    assert error["param"].split(".")[-1] == param  # feedback names the kind first: "thumbs.x"


MALICIOUS_NAMES = [
    "../escape",
    "..",
    "a/b",
    "/etc/passwd",
    "..\\windows",
    "",
    "x" * 65,
    "name\x00null",
    "nl\nname",
    "sp ace",
    "-leading-dash-is-ok",  # allowed: a plain name
]


@pytest.mark.parametrize("name", MALICIOUS_NAMES)
def test_malicious_adapter_names_are_refused(hub, adapters_dir, name):
    response = httpx.post(
        f"{hub.url}/v1/load_lora_adapter",
        json={"lora_name": name, "lora_path": str(adapters_dir / "a")},
        timeout=120,
    )
    if name == "-leading-dash-is-ok":
        assert response.status_code == 200, response.text
        httpx.post(f"{hub.url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)
        return
    error = expect(response, 400)
    assert error["param"] == "lora_name"
    models = [m["id"] for m in httpx.get(f"{hub.url}/v1/models").json()["data"]]
    assert name not in models


@pytest.mark.parametrize(
    "lora_path",
    [
        "/etc",
        "/etc/passwd",
        "../../../../../../etc",
        "/proc/self",
        "/dev/null",
        "",
        "relative/../../nowhere",
        "/tmp/nul\x00byte",
        "~root",
    ],
)
def test_adapter_paths_outside_any_adapter_are_400_and_leak_nothing(hub, lora_path):
    response = httpx.post(
        f"{hub.url}/v1/load_lora_adapter", json={"lora_name": "probe", "lora_path": lora_path}, timeout=60
    )
    error = expect(response, 400)
    assert error["param"] == "lora_path"
    assert "root:" not in error["message"]  # nothing of /etc/passwd


def test_symlinks_out_of_an_adapter_directory_read_no_secrets(hub, tmp_path, adapters_dir):
    """An adapter whose files are symlinks to files elsewhere: a config pointing at /etc/passwd is
    'not valid JSON' without its contents; weights pointing at a non-safetensors file are refused."""
    config_escape = tmp_path / "config-escape"
    config_escape.mkdir()
    (config_escape / "adapter_config.json").symlink_to("/etc/passwd")
    (config_escape / "adapter_model.safetensors").symlink_to(adapters_dir / "a" / "adapter_model.safetensors")
    weights_escape = tmp_path / "weights-escape"
    weights_escape.mkdir()
    (weights_escape / "adapter_config.json").write_bytes(
        (adapters_dir / "a" / "adapter_config.json").read_bytes()
    )
    (weights_escape / "adapter_model.safetensors").symlink_to("/etc/passwd")
    for directory in (config_escape, weights_escape):
        response = httpx.post(
            f"{hub.url}/v1/load_lora_adapter",
            json={"lora_name": f"sym-{directory.name}", "lora_path": str(directory)},
            timeout=60,
        )
        error = expect(response, 400)
        assert "root:" not in error["message"] and "/bin/" not in error["message"], error
    models = [m["id"] for m in httpx.get(f"{hub.url}/v1/models").json()["data"]]
    assert not [m for m in models if m.startswith("sym-")]
