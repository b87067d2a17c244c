"""Security review, end to end (issue 9): header trust, no credential leaks, limits on what a
client controls.

Most tests run their own gateway (``sec``): envoy/demo.yaml with virtual keys and ONE worker thread
(``--concurrency 1``), so that two requests with the same ``x-request-id`` certainly meet in the same
per-worker registry. Every provider credential it gets from the environment, every virtual key and
every bring-your-own-key credential is a canary string containing ``CANARY``; after driving traffic
(errors, faults, provider answers that quote the credential they received, BYOK) no canary may
appear in any response, in /stats, /stats/prometheus, /config_dump, the Envoy log or the access log.

The limit tests use the session ``gateway`` (demo.yaml as shipped, default limits).
"""

from __future__ import annotations

import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from unittest import mock

import pytest
import requests
import yaml

import harness
import recorded as rec
from helpers import HELLO, chat_url, internal_headers, openai_error, sse_payloads
from keys_gateway import KeysGateway, key_hash

CANARY = "CANARY"

# Provider credentials the gateway reads from its environment (harness.ENVOY_ENV's names).
CANARY_ENV = {
    "OPENAI_API_KEY": "sk-CANARY-openai-4b1d2e7f90aa",
    "ANTHROPIC_API_KEY": "sk-ant-CANARY-anthropic-8c3a5e1b",
    "GEMINI_API_KEY": "CANARY-gemini-6d2f8a0c4e11",
    "VERTEX_ACCESS_TOKEN": "ya29.CANARY-vertex-1a9e3c7b55",
    "AWS_ACCESS_KEY_ID": "AKIACANARY5E8F1D3B",
    "AWS_SECRET_ACCESS_KEY": "CANARYsecret/9f2b+7d1e4a6c0/zz",
    "AWS_SESSION_TOKEN": "CANARYsession/3e5a7c9b1d+token",
    "COHERE_API_KEY": "CANARY-cohere-2c4e6a8b0d77",
    "AZURE_OPENAI_API_KEY": "CANARY-azure-7b9d1f3a5c99",
    "MISTRAL_API_KEY": "CANARY-mistral-0e2a4c6e8a33",
    "DEEPSEEK_API_KEY": "CANARY-deepseek-5a7c9e1b3d22",
}
assert set(CANARY_ENV) == set(harness.ENVOY_ENV), "a credential the harness passes is not a canary"

BYOK_HEADER = "x-provider-key"      # configured: a name WITHOUT the x-switchyard- prefix
BYOK_A = "sk-CANARY-byok-client-A-1f2e3d4c"
BYOK_B = "sk-ant-CANARY-byok-client-B-9a8b7c6d"


def K(name: str) -> str:
    """A virtual key (only its sha256 is configured)."""
    return f"sk-sy-CANARY-{name}-7e4d1c9b2a"


PRICES = {
    "gpt-4o-mini": {"in": Decimal("0.000001"), "out": Decimal("0.000002")},
    "claude-3-5-haiku-latest": {"in": Decimal("0.000003"), "out": Decimal("0.000005")},
}
PRICED_AS = {"gpt-4o-mini": "gpt-4o-mini", "claude-haiku": "claude-3-5-haiku-latest"}
BUDGET_USD = 1


def micros(model: str, usage: dict) -> int:
    p = PRICES[PRICED_AS.get(model, model)]
    return math.ceil((usage["prompt_tokens"] * p["in"] + usage["completion_tokens"] * p["out"])
                     * 1_000_000)


def usd(m: int) -> str:
    return f"{m // 1_000_000}.{m % 1_000_000:06d}"


def key(name: str, **fields) -> dict:
    return {"id": name, "sha256": key_hash(K(name)), **fields}


AUTH = {
    "byok_header": BYOK_HEADER,
    "keys": [
        key("alice", budget={"amount_usd": BUDGET_USD, "window": "total"}),
        key("bob", budget={"amount_usd": BUDGET_USD, "window": "total"}),
        key("carol", budget={"amount_usd": BUDGET_USD, "window": "total"}),
        key("dave", budget={"amount_usd": BUDGET_USD, "window": "total"}),
        key("open"),
        key("limited", limits={"rpm": 100}),
        key("byok-a", byok=True),
        key("byok-b", byok=True),
        key("byok-c", byok=True, budget={"amount_usd": 0.000001, "window": "total"}),
        key("off", disabled=True),
    ],
    "pricing": {
        "builtin": False,
        "models": {m: {"input_cost_per_token": float(p["in"]),
                       "output_cost_per_token": float(p["out"]), "max_output_tokens": 1000}
                   for m, p in PRICES.items()},
        "aliases": {"claude-haiku": "claude-3-5-haiku-latest"},
    },
}

LIMITS = {"max_messages": 64, "max_tool_schema_bytes": 512, "max_json_depth": 32}


def demo_models() -> list[dict]:
    doc = yaml.safe_load((harness.REPO / "envoy" / "demo.yaml").read_text(encoding="utf-8"))
    for node in harness._walk_nodes(doc):
        cfg = node.get("configuration") if isinstance(node, dict) else None
        if isinstance(cfg, dict) and isinstance(cfg.get("value"), str) and '"gateway"' in cfg["value"]:
            return json.loads(cfg["value"])["models"]
    raise AssertionError("no gateway plugin in envoy/demo.yaml")


# The demo's models plus a pattern: any gpt-4o-<anything> goes to the gpt-4o-mini route.
MODELS = [*demo_models(), {"name": "gpt-4o-*", "route": "gpt-4o-mini"}]

