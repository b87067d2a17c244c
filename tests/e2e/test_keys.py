"""Virtual keys, rate limits, budgets and cost, end to end: a real Envoy 1.40 (``--concurrency 2``)
running envoy/demo.yaml with an ``auth`` policy injected into the gateway plugin's configuration,
in front of its own mock providers (see keys_gateway.py).

Every test uses its own key(s), so the order of the tests does not matter. Prices are configured
here (``pricing.models``, the built-in table switched off), so every expected cost is computed from
these prices and the recorded usage (recorded.py), not from the gateway's code.

What survives a configuration reload (LDS), a hot restart and a cold restart is checked at the end
with gateways of their own; the README's "Keys, limits and budgets" section quotes these tests.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import openai
import pytest
import requests

import harness
import recorded
from helpers import plugin_config
from keys_gateway import KeysGateway, LdsGateway, key_hash

REPO = harness.REPO
EXAMPLE = REPO / "examples" / "gateway-auth.json"

HELLO = [{"role": "user", "content": "Hello!"}]
# The gateway's prompt estimate for HELLO (src/policy/estimate.rs): 3 per request + 4 per message +
# ceil(6 ASCII characters / 4).
HELLO_ESTIMATE = 3 + 4 + math.ceil(len("Hello!") / 4)

# Prices configured below, in US dollars per token (exact decimals).
PRICES = {
    "gpt-4o-mini": {"in": Decimal("0.000001"), "out": Decimal("0.000002")},
    "claude-3-5-haiku-latest": {"in": Decimal("0.000003"), "out": Decimal("0.000005")},
}
MAX_OUTPUT = 1000          # max_output_tokens of both entries: the reservation without max_tokens


def K(name: str) -> str:
    """The plain-text virtual key of a test key (only its sha256 is configured)."""
    return f"sk-sy-e2e-{name}"


def micros(model: str, prompt: int, completion: int) -> int:
    """Cost in micro-USD, rounded up (the gateway's accounting unit)."""
    p = PRICES[model]
    return math.ceil((prompt * p["in"] + completion * p["out"]) * 1_000_000)


def usd(micros_: int) -> str:
    """Micro-USD as the gateway's headers write dollars: six decimals."""
    return f"{micros_ // 1_000_000}.{micros_ % 1_000_000:06d}"


def to_micros(header: str) -> int:
    return int(Decimal(header) * 1_000_000)


# The recorded usage the mocks answer with (tests/e2e/README.md, "What each request gets").
OPENAI_USAGE = recorded.openai_text()["usage"]                     # non-stream: 8 / 271
OPENAI_STREAM_USAGE = recorded.openai_stream_usage_chunk()["usage"]  # stream + usage: 12 / 100
ANTHROPIC_USAGE = recorded.openai_usage_from_anthropic(recorded.anthropic_text()["usage"])  # 20 / 10
OPENAI_COST = micros("gpt-4o-mini", OPENAI_USAGE["prompt_tokens"], OPENAI_USAGE["completion_tokens"])

# The burst: reservation r and real cost a of one request, budget B for exactly 100 of them.
BURST_MAX_TOKENS = OPENAI_USAGE["completion_tokens"]     # the answer never exceeds max_tokens
BURST_RESERVED = micros("gpt-4o-mini", HELLO_ESTIMATE, BURST_MAX_TOKENS)
BURST_BUDGET = 100 * BURST_RESERVED


def key(name: str, **fields) -> dict:
    return {"id": name, "sha256": key_hash(K(name)), **fields}


def budget(amount_usd: float, window: str = "total") -> dict:
    return {"amount_usd": amount_usd, "window": window}


AUTH = {
    "keys": [
        key("basic"),
        key("off", disabled=True),
        key("old", expires_at=1_000_000_000),            # 2001-09-09
        key("future", expires_at=4_102_444_800),         # 2100-01-01
        key("mini", models=["gpt-4o-mini"]),
        key("rpm", limits={"rpm": 3}),
        key("tpm", limits={"tpm": 500}),
        key("conc", limits={"max_concurrent": 2}),
        key("team-a", team="squad"),
        key("team-b", team="squad"),
        key("budget", budget=budget(1)),
        key("stream", budget=budget(1, "daily")),
        key("failover", budget=budget(1, "monthly")),
        key("tight", budget=budget(0.001)),
        key("capped"),
        key("burst", budget=budget(BURST_BUDGET / 1e6)),
        key("abort", budget=budget(1)),
        key("fail", budget=budget(1)),
        key("byok", byok=True, budget=budget(0.000001)),
        key("workers", limits={"rpm": 20}),
        key("priced", budget=budget(1)),
        key("reset", limits={"rpm": 100}),
    ],
    "teams": [{"id": "squad", "limits": {"rpm": 3}}],
    "pricing": {
        "builtin": False,
        "models": {m: {"input_cost_per_token": float(p["in"]), "output_cost_per_token": float(p["out"]),
                       "max_output_tokens": MAX_OUTPUT} for m, p in PRICES.items()},
        "aliases": {"claude-haiku": "claude-3-5-haiku-latest"},
    },
}


# --------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def kg(tmp_path_factory):
    try:
        g = KeysGateway.start(tmp_path_factory.mktemp("keys"), AUTH)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"could not start the keys gateway: {e}", pytrace=False)
    problems: list[str] = []
    try:
        yield g
    finally:
        problems = g.stop()
    if problems:
        pytest.fail("keys gateway end-of-module check failed:\n  " + "\n  ".join(problems),
                    pytrace=False)


