"""Routing decisions end to end (issue 10), in a real Envoy with the mock providers and the
official `openai` SDK.

First-token deadlines: a route's `first_token_timeout_ms` becomes Envoy's per-try timeout, and the
backend filter holds each answer until its first token (stream) or its end (non-stream), so a
candidate that is slow to start is abandoned before any byte reached the client and the next
priority serves. `hedge: true` starts the next candidate on the deadline without cancelling the
first; the first token wins. The mocks delay their first token on `x-mock-first-token-delay-ms`
(`<mock>=<ms>`, per mock).

The gateway configuration is the demo's (envoy/demo.yaml) plus the routes below; it runs with its
own mocks and Envoy.
"""
from __future__ import annotations

import hashlib
import subprocess
import json
import tempfile
import time
from pathlib import Path

import openai
import pytest
import requests
import yaml

import harness
import recorded
import recorded_providers as rp

DEADLINE_MS = 1000

CANARY = {"share": 0.5, "min_samples": 5, "window_secs": 60, "gates": {"max_error_rate_increase": 0.2}}

# model -> (gateway model entry fields, endpoints by priority: (mock, backend, upstream model))
ROUTES = {
    "ft-chat": ({"first_token_timeout_ms": DEADLINE_MS},
                [("openai", "openai-demo", "gpt-4o-mini"),
                 ("anthropic", "anthropic-demo", "claude-3-5-haiku-latest")]),
    "ft-hedge": ({"first_token_timeout_ms": DEADLINE_MS, "hedge": True},
                 [("openai", "openai-demo", "gpt-4o-mini"),
                  ("anthropic", "anthropic-demo", "claude-3-5-haiku-latest")]),
    # Priority 0 refuses connections (nothing listens on its port).
    "ft-refused": ({"first_token_timeout_ms": DEADLINE_MS},
                   [("dead", "openai-demo", "gpt-4o-mini"),
                    ("anthropic", "anthropic-demo", "claude-3-5-haiku-latest")]),
    "ft-gemini": ({"first_token_timeout_ms": DEADLINE_MS},
                  [("more", "gemini-demo", "gemini-2.5-flash"),
                   ("openai", "openai-demo", "gpt-4o-mini")]),
    # OpenAI, then a text-only Cohere model, then Anthropic.
    "cap-fallback": ({}, [("openai", "openai-demo", "gpt-4o-mini"),
                          ("more", "cohere-demo", "command-r7b-12-2024"),
                          ("anthropic", "anthropic-demo", "claude-3-5-haiku-latest")]),
    "cap-text": ({}, [("more", "cohere-demo", "command-r7b-12-2024")]),
    # A text-only primary, then Anthropic.
    "cap-text-first": ({}, [("more", "cohere-demo", "command-r7b-12-2024"),
                            ("anthropic", "anthropic-demo", "claude-3-5-haiku-latest")]),
    # Version pinning: a floating name is refused, a dated one served.
    "pinned-floating": ({"pin_versions": "forbid"}, [("openai", "openai-demo", "gpt-4o-mini")]),
    "pinned-dated": ({"pin_versions": "forbid"}, [("openai", "openai-demo", "gpt-4o-mini-2024-07-18")]),
    # Canaries: the stable model on OpenAI, the canary on Anthropic, half the traffic each.
    "canary-bad": ({"canary": {"model": "canary-bad-new", **CANARY}}, [("openai", "openai-demo", "gpt-4o-mini")]),
    "canary-bad-new": ({}, [("anthropic", "anthropic-demo", "claude-3-5-haiku-latest")]),
    "canary-ok": ({"canary": {"model": "canary-ok-new", **CANARY}}, [("openai", "openai-demo", "gpt-4o-mini")]),
    "canary-ok-new": ({}, [("anthropic", "anthropic-demo", "claude-3-5-haiku-latest")]),
}

# What the models can do (README "Routing"): the Cohere model takes no images and 8k tokens;
# Gemini 2.5 Flash and Nova Micro are the demo's any-chat candidates. With capabilities configured,
# `switchyard render` gives every route whose candidates differ a subset load balancer (each
# endpoint's `envoy.lb` metadata) and the listener the header_to_metadata filter that turns the
# gateway's x-switchyard-needs-* headers into what it matches: only endpoints that can serve a
# request are picked.
CAPABILITIES = {
    "command-r7b-12-2024": {"vision": False, "tools": True, "context_window": 8192},
    "gpt-4o-mini": {"vision": True, "tools": True, "json_schema": True, "context_window": 128000},
    "claude-3-5-haiku-latest": {"vision": True, "tools": True, "context_window": 200000},
    "gemini-2.5-flash": {"vision": True, "tools": True, "json_schema": True, "reasoning": True,
                         "context_window": 1048576},
    "us.amazon.nova-micro-v1:0": {"vision": False, "tools": True, "json_schema": True, "reasoning": False,
                                  "context_window": 128000},
}

LOG_FIELDS = ("first_token_timeout_ms", "hedge", "deadlines_fired", "winner_attempt",
              "winner_ttft_ms")

KEYS = {"sk-research": ("researcher", "research"), "sk-apps": ("app", "apps")}
AUTH = {"keys": [{"id": kid, "team": team, "sha256": hashlib.sha256(k.encode()).hexdigest()}
                 for k, (kid, team) in KEYS.items()],
        "teams": [{"id": "research"}, {"id": "apps"}],
        # Prices for `cheapest`: the built-in table plus Cohere's model and a name for Claude.
        "pricing": {"models": {"command-r": {"input_cost_per_token": 3.75e-08, "output_cost_per_token": 1.5e-07,
                                             "supports_vision": False, "max_input_tokens": 8192}},
                    "aliases": {"claude-haiku": "claude-3-5-haiku-latest"}}}