CANARIES = [*CANARY_ENV.values(), BYOK_A, BYOK_B, *(K(k["id"]) for k in AUTH["keys"])]
MOCK_HEADERS = ("x-mock-openai", "x-mock-anthropic", "x-mock-more")


class OneWorker(harness.Gateway):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.concurrency = 1


@pytest.fixture(scope="module")
def sec(tmp_path_factory):
    try:
        with mock.patch.dict(harness.ENVOY_ENV, CANARY_ENV):
            g = KeysGateway.start(tmp_path_factory.mktemp("security"), AUTH, gateway_cls=OneWorker,
                                  gateway_config={"limits": LIMITS, "models": MODELS})
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"could not start the security gateway: {e}", pytrace=False)
    g.seen = []          # every (status, headers, body) a client got from it
    problems: list[str] = []
    try:
        yield g
    finally:
        problems = g.stop()
    if problems:
        pytest.fail("security gateway end-of-module check failed:\n  " + "\n  ".join(problems),
                    pytrace=False)


@pytest.fixture(autouse=True)
def _guard(request):
    if "sec" not in request.fixturenames:
        yield
        return
    g = request.getfixturevalue("sec")
    g.mocks.clear()
    offset = g.gw.log_offset()
    yield
    time.sleep(0.05)
    crashes = g.gw.wasm_crashes(since=offset)
    if crashes:
        pytest.fail("wasm VM crashed during this test:\n  " + "\n  ".join(crashes), pytrace=False)


def send(g, path: str, body: dict | None = None, *, key: str | None = None, headers=None,
         stream=False, raw: bytes | None = None, timeout=60) -> requests.Response:
    """POST through the gateway; the answer (read whole) is remembered for the canary sweep."""
    h = {"content-type": "application/json"}
    if key is not None:
        h["authorization"] = f"Bearer {key}"
    h.update(headers or {})
    data = raw if raw is not None else json.dumps(body).encode()
    r = requests.post(g.gw.gateway_url + path, data=data, headers=h, stream=True,
                      timeout=timeout)
    body = bytearray()
    try:                     # read it all, a stream included; keep what came before a cut
        for piece in r.iter_content(8192):
            body += piece
    except requests.RequestException:
        pass
    r._content = bytes(body)   # r.text / r.json() read this
    g.seen.append((r.status_code, dict(r.headers), r._content))
    return r


def chat(g, model="gpt-4o-mini", **kw) -> requests.Response:
    extra = kw.pop("body", {})
    return send(g, "/v1/chat/completions", {"model": model, "messages": HELLO, **extra}, **kw)


def log_count(g, key_id: str) -> int:
    """Access-log lines of a key so far, once the lines of earlier requests are written (the log
    is flushed every 50 ms)."""
    time.sleep(0.15)
    return len(g.log_lines(key_id, count=0))


def all_requests(g) -> list[dict]:
    return [q for w in ("openai", "anthropic", "more") for q in g.mocks.requests(w)]


# ==================================================================================================
# 1. Header trust
# ==================================================================================================

SPOOFED = {
    "x-switchyard-route": "claude-haiku", "x-switchyard-model": "claude-3-5-haiku-latest",
    "x-switchyard-op": "embeddings", "x-switchyard-backend": "anthropic-demo",
    "x-switchyard-attempts": "7", "x-switchyard-cost": "0", "x-switchyard-budget-remaining": "999",
    "x-switchyard-provider-key": "sk-spoofed-provider-key", "x-switchyard-anything": "1",
    "x-switchyard-max-cost": "1000",    # a client's own cap: it can lower what it may spend, no more
}


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_spoofed_internal_headers_change_no_routing_translation_or_accounting(sec, stream):
    """A client sets every internal header (route, model, operation, backend, cost, budget, a
    provider key): the request is routed, translated and charged exactly as without them."""
    n0 = log_count(sec, "alice")
    before = chat(sec, key=K("alice"), body={"max_tokens": 300})
    assert before.status_code == 200, before.text
    spent = micros("gpt-4o-mini", rec.openai_text()["usage"])
    assert before.headers["x-switchyard-cost"] == usd(spent)
    sec.mocks.clear()
    body = {"max_tokens": 300}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    r = chat(sec, key=K("alice"), body=body, headers=SPOOFED)
    assert r.status_code == 200, r.text
    # routing: the OpenAI mock served it, at its chat path, as gpt-4o-mini
    [q] = sec.mocks.requests("openai")
    assert sec.mocks.requests("anthropic") == [] and sec.mocks.requests("more") == []
    assert q["path"] == "/v1/chat/completions" and q["body"]["model"] == "gpt-4o-mini"
    assert q["body"]["messages"] == HELLO
    # nothing internal reached the provider; its credential is the gateway's, not a spoofed one
    assert not internal_headers(q), q["headers"]
    assert q["headers"]["authorization"] == f"Bearer {CANARY_ENV['OPENAI_API_KEY']}"
    assert not any("spoofed" in v or K("alice") in v for v in q["headers"].values()), q["headers"]
    # served-by and accounting are the gateway's own
    assert r.headers["x-switchyard-backend"] == "openai-demo"
    assert r.headers["x-switchyard-model"] == "gpt-4o-mini"
    assert r.headers["x-switchyard-attempts"] == "1"
    if stream:
        chunks = [json.loads(p) for p in sse_payloads(r) if p != "[DONE]"]
        usage = [c["usage"] for c in chunks if c.get("usage")][-1]
        assert "x-switchyard-cost" not in r.headers
    else:
        usage = r.json()["usage"]
        assert r.headers["x-switchyard-cost"] == usd(micros("gpt-4o-mini", usage))
        assert r.headers["x-switchyard-budget-remaining"] == usd(
            BUDGET_USD * 1_000_000 - spent - micros("gpt-4o-mini", usage))
    cost = micros("gpt-4o-mini", usage)
    lines = sec.log_lines("alice", count=n0 + 2)
    assert len(lines) == n0 + 2
    assert lines[-1]["route"] == "gpt-4o-mini" and lines[-1]["backend"] == "openai-demo"
    assert lines[-1]["operation"] == "chat" and lines[-1]["attempts"] == "1"
    assert int(lines[-1]["cost_micros"]) == cost
    # internal request headers are never echoed to the client
    for name in ("x-switchyard-route", "x-switchyard-op", "x-switchyard-provider-key",
                 "x-switchyard-anything"):
        assert name not in r.headers, (name, dict(r.headers))


