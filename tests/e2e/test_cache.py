"""The exact answer cache and quality sampling (README "Caching", "Quality sampling") through a real
Envoy 1.40, the mock providers and the official ``openai`` SDK.

One gateway: envoy/demo.yaml with virtual keys (teams ``t1`` and ``t2``, one key without a team),
prices, ``cache`` with ``scope: team``, and ``quality_sampling`` for the key ``sampled`` to a sink
cluster whose endpoint is a small HTTP server run by this module (stopped in the last test to play
a dead sink). What the provider saw is asserted on the mocks' request logs.
"""

from __future__ import annotations

import http.server
import json
import math
import threading
import time
import uuid
from pathlib import Path

import openai
import pytest
import yaml

import harness
from keys_gateway import KeysGateway, key_hash
import recorded

PRICE_IN, PRICE_OUT = 0.000001, 0.000002
REPO = Path(__file__).resolve().parents[2]


def K(name: str) -> str:
    return f"sk-sy-cache-{name}"


def key(name: str, **fields) -> dict:
    return {"id": name, "sha256": key_hash(K(name)), **fields}


AUTH = {
    "keys": [
        key("a", team="t1", budget={"amount_usd": 1, "window": "total"}),
        key("b", team="t1"),
        key("c", team="t2"),
        key("d"),
        key("sampled", team="t3"),
        key("plain"),
    ],
    "teams": [{"id": "t1"}, {"id": "t2"}, {"id": "t3"}],
    "pricing": {"builtin": False,
                "models": {"gpt-4o-mini": {"input_cost_per_token": PRICE_IN, "output_cost_per_token": PRICE_OUT,
                                           "max_output_tokens": 1000},
                           "claude-3-5-haiku-latest": {"input_cost_per_token": PRICE_IN, "output_cost_per_token": PRICE_OUT,
                                                       "max_output_tokens": 1000}},
                "aliases": {"claude-haiku": "claude-3-5-haiku-latest"}},
}
CACHE = {"scope": "team", "ttl_seconds": 300, "max_entries": 64, "max_bytes": 4 * 1024 * 1024}
SAMPLING = {"cluster": "quality_sink", "keys": {"sampled": 1.0}, "flush_interval_ms": 100, "timeout_ms": 1000}
LOG_FIELDS = ("cache", "cache_saved_micros")

OPENAI_USAGE = recorded.openai_text()["usage"]
OPENAI_COST = math.ceil((OPENAI_USAGE["prompt_tokens"] * PRICE_IN + OPENAI_USAGE["completion_tokens"] * PRICE_OUT) * 1e6)


class Sink:
    """An evaluation sink: records every POST body it gets."""

    def __init__(self):
        self.bodies: list[tuple[str, dict, bytes]] = []
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n)
                sink.bodies.append((self.path, dict(self.headers), body))
                self.send_response(204)
                self.send_header("content-length", "0")
                # No kept-alive connection outlives stop(): a stopped sink is really gone.
                self.send_header("connection", "close")
                self.close_connection = True
                self.end_headers()

            def log_message(self, *a):
                pass

        self.port = harness.free_ports(1)[0]
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def samples(self) -> list[dict]:
        out = []
        for _, _, body in list(self.bodies):
            for line in body.decode().splitlines():
                if line.strip():
                    out.append(json.loads(line))
        return out

    def wait_for(self, pred, timeout=10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [s for s in self.samples() if pred(s)]
            if found:
                return found
            time.sleep(0.05)
        return []

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class CacheGateway(harness.Gateway):
    sink_port: int = 0

    def render(self) -> str:
        doc = yaml.safe_load(super().render())
        hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        fmt = hcm["access_log"][0]["typed_config"]["log_format"]["json_format"]
        for f in LOG_FIELDS:
            fmt[f] = f"%FILTER_STATE(wasm.switchyard.{f}:PLAIN)%"
        doc["static_resources"]["clusters"].append({
            "name": "quality_sink", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "quality_sink", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.sink_port}}}}]}]}})
        return yaml.safe_dump(doc, sort_keys=False)


