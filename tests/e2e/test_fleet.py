"""Limits and budgets for a fleet of Envoys, end to end: a real ``redis-server``, Switchyard's rate
limit service (tools/rls, Envoy's ``envoy.service.ratelimit.v3`` protocol) on it, and two Envoy
processes running envoy/demo.yaml + envoy/fleet.yaml with ``"ledger": "fleet"`` (fleet_gateway.py).
The service's limits are written by ``switchyard fleet-limits`` from the gateways' own
configuration. Prices are configured here, so every expected cost comes from these prices and the
recorded usage (recorded.py), not from the gateway's code.

Every test uses its own key, so the order of the tests does not matter (the Redis test runs last:
Redis comes back empty).
"""

from __future__ import annotations

import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
import requests

import recorded
from fleet_gateway import Fleet
from keys_gateway import key_hash

HELLO = [{"role": "user", "content": "Hello!"}]
HELLO_ESTIMATE = 3 + 4 + math.ceil(len("Hello!") / 4)   # src/policy/estimate.rs
PRICES = {"gpt-4o-mini": {"in": Decimal("0.000001"), "out": Decimal("0.000002")}}
MAX_OUTPUT = 1000


def K(name: str) -> str:
    return f"sk-sy-fleet-{name}"


def micros(prompt: int, completion: int) -> int:
    p = PRICES["gpt-4o-mini"]
    return math.ceil((prompt * p["in"] + completion * p["out"]) * 1_000_000)


def usd(m: int) -> str:
    return f"{m // 1_000_000}.{m % 1_000_000:06d}"


def to_micros(header: str) -> int:
    return int(Decimal(header) * 1_000_000)


OPENAI_USAGE = recorded.openai_text()["usage"]                  # non-stream: 8 / 271
OPENAI_COST = micros(OPENAI_USAGE["prompt_tokens"], OPENAI_USAGE["completion_tokens"])
WORST = micros(HELLO_ESTIMATE, OPENAI_USAGE["completion_tokens"])   # max_tokens = 271
BURST_MAX_CONCURRENT = 5
BURST_BUDGET = 20 * OPENAI_COST


def key(name: str, **fields) -> dict:
    return {"id": name, "sha256": key_hash(K(name)), **fields}


AUTH = {
    "keys": [
        key("rpm10", limits={"rpm": 10}),
        key("burst", limits={"max_concurrent": BURST_MAX_CONCURRENT},
            budget={"amount_usd": BURST_BUDGET / 1e6, "window": "daily"}),
        key("abort", budget={"amount_usd": 1, "window": "daily"}),
        key("restart", budget={"amount_usd": 1, "window": "monthly"}),
        key("tpm", limits={"tpm": 600}),
        key("redis", limits={"rpm": 1000}),
        key("rot", budget={"amount_usd": 1, "window": "daily"}),
        key("gone"),
        key("team-a", team="squad"),
        key("team-b", team="squad"),
    ],
    "teams": [{"id": "squad", "limits": {"rpm": 4}}],
    "pricing": {
        "builtin": False,
        "models": {m: {"input_cost_per_token": float(p["in"]), "output_cost_per_token": float(p["out"]),
                       "max_output_tokens": MAX_OUTPUT} for m, p in PRICES.items()},
    },
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    try:
        f = Fleet.start(tmp_path_factory.mktemp("fleet"), AUTH, envoys=2)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"could not start the fleet: {e}", pytrace=False)
    problems: list[str] = []
    try:
        yield f
    finally:
        problems = f.stop()
    if problems:
        pytest.fail("fleet end-of-module check failed:\n  " + "\n  ".join(problems), pytrace=False)


def chat(gw, name: str, body: dict | None = None, *, stream: bool = False, headers=None,
         timeout: float = 30) -> requests.Response:
    h = {"content-type": "application/json", "authorization": f"Bearer {K(name)}", **(headers or {})}
    return requests.post(gw.base_url + "/chat/completions",
                         data=json.dumps(body or {"model": "gpt-4o-mini", "messages": HELLO}),
                         headers=h, stream=stream, timeout=timeout)