def test_a_cost_cap_header_cannot_raise_a_budget(sec):
    r = chat(sec, key=K("byok-c"), headers={"x-switchyard-max-cost": "1000"})
    assert r.status_code == 429, r.text
    assert openai_error(r)["code"] == "insufficient_quota"
    assert all_requests(sec) == []


def test_configured_limits_apply(sec):
    """The gateway's own "limits" (here max_messages 64, max_tool_schema_bytes 512, max_json_depth
    32) replace the defaults end to end."""
    r = chat(sec, key=K("open"), body={"messages": HELLO * 64})
    assert r.status_code == 200, r.text
    r = chat(sec, key=K("open"), body={"messages": HELLO * 65})
    assert r.status_code == 400
    err = openai_error(r)
    assert (err["param"], err["code"]) == ("messages", "array_above_max_length")
    assert "maximum length 64" in err["message"]
    small = {"type": "object", "properties": {"city": {"type": "string"}}}
    big = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 20}
                                            for i in range(20)}}
    assert len(json.dumps(small, separators=(",", ":"))) <= 512 < len(json.dumps(big))
    tool = lambda params: {"type": "function", "function": {"name": "f", "parameters": params}}  # noqa: E731
    r = chat(sec, key=K("open"), body={"tools": [tool(small)]})
    assert r.status_code == 200, r.text
    r = chat(sec, key=K("open"), body={"tools": [tool(small), tool(big)]})
    assert r.status_code == 400
    err = openai_error(r)
    assert (err["param"], err["code"]) == ("tools[1].function.parameters", "schema_too_large")
    assert "512" in err["message"]
    assert len(all_requests(sec)) == 2
    # max_json_depth 32: the body is level 1, so metadata may hold 30 more levels, not 31.
    r = chat(sec, key=K("open"), body={"metadata": {"deep": nested(29)}})
    assert r.status_code == 200, r.text
    r = chat(sec, key=K("open"), body={"metadata": {"deep": nested(30)}})
    assert r.status_code == 400
    err = openai_error(r)
    assert err["code"] == "json_too_deep" and "32 levels" in err["message"], err
    r = chat(sec, key=K("open"), body={"messages": [{"role": "user", "content": "[" * 100}]})
    assert r.status_code == 200, "brackets in a string are text"
    assert len(all_requests(sec)) == 4


def test_names_a_pattern_lets_through_do_not_become_metric_names(sec):
    """Through a `*` model pattern any name resolves; each made-up name must not define a new
    stat (unbounded series, and VM memory kept for good): the pattern is the label."""
    names = [f"gpt-4o-madeup-{i}" for i in range(3)]
    n = log_count(sec, "open")
    for name in names:
        r = chat(sec, name, key=K("open"))
        assert r.status_code == 200, r.text
    time.sleep(1.2)
    prom = requests.get(sec.gw.admin_url + "/stats/prometheus", timeout=10).text
    assert "madeup" not in prom and "madeup" not in sec.gw.stats_text()
    served = [ln for ln in prom.splitlines() if ln.startswith("switchyard_requests{")
              and 'gen_ai_request_model="gpt-4o-*"' in ln]
    assert sum(float(ln.rsplit(" ", 1)[1]) for ln in served) == 3, served
    logged = {ln["requested_model"] for ln in sec.log_lines("open", count=n + 3)}
    assert set(names) <= logged                  # the access log keeps the names as sent


def test_an_overlong_request_id_is_replaced(sec):
    """x-request-id keys the shared state and goes to the access log, spans and providers: a
    client's is kept up to 200 bytes; a longer one is replaced by the gateway's own."""
    for rid, kept in (("r" * 200, True), ("r" * 5000, False)):
        sec.mocks.clear()
        n = log_count(sec, "open")
        r = chat(sec, key=K("open"), headers={"x-request-id": rid})
        assert r.status_code == 200, r.text
        [q] = sec.mocks.requests("openai")
        sent = q["headers"]["x-request-id"]
        assert (sent == rid) == kept and len(sent) <= 200, len(sent)
        line = sec.log_lines("open", count=n + 1)[-1]
        assert line["request_id"] == sent


def test_spoofed_operation_header_does_not_turn_embeddings_into_chat(sec):
    r = send(sec, "/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"},
             key=K("open"), headers={"x-switchyard-op": "chat", "x-switchyard-model": "gpt-4o-mini",
                                     "x-switchyard-route": "gpt-4o-mini"})
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "list"
    [q] = sec.mocks.requests("openai")
    assert q["path"] == "/v1/embeddings" and q["body"]["model"] == "text-embedding-3-small"
    assert not internal_headers(q)