@pytest.fixture(autouse=True)
def _guard(request):
    """For tests using ``kg``: empty mock request logs first; a wasm VM crash during the test fails
    it (teardown error), like conftest's guard does for the session gateway."""
    if "kg" not in request.fixturenames:
        yield
        return
    g = request.getfixturevalue("kg")
    g.mocks.clear()
    offset = g.gw.log_offset()
    yield
    time.sleep(0.05)
    crashes = g.gw.wasm_crashes(since=offset)
    if crashes:
        pytest.fail("wasm VM crashed during this test:\n  " + "\n  ".join(crashes), pytrace=False)


def error_of(r: requests.Response) -> dict:
    assert r.headers.get("content-type", "").startswith("application/json"), (r.status_code, r.text)
    doc = r.json()
    assert set(doc) == {"error"}, doc
    assert {"message", "type", "param", "code"} <= set(doc["error"]), doc
    return doc["error"]


def chat_body(model="gpt-4o-mini", **extra) -> dict:
    return {"model": model, "messages": HELLO, **extra}


def no_upstream_request(g: KeysGateway) -> None:
    assert g.mocks.requests("openai") == [] and g.mocks.requests("anthropic") == []


# --------------------------------------------------------------------------------------------------
# keys: the command line and the example configuration


def switchyard_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["cargo", "run", "--quiet", "--bin", "switchyard", "--", *args],
                          cwd=REPO, input=stdin, capture_output=True, text=True, timeout=600)


def test_hash_key_cli_prints_the_sha256_the_tests_configure():
    k = K("basic")
    r = switchyard_cli("hash-key", k)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == key_hash(k)
    r = switchyard_cli("hash-key", stdin=k + "\n")       # from stdin: not in the shell history
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == key_hash(k)
    r = switchyard_cli("new-key", "alice")
    assert r.returncode == 0, r.stderr
    new = re.search(r"^key:\s+(sk-sy-\S+)$", r.stdout, re.M).group(1)
    sha = re.search(r"^sha256:\s+([0-9a-f]{64})$", r.stdout, re.M).group(1)
    assert key_hash(new) == sha


def test_example_configuration_is_valid_and_documented(tmp_path):
    r = switchyard_cli("check", str(EXAMPLE))
    assert r.returncode == 0, r.stderr
    assert "is valid" in r.stdout
    cfg = json.loads(EXAMPLE.read_text())
    assert cfg["role"] == "gateway" and cfg["auth"]["keys"]
    # The README shows this file's auth object, as it is, and says where it is.
    readme = (REPO / "README.md").read_text()
    assert "examples/gateway-auth.json" in readme
    m = re.search(r'```json\n("auth": \{.*?)\n```', readme, re.S)
    assert m, "README: no auth example block"
    assert json.loads("{" + m.group(1) + "}")["auth"] == cfg["auth"]
    # A configuration the policy refuses (a key whose team is not listed) fails the check.
    bad = dict(cfg, auth=dict(cfg["auth"], teams=[]))
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    r = switchyard_cli("check", str(path))
    assert r.returncode != 0 and "is not listed in teams" in r.stderr, (r.stdout, r.stderr)


# --------------------------------------------------------------------------------------------------
# authentication: every rejection is a 401 in OpenAI's shape, and nothing goes upstream


def assert_401(r: requests.Response, fragment: str) -> None:
    assert r.status_code == 401, (r.status_code, r.text)
    e = error_of(r)
    assert (e["type"], e["code"]) == ("invalid_request_error", "invalid_api_key"), e
    assert fragment.lower() in e["message"].lower(), e


def test_missing_key_is_401(kg):
    assert_401(kg.chat(None, chat_body()), "didn't provide an API key")
    r = requests.get(kg.base_url + "/models", timeout=10)
    assert_401(r, "didn't provide an API key")
    no_upstream_request(kg)


