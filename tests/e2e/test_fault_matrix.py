"""The fault matrix, end to end: every provider schema x stream / non-stream x every provider fault,
through a real Envoy 1.40 running the built filter, with the official `openai` SDK as the client.

The cells and their expected outcomes are data (``fault_matrix.py``, rendered into
``tests/e2e/README.md``). This module runs each cell against its own Envoy, whose configuration is
derived from ``envoy/demo.yaml`` (same listener, filters, access log and retry policy) with one
route per schema: priority 0 is that schema's mock told to fail (``x-mock-*`` scenario headers),
priority 1 a healthy mock; the ``-refused`` routes' priority 0 is a port nothing listens on. The
per-try and route timeouts are short so that stalls and drips are bounded.

For each cell it checks what the client got, what was counted (served-by headers, the mocks'
request logs, the access-log record, and the exact deltas of the gateway's Prometheus series), and
that the VM neither failed nor logged a crash.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
import urllib.parse
import uuid
from pathlib import Path

import openai
import pytest
import yaml

import fault_matrix as fm
import harness
import recorded as rec

KEY = "sk-fault-matrix-client-key"
HELLO = [{"role": "user", "content": "Hello!"}]

# Timeouts of the matrix's routes (the demo's are minutes long). A stall or a drip ends at one of
# them; the mocks stall longer than the per-try timeout.
PER_TRY_TIMEOUT_S = 1.5
PER_TRY_IDLE_TIMEOUT_S = 1.0
ROUTE_TIMEOUT_S = 4.0
STALL_SECONDS = 4.0
# The backend filter's `max_response_body_bytes` (largest whole answer it holds) in the matrix, and
# the text an oversize whole answer carries.
MAX_RESPONSE_BYTES = 256 * 1024
OVERSIZE_BYTES = 512 * 1024
# An oversize stream: one event above the stream decoders' bound on a single event (4 MiB for SSE
# and NDJSON, src/stream/sse.rs and ndjson.rs; a Bedrock frame of this size passes its decoder, then
# the gateway's SSE tap bounds the translated event).
OVERSIZE_EVENT_BYTES = 5 * 1024 * 1024

# Prices of every model of the matrix (US dollars per token): every cost is an exact integer of
# micro-dollars, prompt x 1 + completion x 2.
PRICE_IN, PRICE_OUT = 1e-06, 2e-06

GATEWAY_PREFIXES = ("gen_ai_", "switchyard_")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


# ==================================================================================================
# the matrix's Envoy


def route_name(schema: str, fault: str) -> str:
    return f"fm-{schema}-refused" if fault == "refused" else f"fm-{schema}"


class MatrixGateway(harness.Gateway):
    """envoy/demo.yaml's listener, filters and retry policy; the matrix's routes and clusters."""

    dead_port: int = 0

    def render(self) -> str:
        text = super().render()
        doc = yaml.safe_load(text)
        hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"]
        vhost = hcm["route_config"]["virtual_hosts"][0]
        demo_routes = vhost["routes"]
        retry = copy.deepcopy(next(r["route"]["retry_policy"] for r in demo_routes
                                   if "route" in r and "retry_policy" in r["route"]))
        retry["per_try_timeout"] = f"{PER_TRY_TIMEOUT_S}s"
        retry["per_try_idle_timeout"] = f"{PER_TRY_IDLE_TIMEOUT_S}s"
        catch_all = [r for r in demo_routes if "direct_response" in r]
        clusters = doc["static_resources"]["clusters"]
        template = copy.deepcopy(next(c for c in clusters if c["name"] == "route_gpt-4o-mini"))
        backend_cfg = template["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"][0][
            "typed_config"]["config"]["configuration"]
        plugin = json.loads(backend_cfg["value"])
        assert plugin["role"] == "backend"
        plugin["max_response_body_bytes"] = MAX_RESPONSE_BYTES
        backend_cfg["value"] = json.dumps(plugin)
        port = {"openai": self.mocks.openai_port, "anthropic": self.mocks.anthropic_port,
                "more": self.mocks.more_port}

        def endpoint(p: int, backend: str, model: str, priority: int) -> dict:
            return {"priority": priority, "lb_endpoints": [{
                "endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                            "port_value": p}}},
                "metadata": {"filter_metadata": {"switchyard": {"backend": backend,
                                                                "model": model}}}}]}

        routes, new_clusters, models = [], [], []
        for s in fm.SCHEMAS:
            fb_backend, fb_model, fb_mock = fm.fallback(s.name)
            for name, faulty_port in ((f"fm-{s.name}", port[s.mock]),
                                      (f"fm-{s.name}-refused", self.dead_port)):
                models.append({"name": name, "owned_by": "fault-matrix"})
                routes.append({"match": {"prefix": "/", "headers": [{
                    "name": "x-switchyard-route", "string_match": {"exact": name}}]},
                    "route": {"cluster": f"route_{name}", "timeout": f"{ROUTE_TIMEOUT_S}s",
                              "idle_timeout": f"{ROUTE_TIMEOUT_S}s", "retry_policy": retry}})
                c = copy.deepcopy(template)
                c["name"] = f"route_{name}"
                c["load_assignment"] = {"cluster_name": c["name"], "endpoints": [
                    endpoint(faulty_port, s.backend, s.model, 0),
                    endpoint(port[fb_mock], fb_backend, fb_model, 1)]}
                new_clusters.append(c)
        vhost["routes"] = routes + catch_all
        doc["static_resources"]["clusters"] = new_clusters
        text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
        priced = sorted({s.model for s in fm.SCHEMAS} | {fm.fallback(s.name)[1] for s in fm.SCHEMAS})
        return harness.patch_gateway_config(text, {
            "models": models,
            "auth": {
                "keys": [{"id": "matrix", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
                "pricing": {"builtin": False, "models": {
                    m: {"input_cost_per_token": PRICE_IN, "output_cost_per_token": PRICE_OUT}
                    for m in priced}},
            },
        })


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fault-matrix")
    wasm = harness.build_wasm()
    mocks = harness.Mocks(workdir).start()
    gw = MatrixGateway(workdir, mocks)
    gw.dead_port = harness.free_ports(1)[0]
    gw.envoy_args = ["--file-flush-interval-msec", "50"]
    try:
        gw.start(wasm)
    except BaseException:
        gw.stop()
        mocks.stop()
        raise
    client = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, timeout=30)
    problems: list[str] = []
    try:
        yield gw, client
        problems = gw.problems()
    finally:
        client.close()
        gw.stop()
        mocks.stop()
    assert not problems, "end-of-module gateway check failed:\n  " + "\n  ".join(problems) \
        + f"\n--- Envoy log tail ---\n{gw.log_tail(60)}"


# ==================================================================================================
# observations


def scrape(gw) -> dict:
    out = {}
    status, _, body = harness.http("GET", gw.admin_url + "/stats/prometheus?filter=" +
                                   urllib.parse.quote("(switchyard|gen_ai)"))
    assert status == 200
    for line in body.decode().splitlines():
        if not line.startswith(GATEWAY_PREFIXES):
            continue
        m = _SAMPLE.match(line)
        if not m or m.group(1).endswith(("_bucket", "_sum", "_count")):
            continue
        out[(m.group(1), frozenset(_LABEL.findall(m.group(2) or "")))] = float(m.group(3))
    return out


def deltas(before: dict, after: dict, name: str) -> dict:
    out = {}
    for (n, ls), v in after.items():
        if n == name and v - before.get((n, ls), 0.0):
            out[ls] = v - before.get((n, ls), 0.0)
    return out


def access_log_line(gw, request_id: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = Path(gw.access_log_path).read_text(encoding="utf-8")
        except OSError:
            text = ""
        for line in text.splitlines():
            if request_id in line:
                doc = json.loads(line)
                if doc.get("request_id") == request_id:
                    return doc
        if time.monotonic() > deadline:
            raise AssertionError(f"no access-log line for {request_id}")
        harness.http("POST", gw.admin_url + "/reopen_logs")
        time.sleep(0.05)


class Observed:
    """What the client saw of one request."""

    def __init__(self):
        self.kind = None        # "ok" | "status-error" | "stream-error-event" | "stream-abort" | "connection-error"
        self.status = None
        self.headers: dict = {}
        self.text = ""
        self.chunks: list[dict] = []
        self.error = None       # the OpenAI error object (status error or stream error event)
        self.exception = None
        self.completion = None
        self.seconds = 0.0

    def __repr__(self):
        return (f"Observed(kind={self.kind}, status={self.status}, text={self.text[:80]!r}, "
                f"error={self.error!r}, exception={self.exception!r}, chunks={len(self.chunks)}, "
                f"headers={ {k: v for k, v in self.headers.items() if k.startswith('x-switchyard')} }, "
                f"seconds={self.seconds:.2f})")


def call(client, model: str, stream: bool, headers: dict) -> Observed:
    o = Observed()
    t0 = time.monotonic()
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=HELLO, stream=stream, extra_headers=headers)
        o.status = raw.status_code
        o.headers = {k.lower(): v for k, v in raw.headers.items()}
        if not stream:
            o.completion = raw.parse()
            o.text = o.completion.choices[0].message.content or ""
            o.kind = "ok"
        else:
            try:
                for chunk in raw.parse():
                    o.chunks.append(chunk.to_dict())
                    for ch in chunk.choices or []:
                        o.text += ch.delta.content or ""
                o.kind = "ok"
            except openai.APIStatusError:
                raise
            except (openai.APIConnectionError, openai.APITimeoutError) as e:
                o.kind = "stream-abort"
                o.exception = e
            except openai.APIError as e:  # an error event inside the stream
                o.kind = "stream-error-event"
                o.error = e.body
                o.exception = e
            except Exception as e:  # noqa: BLE001 - the transport's error for a cut connection
                o.kind = "stream-abort"
                o.exception = e
    except openai.APIStatusError as e:
        o.kind = "status-error"
        o.status = e.status_code
        o.headers = {k.lower(): v for k, v in e.response.headers.items()}
        o.error = e.body
        o.exception = e
    except (openai.APIConnectionError, openai.APITimeoutError) as e:
        o.kind = "connection-error"
        o.exception = e
    o.seconds = time.monotonic() - t0
    return o


def fallback_answer(schema: str, stream: bool) -> tuple[str, dict]:
    """(text, usage) the healthy endpoint's recording gives through the gateway."""
    mock = fm.fallback(schema)[2]
    if mock == "openai" and not stream:
        doc = rec.openai_text()
        u = doc["usage"]
        return doc["choices"][0]["message"]["content"], {
            "input": u["prompt_tokens"], "output": u["completion_tokens"],
            "reasoning": (u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0,
            "cached_input": (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0}
    if mock == "openai":
        text = rec.openai_stream_summary(rec.openai_stream_text_chunks())["text"]
        u = rec.openai_stream_usage_chunk()["usage"]
        return text, {
            "input": u["prompt_tokens"], "output": u["completion_tokens"],
            "reasoning": (u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0,
            "cached_input": (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0}
    if not stream:
        doc = rec.anthropic_text()
        u = rec.openai_usage_from_anthropic(doc["usage"])
        return doc["content"][0]["text"], {"input": u["prompt_tokens"],
                                           "output": u["completion_tokens"]}
    folded = rec.anthropic_stream_text()
    u = rec.openai_usage_from_anthropic(folded["usage"])
    return folded["text"], {"input": u["prompt_tokens"], "output": u["completion_tokens"]}


def mock_requests(gw, schema: fm.Schema) -> list[dict]:
    reqs = gw.mock_requests(schema.mock)
    if schema.mock == "more":
        reqs = [r for r in reqs if r.get("provider") == schema.name]
    return reqs


# ==================================================================================================
# the cells


CELLS = fm.cells()


def cell_id(c) -> str:
    schema, fault, stream, _ = c
    return f"{schema}-{fault}-{'stream' if stream else 'whole'}"


@pytest.mark.parametrize("cell", CELLS, ids=[cell_id(c) for c in CELLS])
def test_cell(matrix, cell):
    gw, client = matrix
    schema_name, fault_name, stream, outcome = cell
    schema, fault = fm.SCHEMA[schema_name], fm.FAULT[fault_name]
    route = route_name(schema_name, fault_name)
    fb_backend, fb_model, fb_mock = fm.fallback(schema_name)
    rid = f"fm-{cell_id(cell)}-{uuid.uuid4().hex[:12]}"
    headers = {"x-request-id": rid, "x-mock-key": rid}
    if fault.scenario:
        headers.update(schema.scenario_header(fault.scenario))
        headers["x-mock-stall-seconds"] = str(STALL_SECONDS)
        headers["x-mock-size"] = str(OVERSIZE_EVENT_BYTES if stream else OVERSIZE_BYTES)
        headers.update(dict(fault.mock_headers))

    gw.clear_mocks()
    offset = gw.log_offset()
    before = scrape(gw)
    o = call(client, route, stream, headers)
    log = access_log_line(gw, rid)
    deadline = time.monotonic() + 5
    while True:
        after = scrape(gw)
        if sum(deltas(before, after, "switchyard_requests").values()) >= 1 \
                or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    faulty_reqs = mock_requests(gw, schema) if fault_name != "refused" else []
    fb_reqs = [r for r in gw.mock_requests(fb_mock)
               if r["headers"].get("x-request-id") == rid or r["headers"].get("x-mock-key") == rid]
    ctx = (f"\n{o!r}\nlog={json.dumps(log)}\nfaulty requests={len(faulty_reqs)} "
           f"fallback requests={len(fb_reqs)}")

    requests_delta = deltas(before, after, "switchyard_requests")
    tokens_delta = {dict(k)["gen_ai_token_type"]: v
                    for k, v in deltas(before, after, "gen_ai_client_token_usage").items()}
    cost_delta = sum(deltas(before, after, "switchyard_cost_micros").values())
    failovers_delta = deltas(before, after, "switchyard_failovers")
    assert sum(requests_delta.values()) == 1, f"switchyard_requests moved by {requests_delta}{ctx}"
    (req_labels,) = [dict(k) for k in requests_delta]

    # the VM survived this cell
    assert not gw.wasm_crashes(since=offset), gw.wasm_crashes(since=offset)
    assert not harness.wasm_failure_stats(gw.stats("wasm")), gw.stats("wasm")

    # what was counted always agrees between the access log and the metrics
    logged_tokens = {k: int(log[f"{k}_tokens"] or 0) for k in
                     ("input", "output", "cached_input", "reasoning")}
    assert {k: v for k, v in tokens_delta.items() if k in logged_tokens} == \
        {k: v for k, v in logged_tokens.items() if v}, f"tokens: metric {tokens_delta}{ctx}"
    assert cost_delta == int(log["cost_micros"] or 0), ctx
    assert log["route"] == route, ctx
    # every cell is charged for exactly the tokens it counts (prices: 1 and 2 micro-dollars)
    assert cost_delta == logged_tokens["input"] + 2 * logged_tokens["output"], ctx

    if outcome == fm.FAILOVER:
        text, usage = fallback_answer(schema_name, stream)
        assert o.kind == "ok" and o.status == 200, ctx
        assert o.text == text, ctx
        assert o.headers.get("x-switchyard-attempts") == "2", ctx
        assert o.headers.get("x-switchyard-backend") == fb_backend, ctx
        retry_after = dict(fault.mock_headers).get("x-mock-retry-after")
        if retry_after:
            assert o.seconds < float(retry_after), f"the failover waited for retry-after{ctx}"
        # the faulty backend saw exactly one request (a refused credential is never sent again)
        if fault_name != "refused":
            assert len(faulty_reqs) == 1, ctx
        assert len(fb_reqs) == 1, ctx
        assert log["attempts"] == "2" and log["failover"] == "true", ctx
        assert log["backend"] == fb_backend and log["status"] == "200", ctx
        assert log["error_type"] is None, ctx
        assert req_labels["backend"] == fb_backend and req_labels["status_class"] == "2xx" \
            and req_labels["error_type"] == "none", ctx
        assert failovers_delta == {frozenset({("route", route), ("backend", fb_backend)}): 1}, ctx
        want_tokens = {k: v for k, v in usage.items() if v}
        assert {k: v for k, v in tokens_delta.items()} == want_tokens, ctx
        assert cost_delta == usage["input"] * 1 + usage["output"] * 2, ctx
    elif outcome == fm.ANSWER:
        assert o.kind == "ok" and o.status == 200, ctx
        assert len(o.text) >= (OVERSIZE_EVENT_BYTES if stream else OVERSIZE_BYTES), ctx
        assert o.headers.get("x-switchyard-attempts") == "1", ctx
        assert o.headers.get("x-switchyard-backend") == schema.backend, ctx
        assert len(faulty_reqs) == 1 and not fb_reqs, ctx
        assert log["attempts"] == "1" and log["error_type"] is None, ctx
        assert req_labels["status_class"] == "2xx" and req_labels["error_type"] == "none", ctx
        assert not failovers_delta, ctx
        assert logged_tokens["output"] > 0 and cost_delta > 0, ctx
    elif outcome in (fm.STREAM_ERROR, fm.STREAM_ABORT):
        assert o.status == 200, ctx
        if outcome == fm.STREAM_ERROR:
            assert o.kind == "stream-error-event", ctx
            assert isinstance(o.error, dict) and o.error.get("message"), ctx
        else:
            assert o.kind in ("stream-abort", "stream-error-event"), ctx
        assert o.headers.get("x-switchyard-attempts") == "1", ctx
        assert o.headers.get("x-switchyard-backend") == schema.backend, ctx
        assert len(faulty_reqs) == 1 and not fb_reqs, ctx
        assert log["attempts"] == "1" and log["backend"] == schema.backend, ctx
        assert log["error_type"] == "stream_error", ctx
        assert req_labels["error_type"] == "stream_error", ctx
        assert not failovers_delta, ctx
        # never lost accounting: what was delivered is counted, and charged
        if o.text:
            assert logged_tokens["output"] > 0, ctx
        assert cost_delta > 0, ctx
    elif outcome == fm.ERROR_502:
        assert o.kind == "status-error" and o.status == 502, ctx
        assert isinstance(o.error, dict) and o.error.get("message") and "type" in o.error, ctx
        assert cost_delta == 0, ctx
    else:
        raise AssertionError(f"unknown outcome {outcome}")


def test_readme_table_is_generated_from_the_data():
    text = fm.README.read_text(encoding="utf-8")
    assert fm.readme_with_table(text) == text, \
        "tests/e2e/README.md's fault matrix differs from fault_matrix.py: run " \
        "python tests/e2e/fault_matrix.py --write-readme"


def test_a_client_that_goes_away_is_not_a_provider_fault(matrix):
    """The other side of the stream-error classification: a stream the CLIENT cuts (here after the
    first chunk of a slow stream) is `client_closed`, while the cells above, cut by the provider or
    by a timeout, are `stream_error`."""
    gw, client = matrix
    rid = f"fm-client-cut-{uuid.uuid4().hex[:12]}"
    raw = client.chat.completions.with_raw_response.create(
        model="fm-openai", messages=HELLO, stream=True,
        extra_headers={"x-request-id": rid, "x-mock-openai": "slow-stream"})
    stream = raw.parse()
    first = next(iter(stream))
    assert first.choices
    stream.close()
    log = access_log_line(gw, rid)
    assert log["error_type"] == "client_closed", log
    assert log["status"] == "200" and log["attempts"] == "1", log


def test_a_refused_credential_is_never_sent_twice(matrix):
    """Both candidates of the route refuse their credential (401): the retry policy's third attempt
    goes back to priority 0, where the backend filter answers with that provider's refusal instead
    of sending the refused credential again. Each provider saw exactly one request."""
    gw, client = matrix
    rid = f"fm-refused-twice-{uuid.uuid4().hex[:12]}"
    gw.clear_mocks()
    with pytest.raises(openai.AuthenticationError) as exc:
        client.chat.completions.create(
            model="fm-openai", messages=HELLO,
            extra_headers={"x-request-id": rid, "x-mock-openai": "401", "x-mock-anthropic": "401"})
    assert exc.value.status_code == 401
    # the answer is the refusal of the provider the last attempt was for, replayed without asking
    assert exc.value.body["message"] == "mock provider error 401", exc.value.body
    assert len(gw.mock_requests("openai")) == 1
    assert len(gw.mock_requests("anthropic")) == 1
    log = access_log_line(gw, rid)
    assert log["attempts"] == "2", log
    assert log["status"] == "401", log


def test_a_429_from_every_candidate_reaches_the_client_with_its_retry_after(matrix):
    """Both candidates are rate-limited (429, `retry-after: 2`): the retries do not wait for it (the
    next candidate is tried at once), and the client gets an OpenAI-shaped 429 that still carries
    the provider's `retry-after`, which the SDKs honour."""
    gw, client = matrix
    rid = f"fm-429-everywhere-{uuid.uuid4().hex[:12]}"
    t0 = time.monotonic()
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(
            model="fm-openai", messages=HELLO,
            extra_headers={"x-request-id": rid, "x-mock-openai": "429", "x-mock-anthropic": "429",
                           "x-mock-retry-after": "2"})
    assert time.monotonic() - t0 < 2
    assert exc.value.status_code == 429
    assert exc.value.response.headers.get("retry-after") == "2"
    assert exc.value.body["code"] == "rate_limit_exceeded", exc.value.body
    log = access_log_line(gw, rid)
    assert log["attempts"] == "3" and log["status"] == "429", log