def test_provider_cannot_speak_for_the_gateway(sec):
    """A provider answer carrying x-switchyard-* headers (cost 0, a huge budget, another backend)
    and its own account's organisation and cookies: the client sees only the gateway's values."""
    r = chat(sec, key=K("bob"), headers={"x-mock-openai": "spoof-headers"})
    assert r.status_code == 200, r.text
    [q] = sec.mocks.requests("openai")
    assert q["scenario"] == "spoof-headers"
    cost = micros("gpt-4o-mini", r.json()["usage"])
    assert cost > 0
    assert r.headers["x-switchyard-cost"] == usd(cost)
    assert r.headers["x-switchyard-backend"] == "openai-demo"
    assert Decimal(r.headers["x-switchyard-budget-remaining"]) <= BUDGET_USD
    for name in ("x-switchyard-route", "openai-organization", "openai-project",
                 "anthropic-organization-id", "set-cookie", "x-ratelimit-remaining-requests",
                 "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens"):
        assert name not in r.headers, (name, dict(r.headers))
    # A key with an rpm limit: the request headers are the gateway's; the provider's token quota
    # (the gateway's provider account) does not pass for a limit the key does not have.
    r = chat(sec, key=K("limited"), headers={"x-mock-openai": "spoof-headers"})
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-limit-requests"] == "100"
    assert int(r.headers["x-ratelimit-remaining-requests"]) < 100
    assert "x-ratelimit-limit-tokens" not in r.headers
    assert "x-ratelimit-remaining-tokens" not in r.headers
    # a stream's headers leave before any cost is known: none may be made up by the provider
    r = chat(sec, key=K("bob"), body={"stream": True}, headers={"x-mock-openai": "spoof-headers"},
             stream=True)
    assert r.status_code == 200
    assert "x-switchyard-cost" not in r.headers and "openai-organization" not in r.headers
    assert Decimal(r.headers["x-switchyard-budget-remaining"]) <= BUDGET_USD


def test_client_account_selectors_and_credentials_never_reach_a_provider(sec):
    """Headers that would pick which of the gateway's provider accounts pays (OpenAI organisation
    and project, Google quota project) or carry a credential are dropped; so are headers with
    underscores (Envoy's DROP_HEADER), which some servers read as their dashed names."""
    hdrs = {"openai-organization": "org-client", "openai-project": "proj-client",
            "x-goog-user-project": "client-project", "x-api-key": K("open"),
            "x-amz-security-token": "client-token", "cookie": "a=b", "x_api_key": "underscore",
            "x-request-note": "kept"}
    for model in ("gpt-4o-mini", "gemini-flash"):
        r = chat(sec, model, key=K("open"), headers=hdrs)
        assert r.status_code == 200, r.text
    qs = all_requests(sec)
    assert len(qs) == 2
    for q in qs:
        h = q["headers"]
        for name in ("openai-organization", "openai-project", "x-goog-user-project", "cookie",
                     "x-amz-security-token", "x_api_key"):
            assert name not in h, (name, h)
        assert h.get("x-request-note") == "kept", h     # ordinary headers still pass
        assert not any(K("open") in v for v in h.values()), h


def test_client_envoy_control_headers_are_ignored(gateway):
    """Envoy's router takes retry and timeout orders from x-envoy-* request headers; a client's are
    not obeyed (Envoy cleans them from external requests): no fewer retries (the failover still
    happens), no retries on 4xx, no 1 ms timeout, no stat names of the client's choosing."""
    body = {"model": "gpt-4o-mini", "messages": HELLO}

    def ask(headers):
        gateway.clear_mocks()
        return requests.post(chat_url(gateway), data=json.dumps(body), timeout=30,
                             headers={"content-type": "application/json", **headers})

    r = ask({"x-mock-openai": "503", "x-envoy-max-retries": "0"})
    assert r.status_code == 200 and r.headers["x-switchyard-backend"] == "anthropic-demo"
    r = ask({"x-mock-openai": "400", "x-mock-anthropic": "400", "x-envoy-retry-on": "4xx",
             "x-envoy-max-retries": "5"})
    assert r.status_code == 400
    assert len(gateway.mock_requests("openai")) + len(gateway.mock_requests("anthropic")) == 1
    r = ask({"x-envoy-upstream-rq-timeout-ms": "1", "x-envoy-upstream-alt-stat-name": "clientchosen",
             "x-mock-openai": "stall", "x-mock-stall-seconds": "0.3"})
    assert r.status_code == 200
    assert "clientchosen" not in gateway.stats_text()
    for q in gateway.mock_requests("openai"):
        assert not [k for k in q["headers"] if k.startswith("x-envoy-")], q["headers"]


def test_byok_header_of_another_name_is_stripped_and_used(sec):
    r = chat(sec, key=K("byok-a"), headers={BYOK_HEADER: BYOK_A})
    assert r.status_code == 200, r.text
    [q] = sec.mocks.requests("openai")
    assert q["headers"]["authorization"] == f"Bearer {BYOK_A}"
    assert BYOK_HEADER not in q["headers"], q["headers"]
    # A key without byok may not send one (and the default header name is internal anyway).
    r = chat(sec, key=K("open"), headers={BYOK_HEADER: BYOK_A})
    assert r.status_code == 403 and openai_error(r)["code"] == "byok_not_allowed"