def error_of(r: requests.Response) -> dict:
    assert r.headers.get("content-type", "").startswith("application/json"), (r.status_code, r.text)
    doc = r.json()
    assert set(doc) == {"error"}, doc
    return doc["error"]


def access_log(gw, key_id: str) -> list[dict]:
    out = []
    try:
        text = open(gw.access_log_path, encoding="utf-8", errors="replace").read()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("key_id") == key_id:
                out.append(doc)
    return out


def served_lines(envoys, key_id: str, served: int, timeout: float = 10.0) -> list[dict]:
    """The key's access-log lines of every Envoy, once ``served`` answered lines are written.

    Envoy flushes its file access log on a timer, so a line may land a moment after the
    client has its answer; the caller still asserts on what was written, more or fewer."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [ln for g in envoys for ln in access_log(g, key_id)]
        if sum(ln.get("status") in (200, "200") for ln in lines) >= served or time.monotonic() > deadline:
            time.sleep(0.3)     # one more flush: a line beyond ``served`` would show now
            return [ln for g in envoys for ln in access_log(g, key_id)]
        time.sleep(0.05)


def fresh_minute(margin: float = 15.0) -> None:
    """The service counts fixed minutes: start a per-minute test early enough in one."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.2)


def budget_left(gw, name: str, settle: float = 0.5) -> int:
    """The fleet's budget left for a key, as a request's admission reports it (before its own cost).
    Waits ``settle`` s first: an answer's charge reaches the service just after the answer."""
    time.sleep(settle)
    r = chat(gw, name)
    assert r.status_code == 200, r.text
    return to_micros(r.headers["x-switchyard-budget-remaining"])


# --------------------------------------------------------------------------------------------------


def test_rpm_is_counted_across_both_envoys(fleet):
    fresh_minute()
    a, b = fleet.envoys
    results = []
    for i in range(30):
        r = chat((a, b)[i % 2], "rpm10")
        results.append(r)
    ok = [r for r in results if r.status_code == 200]
    assert len(ok) == 10, [r.status_code for r in results]
    assert [r.status_code for r in results[:10]] == [200] * 10
    # Each Envoy's answers carry the fleet's count, not its own.
    assert [int(r.headers["x-ratelimit-remaining-requests"]) for r in ok] == list(range(9, -1, -1))
    assert {r.headers["x-ratelimit-limit-requests"] for r in ok} == {"10"}
    for r in results[10:]:
        assert r.status_code == 429
        e = error_of(r)
        assert (e["type"], e["code"]) == ("rate_limit_error", "rate_limit_exceeded"), e
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert 0 < int(r.headers["retry-after-ms"]) <= 60_000
    assert len(fleet.mocks.requests("openai")) >= 10
    served = len([ln for ln in served_lines(fleet.envoys, "rpm10", 10) if ln.get("status") in (200, "200")])
    assert served == 10


def test_team_rpm_is_shared_by_its_keys_across_envoys(fleet):
    fresh_minute()
    a, b = fleet.envoys
    statuses = [chat(gw, name).status_code
                for gw, name in [(a, "team-a"), (b, "team-b"), (a, "team-b"), (b, "team-a"),
                                 (a, "team-a"), (b, "team-b")]]
    assert statuses == [200, 200, 200, 200, 429, 429], statuses