# Rules on the request and the meta-model `auto` (README "Routing").
ROUTING = {
    "meta_models": [{"name": "auto", "default": "gpt-4o-mini"},
                    {"name": "cheap", "policy": "cheapest", "candidates": ["claude-haiku", "gpt-4o-mini", "command-r"]},
                    {"name": "quick", "policy": "fastest", "candidates": ["gpt-4o-mini", "claude-haiku"],
                     "exploration": 0.1}],
    "rules": [
        {"name": "summaries", "model": "claude-haiku",
         "when": {"model": ["auto"], "last_user_message_contains": ["summarize", "summarise", "tl;dr"]}},
        {"name": "classification", "model": "claude-haiku",
         "when": {"headers": {"x-task": "classify"}}},
        # A regular expression (case-sensitive): an issue-tracker ticket id in the last user message.
        {"name": "tickets", "model": "claude-haiku",
         "when": {"model": ["auto"], "last_user_message_matches": [r"\b[A-Z]{2,5}-\d+\b"]}},
        {"name": "vision", "model": "gemini-flash", "when": {"model": ["auto"], "images": True}},
        {"name": "research-frontier", "model": "magistral",
         "when": {"model": ["auto"], "team": ["research"]}},
        {"name": "long-prompts", "model": "command-r",
         "when": {"model": ["auto"], "prompt_tokens": {"min": 3000}}},
    ],
}


class RoutingGateway(harness.GatewayFileGateway):
    """The demo gateway file (examples/demo.yaml) plus the models of ROUTES, rendered by
    `switchyard render` like every shipped configuration."""

    def __init__(self, workdir, mocks, **kw):
        doc = harness.demo_gateway_file()
        backends = doc["backends"]
        # Nothing listens there: connections are refused.
        backends["openai-dead"] = {**backends["openai-demo"], "address": f"127.0.0.1:{harness.free_ports(1)[0]}"}
        names = {"dead": "openai-dead"}
        doc["models"] = [{"name": name, "owned_by": "test", **fields,
                          "candidates": [f"{names.get(mock, backend)}/{model}" for mock, backend, model in endpoints]}
                         for name, (fields, endpoints) in ROUTES.items()] + doc["models"]
        super().__init__(workdir, mocks, gateway_file=doc, **kw)


@pytest.fixture(scope="module")
def rgw():
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-routing-"))
    wasm = harness.build_wasm()
    mocks = harness.Mocks(workdir).start()
    gw = RoutingGateway(workdir, mocks, gateway_config={"auth": AUTH, "routing": ROUTING,
                                                         "capabilities": CAPABILITIES})
    gw.envoy_args = ["--file-flush-interval-msec", "50"]
    try:
        gw.start(wasm)
        yield gw
        problems = gw.problems()
        assert not problems, problems
    finally:
        gw.stop()
        mocks.stop()
    harness.cleanup_workdir(workdir, keep=False)