@pytest.mark.parametrize("model, failing", [
    ("gpt-4o-mini", {"x-mock-openai": "503"}),
    ("gpt-4o-mini", {"x-mock-openai": "401"}),
    ("any-chat", {"x-mock-openai": "503", "x-mock-more": "gemini=503"}),
])
def test_byok_credential_never_fails_over_to_another_provider(sec, model, failing):
    """A client's own OpenAI key is for OpenAI: when OpenAI fails, nothing carries the request (and
    the key) to Anthropic, Gemini or Bedrock, nor serves it on the gateway's key; the client gets
    OpenAI's own answer (a 401 says its key is wrong)."""
    status = int(failing["x-mock-openai"])
    n = log_count(sec, "byok-c")
    r = chat(sec, model, key=K("byok-c"), headers={BYOK_HEADER: BYOK_A, **failing})
    assert r.status_code == status, r.text
    openai_error(r)
    assert BYOK_A not in r.text and CANARY not in r.text
    [q] = all_requests(sec)                                    # one attempt, to OpenAI only
    assert q["path"] == "/v1/chat/completions", q["path"]
    assert q["headers"]["authorization"] == f"Bearer {BYOK_A}"
    assert not [k for k in q["headers"] if k.startswith("x-envoy-")], q["headers"]
    assert r.headers["x-switchyard-backend"] == "openai-demo"
    # charged nothing (its budget of one micro-dollar would not cover a request either way)
    line = sec.log_lines("byok-c", count=n + 1)[-1]
    assert line["cost_micros"] in ("", "0", None), line
    assert line["status"] == str(status) and line["attempts"] == "1", line
    # Without BYOK the same failure fails over as usual.
    if status == 503:
        sec.mocks.clear()
        r = chat(sec, model, key=K("open"), headers=failing)
        assert r.status_code == 200 and r.headers["x-switchyard-backend"] != "openai-demo"


def test_same_request_id_concurrently_keeps_every_request_its_own(sec):
    """Four clients send the SAME x-request-id at the same time, on the one worker thread, each a
    slow stream: two budgeted keys and two BYOK keys, on two providers. Every provider request
    carries its own client's credential and model; every client gets its own answer, headers and
    accounting."""
    same = "same-request-id-for-everyone"
    clients = [
        ("carol", "gpt-4o-mini", None),
        ("dave", "claude-haiku", None),
        ("byok-a", "gpt-4o-mini", BYOK_A),
        ("byok-b", "claude-haiku", BYOK_B),
    ]
    results: dict[str, requests.Response] = {}
    barrier = threading.Barrier(len(clients))

    def run(name, model, own):
        headers = {"x-request-id": same, "x-mock-openai": "slow-stream",
                   "x-mock-anthropic": "slow-stream"}
        if own:
            headers[BYOK_HEADER] = own
        barrier.wait()
        r = chat(sec, model, key=K(name), headers=headers, stream=True, timeout=120,
                 body={"stream": True, "stream_options": {"include_usage": True}})
        return name, r, time.time()

    done = {}
    logged = {name: log_count(sec, name) for name, _, _ in clients}
    with ThreadPoolExecutor(len(clients)) as ex:
        for name, r, finished in ex.map(lambda c: run(*c), clients):
            results[name], done[name] = r, finished
    qs = all_requests(sec)
    assert len(qs) == 4, [q["path"] for q in qs]
    # They really were in flight together: every request reached its provider before the first
    # answer (a stream of 200 ms per event) was complete.
    assert max(q["time"] for q in qs) < min(done.values()), ([q["time"] for q in qs], done)
    openai_qs = [q for q in qs if q["path"] == "/v1/chat/completions"]
    anth_qs = [q for q in qs if q["path"] == "/v1/messages"]
    assert len(openai_qs) == 2 and len(anth_qs) == 2
    assert sorted(q["headers"]["authorization"] for q in openai_qs) == sorted(
        [f"Bearer {CANARY_ENV['OPENAI_API_KEY']}", f"Bearer {BYOK_A}"])
    assert sorted(q["headers"]["x-api-key"] for q in anth_qs) == sorted(
        [CANARY_ENV["ANTHROPIC_API_KEY"], BYOK_B])
    for q in openai_qs:
        assert q["body"]["model"] == "gpt-4o-mini" and "x-api-key" not in q["headers"]
    for q in anth_qs:
        assert q["body"]["model"] == "claude-3-5-haiku-latest" and "authorization" not in q["headers"]
    # Each upstream attempt ran under a request id of its own (one kept the client's).
    ids = [q["headers"].get("x-request-id") for q in qs]
    assert len(set(ids)) == 4 and ids.count(same) == 1, ids
    # Every client: its own provider's whole stream, its own served-by headers.
    want_text = {"gpt-4o-mini": rec.openai_stream_summary(rec.openai_stream_text_chunks())["text"],
                 "claude-haiku": rec.anthropic_stream_text()["text"]}
    usage = {}
    for name, model, own in clients:
        r = results[name]
        assert r.status_code == 200, (name, r.text[:300])
        payloads = sse_payloads(r)
        assert payloads[-1] == "[DONE]", (name, payloads[-3:])
        chunks = [json.loads(p) for p in payloads[:-1]]
        assert not any("error" in c for c in chunks), name
        assert rec.openai_stream_summary(chunks)["text"] == want_text[model], name
        usage[name] = [c["usage"] for c in chunks if c.get("usage")][-1]
        backend = "openai-demo" if model == "gpt-4o-mini" else "anthropic-demo"
        assert r.headers["x-switchyard-backend"] == backend, (name, dict(r.headers))
        if own:
            assert "x-switchyard-budget-remaining" not in r.headers, name
        else:
            # A stream's budget header: what is left after its own reservation, nothing else's.
            assert Decimal(r.headers["x-switchyard-budget-remaining"]) < BUDGET_USD
    assert usage["carol"] != usage["dave"]
    # Accounting: one access-log line per client, under its own key, with its own cost.
    for name, model, own in clients:
        line = sec.log_lines(name, count=logged[name] + 1)[-1]
        assert line["requested_model"] == model and line["status"] == "200", line
        assert line["backend"] == ("openai-demo" if model == "gpt-4o-mini" else "anthropic-demo")
        assert int(line["cost_micros"]) == micros(model, usage[name]), (name, line)
    lines = [sec.log_lines(n, count=logged[n] + 1)[-1] for n, _, _ in clients]
    assert len({ln["request_id"] for ln in lines}) == 4, [ln["request_id"] for ln in lines]
    # Budgets: each budgeted key (untouched before) was charged its own stream, and only that.
    for name, model, _ in clients[:2]:
        r = chat(sec, model, key=K(name))
        assert r.status_code == 200, r.text
        left = BUDGET_USD * 1_000_000 - micros(model, usage[name]) - micros(model, r.json()["usage"])
        assert r.headers["x-switchyard-budget-remaining"] == usd(left), name