def test_forged_keys_are_401(kg):
    real = K("basic")
    for forged in ["sk-sy-e2e-nobody", real[:-1], real + "x", real.upper(), key_hash(real)]:
        assert_401(kg.chat(forged, chat_body()), "Incorrect API key")
    assert_401(kg.chat(None, chat_body(), headers={"x-api-key": "sk-sy-forged"}), "Incorrect API key")
    assert_401(kg.chat(None, chat_body(), headers={"authorization": f"Basic {real}"}),
               "Unsupported authorization scheme")
    # The SDK maps it to its own exception.
    c = openai.OpenAI(base_url=kg.base_url, api_key="sk-sy-forged", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as ei:
        c.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert ei.value.code == "invalid_api_key"
    no_upstream_request(kg)


def test_empty_keys_are_401(kg):
    body = json.dumps(chat_body()).encode()
    for h in (("authorization", "Bearer "), ("authorization", "Bearer"), ("authorization", ""),
              ("x-api-key", ""), ("x-api-key", "   "), ("authorization", "Bearer    ")):
        status, _, raw = raw_request(kg, [h], body)
        assert status == 401, (h, status, raw)
        e = json.loads(raw)["error"]
        assert e["code"] == "invalid_api_key", (h, e)
        # Envoy drops a header whose value is empty or blank: then there is no key at all.
        assert "empty" in e["message"] or "didn't provide" in e["message"], (h, e)
    no_upstream_request(kg)


def raw_request(g: KeysGateway, headers: list[tuple[str, str]], body: bytes) -> tuple[int, dict, bytes]:
    """One request with headers exactly as given (repeats included)."""
    conn = http.client.HTTPConnection("127.0.0.1", g.gw.listener_port, timeout=30)
    try:
        conn.putrequest("POST", "/v1/chat/completions", skip_accept_encoding=True)
        for k, v in headers + [("content-type", "application/json"),
                               ("content-length", str(len(body)))]:
            conn.putheader(k, v)
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_keys_in_both_headers_must_agree(kg):
    body = json.dumps(chat_body()).encode()
    other = K("budget")
    for headers in ([("authorization", f"Bearer {K('basic')}"), ("x-api-key", other)],
                    [("authorization", f"Bearer {K('basic')}"), ("authorization", f"Bearer {other}")],
                    [("x-api-key", K("basic")), ("x-api-key", other)]):
        status, _, raw = raw_request(kg, headers, body)
        assert status == 401, (headers, status, raw)
        assert "Conflicting API keys" in json.loads(raw)["error"]["message"]
    no_upstream_request(kg)
    # The same key twice is one key.
    status, _, raw = raw_request(kg, [("authorization", f"Bearer {K('basic')}"),
                                      ("x-api-key", K("basic"))], body)
    assert status == 200, raw
    assert len(kg.mocks.requests("openai")) == 1


def test_enormous_authorization_headers_get_a_clear_4xx(kg):
    # Larger than any key (256 bytes) but within Envoy's header limit: the gateway refuses it
    # before hashing anything.
    r = kg.chat("sk-" + "a" * 8 * 1024, chat_body())
    assert_401(r, "too long")
    # 60 KiB: over Envoy's max_request_headers_kb (60 KiB by default): Envoy answers 431 itself.
    r = kg.chat("sk-" + "a" * 60 * 1024, chat_body())
    assert r.status_code in (401, 431), (r.status_code, r.text[:200])
    # Many large headers, in x-api-key too.
    r = kg.chat(None, chat_body(), headers={"x-api-key": "b" * 4000})
    assert_401(r, "too long")
    no_upstream_request(kg)
    # Nothing broke: a valid key still works.
    assert kg.chat(K("basic"), chat_body()).status_code == 200


def test_disabled_and_expired_keys_are_401(kg):
    assert_401(kg.chat(K("off"), chat_body()), "disabled")
    assert_401(kg.chat(K("old"), chat_body()), "expired")
    no_upstream_request(kg)
    assert kg.chat(K("future"), chat_body()).status_code == 200


# --------------------------------------------------------------------------------------------------
# authorization: models


def test_model_allow_list(kg):
    r = kg.chat(K("mini"), chat_body("claude-haiku"))
    assert r.status_code == 403, r.text
    e = error_of(r)
    assert (e["type"], e["code"], e["param"]) == ("permission_error", "model_not_allowed", "model")
    no_upstream_request(kg)
    # An alias of an allowed model resolves to it: allowed.
    assert kg.chat(K("mini"), chat_body("fast")).status_code == 200
    # /v1/models lists what the key may use (the model and its aliases), and only that.
    models = plugin_config(kg.gw, "gateway")["models"]
    mini = next(m for m in models if m["name"] == "gpt-4o-mini")
    auth = {"authorization": f"Bearer {K('mini')}"}
    ids = [m["id"] for m in requests.get(kg.base_url + "/models", headers=auth, timeout=10).json()["data"]]
    assert sorted(ids) == sorted(["gpt-4o-mini", *mini.get("aliases", [])]), ids
    assert requests.get(kg.base_url + "/models/claude-haiku", headers=auth, timeout=10).status_code == 404
    assert requests.get(kg.base_url + "/models/gpt-4o-mini", headers=auth, timeout=10).status_code == 200
    every = requests.get(kg.base_url + "/models", headers={"authorization": f"Bearer {K('basic')}"},
                         timeout=10).json()["data"]
    listed = {n for m in models if "*" not in m["name"] for n in [m["name"], *m.get("aliases", [])]}
    assert {m["id"] for m in every} == listed and "claude-haiku" in listed


def test_pricing_alias_prices_the_route_name(kg):
    # claude-haiku is a route name with no entry of its own: pricing.aliases prices it as
    # claude-3-5-haiku-latest, so a key with a budget may use it (unpriced models are refused).
    r = kg.chat(K("priced"), chat_body("claude-haiku"))
    assert r.status_code == 200, r.text
    cost = micros("claude-3-5-haiku-latest", ANTHROPIC_USAGE["prompt_tokens"],
                  ANTHROPIC_USAGE["completion_tokens"])
    assert r.headers["x-switchyard-cost"] == usd(cost)
    assert r.headers["x-switchyard-budget-remaining"] == usd(1_000_000 - cost)


# --------------------------------------------------------------------------------------------------
# a valid key, through the official SDK


def test_sdk_with_a_valid_key_and_the_key_never_reaches_a_provider(kg):
    c = openai.OpenAI(base_url=kg.base_url, api_key=K("basic"), max_retries=0, timeout=30)
    resp = c.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert resp.choices[0].message.content == recorded.openai_text()["choices"][0]["message"]["content"]
    chunks = list(c.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == recorded.openai_stream_summary(recorded.openai_stream_text_chunks())["text"]
    resp = c.chat.completions.create(model="claude-haiku", messages=HELLO)
    assert resp.choices[0].message.content == recorded.anthropic_text()["content"][0]["text"]
    c.close()
    reqs = kg.mocks.requests("openai")
    assert len(reqs) == 2
    for q in reqs:
        assert q["headers"]["authorization"] == f"Bearer {harness.ENVOY_ENV['OPENAI_API_KEY']}"
        assert "x-api-key" not in q["headers"]
    [q] = kg.mocks.requests("anthropic")
    assert q["headers"]["x-api-key"] == harness.ENVOY_ENV["ANTHROPIC_API_KEY"]
    assert "authorization" not in q["headers"]
    for q in reqs + [q]:
        assert not any(K("basic") in v for v in q["headers"].values()), q["headers"]
        assert not any(k.startswith("x-switchyard-") for k in q["headers"]), q["headers"]


# --------------------------------------------------------------------------------------------------
# rate limits

RESET = re.compile(r"^(?:\d+ms|(?:\d+h)?(?:\d+m)?\d+(?:\.\d+)?s)$")


def reset_seconds(v: str) -> float:
    """`20ms`, `1.5s`, `6m0s`, `1h2m3s` → seconds."""
    assert RESET.match(v), v
    if v.endswith("ms"):
        return int(v[:-2]) / 1000
    h = re.search(r"(\d+)h", v)
    m = re.search(r"(\d+)m(?!s)", v)
    s = re.search(r"([\d.]+)s$", v)
    return (int(h.group(1)) * 3600 if h else 0) + (int(m.group(1)) * 60 if m else 0) + float(s.group(1))


def test_rpm_limit_429_with_retry_after_and_ratelimit_headers(kg):
    remaining = []
    for _ in range(3):
        r = kg.chat(K("rpm"), chat_body())
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(int(r.headers["x-ratelimit-remaining-requests"]))
        assert RESET.match(r.headers["x-ratelimit-reset-requests"]), r.headers
        assert "x-ratelimit-limit-tokens" not in r.headers       # no tpm configured
    assert remaining == [2, 1, 0]
    kg.mocks.clear()
    r = kg.chat(K("rpm"), chat_body())
    assert r.status_code == 429, r.text
    e = error_of(r)
    assert (e["type"], e["code"]) == ("rate_limit_error", "rate_limit_exceeded"), e
    assert "key `rpm`" in e["message"] and "requests per minute" in e["message"], e
    assert r.headers["x-ratelimit-limit-requests"] == "3"
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    retry_after = int(r.headers["retry-after"])
    retry_after_ms = int(r.headers["retry-after-ms"])
    assert math.ceil(retry_after_ms / 1000) == retry_after and retry_after >= 1
    # The rolling window forgets a request 60 s after it (src/policy/limits.rs).
    assert retry_after <= 60
    assert reset_seconds(r.headers["x-ratelimit-reset-requests"]) * 1000 >= retry_after_ms - 1
    no_upstream_request(kg)
    # The SDK reads it as a RateLimitError.
    c = openai.OpenAI(base_url=kg.base_url, api_key=K("rpm"), max_retries=0, timeout=30)
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(model="gpt-4o-mini", messages=HELLO)


def test_reset_requests_is_within_the_one_minute_window(kg):
    r = kg.chat(K("reset"), chat_body())
    assert r.status_code == 200
    assert reset_seconds(r.headers["x-ratelimit-reset-requests"]) <= 60, r.headers["x-ratelimit-reset-requests"]


def test_tpm_limit(kg):
    used = OPENAI_USAGE["total_tokens"]        # what each answer really used: 279
    # A prompt estimated above the whole limit can never pass: no retry-after.
    r = kg.chat(K("tpm"), {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 2100}]})
    assert r.status_code == 429, r.text
    assert "Request too large" in error_of(r)["message"]
    assert r.headers["x-should-retry"] == "false" and "retry-after" not in r.headers
    r1 = kg.chat(K("tpm"), chat_body())
    r2 = kg.chat(K("tpm"), chat_body())
    assert (r1.status_code, r2.status_code) == (200, 200)
    assert r1.headers["x-ratelimit-limit-tokens"] == "500"
    # Admission charges the prompt estimate; the end of the request corrects it to the usage. The
    # window is a rolling 60 s, with no minute boundary in between to reset it.
    assert int(r1.headers["x-ratelimit-remaining-tokens"]) == 500 - HELLO_ESTIMATE
    assert int(r2.headers["x-ratelimit-remaining-tokens"]) == 500 - used - HELLO_ESTIMATE
    r3 = kg.chat(K("tpm"), chat_body())        # 2 × 279 + 9 > 500
    assert r3.status_code == 429, r3.text
    e = error_of(r3)
    assert e["code"] == "rate_limit_exceeded" and "tokens per minute" in e["message"], e
    assert r3.headers["x-ratelimit-remaining-tokens"] == "0"
    assert 1 <= int(r3.headers["retry-after"]) <= 60
    assert reset_seconds(r3.headers["x-ratelimit-reset-tokens"]) <= 60