@pytest.fixture(scope="module")
def sink():
    s = Sink()
    yield s
    try:
        s.stop()
    except Exception:  # noqa: BLE001 - the dead-sink test stopped it already
        pass


@pytest.fixture(scope="module")
def kg(tmp_path_factory, sink):
    class G(CacheGateway):
        sink_port = sink.port
    try:
        g = KeysGateway.start(tmp_path_factory.mktemp("cache"), AUTH,
                              gateway_config={"cache": CACHE, "quality_sampling": SAMPLING}, gateway_cls=G)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"could not start the cache gateway: {e}", pytrace=False)
    problems: list[str] = []
    try:
        yield g
    finally:
        problems = g.stop()
    if problems:
        pytest.fail("cache gateway end-of-module check failed:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture(autouse=True)
def _guard(request):
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


def client(kg, name: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=kg.base_url, api_key=K(name), max_retries=0, timeout=30)


def ask(prompt: str) -> dict:
    return {"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": prompt}]}


def fresh(label: str) -> str:
    """A prompt no earlier request asked (entries live across tests)."""
    return f"{label} {uuid.uuid4().hex}"


def upstream(kg) -> int:
    return len(kg.mocks.requests("openai")) + len(kg.mocks.requests("anthropic"))


def create(c: openai.OpenAI, body: dict, headers: dict | None = None):
    raw = c.chat.completions.with_raw_response.create(**body, extra_headers=headers or {})
    return raw.headers, raw.parse()


def stream(c: openai.OpenAI, body: dict, headers: dict | None = None, usage: bool = False):
    extra = {"stream_options": {"include_usage": True}} if usage else {}
    raw = c.chat.completions.with_raw_response.create(**body, stream=True, extra_headers=headers or {}, **extra)
    chunks = list(raw.parse())
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    usage_chunks = [ch.usage for ch in chunks if not ch.choices and ch.usage]
    return raw.headers, text, finish, usage_chunks, chunks


def stat(kg, name: str) -> int:
    return sum(v for k, v in kg.gw.stats(name).items() if k.split(";")[0].split(".")[-1] == name)


def log_line(kg, key_id: str, request_id: str) -> dict:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for r in kg.access_log():
            if r.get("key_id") == key_id and r.get("request_id") == request_id:
                return r
        time.sleep(0.05)
    raise AssertionError(f"no access-log line for {key_id} {request_id}")


# --------------------------------------------------------------------------------------------------


def test_second_identical_request_is_served_from_the_cache(kg):
    c = client(kg, "a")
    body = ask(fresh("What is the capital of France?"))
    hits0, saved0 = stat(kg, "switchyard_cache_hits"), stat(kg, "switchyard_cache_saved_micros")
    id1, id2 = uuid.uuid4().hex, uuid.uuid4().hex
    h1, r1 = create(c, body, {"x-request-id": id1})
    assert h1["x-switchyard-cache"] == "miss"
    assert upstream(kg) == 1
    assert r1.choices[0].message.content == recorded.openai_text()["choices"][0]["message"]["content"]
    h2, r2 = create(c, body, {"x-request-id": id2})
    assert h2["x-switchyard-cache"] == "hit"
    assert upstream(kg) == 1, "a hit never reaches a provider"
    assert r2.model_dump() == r1.model_dump(), "replayed faithfully: same id, text, usage"
    # A hit costs nothing against the budget and says so.
    assert h2["x-switchyard-cost"] == "0.000000"
    assert h2["x-switchyard-budget-remaining"] == h1["x-switchyard-budget-remaining"]
    assert h1["x-switchyard-cost"] == f"0.{OPENAI_COST:06d}"
    rec = log_line(kg, "a", id2)
    assert (rec["cache"], rec["cache_saved_micros"], rec["cost_micros"], rec["status"]) == ("hit", str(OPENAI_COST), "0", "200")
    assert log_line(kg, "a", id1)["cache"] == "miss"
    time.sleep(0.2)
    assert stat(kg, "switchyard_cache_hits") == hits0 + 1
    assert stat(kg, "switchyard_cache_saved_micros") == saved0 + OPENAI_COST
    # Delivery fields are not part of the question: another `user` still hits.
    h3, r3 = create(c, {**body, "user": "someone-else"})
    assert h3["x-switchyard-cache"] == "hit" and upstream(kg) == 1