# ==================================================================================================
# 2. No credential leaks (canaries)
# ==================================================================================================

CHAT_MODELS = ["gpt-4o-mini", "claude-haiku", "gemini-flash", "gemini-vertex", "bedrock-nova",
               "command-r", "llama3", "azure-gpt", "magistral", "deepseek-reasoner", "any-chat"]
EMBED_MODELS = ["text-embedding-3-small", "gemini-embedding", "cohere-embed", "titan-embed",
                "ollama-embed", "azure-embed"]
FAULTS = ["echo-auth", "401", "403", "500", "reset", "truncate", "error-mid-stream",
          # the fault matrix's (tests/mocks): broken answers of every kind
          "html", "malformed-json", "truncate-mid-event", "reset-after-first-chunk",
          "429-no-retry-after", "bad-crc"]


def test_echoed_credentials_are_redacted_for_every_schema(sec):
    """Every provider answers 401 quoting the credential it received: the client gets the
    provider's message with the credential replaced, never the credential."""
    for model in CHAT_MODELS:
        for stream in (False, True):
            sec.mocks.clear()
            r = chat(sec, model, key=K("open"), body={"stream": stream},
                     headers={h: "echo-auth" for h in MOCK_HEADERS})
            assert 400 <= r.status_code < 600, (model, r.status_code)
            err = openai_error(r)
            qs = all_requests(sec)
            assert qs and all(q["scenario"] == "echo-auth" or q.get("scenario") == "echo-auth"
                              for q in qs), model
            sent = " ".join(v for q in qs for v in q["headers"].values())
            got_credential = any(c in sent for c in CANARY_ENV.values())
            assert CANARY not in r.text and CANARY not in json.dumps(dict(r.headers)), (model, r.text)
            if got_credential and "credential received" in err["message"]:
                assert "[redacted]" in err["message"], (model, err)
    # BYOK: the client's own credential, quoted back, is redacted too (it is a secret as well).
    for model, own in (("gpt-4o-mini", BYOK_A), ("claude-haiku", BYOK_B)):
        r = chat(sec, model, key=K("byok-a"), headers={BYOK_HEADER: own,
                                                       **{h: "echo-auth" for h in MOCK_HEADERS}})
        assert r.status_code == 401, r.text
        assert own not in r.text and "[redacted]" in openai_error(r)["message"], r.text


# Streams whose error event quotes the credential, for the translated stream schemas with a
# credential and an error event: not a plain OpenAI or Azure backend (their streams pass untouched,
# unsearched), Bedrock (the mock does not rewrite its binary frames), Ollama (no credential), or the
# mocks without a mid-stream error event (Cohere, Mistral, DeepSeek).
MID_STREAM_MODELS = ["claude-haiku", "gemini-flash", "gemini-vertex"]


def test_credentials_quoted_in_a_mid_stream_error_event_are_redacted(sec):
    """The provider starts a stream, then sends an error event whose message quotes the credential
    it received: the client's error event says `[redacted]` where the credential was."""
    for model in MID_STREAM_MODELS:
        sec.mocks.clear()
        r = chat(sec, model, key=K("open"), body={"stream": True},
                 headers={h: "echo-auth-mid-stream" for h in MOCK_HEADERS})
        assert r.status_code == 200, (model, r.status_code, r.text[:300])
        qs = all_requests(sec)
        sent = " ".join(v for q in qs for v in q["headers"].values())
        assert any(c in sent for c in CANARY_ENV.values()), (model, "the provider got no canary")
        errors = [json.loads(line[5:]) for line in r.text.splitlines()
                  if line.startswith("data:") and '"error"' in line]
        assert errors, (model, r.text[-500:])
        assert CANARY not in r.text, (model, r.text[-500:])
        if any("credential received" in e["error"]["message"] for e in errors):
            assert any("[redacted]" in e["error"]["message"] for e in errors), (model, errors)