def test_max_concurrent(kg):
    stall = {"x-mock-openai": "stall", "x-mock-stall-seconds": "2"}
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        kg.chat(K("conc"), chat_body(), headers=stall).status_code)) for _ in range(2)]
    for t in threads:
        t.start()
    harness.wait_until(lambda: len(kg.mocks.requests("openai")) == 2, 10, "two requests in flight")
    r = kg.chat(K("conc"), chat_body())
    assert r.status_code == 429, r.text
    e = error_of(r)
    assert "Too many concurrent requests for key `conc`: limit 2" in e["message"], e
    assert r.headers["retry-after"] == "1"
    for t in threads:
        t.join(30)
    assert results == [200, 200]
    # Both slots were given back when the answers ended.
    assert kg.chat(K("conc"), chat_body()).status_code == 200


def test_team_limits_are_shared_by_its_keys(kg):
    seen = []
    for name in ("team-a", "team-b", "team-a"):
        r = kg.chat(K(name), chat_body())
        assert r.status_code == 200, r.text
        seen.append((r.headers["x-ratelimit-limit-requests"], r.headers["x-ratelimit-remaining-requests"]))
    assert seen == [("3", "2"), ("3", "1"), ("3", "0")]
    r = kg.chat(K("team-b"), chat_body())
    assert r.status_code == 429
    assert "team `squad`" in error_of(r)["message"]
    lines = kg.log_lines("team-b", count=2)
    assert {ln["team"] for ln in lines} == {"squad"}


