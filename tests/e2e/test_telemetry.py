"""End-to-end proof of the gateway's telemetry: metrics, access log, served-by headers, traces.

A known mix of requests (stream and non-stream, both providers, an alias, two cross-provider
failovers, two rejections) goes through the real Envoy of the session (`gateway`), each with its own
`x-request-id`. Because that Envoy is shared with the other test files, the metrics are compared as
DELTAS: /stats/prometheus is scraped before and after the mix, and every gateway series that moved
must have moved by exactly the expected amount (and no other series may move). Expected numbers come
from the recordings the mocks replay (`recorded`) and the rendered Envoy configuration (`helpers`),
never from the gateway's own output.

Then every field of each request's JSON access-log line (envoy/demo.yaml's `json_format`, written to
`gateway.access_log_path`) is checked, and the log is searched for secrets and prompt text.

A second Envoy runs envoy/tracing.yaml (exporting over OTLP/HTTP to a stdlib collector here instead
of OTLP/gRPC, and with `expose_served_by: false`) to prove the span attributes and the header switch.
Finally every envoy/*.yaml must pass `envoy --mode validate`.

Timing notes (Envoy 1.40): counters are live in /stats/prometheus, histograms only after a stats
flush (`stats_flush_interval`, 1 s in demo.yaml), so histogram counts are polled. The file access
log is flushed every 10 s by default (`--file-flush-interval-msec`); `POST /reopen_logs` on the admin
port flushes it at once, so the tests poll with that.
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

import harness
import recorded as rec
from helpers import (ANTHROPIC_UPSTREAM_KEY, CLIENT_API_KEY, OPENAI_UPSTREAM_KEY, configured_models,
                     endpoints, openai_error, plugin_config, post_chat)

REPO = harness.REPO
GATEWAY_PREFIXES = ("gen_ai_", "switchyard_")
COUNTERS = ("switchyard_requests", "gen_ai_client_token_usage", "switchyard_failovers",
            "switchyard_rejections", "switchyard_cost_micros")
HISTOGRAMS = ("gen_ai_server_request_duration_ms", "gen_ai_server_time_to_first_token_ms",
              "gen_ai_server_time_per_output_token_ms", "switchyard_request_tokens")
# Gauges: tests/e2e/test_inflight.py checks this one rises and drains.
GAUGES = ("switchyard_inflight_requests",)
TOKEN_TYPES = ("input", "output", "cached_input", "cache_creation", "reasoning")
SECRETS = (CLIENT_API_KEY, OPENAI_UPSTREAM_KEY, ANTHROPIC_UPSTREAM_KEY)


# ==================================================================================================
# Prometheus text


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def labels(**kw) -> frozenset:
    return frozenset(kw.items())


def scrape(gateway) -> dict:
    """The gateway's samples of /stats/prometheus: {(name, frozenset(labels)): float}."""
    out = {}
    for line in gateway.prometheus().splitlines():
        if not line.startswith(GATEWAY_PREFIXES):
            continue
        m = _SAMPLE.match(line)
        assert m, f"unparsable Prometheus line: {line!r}"
        name, body, value = m.groups()
        out[(name, frozenset(_LABEL.findall(body or "")))] = float(value)
    return out


def deltas(before: dict, after: dict, name: str, drop=("le",)) -> dict:
    """{labels (without `drop`): after - before} for the series of `name` that moved."""
    out = {}
    for (n, ls), v in after.items():
        if n != name:
            continue
        d = v - before.get((n, ls), 0.0)
        if d:
            key = frozenset((k, x) for k, x in ls if k not in drop)
            out[key] = out.get(key, 0) + d
    return out


def bucket_deltas(before: dict, after: dict, name: str) -> dict:
    """{(labels without le, le as float): delta} of `name`_bucket."""
    out = {}
    for (n, ls), v in after.items():
        if n != name + "_bucket":
            continue
        d = dict(ls)
        le = float("inf") if d["le"] == "+Inf" else float(d["le"])
        key = frozenset((k, x) for k, x in ls if k != "le")
        out[(key, le)] = v - before.get((n, ls), 0.0)
    return out


def fmt(d: dict) -> str:
    return "\n".join(f"  {dict(sorted(k))}: {v:g}" for k, v in sorted(d.items(), key=str))