def test_streamed_requests_hit_and_streams_fill_the_cache(kg):
    c = client(kg, "a")
    body = ask(fresh("Stream me a greeting"))
    h1, text1, fin1, _, _ = stream(c, body)
    assert h1["x-switchyard-cache"] == "miss"
    assert upstream(kg) == 1
    assert text1 == recorded.openai_stream_summary(recorded.openai_stream_text_chunks())["text"]
    h2, text2, fin2, usage2, chunks2 = stream(c, body)
    assert h2["x-switchyard-cache"] == "hit"
    assert h2["content-type"].startswith("text/event-stream")
    assert upstream(kg) == 1
    assert (text2, fin2) == (text1, fin1) == (text1, ["stop"])
    assert usage2 == [], "no usage chunk unless asked for"
    assert all(ch.object == "chat.completion.chunk" for ch in chunks2)
    # With include_usage the replay ends with the usage the provider reported for that stream.
    _, text3, _, usage3, _ = stream(c, body, usage=True)
    assert text3 == text1 and len(usage3) == 1 and usage3[0].total_tokens > 0
    # The folded stream answers a non-stream request too.
    h4, r4 = create(c, body)
    assert h4["x-switchyard-cache"] == "hit"
    assert r4.choices[0].message.content == text1 and r4.choices[0].finish_reason == "stop"
    assert upstream(kg) == 1


def test_a_whole_answer_replays_as_a_stream(kg):
    c = client(kg, "a")
    body = ask(fresh("Whole first"))
    _, r1 = create(c, body)
    h2, text2, fin2, usage2, chunks2 = stream(c, body, usage=True)
    assert h2["x-switchyard-cache"] == "hit"
    assert upstream(kg) == 1
    assert text2 == r1.choices[0].message.content and fin2 == ["stop"]
    assert usage2[0].model_dump() == r1.usage.model_dump()
    assert {ch.id for ch in chunks2} == {r1.id}


def test_scopes_never_share_an_entry(kg):
    body = ask(fresh("Scoped question"))
    h, _ = create(client(kg, "a"), body)
    assert h["x-switchyard-cache"] == "miss" and upstream(kg) == 1
    # Same team (scope: team): shared.
    h, _ = create(client(kg, "b"), body)
    assert h["x-switchyard-cache"] == "hit" and upstream(kg) == 1
    # Another team, and a key without a team (its own scope): never served a1's entry.
    h, _ = create(client(kg, "c"), body)
    assert h["x-switchyard-cache"] == "miss" and upstream(kg) == 2
    h, _ = create(client(kg, "d"), body)
    assert h["x-switchyard-cache"] == "miss" and upstream(kg) == 3
    # Each stored its own: d hits d's entry, c hits c's.
    for name in ("d", "c", "a"):
        h, _ = create(client(kg, name), body)
        assert h["x-switchyard-cache"] == "hit", name
    assert upstream(kg) == 3


def test_client_cache_control_bypasses_or_refreshes(kg):
    c = client(kg, "a")
    body = ask(fresh("Control"))
    h, _ = create(c, body, {"cache-control": "no-store"})
    assert h["x-switchyard-cache"] == "bypass" and upstream(kg) == 1
    h, _ = create(c, body)
    assert h["x-switchyard-cache"] == "miss" and upstream(kg) == 2, "no-store stored nothing"
    h, _ = create(c, body)
    assert h["x-switchyard-cache"] == "hit" and upstream(kg) == 2
    h, _ = create(c, body, {"cache-control": "no-cache"})
    assert h["x-switchyard-cache"] == "miss" and upstream(kg) == 3, "refresh goes upstream"
    h, _ = create(c, body)
    assert h["x-switchyard-cache"] == "hit" and upstream(kg) == 3
    # Sampled requests (temperature absent or above 0) are not cached by default.
    sampled = {"model": "gpt-4o-mini", "messages": body["messages"]}
    for _ in range(2):
        h, _ = create(c, sampled)
        assert h["x-switchyard-cache"] == "bypass"
    assert upstream(kg) == 5