# --------------------------------------------------------------------------------------------------
# cost and budgets


def test_cost_header_is_usage_times_price_and_budget_remaining_drops_by_it(kg):
    r1 = kg.chat(K("budget"), chat_body())
    r2 = kg.chat(K("budget"), chat_body())
    assert (r1.status_code, r2.status_code) == (200, 200)
    # 8 prompt + 271 completion tokens (the recording) × $1 / $2 per million = $0.000550.
    assert r1.headers["x-switchyard-cost"] == r2.headers["x-switchyard-cost"] == usd(OPENAI_COST)
    assert r1.headers["x-switchyard-budget-remaining"] == usd(1_000_000 - OPENAI_COST)
    assert to_micros(r1.headers["x-switchyard-budget-remaining"]) \
        - to_micros(r2.headers["x-switchyard-budget-remaining"]) == OPENAI_COST
    # The access log and the metrics carry the same cost.
    lines = kg.log_lines("budget", count=2)
    assert [int(ln["cost_micros"]) for ln in lines] == [OPENAI_COST, OPENAI_COST]


def test_stream_is_charged_from_its_final_usage(kg):
    r = kg.chat(K("stream"), chat_body(stream=True), stream=True)
    assert r.status_code == 200
    # The headers left before the answer: what is left after this request's reservation (the
    # prompt estimate + max_output_tokens of the model, 1000, as no max_tokens was sent).
    reserved = micros("gpt-4o-mini", HELLO_ESTIMATE, MAX_OUTPUT)
    assert r.headers["x-switchyard-budget-remaining"] == usd(1_000_000 - reserved)
    assert "x-switchyard-cost" not in r.headers
    events = [ln for ln in r.iter_lines() if ln.startswith(b"data:")]
    assert events[-1] == b"data: [DONE]"
    assert not any(b'"choices":[]' in e for e in events), "usage chunk not asked for: dropped"
    stream_cost = micros("gpt-4o-mini", OPENAI_STREAM_USAGE["prompt_tokens"],
                         OPENAI_STREAM_USAGE["completion_tokens"])
    [line] = kg.log_lines("stream")
    assert int(line["cost_micros"]) == stream_cost
    r = kg.chat(K("stream"), chat_body())
    assert r.headers["x-switchyard-budget-remaining"] == usd(1_000_000 - stream_cost - OPENAI_COST)


def test_failover_is_priced_as_the_model_that_served(kg):
    r = kg.chat(K("failover"), chat_body(), headers={"x-mock-openai": "503"})
    assert r.status_code == 200, r.text
    assert r.headers["x-switchyard-model"] == "claude-3-5-haiku-latest"
    cost = micros("claude-3-5-haiku-latest", ANTHROPIC_USAGE["prompt_tokens"],
                  ANTHROPIC_USAGE["completion_tokens"])
    assert r.headers["x-switchyard-cost"] == usd(cost)
    assert r.headers["x-switchyard-budget-remaining"] == usd(1_000_000 - cost)