# ==================================================================================================
# the access log


def flush_access_log(gw) -> None:
    """Envoy's file logger writes every 10 s by default; reopening the logs flushes them now."""
    harness.http("POST", gw.admin_url + "/reopen_logs")


def access_log_lines(gw, request_ids, timeout: float = 20.0) -> dict:
    """{request_id: parsed JSON line} for every id, polling until all are written."""
    want = set(request_ids)
    deadline = time.monotonic() + timeout
    found: dict = {}
    while True:
        flush_access_log(gw)
        found = {}
        try:
            text = Path(gw.access_log_path).read_text(encoding="utf-8")
        except OSError:
            text = ""
        for line in text.splitlines():
            if line.strip():
                doc = json.loads(line)
                if doc.get("request_id") in want:
                    assert doc["request_id"] not in found, f"two log lines for {doc['request_id']}"
                    found[doc["request_id"]] = doc
        if set(found) == want or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    missing = want - set(found)
    assert not missing, f"no access-log line for {sorted(missing)} in {gw.access_log_path}"
    return found


def json_format_fields(config_path: Path) -> list[str]:
    """The keys of the first JSON access log format in an Envoy config."""
    doc = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
    for hcm in _walk(doc):
        if isinstance(hcm, dict) and "json_format" in hcm:
            return list(hcm["json_format"])
    raise AssertionError(f"no json_format access log in {config_path}")


def _walk(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


# ==================================================================================================
# what the configuration and the recordings say each request must produce


def openai_usage(u: dict) -> dict:
    return {"input": u["prompt_tokens"], "output": u["completion_tokens"],
            "cached_input": (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
            "cache_creation": 0,
            "reasoning": (u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0}


def anthropic_usage(u: dict) -> dict:
    """Anthropic's input_tokens excludes cache reads and writes; the gateway counts all input."""
    read = u.get("cache_read_input_tokens") or 0
    write = u.get("cache_creation_input_tokens") or 0
    return {"input": u["input_tokens"] + read + write, "output": u["output_tokens"],
            "cached_input": read, "cache_creation": write, "reasoning": 0}


def recorded_answer(schema: str, stream: bool) -> tuple[str, dict]:
    """(model, usage) of the recording the mock replays for a plain chat request."""
    if schema == "openai" and not stream:
        return rec.openai_text()["model"], openai_usage(rec.openai_text()["usage"])
    if schema == "openai":
        models = {c["model"] for c in rec.openai_stream_text_chunks()}
        assert len(models) == 1
        # the backend always asks for usage: the mock appends the recorded usage chunk
        return models.pop(), openai_usage(rec.openai_stream_usage_chunk()["usage"])
    if not stream:
        return rec.anthropic_text()["model"], anthropic_usage(rec.anthropic_text()["usage"])
    folded = rec.anthropic_stream_text()
    return folded["model"], anthropic_usage(folded["usage"])


def route_of(gateway, model: str) -> str:
    for m in configured_models(gateway):
        if model == m["name"] or model in m.get("aliases", []):
            return m.get("route") or m["name"]
    raise AssertionError(f"{model} is not configured")


class Case:
    """One request of the mix and everything it must leave behind."""

    def __init__(self, name, model, *, stream=False, include_usage=False, mock=None,
                 body=None, served_priority=0):
        self.name = name
        self.model = model
        self.stream = stream
        self.include_usage = include_usage
        self.mock = mock or {}
        self.raw_body = body
        self.served_priority = served_priority
        self.request_id = f"telemetry-{name}-{uuid.uuid4().hex}"
        # filled by expect()
        self.route = self.backend = self.provider = self.served_model = None
        self.response_model = None
        self.usage = dict.fromkeys(TOKEN_TYPES, 0)
        self.attempts = 0
        # filled by run()
        self.status = None
        self.headers = {}
        self.error = None
        self.t_start_ms = self.t_end_ms = None
        self.body_text = ""

    @property
    def rejected(self) -> bool:
        return self.raw_body is not None or self.route is None

    @property
    def failover(self) -> bool:
        return self.served_priority > 0

    def expect(self, gateway, backends: dict) -> None:
        if self.raw_body is not None:
            return
        try:
            self.route = route_of(gateway, self.model)
        except AssertionError:
            return  # an unknown model: rejected
        eps = endpoints(gateway, f"route_{self.route}")
        ep = next(e for e in eps if e["priority"] == self.served_priority)
        self.backend = ep["backend"]
        self.provider = backends[self.backend]["schema"]
        self.served_model = ep["model"]
        self.attempts = self.served_priority + 1
        self.response_model, self.usage = recorded_answer(self.provider, self.stream)

    def payload(self, prompt: str) -> dict:
        if self.raw_body is not None:
            return self.raw_body
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}]}
        if self.stream:
            body["stream"] = True
            if self.include_usage:
                body["stream_options"] = {"include_usage": True}
        return body

    def run(self, gateway, prompt: str) -> None:
        headers = {"x-request-id": self.request_id, **self.mock}
        self.t_start_ms = time.time() * 1000
        resp = post_chat(gateway, self.payload(prompt), headers=headers, stream=self.stream)
        self.body_text = resp.content.decode("utf-8")  # reads a stream to its end
        self.t_end_ms = time.time() * 1000
        self.status = resp.status_code
        self.headers = {k.lower(): v for k, v in resp.headers.items()}
        if self.rejected:
            self.error = openai_error(resp)
        else:
            assert resp.status_code == 200, (self.name, resp.status_code, self.body_text[:300])
            assert self.body_text