def test_no_canary_anywhere_after_errors_and_faults(sec):
    """Bad keys, provider 401/403/500, resets, truncated and broken streams, echoed credentials,
    BYOK, on every schema; then no canary in any answer, stat, metric name, log or access log."""
    # bad and refused virtual keys
    for k in (K("unknown"), K("off"), "Bearer " + K("alice"), K("alice") + "x"):
        r = chat(sec, key=k)
        assert r.status_code == 401, (k, r.status_code)
    r = send(sec, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO},
             headers={"x-api-key": K("alice"), "authorization": f"Bearer {K('bob')}"})
    assert r.status_code == 401
    r = chat(sec, key=K("alice"), headers={BYOK_HEADER: BYOK_A})      # not a byok key
    assert r.status_code == 403
    # every fault on every schema, stream and not
    for model in CHAT_MODELS:
        for fault in FAULTS:
            for stream in (False, True):
                chat(sec, model, key=K("open"), body={"stream": stream},
                     headers={h: fault for h in MOCK_HEADERS})
    for model in EMBED_MODELS:
        for fault in ("echo-auth", "401", "500", None):
            hdrs = {h: fault for h in MOCK_HEADERS} if fault else {}
            send(sec, "/v1/embeddings", {"model": model, "input": ["a", "b"]}, key=K("open"),
                 headers=hdrs)
    # BYOK under faults
    for fault in ("echo-auth", "500", "truncate"):
        chat(sec, key=K("byok-a"), body={"stream": True},
             headers={BYOK_HEADER: BYOK_A, **{h: fault for h in MOCK_HEADERS}})
    # the canaries did reach the providers: the sweep below could fail
    sent = json.dumps([q["headers"] for q in all_requests(sec)])
    assert CANARY_ENV["OPENAI_API_KEY"] in sent or CANARY_ENV["ANTHROPIC_API_KEY"] in sent

    time.sleep(1.5)                        # a stats flush (1 s) and the access log (50 ms)
    requests.post(sec.gw.admin_url + "/reopen_logs", timeout=10)
    places = {
        "responses": "\n".join(f"{s} {json.dumps(h)} {b.decode('utf-8', 'replace')}"
                               for s, h, b in sec.seen),
        "/stats": requests.get(sec.gw.admin_url + "/stats", timeout=10).text,
        "/stats/prometheus": requests.get(sec.gw.admin_url + "/stats/prometheus", timeout=10).text,
        "/config_dump": requests.get(sec.gw.admin_url + "/config_dump", timeout=10).text,
        "envoy log": Path(sec.gw.log_path).read_text(encoding="utf-8", errors="replace"),
        "access log": Path(sec.gw.access_log_path).read_text(encoding="utf-8", errors="replace"),
    }
    assert len(sec.seen) >= 300 and places["access log"].count("\n") >= 300
    for where, text in places.items():
        for c in CANARIES:
            assert c not in text, f"canary {c!r} leaked into {where}"
        at = text.find(CANARY)
        assert at < 0, f"{CANARY!r} in {where}: …{text[max(0, at - 200):at + 100]}…"


# ==================================================================================================
# 3. Limits on what a client controls (the shipped defaults, on the session gateway)
# ==================================================================================================

def post(gateway, body, **kw) -> requests.Response:
    return requests.post(chat_url(gateway), data=json.dumps(body).encode(), timeout=60,
                         headers={"content-type": "application/json", **kw.pop("headers", {})},
                         **kw)


def refused(r, status, param, code, *needles):
    assert r.status_code == status, (r.status_code, r.text[:300])
    err = openai_error(r)
    assert err["param"] == param and err["code"] == code, err
    for n in needles:
        assert str(n) in err["message"], (n, err["message"])
    return err


def msg(content="hi"):
    return {"role": "user", "content": content}


def img(url):
    return {"type": "image_url", "image_url": {"url": url}}


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.mark.parametrize("case", [
    "messages", "tools", "images", "image_size", "model", "user", "stop", "n"])
def test_chat_limits_at_and_over_the_default(gateway, case):
    """Each default: the limit itself is served, one more is an OpenAI-shaped 400 naming the param
    and the limit, before any provider is asked."""
    small_png = "data:image/png;base64," + "A" * 16
    at, over, param, code, limit = {
        "messages": ({"messages": [msg()] * 2048}, {"messages": [msg()] * 2049},
                     "messages", "array_above_max_length", 2048),
        "tools": ({"tools": [TOOL] * 128}, {"tools": [TOOL] * 129}, "tools",
                  "array_above_max_length", 128),
        "images": ({"messages": [msg([img(small_png)] * 250)] * 2},
                   {"messages": [msg([img(small_png)] * 250)] * 2 + [msg([img(small_png)])]},
                   "messages", "too_many_images", 500),
        "image_size": ({"messages": [msg([img("data:image/png;base64," + "A" * (5 * 2**20 - 22))])]},
                       {"messages": [msg([img("data:image/png;base64," + "A" * (5 * 2**20 - 21))])]},
                       "messages[0].content[0].image_url.url", "string_above_max_length",
                       5 * 2**20),
        "model": (None, {"model": "m" * 257}, "model", "string_above_max_length", 256),
        "user": ({"user": "u" * 256}, {"user": "u" * 257}, "user", "string_above_max_length", 256),
        "stop": ({"stop": ["s"] * 16}, {"stop": ["s"] * 17}, "stop", "array_above_max_length", 16),
        "n": ({"n": 128}, {"n": 129}, "n", "integer_above_max_value", 128),
    }[case]
    base = {"model": "gpt-4o-mini", "messages": [msg()]}
    if at is not None:
        r = post(gateway, {**base, **at})
        assert r.status_code == 200, (case, r.status_code, r.text[:300])
        assert len(gateway.mock_requests("openai")) == 1
        gateway.clear_mocks()
    r = post(gateway, {**base, **over})
    refused(r, 400, param, code, limit)
    assert gateway.mock_requests("openai") == [] and gateway.mock_requests("anthropic") == []