def test_insufficient_quota_when_the_worst_case_does_not_fit(kg):
    # $0.001 left; no max_tokens: the worst case is 9 × $1e-6 + 1000 × $2e-6 = $0.002009.
    r = kg.chat(K("tight"), chat_body())
    assert r.status_code == 429, r.text
    e = error_of(r)
    assert (e["type"], e["code"]) == ("insufficient_quota", "insufficient_quota"), e
    assert "total budget of key `tight`" in e["message"] and "$0.002009" in e["message"], e
    assert r.headers["x-should-retry"] == "false"
    assert r.headers["x-switchyard-budget-remaining"] == "0.001000"
    assert "retry-after" not in r.headers
    no_upstream_request(kg)
    # With max_tokens 100 the worst case is $0.000209: admitted. (The mock answers 271 tokens
    # whatever max_tokens says, so this request costs more than was reserved.)
    reserved = micros("gpt-4o-mini", HELLO_ESTIMATE, 100)
    r = kg.chat(K("tight"), chat_body(max_tokens=100))
    assert r.status_code == 200
    assert r.headers["x-switchyard-budget-remaining"] == usd(1000 - OPENAI_COST)     # 0.000450
    # 450 µ$ left ≥ 209 reserved: admitted again, and the real cost overshoots the budget by at
    # most what the answer cost beyond its reservation.
    r = kg.chat(K("tight"), chat_body(max_tokens=100))
    assert r.status_code == 200
    assert r.headers["x-switchyard-budget-remaining"] == "0.000000"
    spent = 2 * OPENAI_COST
    assert 1000 < spent <= 1000 + (OPENAI_COST - reserved)
    # Now nothing fits, even a tiny request; the overspend is counted.
    r = kg.chat(K("tight"), chat_body(max_tokens=1))
    assert r.status_code == 429 and r.headers["x-switchyard-budget-remaining"] == "0.000000"


def test_max_cost_header_caps_one_request(kg):
    worst = micros("gpt-4o-mini", HELLO_ESTIMATE, 100)          # 209 µ$
    r = kg.chat(K("capped"), chat_body(max_tokens=100), headers={"x-switchyard-max-cost": usd(worst - 1)})
    assert r.status_code == 429, r.text
    e = error_of(r)
    assert e["code"] == "insufficient_quota" and "x-switchyard-max-cost" in e["message"], e
    no_upstream_request(kg)
    r = kg.chat(K("capped"), chat_body(max_tokens=100), headers={"x-switchyard-max-cost": usd(worst)})
    assert r.status_code == 200, r.text
    [q] = kg.mocks.requests("openai")
    assert "x-switchyard-max-cost" not in q["headers"]
    for bad in ("lots", "-1", "1e-3", "0.5$", ""):
        r = kg.chat(K("capped"), chat_body(max_tokens=100), headers={"x-switchyard-max-cost": bad})
        if bad == "":
            # An empty header is no header for many clients and proxies; either answer is clear.
            assert r.status_code in (200, 400), r.text
            continue
        assert r.status_code == 400, (bad, r.text)
        assert error_of(r)["code"] == "invalid_max_cost"


def worker_connections(g: KeysGateway) -> dict[str, int]:
    """Downstream connections accepted by each Envoy worker on the gateway's listener."""
    out = {}
    for name, v in g.gw.stats("worker_").items():
        m = re.match(r"listener\.127\.0\.0\.1_\d+\.(worker_\d+)\.downstream_cx_total$", name)
        if m:
            out[m.group(1)] = v
    return out


def test_burst_of_200_against_a_budget_for_100(kg):
    """200 concurrent requests, each on its own connection (so both Envoy workers take some),
    against a budget B that holds exactly 100 reservations.

    The bound: admission checks `spent + live reservations + r <= B` in one compare-and-swap on
    state shared by every worker, so at the last admission spent_then + reservations <= B. Each
    admitted request later adds its real cost a instead of its reservation r, hence

        spent_final <= B + N_admitted × max(0, a − r).

    Here r = 9 × $1e-6 + 271 × $2e-6 = 551 µ$ (max_tokens = the 271 tokens the answer has) and
    a = 8 × $1e-6 + 271 × $2e-6 = 550 µ$ (the real usage), so no overspend at all, and exactly 100
    are admitted whatever the interleaving: N × 550 + (reservations still live) × 1 <= 100 × 551
    allows N <= 100, and a refusal while fewer than 100 were admitted would need spent +
    reservations > B − 551 = 99 × 551, which 99 requests cannot reach.
    """
    before = worker_connections(kg)
    body = chat_body(max_tokens=BURST_MAX_TOKENS)
    barrier = threading.Barrier(200)

    def one(_):
        barrier.wait(30)
        r = kg.chat(K("burst"), body, timeout=60)
        return r.status_code, (error_of(r)["code"] if r.status_code != 200 else None)

    with ThreadPoolExecutor(200) as ex:
        results = list(ex.map(one, range(200)))
    ok = sum(1 for s, _ in results if s == 200)
    refused = [(s, c) for s, c in results if s != 200]
    assert set(refused) <= {(429, "insufficient_quota")}, sorted(set(refused))
    real = OPENAI_COST
    assert (BURST_RESERVED, real) == (551, 550)
    lines = kg.log_lines("burst", count=200, timeout=10)
    spent = sum(int(ln["cost_micros"] or 0) for ln in lines)
    assert spent == ok * real
    bound = BURST_BUDGET + ok * max(0, real - BURST_RESERVED)
    assert spent <= bound, (spent, bound)
    assert ok == 100, (ok, refused[:3])
    assert len(kg.mocks.requests("openai")) == ok, "refused requests never reach a provider"
    # What is left, as the next refusal reports it: B − spent.
    r = kg.chat(K("burst"), body)
    assert r.status_code == 429
    assert to_micros(r.headers["x-switchyard-budget-remaining"]) == BURST_BUDGET - spent
    # Both workers served part of the burst: the budget was shared across threads.
    after = worker_connections(kg)
    served = {w: after.get(w, 0) - before.get(w, 0) for w in after}
    assert len(served) == 2 and all(n > 0 for n in served.values()), served