def make_mix() -> list[Case]:
    return [
        Case("openai", "gpt-4o-mini"),
        Case("openai-stream", "gpt-4o-mini", stream=True, include_usage=True),
        # an alias, and a stream whose client did not ask for usage: still counted
        Case("alias-stream", "fast", stream=True),
        Case("anthropic", "claude-haiku"),
        Case("anthropic-stream", "claude-haiku", stream=True, include_usage=True),
        Case("failover", "gpt-4o-mini", mock={"x-mock-openai": "503"}, served_priority=1),
        Case("failover-stream", "gpt-4o-mini", stream=True, mock={"x-mock-openai": "503"},
             served_priority=1),
        Case("unknown-model", f"no-such-model-{uuid.uuid4().hex[:12]}"),
        Case("invalid-body", None, body={"model": "gpt-4o-mini", "messages": "not a list"}),
    ]


# ==================================================================================================
# the run


class Run:
    def __init__(self, cases, before, after, log, prompt):
        self.cases = cases
        self.before = before
        self.after = after
        self.log = log
        self.prompt = prompt

    def delta(self, name, **kw):
        return deltas(self.before, self.after, name, **kw)

    @property
    def served(self):
        return [c for c in self.cases if not c.rejected]


def expected_histogram_counts(cases) -> dict:
    exp = {h: collections.Counter() for h in HISTOGRAMS}
    for c in cases:
        if c.attempts == 0:
            continue
        ml = labels(gen_ai_provider_name=c.provider, gen_ai_request_model=c.model)
        exp["gen_ai_server_request_duration_ms"][ml] += 1
        if c.stream:
            exp["gen_ai_server_time_to_first_token_ms"][ml] += 1
            if c.usage["output"] > 1:
                exp["gen_ai_server_time_per_output_token_ms"][ml] += 1
        for ty in ("input", "output"):
            exp["switchyard_request_tokens"][ml | {("gen_ai_token_type", ty)}] += 1
    return {h: dict(v) for h, v in exp.items()}


@pytest.fixture(scope="module")
def run(gateway) -> Run:
    backends = plugin_config(gateway, "backend")["backends"]
    cases = make_mix()
    for c in cases:
        c.expect(gateway, backends)
    prompt = f"Say hello to telemetry-prompt-{uuid.uuid4().hex}"
    want_hist = expected_histogram_counts(cases)

    before = scrape(gateway)
    for c in cases:
        c.run(gateway, prompt)

    # Counters are live; histograms appear after the next stats flush: poll until they all moved.
    deadline = time.monotonic() + 20
    while True:
        after = scrape(gateway)
        got = {h: deltas(before, after, h + "_count") for h in HISTOGRAMS}
        counted = sum(deltas(before, after, "switchyard_requests").values())
        if (got == want_hist and counted == len(cases)) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    log = access_log_lines(gateway, [c.request_id for c in cases])
    return Run(cases, before, after, log, prompt)