@pytest.fixture(scope="module")
def rclient(rgw):
    return openai.OpenAI(base_url=rgw.base_url, api_key="sk-apps", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def research(rgw):
    return openai.OpenAI(base_url=rgw.base_url, api_key="sk-research", max_retries=0, timeout=30)


@pytest.fixture(autouse=True)
def _clear(rgw):
    rgw.clear_mocks()
    offset = rgw.log_offset()
    yield
    crashes = rgw.wasm_crashes(offset)
    assert not crashes, crashes


def access_log(gw) -> list[dict]:
    out = []
    try:
        text = Path(gw.access_log_path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if line.strip().startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def log_line(gw, request_id: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        lines = [r for r in access_log(gw) if r.get("request_id") == request_id]
        if lines or time.monotonic() > deadline:
            assert lines, f"no access-log line for {request_id}"
            return lines[-1]
        time.sleep(0.05)


def counter(gw, prefix: str) -> int:
    return sum(v for k, v in gw.stats().items() if k.startswith(prefix))


def delay(**per_mock) -> dict:
    return {"x-mock-first-token-delay-ms": ",".join(f"{k}={v}" for k, v in per_mock.items())}


MSG = [{"role": "user", "content": "Hello"}]


def stream_text(rclient, model, headers):
    raw = rclient.chat.completions.with_raw_response.create(
        model=model, messages=MSG, stream=True, extra_headers=headers)
    text = "".join((c.choices[0].delta.content or "") for c in raw.parse() if c.choices)
    return raw, text


# -- first-token deadline


def test_stream_primary_slow_to_first_token_is_abandoned_at_the_deadline(rgw, rclient):
    fired_before = counter(rgw, "wasmcustom.switchyard_first_token_deadlines;route=ft-chat")
    t0 = time.monotonic()
    raw, text = stream_text(rclient, "ft-chat", {**delay(openai=6000), "x-request-id": "ft-stream-1"})
    elapsed = time.monotonic() - t0
    # The client got the secondary's stream, whole and alone: no byte of the abandoned primary.
    assert text == recorded.anthropic_stream_text()["text"]
    assert raw.headers["x-switchyard-backend"] == "anthropic-demo"
    assert raw.headers["x-switchyard-attempts"] == "2"
    assert DEADLINE_MS / 1000 <= elapsed < 4.0, elapsed
    assert len(rgw.mock_requests("openai")) == 1 and len(rgw.mock_requests("anthropic")) == 1
    # Envoy's router consumed its timeout header: no provider sees it.
    for which in ("openai", "anthropic"):
        assert not any(h.startswith("x-envoy-") for h in rgw.mock_requests(which)[0]["headers"]), which
    rec = log_line(rgw, "ft-stream-1")
    assert (rec["deadlines_fired"], rec["winner_attempt"], rec["first_token_timeout_ms"]) == ("1", "2", "1000")
    assert rec["backend"] == "anthropic-demo" and rec["status"] == "200" and rec["hedge"] == "false"
    assert 0 <= int(rec["winner_ttft_ms"]) < DEADLINE_MS
    harness.wait_until(lambda: counter(rgw, "wasmcustom.switchyard_first_token_deadlines;route=ft-chat")
                       == fired_before + 1, 5, "deadline counter")


def test_stream_primary_within_the_deadline_serves_and_is_held_whole(rgw, rclient):
    # The primary's headers arrive at once, its events 400 ms later in many small pieces: held
    # back until the first token, then released with everything before it, nothing lost.
    raw, text = stream_text(rclient, "ft-chat", {**delay(openai=400), "x-request-id": "ft-stream-2"})
    assert text == recorded.openai_stream_summary(recorded.openai_stream_text_chunks())["text"]
    assert raw.headers["x-switchyard-backend"] == "openai-demo"
    assert raw.headers["x-switchyard-attempts"] == "1"
    assert len(rgw.mock_requests("anthropic")) == 0
    rec = log_line(rgw, "ft-stream-2")
    assert (rec["deadlines_fired"], rec["winner_attempt"]) == ("0", "1")
    assert 400 <= int(rec["winner_ttft_ms"]) < DEADLINE_MS


def test_non_stream_primary_that_has_not_answered_by_the_deadline_is_abandoned(rgw, rclient):
    raw = rclient.chat.completions.with_raw_response.create(
        model="ft-chat", messages=MSG, extra_headers={**delay(openai=6000), "x-request-id": "ft-whole-1"})
    resp = raw.parse()
    assert resp.choices[0].message.content == recorded.anthropic_text()["content"][0]["text"]
    assert raw.headers["x-switchyard-backend"] == "anthropic-demo"
    rec = log_line(rgw, "ft-whole-1")
    assert (rec["deadlines_fired"], rec["winner_attempt"]) == ("1", "2")


def test_a_quick_failure_is_not_a_deadline_even_in_a_long_request(rgw, rclient):
    # Attempt 1 is refused at once; attempt 2 streams for longer than the deadline after a first
    # token well within it. No deadline fired.
    t0 = time.monotonic()
    raw, text = stream_text(rclient, "ft-refused", {"x-mock-anthropic": "slow-stream", "x-request-id": "ft-refused"})
    assert time.monotonic() - t0 > DEADLINE_MS / 1000
    assert text == recorded.anthropic_stream_text()["text"]
    rec = log_line(rgw, "ft-refused")
    assert (rec["attempts"], rec["deadlines_fired"], rec["winner_attempt"]) == ("2", "0", "2"), rec


def test_native_messages_stream_is_released_at_its_first_token(rgw):
    # An Anthropic Messages client on the same route: attempt 2 is Anthropic, native (the client's
    # own Messages stream passes untouched), slower in total than the deadline: its first token,
    # a Messages content_block_delta, releases it; no deadline fires.
    import anthropic
    claude = anthropic.Anthropic(base_url=rgw.gateway_url, api_key="sk-apps", max_retries=0, timeout=30)
    t0 = time.monotonic()
    with claude.messages.stream(model="ft-refused", max_tokens=50, messages=[{"role": "user", "content": "Hello"}],
                                extra_headers={"x-mock-anthropic": "slow-stream", "x-request-id": "ft-native"}) as s:
        final = s.get_final_message()
    assert time.monotonic() - t0 > DEADLINE_MS / 1000
    assert "".join(b.text for b in final.content if b.type == "text") == recorded.anthropic_stream_text()["text"]
    rec = log_line(rgw, "ft-native")
    assert (rec["attempts"], rec["deadlines_fired"], rec["winner_attempt"]) == ("2", "0", "2"), rec


def test_translated_stream_deadline_gemini_to_openai(rgw, rclient):
    raw, text = stream_text(rclient, "ft-gemini", {**delay(gemini=6000), "x-request-id": "ft-gem-1"})
    assert text == recorded.openai_stream_summary(recorded.openai_stream_text_chunks())["text"]
    assert raw.headers["x-switchyard-backend"] == "openai-demo"
    rec = log_line(rgw, "ft-gem-1")
    assert rec["deadlines_fired"] == "1", rec


def test_translated_stream_within_the_deadline_is_held_and_translated_whole(rgw, rclient):
    raw, text = stream_text(rclient, "ft-gemini", {**delay(gemini=300), "x-request-id": "ft-gem-2"})
    expected = "".join(rp.gemini_text_of(e) for e in rp.gemini_stream_events())
    assert expected and text == expected
    assert raw.headers["x-switchyard-backend"] == "gemini-demo"
    rec = log_line(rgw, "ft-gem-2")
    assert (rec["deadlines_fired"], rec["winner_attempt"]) == ("0", "1")


def test_a_held_stream_error_event_quoting_the_credential_is_scrubbed(rgw):
    """A stream held for its first token (a deadline route) whose provider error event quotes the
    credential it received: the held chunks are scrubbed like any other stream's (review finding)."""
    key = harness.ENVOY_ENV["GEMINI_API_KEY"]
    r = requests.post(rgw.base_url + "/chat/completions", timeout=30,
                      headers={"authorization": "Bearer sk-apps", "content-type": "application/json",
                               "x-mock-more": "echo-auth-error-first", **delay(gemini=300)},
                      json={"model": "ft-gemini", "messages": MSG, "stream": True})
    assert r.status_code == 200, r.text
    assert [q for q in rgw.mock_requests("more") if key in json.dumps(q["headers"])], "the key reached the provider"
    errors = [json.loads(ln[5:]) for ln in r.text.splitlines() if ln.startswith("data:") and '"error"' in ln]
    assert errors and "[redacted]" in errors[-1]["error"]["message"], r.text[-600:]
    assert key not in r.text


def test_every_candidate_too_slow_is_an_openai_shaped_504(rgw, rclient):
    with pytest.raises(openai.APIStatusError) as e:
        rclient.chat.completions.create(model="ft-chat", messages=MSG,
                                        extra_headers={**delay(openai=4000, anthropic=4000),
                                                       "x-request-id": "ft-all-slow"})
    assert e.value.status_code == 504
    assert isinstance(e.value.body, dict) and e.value.body.get("code") == "upstream_unavailable"
    rec = log_line(rgw, "ft-all-slow")
    # Every attempt (the route's retry budget: 3) was abandoned at its deadline; none won.
    assert rec["deadlines_fired"] == rec["attempts"] == "3", rec
    assert rec.get("winner_attempt") in (None, "")


def test_a_route_without_deadline_waits_and_logs_no_deadline(rgw, rclient):
    raw, text = stream_text(rclient, "gpt-4o-mini", {**delay(openai=1500), "x-request-id": "ft-none"})
    assert raw.headers["x-switchyard-backend"] == "openai-demo"
    assert text == recorded.openai_stream_summary(recorded.openai_stream_text_chunks())["text"]
    rec = log_line(rgw, "ft-none")
    assert all(rec.get(f) in (None, "") for f in LOG_FIELDS), rec


# -- hedging


CANCELLED = "wasmcustom.switchyard_cancelled_attempts;route={route};backend={backend}"
COST = "wasmcustom.switchyard_cost_micros;gen_ai_provider_name={provider};gen_ai_request_model={model}"


def test_hedge_the_second_candidate_wins_when_faster(rgw, rclient):
    metric = {"cancelled": CANCELLED.format(route="ft-hedge", backend="openai-demo"),
              "openai": COST.format(provider="openai", model="ft-hedge"),
              "anthropic": COST.format(provider="anthropic", model="ft-hedge")}
    before = {k: counter(rgw, v) for k, v in metric.items()}
    t0 = time.monotonic()
    raw, text = stream_text(rclient, "ft-hedge", {**delay(openai=3000), "x-request-id": "hedge-1"})
    elapsed = time.monotonic() - t0
    assert text == recorded.anthropic_stream_text()["text"]
    assert raw.headers["x-switchyard-backend"] == "anthropic-demo"
    assert elapsed < 2.5, elapsed
    rec = log_line(rgw, "hedge-1")
    assert (rec["deadlines_fired"], rec["winner_attempt"], rec["hedge"]) == ("1", "2", "true")
    # Both attempts count: the OpenAI attempt Envoy cancelled is in the metrics, and its prompt
    # (which OpenAI had started on) in the cost, under its own provider.
    harness.wait_until(lambda: counter(rgw, metric["cancelled"]) == before["cancelled"] + 1, 5, "cancelled attempts")
    delta = {k: counter(rgw, v) - before[k] for k, v in metric.items() if k != "cancelled"}
    # The winner: Claude's reported usage at its built-in prices (0.8 / 4 µ$ per token).
    won = -(-(int(rec["input_tokens"]) * 8 + int(rec["output_tokens"]) * 40) // 10)
    assert delta["anthropic"] == won > 0, (delta, rec)
    # The loser: its prompt (the gateway's estimate, a few tokens here) at gpt-4o-mini's 0.15 µ$.
    assert 1 <= delta["openai"] <= 10, delta
    assert int(rec["cost_micros"]) == delta["anthropic"] + delta["openai"], (delta, rec)


def test_hedge_the_first_candidate_still_wins_when_it_answers_first(rgw, rclient):
    # Without hedging the primary would be abandoned at 1000 ms and the secondary (2500 ms to its
    # first token) would time out too; with hedging both run and the primary's token at 1400 ms wins.
    hedge_cancelled = CANCELLED.format(route="ft-hedge", backend="anthropic-demo")
    before = counter(rgw, hedge_cancelled)
    raw, text = stream_text(rclient, "ft-hedge", {**delay(openai=1400, anthropic=2500),
                                                  "x-request-id": "hedge-2"})
    assert text == recorded.openai_stream_summary(recorded.openai_stream_text_chunks())["text"]
    assert raw.headers["x-switchyard-backend"] == "openai-demo"
    assert len(rgw.mock_requests("openai")) == 1 and len(rgw.mock_requests("anthropic")) == 1
    rec = log_line(rgw, "hedge-2")
    assert (rec["deadlines_fired"], rec["winner_attempt"]) == ("1", "1")
    assert rec["attempts"] == "2"
    assert int(rec["winner_ttft_ms"]) >= 1400
    # The hedge (Anthropic) was reset when OpenAI's token won, before its own deadline: cancelled.
    harness.wait_until(lambda: counter(rgw, hedge_cancelled) == before + 1, 5, "cancelled hedge")


def test_without_hedging_the_same_timings_fail(rgw, rclient):
    with pytest.raises(openai.APIStatusError) as e:
        rclient.chat.completions.create(model="ft-chat", messages=MSG, stream=True,
                                        extra_headers=delay(openai=1400, anthropic=2500))
    assert e.value.status_code == 504


# -- rules on the request, meta-model `auto`


def ask(client, rid, model="auto", content="Hello", headers=None, **kw):
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}],
        extra_headers={"x-request-id": rid, **(headers or {})}, **kw)


def test_auto_without_a_matching_rule_is_its_default(rgw, rclient):
    raw = ask(rclient, "rule-default")
    resp = raw.parse()
    assert raw.headers["x-switchyard-backend"] == "openai-demo"
    assert raw.headers["x-switchyard-model"] == "gpt-4o-mini"
    assert resp.model != "auto" and resp.choices[0].message.content == recorded.openai_text()["choices"][0]["message"]["content"]
    rec = log_line(rgw, "rule-default")
    assert (rec["requested_model"], rec["routing_rule"], rec["route"]) == ("auto", "meta:auto", "gpt-4o-mini")


def test_a_summarisation_request_goes_to_the_small_model(rgw, rclient):
    raw = ask(rclient, "rule-summary", content="Please summarize the following report: ...")
    resp = raw.parse()
    assert raw.headers["x-switchyard-backend"] == "anthropic-demo"
    assert resp.choices[0].message.content == recorded.anthropic_text()["content"][0]["text"]
    # What served: the provider's own model name in the answer, the name sent to it in the header.
    assert resp.model == recorded.anthropic_text()["model"]
    assert raw.headers["x-switchyard-model"] == "claude-3-5-haiku-latest"
    assert len(rgw.mock_requests("openai")) == 0 and len(rgw.mock_requests("anthropic")) == 1
    rec = log_line(rgw, "rule-summary")
    assert (rec["requested_model"], rec["routing_rule"], rec["route"]) == ("auto", "summaries", "claude-haiku")


def test_only_the_last_user_message_is_read(rgw, rclient):
    raw = rclient.chat.completions.with_raw_response.create(
        model="auto", extra_headers={"x-request-id": "rule-last"},
        messages=[{"role": "user", "content": "summarize this"}, {"role": "assistant", "content": "ok"},
                  {"role": "user", "content": "Now translate it to French"}])
    assert raw.headers["x-switchyard-backend"] == "openai-demo"
    assert log_line(rgw, "rule-last")["routing_rule"] == "meta:auto"


def test_a_summarisation_stream_is_served_by_the_rule_s_model(rgw, rclient):
    raw = rclient.chat.completions.with_raw_response.create(
        model="auto", stream=True, messages=[{"role": "user", "content": "TL;DR of this thread please"}])
    text = "".join((c.choices[0].delta.content or "") for c in raw.parse() if c.choices)
    assert raw.headers["x-switchyard-backend"] == "anthropic-demo"
    assert text == recorded.anthropic_stream_text()["text"]


def test_a_regular_expression_rule_on_the_last_user_message(rgw, rclient):
    raw = ask(rclient, "rule-regex", content="Why does OPS-4521 fail on staging?")
    assert raw.headers["x-switchyard-backend"] == "anthropic-demo"
    assert log_line(rgw, "rule-regex")["routing_rule"] == "tickets"
    # The pattern is case-sensitive: a lower-case id is no ticket, and the default serves.
    raw = ask(rclient, "rule-regex-no", content="why does ops-4521 fail on staging?")
    assert raw.headers["x-switchyard-backend"] == "openai-demo"
    assert log_line(rgw, "rule-regex-no")["routing_rule"] == "meta:auto"
    # Only the last user message counts.
    raw = rclient.chat.completions.with_raw_response.create(
        model="auto", extra_headers={"x-request-id": "rule-regex-last"},
        messages=[{"role": "user", "content": "OPS-4521"}, {"role": "assistant", "content": "ok"},
                  {"role": "user", "content": "and now?"}])
    assert raw.headers["x-switchyard-backend"] == "openai-demo"


def test_a_header_rule_applies_to_a_configured_model(rgw, rclient):
    raw = ask(rclient, "rule-header", model="gpt-4o-mini", headers={"x-task": "classify"})
    assert raw.headers["x-switchyard-backend"] == "anthropic-demo"
    rec = log_line(rgw, "rule-header")
    assert (rec["requested_model"], rec["routing_rule"]) == ("gpt-4o-mini", "classification")
    # Another value of the header: no rule, the model asked for.
    raw = ask(rclient, "rule-header-2", model="gpt-4o-mini", headers={"x-task": "chat"})
    assert raw.headers["x-switchyard-backend"] == "openai-demo"
    assert log_line(rgw, "rule-header-2").get("routing_rule") in (None, "")


def test_an_image_request_goes_to_the_vision_model(rgw, rclient):
    raw = rclient.chat.completions.with_raw_response.create(
        model="auto", extra_headers={"x-request-id": "rule-image"},
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}])
    assert raw.headers["x-switchyard-backend"] == "gemini-demo"
    assert raw.parse().choices[0].message.content == rp.gemini_text_of(rp.gemini_text())
    sent = rgw.mock_requests("more")[-1]["body"]
    assert any("inlineData" in p for c in sent["contents"] for p in c["parts"])
    assert log_line(rgw, "rule-image")["routing_rule"] == "vision"