def test_budget_burst_of_200_over_both_envoys_stays_within_the_bound(fleet):
    """200 concurrent requests split over both Envoys against a budget of exactly 20 answers.

    The service's budget check before a request refuses once the settled spend has reached the
    budget; each request is charged its real cost when it has ended. So the spend can pass the
    budget only by the requests admitted before the spend reached it and settled after:
    spent <= B - 1 + (requests in flight fleet-wide) x (their cost), and the key's max_concurrent
    (5 per Envoy) bounds those in flight: spent < B + 2 x 5 x WORST.
    """
    a, b = fleet.envoys
    body = {"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": OPENAI_USAGE["completion_tokens"]}
    barrier = threading.Barrier(200)
    deadline = time.monotonic() + 90

    def one(i):
        barrier.wait(30)
        gw = (a, b)[i % 2]
        while time.monotonic() < deadline:
            r = chat(gw, "burst", body, timeout=60)
            if r.status_code == 200:
                return "ok"
            e = error_of(r)
            if e["code"] == "insufficient_quota":
                return "quota"
            assert e["code"] == "rate_limit_exceeded", e    # max_concurrent: wait for a slot
            time.sleep(0.02)
        return "timeout"

    with ThreadPoolExecutor(200) as ex:
        results = list(ex.map(one, range(200)))
    assert "timeout" not in results
    ok = results.count("ok")
    lines = served_lines((a, b), "burst", ok)
    charged = [int(ln["cost_micros"]) for ln in lines if ln.get("cost_micros") not in (None, "", "0")]
    assert len(charged) == ok and set(charged) == {OPENAI_COST}, (ok, set(charged))
    spent = ok * OPENAI_COST
    assert spent >= BURST_BUDGET, "the budget was used up"
    bound = BURST_BUDGET - 1 + 2 * BURST_MAX_CONCURRENT * WORST
    assert spent <= bound, (spent, bound)
    # The ledger holds exactly what was charged (each answer once), and refuses from now on.
    r = chat(a, "burst", body)
    assert r.status_code == 429 and error_of(r)["code"] == "insufficient_quota"
    assert r.headers["x-should-retry"] == "false"
    assert to_micros(r.headers["x-switchyard-budget-remaining"]) == 0
    r = chat(b, "burst", body)
    assert r.status_code == 429 and error_of(r)["code"] == "insufficient_quota"


def test_client_cut_stream_is_charged_for_what_it_produced(fleet):
    a, b = fleet.envoys
    r = chat(a, "abort", {"model": "gpt-4o-mini", "messages": HELLO, "stream": True},
             headers={"x-mock-openai": "slow-stream"}, stream=True)
    assert r.status_code == 200
    received = []
    for line in r.iter_lines():
        if line.startswith(b"data:"):
            received.append(json.loads(line[5:]))
            if len(received) == 3:
                break
    r.close()
    deadline = time.monotonic() + 10
    while not access_log(a, "abort") and time.monotonic() < deadline:
        time.sleep(0.05)
    [line] = access_log(a, "abort")
    cost = int(line["cost_micros"])
    read_text = "".join((c["choices"][0]["delta"].get("content") or "") for c in received if c["choices"])
    full_text = recorded.openai_stream_summary(recorded.openai_stream_text_chunks())["text"]
    assert micros(HELLO_ESTIMATE, math.ceil(len(read_text) / 4)) <= cost < micros(HELLO_ESTIMATE, math.ceil(len(full_text) / 4))
    # The other Envoy sees the charge (the stream-done call may still be in flight: poll).
    deadline = time.monotonic() + 10
    seen = []
    while time.monotonic() < deadline:
        left = budget_left(b, "abort")
        seen.append(left)
        if left == 1_000_000 - cost - OPENAI_COST * (len(seen) - 1):
            break
        time.sleep(0.2)
    assert seen[-1] == 1_000_000 - cost - OPENAI_COST * (len(seen) - 1), (cost, seen)


def test_restarting_an_envoy_keeps_the_spend(fleet):
    a, b = fleet.envoys
    assert budget_left(a, "restart") == 1_000_000
    fleet.restart_envoy(0)
    a = fleet.envoys[0]
    assert budget_left(a, "restart") == 1_000_000 - OPENAI_COST
    assert budget_left(b, "restart") == 1_000_000 - 2 * OPENAI_COST