def test_errors_and_cut_streams_are_not_cached(kg):
    c = client(kg, "a")
    body = ask(fresh("Errors"))
    with pytest.raises(openai.BadRequestError):
        create(c, body, {"x-mock-openai": "400"})
    assert upstream(kg) == 1
    h, r = create(c, body)
    assert h["x-switchyard-cache"] == "miss" and upstream(kg) == 2, "the error was not cached"
    sbody = ask(fresh("Cut stream"))
    for scenario in ("truncate", "error-mid-stream"):
        try:
            stream(c, sbody, {"x-mock-openai": scenario})
        except openai.APIError:
            pass
    n = upstream(kg)
    h, text, fin, _, _ = stream(c, sbody)
    assert h["x-switchyard-cache"] == "miss" and upstream(kg) == n + 1, "a cut stream was not cached"
    assert fin == ["stop"]
    h, text2, _, _, _ = stream(c, sbody)
    assert h["x-switchyard-cache"] == "hit" and text2 == text and upstream(kg) == n + 1


def test_sampled_pairs_reach_the_sink(kg, sink):
    c = client(kg, "sampled")
    prompt = fresh("Sample me")
    _, r = create(c, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]})
    found = sink.wait_for(lambda s: s["request"]["messages"][0]["content"] == prompt)
    assert len(found) == 1, sink.samples()
    s = found[0]
    assert s["response"]["choices"][0]["message"]["content"] == r.choices[0].message.content
    assert (s["key_id"], s["team"], s["requested_model"], s["status"], s["stream"]) == ("sampled", "t3", "gpt-4o-mini", 200, False)
    # A stream is sampled as the completion it delivered.
    sprompt = fresh("Sample my stream")
    _, text, _, _, _ = stream(c, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": sprompt}]})
    found = sink.wait_for(lambda s: s["request"]["messages"][0]["content"] == sprompt)
    assert len(found) == 1
    assert found[0]["response"]["choices"][0]["message"]["content"] == text and found[0]["stream"] is True
    # Other keys are not sampled (rate 0).
    other = fresh("Not sampled")
    create(client(kg, "plain"), {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": other}]})
    time.sleep(0.6)
    assert not [s for s in sink.samples() if s["request"]["messages"][0]["content"] == other]
    path, headers, _ = sink.bodies[0]
    assert path == "/v1/samples" and headers.get("content-type", headers.get("Content-Type")) == "application/x-ndjson"
    assert stat(kg, "switchyard_quality_samples_delivered") >= 2


def test_the_example_evaluator_scores_sampled_answers(kg, sink):
    """examples/quality/evaluator.py over what the sink received: exact and JSON-schema checks per
    model, and the LLM judge called through the gateway itself."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("evaluator", REPO / "examples" / "quality" / "evaluator.py")
    evaluator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluator)
    c = client(kg, "sampled")
    tag = uuid.uuid4().hex[:8]
    right, wrong = f"The answer is 42 ({tag}).", f"What is 6 times 7 ({tag})?"
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}
    rf = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}}
    echo = {"x-mock-openai": "echo"}   # the mock answers with the question itself
    create(c, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": right}]}, echo)
    create(c, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": wrong}]})
    good, bad = json.dumps({"city": f"Paris {tag}"}), json.dumps({"city": 3, "tag": tag})
    for text in (good, bad):
        create(c, {"model": "gpt-4o-mini", "response_format": rf, "messages": [{"role": "user", "content": text}]}, echo)
    mine = lambda s: tag in json.dumps(s["request"])  # noqa: E731
    deadline = time.monotonic() + 10
    while len([s for s in sink.samples() if mine(s)]) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    samples = [s for s in sink.samples() if mine(s)]
    assert len(samples) == 4, samples
    kg.mocks.clear()
    judge = openai.OpenAI(base_url=kg.base_url, api_key=K("plain"), max_retries=0, timeout=30)
    ev = evaluator.Evaluator(cases={right: {"equals": right}, wrong: {"equals": "42"}}, judge=judge, judge_model="gpt-4o-mini")
    ev.feed_lines("\n".join(json.dumps(s) for s in samples))
    model = samples[0]["response_model"]
    metrics = ev.metrics()
    assert f'switchyard_quality_score{{model="{model}",check="exact"}} 0.5000' in metrics, metrics
    assert f'switchyard_quality_score{{model="{model}",check="json_schema"}} 0.5000' in metrics, metrics
    # The judge went through the gateway (four calls with the judge model); the mock's recorded
    # answer carries no score, so each is counted as unparsed rather than guessed.
    judged = kg.mocks.requests("openai")
    assert len(judged) == 4 and all(r["body"]["model"] == "gpt-4o-mini" for r in judged)
    assert all(r["body"]["messages"][0]["content"] == evaluator.JUDGE_SYSTEM for r in judged)
    assert f'switchyard_quality_unscored_total{{model="{model}",check="judge",reason="judge_unparsed"}} 4' in metrics, metrics
    assert f'switchyard_quality_samples_total{{model="{model}"}} 4' in metrics


def test_a_dead_sink_does_not_hurt_clients_and_is_counted(kg, sink):
    sink.stop()
    failures0 = stat(kg, "switchyard_quality_sink_errors")
    c = client(kg, "sampled")
    for i in range(3):
        t0 = time.monotonic()
        h, r = create(c, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": fresh("dead sink")}]})
        assert r.choices[0].message.content and time.monotonic() - t0 < 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and stat(kg, "switchyard_quality_sink_errors") < failures0 + 3:
        time.sleep(0.1)
    assert stat(kg, "switchyard_quality_sink_errors") >= failures0 + 3
    assert kg.gw.alive()


def test_other_ingress_apis_are_cached_on_the_canonical_request(kg):
    """An Anthropic Messages client (the official SDK) gets hits in its own API's shape, whole and
    streamed, from a backend of another schema (the OpenAI mock) and from its own (native)."""
    import anthropic
    c = anthropic.Anthropic(base_url=kg.gw.gateway_url, api_key=K("a"), max_retries=0)
    for model, mock in (("gpt-4o-mini", "openai"), ("claude-haiku", "anthropic")):
        kg.mocks.clear()
        msg = {"model": model, "max_tokens": 100, "extra_body": {"temperature": 0},
               "messages": [{"role": "user", "content": fresh("Bonjour")}]}
        r1 = c.messages.with_raw_response.create(**msg)
        assert r1.headers["x-switchyard-cache"] == "miss"
        r2 = c.messages.with_raw_response.create(**msg)
        assert r2.headers["x-switchyard-cache"] == "hit", model
        assert len(kg.mocks.requests(mock)) == 1, model
        m1, m2 = r1.parse(), r2.parse()
        assert m2.type == "message" and m2.content[0].text == m1.content[0].text, model
        assert m2.stop_reason == m1.stop_reason
        # Streamed: served from the same entry, as Anthropic events.
        with c.messages.stream(**msg) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        assert text == m1.content[0].text and final.stop_reason == m1.stop_reason, model
        assert len(kg.mocks.requests(mock)) == 1, model


def test_a_request_whose_canonical_form_drops_content_is_not_cached(kg):
    """Two Messages requests with the same question about different documents: the canonical
    (chat) form has no document blocks, so a key from it would serve the first document's answer
    for the second. Such requests bypass the cache; both reach the (native) Anthropic backend."""
    import anthropic
    c = anthropic.Anthropic(base_url=kg.gw.gateway_url, api_key=K("a"), max_retries=0)
    question = fresh("Summarise this document")
    kg.mocks.clear()
    for doc in ("The first document.", "A second, different document."):
        content = [{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": doc}},
                   {"type": "text", "text": question}]
        r = c.messages.with_raw_response.create(model="claude-haiku", max_tokens=100, extra_body={"temperature": 0},
                                                messages=[{"role": "user", "content": content}])
        assert r.headers["x-switchyard-cache"] == "bypass"
        assert r.parse().type == "message"
    sent = kg.mocks.requests("anthropic")
    assert len(sent) == 2
    assert "A second, different document." in json.dumps(sent[1])