def test_team_research_gets_the_frontier_model_everyone_else_the_default(rgw, rclient, research):
    raw = ask(research, "rule-research")
    assert raw.headers["x-switchyard-backend"] == "mistral-demo"
    rec = log_line(rgw, "rule-research")
    assert (rec["team"], rec["routing_rule"]) == ("research", "research-frontier")
    raw = ask(rclient, "rule-apps")
    assert raw.headers["x-switchyard-backend"] == "openai-demo"
    assert log_line(rgw, "rule-apps")["team"] == "apps"


def test_a_long_prompt_goes_to_the_long_context_model(rgw, rclient):
    raw = ask(rclient, "rule-long", content="lorem ipsum dolor sit amet " * 500)
    assert raw.headers["x-switchyard-backend"] == "cohere-demo"
    assert log_line(rgw, "rule-long")["routing_rule"] == "long-prompts"


def test_meta_models_are_listed_and_unknown_models_stay_404(rgw, rclient):
    ids = {m.id for m in rclient.models.list()}
    assert {"auto", "gpt-4o-mini", "ft-chat"} <= ids
    assert rclient.models.retrieve("auto").owned_by == "switchyard"
    # A rule without a model condition does not make an unknown name servable.
    with pytest.raises(openai.NotFoundError) as e:
        ask(rclient, "rule-unknown", model="no-such-model", headers={"x-task": "classify"})
    assert e.value.body["code"] == "model_not_found"