# ==================================================================================================
# metrics


def test_requests_counter_by_route_backend_provider_models_status_and_error(run):
    want = collections.Counter()
    for c in run.cases:
        if c.rejected:
            want[labels(route="unknown", backend="unknown", gen_ai_provider_name="unknown",
                        gen_ai_request_model="unknown", gen_ai_response_model="unknown",
                        status_class=f"{c.status // 100}xx", error_type=c.error["type"],
                        gen_ai_operation_name="chat")] += 1
        else:
            want[labels(route=c.route, backend=c.backend, gen_ai_provider_name=c.provider,
                        gen_ai_request_model=c.model, gen_ai_response_model=c.response_model,
                        status_class="2xx", error_type="none", gen_ai_operation_name="chat")] += 1
    got = run.delta("switchyard_requests")
    assert got == dict(want), f"got:\n{fmt(got)}\nwant:\n{fmt(want)}"
    assert sum(got.values()) == len(run.cases)


def test_token_usage_counter_equals_the_recorded_usage(run):
    want = collections.Counter()
    for c in run.served:
        for ty in TOKEN_TYPES:
            if c.usage[ty]:
                want[labels(gen_ai_provider_name=c.provider, gen_ai_request_model=c.model,
                            gen_ai_token_type=ty)] += c.usage[ty]
    got = run.delta("gen_ai_client_token_usage")
    assert got == dict(want), f"got:\n{fmt(got)}\nwant:\n{fmt(want)}"
    # the mix has reasoning tokens (OpenAI recordings) and both providers
    assert any(dict(k)["gen_ai_token_type"] == "reasoning" for k in got)
    assert {dict(k)["gen_ai_provider_name"] for k in got} == {"openai", "anthropic"}


def test_failovers_counter(run):
    want = collections.Counter(labels(route=c.route, backend=c.backend)
                               for c in run.cases if c.failover)
    assert sum(want.values()) == 2
    assert run.delta("switchyard_failovers") == dict(want)


def test_rejections_counter_by_reason(run):
    # An unknown model is not a label value (a client could mint series at will): "unknown".
    want = collections.Counter(labels(reason="validation", gen_ai_request_model="unknown")
                               for c in run.cases if c.rejected)
    assert sum(want.values()) == 2
    assert run.delta("switchyard_rejections") == dict(want)


def test_cost_counter_matches_the_access_log(run):
    """The demo configures no prices; whatever cost the log reports, the counter adds up to it."""
    logged = sum(int(run.log[c.request_id]["cost_micros"] or 0) for c in run.cases)
    assert sum(run.delta("switchyard_cost_micros").values()) == logged


def test_every_gateway_metric_is_a_known_one(run):
    names = {n for n, _ in run.after}
    unknown = {n for n in names
               if n not in COUNTERS and n not in GAUGES
               and re.sub(r"_(bucket|sum|count)$", "", n) not in HISTOGRAMS}
    assert not unknown, f"gateway metrics this test does not know: {sorted(unknown)}"
    for h in HISTOGRAMS:
        assert {h + "_bucket", h + "_sum", h + "_count"} <= names, h


def test_histogram_sample_counts(run):
    want = expected_histogram_counts(run.cases)
    assert want["gen_ai_server_time_to_first_token_ms"], "the mix has streams"
    for h in HISTOGRAMS:
        got = run.delta(h + "_count")
        assert got == want[h], f"{h}_count deltas\ngot:\n{fmt(got)}\nwant:\n{fmt(want[h])}"