def test_rate_limit_is_shared_across_worker_threads(kg):
    before = worker_connections(kg)
    barrier = threading.Barrier(60)

    def one(_):
        barrier.wait(30)
        return kg.chat(K("workers"), chat_body(), timeout=60).status_code

    with ThreadPoolExecutor(60) as ex:
        statuses = list(ex.map(one, range(60)))
    after = worker_connections(kg)
    served = {w: after.get(w, 0) - before.get(w, 0) for w in after}
    assert len(served) == 2 and all(n > 0 for n in served.values()), served
    # rpm 20 for the whole Envoy, not 20 per worker.
    assert statuses.count(200) == 20, statuses
    assert statuses.count(429) == 40, statuses
    assert len(kg.mocks.requests("openai")) == 20


def test_aborted_stream_is_charged_for_what_it_produced(kg):
    r = kg.chat(K("abort"), chat_body(stream=True), headers={"x-mock-openai": "slow-stream"},
                stream=True)
    assert r.status_code == 200
    received = []
    for line in r.iter_lines():
        if line.startswith(b"data:"):
            received.append(json.loads(line[5:]))
            if len(received) == 3:
                break
    r.close()                                    # the client goes away mid-stream
    [line] = kg.log_lines("abort", timeout=10)
    # Settled when the client left, not when the stream would have ended (50 events × 200 ms).
    assert int(line["duration_ms"]) < 5000, line
    assert "DC" in line["response_flags"] and line["stream"] == "true", line   # downstream closed
    cost = int(line["cost_micros"])
    # Charged the prompt estimate + the output the gateway forwarded (≥ what the client read,
    # < the whole answer), never nothing.
    read_text = "".join((c["choices"][0]["delta"].get("content") or "") for c in received if c["choices"])
    full_text = recorded.openai_stream_summary(recorded.openai_stream_text_chunks())["text"]
    low = micros("gpt-4o-mini", HELLO_ESTIMATE, math.ceil(len(read_text) / 4))
    high = micros("gpt-4o-mini", HELLO_ESTIMATE, math.ceil(len(full_text) / 4))
    assert low <= cost < high, (low, cost, high)
    assert cost > 0
    # The budget saw it.
    r = kg.chat(K("abort"), chat_body())
    assert r.headers["x-switchyard-budget-remaining"] == usd(1_000_000 - cost - OPENAI_COST)


def test_failed_attempts_charge_nothing(kg):
    r = kg.chat(K("fail"), chat_body(), headers={"x-mock-openai": "503", "x-mock-anthropic": "503"})
    assert r.status_code == 503, r.text
    attempts = len(kg.mocks.requests("openai")) + len(kg.mocks.requests("anthropic"))
    assert attempts >= 2, "retried and failed over before giving up"
    [line] = kg.log_lines("fail")
    assert line["cost_micros"] in ("", "0"), line
    r = kg.chat(K("fail"), chat_body())
    assert r.status_code == 200
    assert r.headers["x-switchyard-budget-remaining"] == usd(1_000_000 - OPENAI_COST)