# -- capabilities: incompatible candidates are skipped, also during failover

IMAGE_MSG = [{"role": "user", "content": [
    {"type": "text", "text": "What is in this picture?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]


def test_an_image_request_skips_a_text_only_fallback(rgw, rclient):
    raw = rclient.chat.completions.with_raw_response.create(
        model="cap-fallback", messages=IMAGE_MSG,
        extra_headers={"x-mock-openai": "503", "x-request-id": "cap-image"})
    assert raw.headers["x-switchyard-backend"] == "anthropic-demo"
    assert raw.parse().choices[0].message.content == recorded.anthropic_text()["content"][0]["text"]
    # The text-only candidate never saw the request; the vision-capable ones did, without the
    # gateway's needs headers.
    assert [r["provider"] for r in rgw.mock_requests("more")] == []
    assert len(rgw.mock_requests("openai")) == 1 and len(rgw.mock_requests("anthropic")) == 1
    for which in ("openai", "anthropic"):
        assert not any(h.startswith("x-switchyard-") for h in rgw.mock_requests(which)[0]["headers"]), which
    rec = log_line(rgw, "cap-image")
    # Envoy's subset load balancer never picked the text-only endpoint: two attempts, none skipped.
    assert (rec["attempts"], rec["status"], rec.get("skipped_candidates")) == ("2", "200", None)


def test_an_image_request_with_tools_skips_the_text_only_fallback(rgw, rclient):
    # Two needs at once (tools and images): the subset of endpoints that have both.
    tools = [{"type": "function", "function": {"name": "describe", "parameters": {"type": "object"}}}]
    raw = rclient.chat.completions.with_raw_response.create(
        model="cap-fallback", messages=IMAGE_MSG, tools=tools,
        extra_headers={"x-mock-openai": "503", "x-request-id": "cap-image-tools"})
    assert raw.headers["x-switchyard-backend"] == "anthropic-demo"
    assert rgw.mock_requests("more") == []
    assert log_line(rgw, "cap-image-tools")["attempts"] == "2"


def test_an_image_request_skips_a_text_only_primary(rgw, rclient):
    raw = rclient.chat.completions.with_raw_response.create(
        model="cap-text-first", messages=IMAGE_MSG, extra_headers={"x-request-id": "cap-primary"})
    assert raw.headers["x-switchyard-backend"] == "anthropic-demo"
    assert raw.parse().choices[0].message.content == recorded.anthropic_text()["content"][0]["text"]
    # The first attempt went to Anthropic: the text-only primary never saw the request.
    assert rgw.mock_requests("more") == [] and len(rgw.mock_requests("anthropic")) == 1
    rec = log_line(rgw, "cap-primary")
    assert (rec["attempts"], rec["failover"], rec.get("skipped_candidates")) == ("1", "false", None), rec
    # Without an image the primary serves.
    raw = rclient.chat.completions.with_raw_response.create(model="cap-text-first", messages=MSG)
    assert raw.headers["x-switchyard-backend"] == "cohere-demo"


def test_the_rendered_configuration_gives_differing_routes_a_subset_balancer(rgw):
    doc = yaml.safe_load(Path(rgw.config_path).read_text(encoding="utf-8"))
    clusters = {c["name"]: c for c in doc["static_resources"]["clusters"]}
    for name in ("cap-fallback", "cap-text-first", "any-chat"):
        assert clusters[f"route_{name}"]["lb_subset_config"]["list_as_any"] is True, name
    # One candidate: nothing to skip.
    assert "lb_subset_config" not in clusters["route_cap-text"]
    # `switchyard check` agrees with what was rendered: no subset or metadata finding.
    # (Its one error is meant: pinned-floating sends a floating name, for the run-time refusal.)
    p = subprocess.run([str(harness.switchyard_cli()), "check", str(rgw.config_path)], capture_output=True, text=True)
    errors = [line for line in (p.stdout + p.stderr).splitlines() if ": error: " in line]
    assert len(errors) == 1 and "route pinned-floating" in errors[0], p.stdout + p.stderr
    for bad in ("envoy.lb metadata", "lb_subset_config", "header_to_metadata"):
        assert bad not in p.stdout + p.stderr, p.stdout + p.stderr


def test_the_demo_any_chat_route_never_falls_back_to_its_text_only_candidate(rgw, rclient):
    """The demo's any-chat (OpenAI, then Gemini, then Nova Micro, which takes no images), rendered
    with capabilities."""
    raw = rclient.chat.completions.with_raw_response.create(
        model="any-chat", messages=IMAGE_MSG, extra_headers={"x-mock-openai": "503", "x-request-id": "any-image-1"})
    assert raw.headers["x-switchyard-backend"] == "gemini-demo"
    assert [r["provider"] for r in rgw.mock_requests("more")] == ["gemini"]
    rgw.clear_mocks()
    # Both image-capable candidates fail: the client gets their failure, never a request sent to
    # the text-only model (whose own error would be a 400 about the image).
    with pytest.raises(openai.APIStatusError) as e:
        rclient.chat.completions.create(model="any-chat", messages=IMAGE_MSG,
                                        extra_headers={"x-mock-openai": "503", "x-mock-more": "gemini=503",
                                                       "x-request-id": "any-image-2"})
    assert e.value.status_code == 503, e.value
    assert "bedrock" not in [r["provider"] for r in rgw.mock_requests("more")], rgw.mock_requests("more")
    assert len(rgw.mock_requests("openai")) >= 1
    rgw.clear_mocks()
    # The same failures without an image: Nova Micro serves.
    raw = rclient.chat.completions.with_raw_response.create(
        model="any-chat", messages=MSG, extra_headers={"x-mock-openai": "503", "x-mock-more": "gemini=503"})
    assert raw.headers["x-switchyard-backend"] == "bedrock-demo"


def test_the_text_only_fallback_serves_what_it_can(rgw, rclient):
    # The same route and failure without an image: the Cohere candidate answers.
    raw = rclient.chat.completions.with_raw_response.create(
        model="cap-fallback", messages=MSG, extra_headers={"x-mock-openai": "503", "x-request-id": "cap-text-ok"})
    assert raw.headers["x-switchyard-backend"] == "cohere-demo"
    assert [r["provider"] for r in rgw.mock_requests("more")] == ["cohere"]
    assert log_line(rgw, "cap-text-ok").get("skipped_candidates") in (None, "")


def test_a_prompt_longer_than_the_context_window_skips_the_candidate(rgw, rclient):
    long = [{"role": "user", "content": "lorem ipsum dolor sit amet " * 2000}]
    raw = rclient.chat.completions.with_raw_response.create(
        model="cap-fallback", messages=long, extra_headers={"x-mock-openai": "503"})
    assert raw.headers["x-switchyard-backend"] == "anthropic-demo"
    assert rgw.mock_requests("more") == []


def test_no_compatible_candidate_is_a_400_naming_the_capability(rgw, rclient):
    with pytest.raises(openai.BadRequestError) as e:
        rclient.chat.completions.create(model="cap-text", messages=IMAGE_MSG,
                                        extra_headers={"x-request-id": "cap-none"})
    body = e.value.body
    assert body["code"] == "model_capability_missing" and body["param"] == "messages"
    assert "command-r7b-12-2024" in body["message"] and "images" in body["message"]
    assert rgw.mock_requests("more") == []
    rec = log_line(rgw, "cap-none")
    assert rec["status"] == "400" and rec["skipped_candidates"] == "1"


# -- policy `cheapest`


def test_cheapest_picks_the_lowest_expected_cost(rgw, rclient):
    # command-r (3.75e-8 / 1.5e-7 per token) < gpt-4o-mini (1.5e-7 / 6e-7) < claude-haiku (8e-7 / 4e-6).
    raw = ask(rclient, "cheap-text", model="cheap")
    assert raw.headers["x-switchyard-backend"] == "cohere-demo"
    rec = log_line(rgw, "cheap-text")
    assert (rec["routing_rule"], rec["route"]) == ("meta:cheap", "command-r")


def test_cheapest_skips_a_candidate_that_cannot_serve_the_request(rgw, rclient):
    # An image: command-r takes none (its price-table entry says supports_vision: false), so the
    # next cheapest, gpt-4o-mini, serves; never the dearest.
    raw = rclient.chat.completions.with_raw_response.create(
        model="cheap", messages=IMAGE_MSG, extra_headers={"x-request-id": "cheap-image"})
    assert raw.headers["x-switchyard-backend"] == "openai-demo"
    assert rgw.mock_requests("more") == [] and rgw.mock_requests("anthropic") == []
    assert log_line(rgw, "cheap-image")["route"] == "gpt-4o-mini"


# -- version pinning


def test_a_route_that_forbids_floating_names_never_sends_one(rgw, rclient):
    with pytest.raises(openai.InternalServerError) as e:
        rclient.chat.completions.create(model="pinned-floating", messages=MSG)
    assert e.value.status_code == 500 and "floating name `gpt-4o-mini`" in e.value.body["message"]
    assert rgw.mock_requests("openai") == []
    raw = rclient.chat.completions.with_raw_response.create(model="pinned-dated", messages=MSG)
    assert raw.headers["x-switchyard-model"] == "gpt-4o-mini-2024-07-18"
    assert rgw.mock_requests("openai")[0]["body"]["model"] == "gpt-4o-mini-2024-07-18"


# -- policy `fastest`


def quick(rclient, n, delays):
    served = []
    for _ in range(n):
        raw = rclient.chat.completions.with_raw_response.create(model="quick", messages=MSG, extra_headers=delay(**delays))
        served.append(raw.headers["x-switchyard-backend"])
    return served


def score(rgw, model):
    return rgw.stats().get(f"wasmcustom.switchyard_candidate_score_ms;route={model}")


def test_fastest_moves_away_from_a_slow_backend_and_comes_back(rgw, rclient):
    # Anthropic answers in 150 ms throughout; OpenAI in 800 ms, then recovers.
    served = quick(rclient, 30, {"openai": 800, "anthropic": 150})
    last = served[-20:]
    assert last.count("anthropic-demo") >= 14, served
    assert score(rgw, "gpt-4o-mini") > score(rgw, "claude-haiku") >= 150, rgw.stats("candidate_score")
    # Recovered: the exploration share (10%) samples OpenAI again, its average falls below
    # Anthropic's, and the traffic comes back.
    # (200 requests: about 20 explorations, where 5 are enough; each condition fails with a
    # probability well under 1%.)
    served = quick(rclient, 200, {"anthropic": 150})
    last = served[-20:]
    assert last.count("openai-demo") >= 14, served
    assert score(rgw, "gpt-4o-mini") < score(rgw, "claude-haiku"), rgw.stats("candidate_score")
    rec = access_log(rgw)[-1]
    assert rec["routing_rule"] == "meta:quick"


# -- canary rollouts


def canary_round(rclient, model, n, headers=None):
    served = []
    for i in range(n):
        try:
            raw = rclient.chat.completions.with_raw_response.create(
                model=model, messages=MSG, extra_headers={"x-request-id": f"{model}-{i}", **(headers or {})})
            served.append(raw.headers["x-switchyard-backend"])
        except openai.APIStatusError as e:
            served.append(f"error {e.status_code}")
    return served


def test_a_canary_failing_its_error_rate_gate_is_rolled_back(rgw, rclient):
    offset = rgw.log_offset()
    # The canary's provider fails every request; the stable one is healthy.
    served = canary_round(rclient, "canary-bad", 40, {"x-mock-anthropic": "500"})
    assert "error 500" in served[:25], served
    # Rolled back within the window: from then on the stable model serves everything.
    assert served[-15:] == ["openai-demo"] * 15, served
    stats = rgw.stats()
    assert stats.get("wasmcustom.switchyard_canary_rollbacks;route=canary-bad;reason=error_rate") == 1, rgw.stats("canary")
    assert stats.get("wasmcustom.switchyard_canary_share_ppm;route=canary-bad") == 0
    assert "canary canary-bad-new of route canary-bad rolled back to 0%: gate error_rate failed" in rgw.log_since(offset)
    arms = [log_line(rgw, f"canary-bad-{i}").get("canary_arm") for i in range(40)]
    assert set(arms) == {"stable", "canary"} and arms[-15:] == ["stable"] * 15


def test_a_canary_that_holds_its_gates_keeps_its_share(rgw, rclient):
    served = canary_round(rclient, "canary-ok", 40)
    assert 8 <= served.count("anthropic-demo") <= 32, served
    assert served.count("anthropic-demo") + served.count("openai-demo") == 40, served
    stats = rgw.stats()
    assert not any(k.startswith("wasmcustom.switchyard_canary_rollbacks;route=canary-ok") for k in stats)
    assert stats.get("wasmcustom.switchyard_canary_share_ppm;route=canary-ok") == 500000


def test_a_rolled_back_canary_stays_rolled_back_across_a_configuration_reload(tmp_path):
    """The canary's state is in shared data, which belongs to the VM id: reloading the plugin
    configuration (the listener comes from an LDS file) keeps the rollback."""
    from keys_gateway import KeysGateway, LdsGateway

    demo = yaml.safe_load(harness.DEMO_CONFIG.read_text(encoding="utf-8"))
    plugin = next(p for _, p in harness.plugin_configs(demo, "gateway"))
    models = plugin["models"]
    stable = next(m for m in models if m["name"] == "gpt-4o-mini")
    stable["canary"] = {"model": "claude-haiku", **CANARY}
    g = KeysGateway.start(tmp_path, gateway_config={"models": models}, gateway_cls=LdsGateway)
    try:
        gw: LdsGateway = g.gw
        def chat(headers=None, model="gpt-4o-mini"):
            # A new client (and connection) each time: a kept-alive connection would stay on the
            # listener of the configuration before the reload.
            client = openai.OpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0, timeout=30)
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model=model, messages=MSG, extra_headers=headers or {})
                return raw.headers["x-switchyard-backend"]
            except openai.APIStatusError as e:
                return f"error {e.status_code}"

        served = [chat({"x-mock-anthropic": "500"}) for _ in range(40)]
        assert "error 500" in served, served
        assert served[-10:] == ["openai-demo"] * 10, served
        key = "wasmcustom.switchyard_canary_rollbacks;route=gpt-4o-mini;reason=error_rate"
        assert gw.stats().get(key) == 1
        # Reload with a changed plugin configuration (same vm_id): still rolled back, even with the
        # canary's provider healthy again.
        new = gw.gateway_plugin_config()
        entry = next(m for m in new["models"] if m["name"] == "gpt-4o-mini")
        entry["aliases"] = entry.get("aliases", []) + ["gpt-reloaded"]
        gw.update_gateway(new)
        # The alias exists only in the new configuration: these requests ran under it.
        served = [chat(model="gpt-reloaded") for _ in range(20)]
        assert served == ["openai-demo"] * 20, served
        # Naming another canary model starts a new rollout at its configured share.
        nxt = json.loads(json.dumps(new))
        entry = next(m for m in nxt["models"] if m["name"] == "gpt-4o-mini")
        entry["canary"]["model"] = "claude-3-5-haiku-latest"
        gw.update_gateway(nxt)
        served = [chat() for _ in range(30)]
        assert served.count("anthropic-demo") >= 5, served
    finally:
        problems = g.stop()
    assert not problems, problems