def _observed_values(run) -> dict:
    """{(histogram, labels): [values]} the gateway must have recorded, from the recordings (token
    counts) and from the access log (latencies: the same record feeds both)."""
    vals = collections.defaultdict(list)
    for c in run.served:
        ml = labels(gen_ai_provider_name=c.provider, gen_ai_request_model=c.model)
        line = run.log[c.request_id]
        vals[("gen_ai_server_request_duration_ms", ml)].append(int(line["duration_ms"]))
        if c.stream:
            ttft = int(line["ttft_ms"])
            vals[("gen_ai_server_time_to_first_token_ms", ml)].append(ttft)
            vals[("gen_ai_server_time_per_output_token_ms", ml)].append(
                (int(line["duration_ms"]) - ttft) // (c.usage["output"] - 1))
        for ty in ("input", "output"):
            vals[("switchyard_request_tokens", ml | {("gen_ai_token_type", ty)})].append(
                c.usage[ty])
    return vals


def test_histogram_buckets_hold_the_recorded_values(run):
    """Each `le` bucket moved by the number of recorded values below it. Envoy's histograms keep
    two significant digits, so bounds within 15% of a value (and below 1) are not judged."""
    checked = 0
    for (h, ls), values in _observed_values(run).items():
        buckets = bucket_deltas(run.before, run.after, h)
        les = sorted(le for (k, le) in buckets if k == ls)
        assert les, f"{h}{dict(ls)}: no buckets"
        for le in les:
            if le < 1 or any(abs(v - le) <= 0.15 * le for v in values):
                continue
            want = sum(1 for v in values if v <= le)
            assert buckets[(ls, le)] == want, (h, dict(ls), le, values, buckets[(ls, le)])
            checked += 1
    assert checked > 50


# ==================================================================================================
# the access log


def _int(v) -> int:
    assert isinstance(v, str) and v.isdigit(), v
    return int(v)


def expected_log_line(c: Case, gateway) -> dict:
    """Every field of demo.yaml's json_format: an exact value, or a check (callable)."""
    mock_port = {"openai": gateway.mocks.openai_port, "anthropic": gateway.mocks.anthropic_port}
    rejected = c.rejected
    n = lambda k: str(c.usage[k])  # noqa: E731
    start_ok = lambda v: c.t_start_ms - 5 <= _int(v) <= c.t_end_ms  # noqa: E731
    return {
        # Envoy's own
        "time": lambda v: abs(datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1000
                              - c.t_start_ms) <= 1000,
        "method": "POST",
        "response_code": c.status,
        "response_flags": "-",
        "upstream_host": None if rejected else f"127.0.0.1:{mock_port[c.provider]}",
        "envoy_duration_ms": lambda v: isinstance(v, int) and 0 <= v <= c.t_end_ms - c.t_start_ms + 5,
        # the gateway's
        "request_id": c.request_id,
        "start_time_ms": start_ok,
        "operation": "chat",
        "key_id": None,  # the demo configuration has no virtual keys
        "team": None,
        "route": c.route,
        "requested_model": None if c.raw_body is not None else c.model,
        "response_model": c.response_model,
        "backend": c.backend,
        "provider": c.provider,
        "attempts": str(c.attempts),
        "failover": "true" if c.failover else "false",
        "status": str(c.status),
        "error_type": c.error["type"] if rejected else None,
        "error_code": c.error["code"] if rejected else None,
        "rejection": "validation" if rejected else None,
        "stream": "true" if c.stream and not rejected else "false",
        "input_tokens": n("input"),
        "output_tokens": n("output"),
        "cached_input_tokens": n("cached_input"),
        "cache_creation_tokens": n("cache_creation"),
        "reasoning_tokens": n("reasoning"),
        "cost_micros": None,  # no prices in the demo configuration
        "duration_ms": lambda v: 0 <= _int(v) <= c.t_end_ms - c.t_start_ms + 2,
        "ttfb_ms": None if rejected else (lambda v: 0 <= _int(v) <= c.t_end_ms - c.t_start_ms + 2),
        "ttft_ms": (lambda v: 0 <= _int(v) <= c.t_end_ms - c.t_start_ms + 2) if c.stream and not rejected
        else None,
        # routing (README "Routing"): these requests use none of it, so every field is null
        **{f: None for f in ("routing_rule", "canary_arm", "skipped_candidates", "first_token_timeout_ms",
                             "hedge", "deadlines_fired", "winner_attempt", "winner_ttft_ms")},
    }


def test_access_log_has_every_field_of_every_request(run, gateway):
    fields = json_format_fields(gateway.config_path)
    problems = []
    for c in run.cases:
        line = run.log[c.request_id]
        want = expected_log_line(c, gateway)
        assert set(want) == set(fields), \
            f"the test checks {sorted(set(want) ^ set(fields))} differently from the json_format"
        assert set(line) == set(fields), (c.name, sorted(set(line) ^ set(fields)))
        for k, w in want.items():
            ok = w(line[k]) if callable(w) else line[k] == w
            if not ok:
                problems.append(f"{c.name}.{k} = {line[k]!r}, want {'check ' if callable(w) else ''}"
                                f"{w if not callable(w) else ''}")
    assert not problems, "\n".join(problems)


def test_access_log_timings_are_consistent(run):
    for c in run.served:
        line = run.log[c.request_id]
        d, ttfb = _int(line["duration_ms"]), _int(line["ttfb_ms"])
        assert ttfb <= d, (c.name, line)
        # the filter's clock and Envoy's agree on how long the request took
        assert abs(d - line["envoy_duration_ms"]) <= 50, (c.name, line)
        if c.stream:
            assert ttfb <= _int(line["ttft_ms"]) <= d, (c.name, line)
        else:
            assert line["ttft_ms"] is None


def test_failover_lines_show_two_attempts_on_the_second_backend(run, gateway):
    for c in run.cases:
        if not c.failover:
            continue
        line = run.log[c.request_id]
        first = endpoints(gateway, f"route_{c.route}")[0]["backend"]
        assert line["attempts"] == "2" and line["failover"] == "true"
        assert line["backend"] == c.backend != first
        assert line["response_model"] == c.response_model


def test_logs_hold_no_credential_and_no_prompt(run, gateway):
    flush_access_log(gateway)
    access = Path(gateway.access_log_path).read_text(encoding="utf-8")
    envoy_log = gateway.log_since(0)
    answers = [rec.openai_text()["choices"][0]["message"]["content"][:40],
               "".join(b["text"] for b in rec.anthropic_text()["content"] if b["type"] == "text")]
    for where, text in (("access log", access), ("Envoy log", envoy_log)):
        for secret in SECRETS:
            assert secret not in text, f"{secret} in the {where}"
        assert "telemetry-prompt-" not in text, f"prompt text in the {where}"
        for a in answers:
            assert a not in text, f"completion text in the {where}"
    assert run.prompt.split()[-1] in json.dumps([c.payload(run.prompt) for c in run.cases])


# ==================================================================================================
# served-by response headers


def test_served_by_headers(run):
    for c in run.cases:
        if c.rejected:
            assert not [k for k in c.headers if k.startswith("x-switchyard-")], (c.name, c.headers)
            continue
        assert c.headers.get("x-switchyard-backend") == c.backend, (c.name, c.headers)
        assert c.headers.get("x-switchyard-model") == c.served_model, (c.name, c.headers)
        assert c.headers.get("x-switchyard-attempts") == str(c.attempts), (c.name, c.headers)


# ==================================================================================================
# tracing (envoy/tracing.yaml) and the served-by switch, on a second Envoy


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _fields(buf: bytes):
    """(field number, value) pairs of one protobuf message (bytes for length-delimited fields)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(buf, i)
        elif wire == 1:
            v, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wire == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        yield num, v


def otlp_spans(body: bytes) -> list[dict]:
    """Span attributes of an OTLP ExportTraceServiceRequest (protobuf): resource_spans(1) >
    scope_spans(2) > spans(2) > attributes(9) = KeyValue{key(1), value(2): AnyValue{string(1)}}."""
    spans = []
    for n1, rs in _fields(body):
        for n2, ss in (_fields(rs) if n1 == 1 else ()):
            for n3, span in (_fields(ss) if n2 == 2 else ()):
                if n3 != 2:
                    continue
                attrs = {}
                for n4, kv in _fields(span):
                    if n4 == 9:
                        d = dict(_fields(kv))
                        anyv = dict(_fields(d.get(2, b"")))
                        attrs[d[1].decode()] = anyv[1].decode() if 1 in anyv else anyv
                spans.append(attrs)
    return spans


class OtlpHttpCollector:
    """A stdlib OTLP/HTTP trace receiver: keeps every POSTed protobuf body."""

    def __init__(self):
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        data += self.rfile.read(size)
                        self.rfile.readline()
                else:
                    data = self.rfile.read(int(self.headers.get("content-length") or 0))
                bodies.append((self.path, self.headers.get("content-type"), data))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[dict]:
        return [s for _, _, b in list(self.bodies) for s in otlp_spans(b)]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def _hcm(doc: dict) -> dict:
    return next(n for n in _walk(doc) if isinstance(n, dict)
                and n.get("@type", "").endswith("HttpConnectionManager"))


def tracing_test_config(collector_port: int) -> str:
    """envoy/tracing.yaml for this test: OTLP over HTTP to the stdlib collector (same tracer, same
    custom tags; only the transport differs), spans flushed at once, served-by headers off."""
    doc = yaml.safe_load((REPO / "envoy" / "tracing.yaml").read_text(encoding="utf-8"))
    tc = _hcm(doc)["tracing"]["provider"]["typed_config"]
    assert "grpc_service" in tc
    del tc["grpc_service"]
    tc["http_service"] = {"http_uri": {"uri": f"http://127.0.0.1:{collector_port}/v1/traces",
                                       "cluster": "otlp_http", "timeout": "2s"}}
    doc["static_resources"]["clusters"].append({
        "name": "otlp_http", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "otlp_http", "endpoints": [{"lb_endpoints": [{
            "endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                        "port_value": collector_port}}}}]}]}})
    doc["layered_runtime"] = {"layers": [{"name": "static", "static_layer": {
        "tracing.opentelemetry.flush_interval_ms": 100, "tracing.opentelemetry.min_flush_spans": 1}}]}
    for node in _walk(doc):
        value = node.get("configuration", {}).get("value") if isinstance(node, dict) else None
        if isinstance(value, str) and json.loads(value).get("role") == "gateway":
            cfg = json.loads(value)
            cfg["expose_served_by"] = False
            node["configuration"]["value"] = json.dumps(cfg)
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.fixture(scope="module")
def traced_gateway(mocks, tmp_path_factory, built_wasm):
    wasm = built_wasm
    workdir = tmp_path_factory.mktemp("tracing")
    collector = OtlpHttpCollector()
    config = workdir / "tracing-test.yaml"
    config.write_text(tracing_test_config(collector.port), encoding="utf-8")
    gw = harness.Gateway(workdir, mocks, config_src=config)
    try:
        gw.start(wasm)
        yield gw, collector
        assert gw.alive() and not gw.wasm_failures() and not gw.wasm_crashes()
    finally:
        gw.stop()
        collector.stop()


TAG_FIELDS = {
    "gen_ai.operation.name": "operation", "gen_ai.provider.name": "provider",
    "gen_ai.request.model": "requested_model", "gen_ai.response.model": "response_model",
    "gen_ai.usage.input_tokens": "input_tokens", "gen_ai.usage.output_tokens": "output_tokens",
    "gen_ai.usage.cache_read.input_tokens": "cached_input_tokens",
    "gen_ai.usage.cache_creation.input_tokens": "cache_creation_tokens",
    "gen_ai.usage.reasoning.output_tokens": "reasoning_tokens", "error.type": "error_type",
}


def tracing_tags() -> dict:
    """{span tag: access-log field} of envoy/tracing.yaml's custom_tags."""
    doc = yaml.safe_load((REPO / "envoy" / "tracing.yaml").read_text(encoding="utf-8"))
    out = {}
    for t in _hcm(doc)["tracing"]["custom_tags"]:
        m = re.fullmatch(r"%FILTER_STATE\(wasm\.switchyard\.(\w+):PLAIN\)%", t["value"])
        assert m, t
        out[t["tag"]] = m.group(1)
    return out


def test_tracing_config_uses_genai_names_and_covers_the_log(gateway):
    tags = tracing_tags()
    for tag, field in TAG_FIELDS.items():
        assert tags.get(tag) == field, (tag, tags.get(tag))
    log_fields = {f for f in json_format_fields(gateway.config_path)
                  if f not in ("time", "method", "response_code", "response_flags",
                               "upstream_host", "envoy_duration_ms", "start_time_ms")}
    assert set(tags.values()) == log_fields


def test_spans_carry_the_gateway_fields_and_served_by_can_be_switched_off(traced_gateway):
    gw, collector = traced_gateway
    backends = plugin_config(gw, "backend")["backends"]
    cases = [Case("trace-openai-stream", "gpt-4o-mini", stream=True, include_usage=True),
             Case("trace-failover", "gpt-4o-mini", mock={"x-mock-openai": "503"},
                  served_priority=1),
             Case("trace-anthropic", "claude-haiku"),
             Case("trace-unknown", f"no-such-model-{uuid.uuid4().hex[:8]}")]
    prompt = f"telemetry-prompt-{uuid.uuid4().hex}"
    for c in cases:
        c.expect(gw, backends)
        c.run(gw, prompt)
        # expose_served_by: false -> no x-switchyard-* header on any answer
        assert not [k for k in c.headers if k.startswith("x-switchyard-")], (c.name, c.headers)
    log = access_log_lines(gw, [c.request_id for c in cases])

    deadline = time.monotonic() + 20
    while True:
        spans = {s.get("switchyard.request_id"): s for s in collector.spans()}
        if all(c.request_id in spans for c in cases) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    exporter_stats = {k: v for k, v in gw.stats().items() if "otlp_http" in k or "opentelemetry" in k}
    assert collector.bodies, f"the collector got nothing; Envoy's exporter stats: {exporter_stats}"
    assert all(ct == "application/x-protobuf" for _, ct, _ in collector.bodies)
    tags = tracing_tags()
    for c in cases:
        span = spans.get(c.request_id)
        assert span is not None, f"no span for {c.name}"
        line = log[c.request_id]
        for tag, field in tags.items():
            # the span has the log's value; a field the request lacks is no attribute at all
            assert span.get(tag) == line[field], (c.name, tag, span.get(tag), line[field])
        assert span["gen_ai.request.model"] == c.model
        assert span.get("gen_ai.provider.name") == c.provider
        values = json.dumps(span)
        for secret in SECRETS + (prompt,):
            assert secret not in values, (c.name, secret)
    assert spans[cases[1].request_id]["switchyard.attempts"] == "2"
    assert spans[cases[1].request_id]["switchyard.failover"] == "true"
    assert spans[cases[3].request_id]["switchyard.rejection"] == "validation"
    assert "gen_ai.usage.input_tokens" in spans[cases[0].request_id]


# ==================================================================================================
# every shipped Envoy configuration loads


def test_tracing_yaml_has_the_demo_telemetry():
    """envoy/tracing.yaml is a self-contained example (the demo's two original routes); its metric
    labels and access log must stay those of envoy/demo.yaml."""
    demo = yaml.safe_load((REPO / "envoy" / "demo.yaml").read_text(encoding="utf-8"))
    traced = yaml.safe_load((REPO / "envoy" / "tracing.yaml").read_text(encoding="utf-8"))
    assert traced["stats_config"] == demo["stats_config"]
    assert traced.get("stats_flush_interval") == demo.get("stats_flush_interval")
    assert _hcm(traced)["access_log"] == _hcm(demo)["access_log"]
    assert "tracing" not in _hcm(demo) and "tracing" in _hcm(traced)


@pytest.fixture(scope="module")
def built_wasm() -> Path:
    return harness.build_wasm()


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "envoy").glob("*.yaml")))
def test_envoy_config_validates(config, built_wasm):
    wasm = built_wasm
    text = (REPO / "envoy" / config).read_text(encoding="utf-8")
    if config == "fleet.yaml":
        # A fragment, not a bootstrap: validate it where the renderer puts it (examples/demo.yaml
        # with a fleet ledger and a rate limit service).
        doc = harness.demo_gateway_file()
        doc["auth"] = {"ledger": "fleet", "keys": [{"id": "k", "sha256": "0" * 64, "limits": {"rpm": 1}}]}
        doc["fleet"] = {"rate_limit_service": "127.0.0.1:8081"}
        text = harness.render_gateway_file(doc)
        assert "envoy.filters.http.ratelimit.budget" in text and "switchyard_rls" in text
    text = re.sub(r"(?<![\w/.-])" + re.escape(harness.WASM_REL), str(wasm), text)
    envoy = str(REPO / ".venv" / "bin" / "envoy-bin")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / config
        path.write_text(text, encoding="utf-8")
        r = subprocess.run([envoy, "--mode", "validate", "-c", str(path), "--log-level", "warn"],
                           cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=120)
    out = r.stdout.decode("utf-8", errors="replace")
    assert r.returncode == 0 and "OK" in out.splitlines()[-1], out[-3000:]