def test_tokens_per_minute_count_the_real_usage_fleet_wide(fleet):
    """tpm 600: a request counts its prompt estimate (9) at admission and the rest of its real
    usage (8 + 271 = 279 tokens in all) when it ends, on whichever Envoy served it."""
    fresh_minute()
    a, b = fleet.envoys
    total = OPENAI_USAGE["prompt_tokens"] + OPENAI_USAGE["completion_tokens"]
    r1 = chat(a, "tpm")
    assert r1.status_code == 200
    assert int(r1.headers["x-ratelimit-remaining-tokens"]) == 600 - HELLO_ESTIMATE
    time.sleep(0.3)   # the end-of-stream charge is sent after the answer
    r2 = chat(b, "tpm")
    assert r2.status_code == 200
    assert int(r2.headers["x-ratelimit-remaining-tokens"]) == 600 - total - HELLO_ESTIMATE
    time.sleep(0.3)
    r3 = chat(a, "tpm")   # 2 x 279 + 9 = 567 <= 600: admitted, and ends over the limit
    assert r3.status_code == 200
    time.sleep(0.3)
    r4 = chat(b, "tpm")
    assert r4.status_code == 429 and error_of(r4)["code"] == "rate_limit_exceeded"


def test_keys_change_without_restarts_fleet_wide(fleet):
    """A key added (with rpm 2), a key's secret rotated under the same id (its budget spend kept), a
    key disabled: the gateway configuration reloaded over LDS on both Envoys and the service's limits
    file rewritten from it; no process restarts."""
    a, b = fleet.envoys
    pids = [gw.proc.pid for gw in (a, b)] + [fleet.rls.pid]
    assert chat(a, "late").status_code == 401 and chat(b, "late").status_code == 401
    assert chat(b, "gone").status_code == 200
    assert budget_left(a, "rot") == 1_000_000
    auth = json.loads(json.dumps(fleet.auth))
    keys = auth["keys"]
    keys.append(key("late", limits={"rpm": 2}))
    rot = next(k for k in keys if k["id"] == "rot")
    rot["sha256"] = key_hash(K("rot2"))
    next(k for k in keys if k["id"] == "gone")["disabled"] = True
    fresh_minute(20)
    fleet.reload(auth)
    assert [gw.proc.pid for gw in (a, b)] + [fleet.rls.pid] == pids, "nothing restarted"
    # The new key works on both Envoys, and its rpm counts across them.
    assert [chat(gw, "late").status_code for gw in (a, b, a, b)] == [200, 200, 429, 429]
    # The old secret is refused everywhere; the new one has the same id, so the same spend.
    for gw in (a, b):
        r = chat(gw, "rot")
        assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"
        assert chat(gw, "gone").status_code == 401
    assert budget_left(b, "rot2") == 1_000_000 - OPENAI_COST
    assert budget_left(a, "rot2") == 1_000_000 - 2 * OPENAI_COST


def test_redis_down_refuses_with_503_and_recovers(fleet):
    """failure_mode_deny: without its ledger the fleet serves nothing (nothing uncounted), with an
    OpenAI-shaped 503 the SDKs retry; Redis back, requests pass again (Redis restarted empty: no
    persistence in this test)."""
    a, b = fleet.envoys
    assert chat(a, "redis").status_code == 200
    fleet.stop_redis()
    for gw in (a, b):
        r = chat(gw, "redis")
        assert r.status_code == 503, r.text
        e = error_of(r)
        assert e["code"] == "rate_limit_service_unavailable", e
    before = len(fleet.mocks.requests("openai"))
    fleet.start_redis()
    deadline = time.monotonic() + 20
    statuses = []
    while time.monotonic() < deadline:
        statuses.append(chat(a, "redis").status_code)
        if statuses[-1] == 200:
            break
        time.sleep(0.5)
    assert statuses[-1] == 200, statuses
    assert chat(b, "redis").status_code == 200
    assert len(fleet.mocks.requests("openai")) >= before + 2