def test_byok_uses_the_clients_credential_and_is_not_charged(kg):
    own = {"x-switchyard-provider-key": "sk-own-openai"}
    r = kg.chat(K("byok"), chat_body(), headers=own)
    assert r.status_code == 200, r.text
    assert r.headers["x-switchyard-cost"] == usd(OPENAI_COST)          # what it cost the client
    assert "x-switchyard-budget-remaining" not in r.headers
    [q] = kg.mocks.requests("openai")
    assert q["headers"]["authorization"] == "Bearer sk-own-openai"
    values = " ".join(q["headers"].values())
    assert harness.ENVOY_ENV["OPENAI_API_KEY"] not in values and K("byok") not in values
    assert "x-switchyard-provider-key" not in q["headers"]
    r = kg.chat(K("byok"), chat_body("claude-haiku"), headers={"x-switchyard-provider-key": "sk-ant-own"})
    assert r.status_code == 200, r.text
    [q] = kg.mocks.requests("anthropic")
    assert q["headers"]["x-api-key"] == "sk-ant-own"
    assert harness.ENVOY_ENV["ANTHROPIC_API_KEY"] not in " ".join(q["headers"].values())
    # The key's own $0.000001 budget was not touched: without its credential, it is held to it.
    r = kg.chat(K("byok"), chat_body())
    assert r.status_code == 429
    assert r.headers["x-switchyard-budget-remaining"] == "0.000001"
    # A key without byok may not send a credential.
    kg.mocks.clear()
    r = kg.chat(K("basic"), chat_body(), headers=own)
    assert r.status_code == 403, r.text
    assert error_of(r)["code"] == "byok_not_allowed"
    assert "sk-own-openai" not in r.text
    no_upstream_request(kg)


# --------------------------------------------------------------------------------------------------
# what survives what: a configuration reload, a hot restart, a cold restart


def example_gateway_config() -> dict:
    return json.loads(EXAMPLE.read_text())


EXAMPLE_KEY = "sk-sy-demo-alice"        # documented in the README, next to the example file


def test_configuration_reload_keeps_counters_unless_the_vm_id_changes(tmp_path):
    """The listener comes from an LDS file; rewriting it reloads the gateway's configuration."""
    cfg = example_gateway_config()
    g = KeysGateway.start(tmp_path, gateway_config=cfg, gateway_cls=LdsGateway)
    try:
        gw: LdsGateway = g.gw
        body = chat_body(max_tokens=300)
        r1 = g.chat(EXAMPLE_KEY, body)
        assert r1.status_code == 200, r1.text
        cost = to_micros(r1.headers["x-switchyard-cost"])
        left = to_micros(r1.headers["x-switchyard-budget-remaining"])
        amount = left + cost
        # 1. New plugin configuration (the key's budget doubled, the key itself rotated: a new
        #    secret under the same id), same VM: the spend is kept.
        new = json.loads(json.dumps(cfg))
        alice = next(k for k in new["auth"]["keys"] if k["id"] == "alice")
        alice["budget"]["amount_usd"] *= 2
        alice["sha256"] = key_hash("sk-sy-demo-alice-rotated")
        created = gw.stats("wasm.envoy.wasm.runtime.v8.created")["wasm.envoy.wasm.runtime.v8.created"]
        gw.update_gateway(new)
        assert g.chat(EXAMPLE_KEY, body).status_code == 401, "the old secret is gone"
        r2 = g.chat("sk-sy-demo-alice-rotated", body)
        assert r2.status_code == 200, r2.text
        assert to_micros(r2.headers["x-switchyard-budget-remaining"]) == 2 * amount - 2 * cost
        # 2. A new VM for the gateway (its vm_config changed; same vm_id): still kept, because
        #    shared data belongs to the vm_id while any VM with that id lives (here the backend
        #    filter's VMs and the draining listener's).
        gw.update_gateway(vm_config={"configuration": {
            "@type": "type.googleapis.com/google.protobuf.StringValue", "value": "v2"}})
        after = gw.stats("wasm.envoy.wasm.runtime.v8.created")["wasm.envoy.wasm.runtime.v8.created"]
        assert after > created, "new VMs were created"
        r3 = g.chat("sk-sy-demo-alice-rotated", body)
        assert to_micros(r3.headers["x-switchyard-budget-remaining"]) == 2 * amount - 3 * cost
        # 3. Another vm_id: another shared-data namespace, the counters start from zero.
        gw.update_gateway(vm_config={"vm_id": "switchyard-other"})
        r4 = g.chat("sk-sy-demo-alice-rotated", body)
        assert to_micros(r4.headers["x-switchyard-budget-remaining"]) == 2 * amount - cost
    finally:
        problems = g.stop()
    assert not problems, problems


def test_restarts_lose_the_counters(tmp_path):
    """Hot restart (--restart-epoch 1, same base id: the sockets are handed over) and a cold
    restart both start from empty counters: shared data lives in one Envoy process's memory."""
    g = KeysGateway.start(tmp_path, gateway_config=example_gateway_config())
    try:
        body = chat_body(max_tokens=300)
        lefts = []
        for _ in range(2):
            r = g.chat(EXAMPLE_KEY, body)
            assert r.status_code == 200, r.text
            lefts.append(to_micros(r.headers["x-switchyard-budget-remaining"]))
        cost = lefts[0] - lefts[1]
        assert cost > 0
        first_pid = g.gw.proc.pid
        g.hot_restart()
        assert g.gw.proc.pid != first_pid and g.retired[-1].proc.poll() is not None
        r = g.chat(EXAMPLE_KEY, body)
        assert to_micros(r.headers["x-switchyard-budget-remaining"]) == lefts[0], "spend lost"
        g.restart()
        r = g.chat(EXAMPLE_KEY, body)
        assert to_micros(r.headers["x-switchyard-budget-remaining"]) == lefts[0], "spend lost"
    finally:
        problems = g.stop()
    assert not problems, problems