def test_embeddings_input_count_and_model_length(gateway):
    url = gateway.base_url + "/embeddings"
    r = requests.post(url, json={"model": "text-embedding-3-small", "input": ["a"] * 2048}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    assert len(r.json()["data"]) == 2048
    r = requests.post(url, json={"model": "text-embedding-3-small", "input": ["a"] * 2049}, timeout=60)
    refused(r, 400, "input", "array_above_max_length", 2048)
    r = requests.post(url, json={"model": "e" * 300, "input": "a"}, timeout=60)
    refused(r, 400, "model", "string_above_max_length", 256)


def test_json_values_limit_is_a_prompt_413_not_a_vm_full_of_trees(gateway):
    """8 MiB of one-entry objects (about a million values; parsed, hundreds of MB of tree): a 413
    naming the limit, in well under a second, and the VM lives on."""
    junk = ",".join(['{"a":0}'] * 1_000_000)
    raw = ('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"metadata":['
           + junk + ']}').encode()
    assert len(raw) < 8 * 2**20
    t0 = time.monotonic()
    r = requests.post(chat_url(gateway), data=raw, timeout=60,
                      headers={"content-type": "application/json"})
    took = time.monotonic() - t0
    err = refused(r, 413, None, "request_too_large", 100000)
    assert "JSON values" in err["message"]
    assert took < 2.0, took
    assert gateway.mock_requests("openai") == []
    # ordinary requests still served
    assert post(gateway, {"model": "gpt-4o-mini", "messages": [msg()]}).status_code == 200


def nested(depth: int, leaf=None):
    v = leaf if leaf is not None else {}
    for _ in range(depth):
        v = [v]
    return v


@pytest.mark.parametrize("field", ["metadata", "response_format", "tools"])
def test_deep_nesting_is_a_400_not_a_crash(gateway, field):
    """Past serde_json's recursion limit (128) a body is a 400, wherever the nesting is."""
    deep = "[" * 5000 + "]" * 5000
    body = {"metadata": '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"metadata":%s}',
            "response_format": '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],'
                               '"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":%s}}}',
            "tools": '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],'
                     '"tools":[{"type":"function","function":{"name":"f","parameters":%s}}]}',
            }[field] % deep
    r = requests.post(chat_url(gateway), data=body.encode(), timeout=60,
                      headers={"content-type": "application/json"})
    err = refused(r, 400, None, None)
    assert "recursion limit" in err["message"], err
    assert gateway.mock_requests("openai") == []


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_nesting_just_under_the_limit_reaches_every_translator_safely(gateway, model):
    """A tool schema and a JSON schema 115 levels deep (accepted) go through every schema's
    translator (Gemini rewrites schemas recursively): an answer or a clean error, never a crash."""
    schema = {"type": "object", "properties": {"x": nested(110)}}
    body = {"model": model, "messages": [msg()],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
            "metadata": {"deep": nested(110)}}
    for stream in (False, True):
        r = post(gateway, {**body, "stream": stream})
        assert r.status_code < 600
        if r.status_code >= 400:
            openai_error(r)
    r = post(gateway, {"model": model, "messages": [msg()],
                       "response_format": {"type": "json_schema",
                                           "json_schema": {"name": "x", "schema": schema}}})
    assert r.status_code < 600
    if r.status_code >= 400:
        openai_error(r)


@pytest.mark.parametrize("stream", [False, True])
def test_deep_unknown_field_is_passed_or_refused_never_a_crash(gateway, stream):
    """A field the gateway does not read is skipped without recursion (any depth); a backend that
    must rebuild the body (a stream, to ask for usage) meets serde_json's limit: a 400."""
    deep = "[" * 500 + "]" * 500     # the mock (Python's json) parses up to ~1000 levels
    raw = ('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":%s,'
           '"x_vendor_extension":%s}' % ("true" if stream else "false", deep)).encode()
    r = requests.post(chat_url(gateway), data=raw, timeout=60,
                      headers={"content-type": "application/json"})
    if stream:
        err = refused(r, 400, None, None)
        assert "recursion limit" in err["message"]
    else:
        assert r.status_code == 200, r.text[:300]


def test_header_limits_are_envoys_431(gateway):
    """Headers above max_request_headers_kb (60 KiB) or max_headers_count (100): Envoy's 431 before
    any filter runs; just under them, served."""
    body = json.dumps({"model": "gpt-4o-mini", "messages": [msg()]})

    def ask(headers: dict) -> requests.Response:
        return requests.post(chat_url(gateway), data=body, timeout=30,
                             headers={"content-type": "application/json", **headers})

    r = ask({"x-big": "a" * (58 * 1024)})
    assert r.status_code == 200, r.status_code
    assert len(gateway.mock_requests("openai")[0]["headers"]["x-big"]) == 58 * 1024
    gateway.clear_mocks()
    r = ask({"x-big": "a" * (61 * 1024)})
    assert r.status_code == 431, r.status_code
    r = ask({f"x-h{i}": "v" for i in range(85)})
    assert r.status_code == 200, r.status_code
    r = ask({f"x-h{i}": "v" for i in range(101)})
    assert r.status_code == 431, r.status_code
    assert gateway.mock_requests("openai") == [] or all(
        "x-h100" not in q["headers"] for q in gateway.mock_requests("openai"))


def test_slow_headers_are_cut_after_request_headers_timeout(gateway):
    """A client that opens a request and never finishes its headers is disconnected after
    request_headers_timeout (10 s), not held for the 300 s stream idle timeout."""
    import socket
    port = int(gateway.gateway_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: appl")
        t0 = time.monotonic()
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        took = time.monotonic() - t0
    assert 8 <= took <= 15, took
    assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:200]
