"""End-to-end: the Anthropic Messages API as an ingress (``POST /v1/messages``), in a real Envoy.

The client is the official ``anthropic`` Python SDK, unmodified (only ``base_url`` points at the
gateway). Three backends serve it, each with its own mock replaying recordings:

* ``claude-haiku`` — the Anthropic mock: it speaks Messages natively, so it gets the client's own
  body (model rewritten) and its answer reaches the client untouched;
* ``gpt-4o-mini`` — the OpenAI-compatible mock: the request is translated into Chat Completions and
  the answer back into a Messages ``message`` / the Messages event stream;
* ``gemini-flash`` — the Gemini mock: Messages → canonical chat → Gemini, and back.

Expected values come from the recordings the mocks replay: for the native backend the recorded
Anthropic answers themselves; for the others the same request through the gateway's Chat
Completions API (whose answers the other end-to-end files check against the recordings), so a
Messages answer must carry exactly what the canonical answer carries. Requests are checked as the
mock providers received them.
"""

from __future__ import annotations

import base64
import json

import anthropic
import pytest
import requests

from helpers import CLIENT_API_KEY

NATIVE = "claude-haiku"
TRANSLATED = ["gpt-4o-mini", "gemini-flash"]
MODELS = [NATIVE, *TRANSLATED]
MOCK_OF = {"claude-haiku": "anthropic", "gpt-4o-mini": "openai", "gemini-flash": "more"}
QUESTION = "What is the capital of France?"
WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
}
# A 1x1 PNG.
PNG_B64 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")


@pytest.fixture(scope="module")
def claude(gateway):
    return anthropic.Anthropic(base_url=gateway.gateway_url, api_key=CLIENT_API_KEY, max_retries=0)


def chat(gateway, body: dict, headers=None) -> dict:
    r = requests.post(gateway.base_url + "/chat/completions", json=body,
                      headers={"authorization": f"Bearer {CLIENT_API_KEY}", **(headers or {})}, timeout=20)
    assert r.status_code == 200, r.text
    return r.json()


def chat_stream(gateway, body: dict) -> dict:
    """A canonical stream through the gateway, folded: text, reasoning, tool calls, finish, usage."""
    r = requests.post(gateway.base_url + "/chat/completions",
                      json={**body, "stream": True, "stream_options": {"include_usage": True}},
                      headers={"authorization": f"Bearer {CLIENT_API_KEY}"}, stream=True, timeout=20)
    assert r.status_code == 200, r.text
    out = {"text": "", "reasoning": "", "calls": {}, "finish": None, "usage": None}
    for line in r.iter_lines(decode_unicode=True):
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if ev.get("usage"):
            out["usage"] = ev["usage"]
        for ch in ev.get("choices") or []:
            d = ch.get("delta") or {}
            out["text"] += d.get("content") or ""
            out["reasoning"] += d.get("reasoning_content") or ""
            for tc in d.get("tool_calls") or []:
                c = out["calls"].setdefault(tc["index"], {"id": None, "name": None, "arguments": ""})
                c["id"] = c["id"] or tc.get("id")
                c["name"] = c["name"] or (tc.get("function") or {}).get("name")
                c["arguments"] += (tc.get("function") or {}).get("arguments") or ""
            out["finish"] = ch.get("finish_reason") or out["finish"]
    return out


def only(reqs: list[dict]) -> dict:
    assert len(reqs) == 1, [(r["path"], r.get("scenario")) for r in reqs]
    return reqs[0]


def text_of(msg) -> str:
    return "".join(b.text for b in msg.content if b.type == "text")


STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def assert_usage_matches(usage, canonical: dict) -> None:
    """Anthropic's usage split from OpenAI's: input excludes cache reads and writes."""
    details = canonical.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or 0
    written = details.get("cache_creation_tokens") or 0
    assert usage.output_tokens == canonical["completion_tokens"]
    assert usage.input_tokens == canonical["prompt_tokens"] - cached - written
    assert (usage.cache_read_input_tokens or 0) == cached


# --------------------------------------------------------------------------------------------------
# text, non-stream and stream


def test_native_backend_gets_the_clients_body_and_answers_untouched(gateway, claude):
    msg = claude.messages.create(model=NATIVE, max_tokens=300, system="You are a helpful assistant.",
                                 messages=[{"role": "user", "content": QUESTION}],
                                 metadata={"user_id": "user-7"}, stop_sequences=["\n\nHuman:"],
                                 extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"})
    got = only(gateway.mock_requests("anthropic"))
    assert got["path"] == "/v1/messages"
    body = got["body"]
    # The client's own body, with the model rewritten to the endpoint's model.
    assert body["model"] == "claude-3-5-haiku-latest"
    assert body["system"] == "You are a helpful assistant."
    assert body["messages"] == [{"role": "user", "content": QUESTION}]
    assert body["metadata"] == {"user_id": "user-7"}
    assert body["stop_sequences"] == ["\n\nHuman:"]
    assert body["max_tokens"] == 300
    assert "stream_options" not in body and "reasoning_effort" not in body
    assert got["headers"].get("anthropic-beta") == "prompt-caching-2024-07-31"
    assert got["headers"].get("anthropic-version") == "2023-06-01"
    assert got["headers"].get("x-api-key") != CLIENT_API_KEY
    # The recorded answer, untouched (Anthropic-only usage fields included).
    rec = gateway_recorded_text()
    assert msg.id == rec["id"] and msg.model == rec["model"]
    assert text_of(msg) == rec["content"][0]["text"]
    assert msg.stop_reason == rec["stop_reason"]
    assert msg.usage.input_tokens == rec["usage"]["input_tokens"]
    assert msg.usage.output_tokens == rec["usage"]["output_tokens"]
    assert msg.usage.service_tier == rec["usage"]["service_tier"]


def gateway_recorded_text() -> dict:
    import recorded as rec
    return rec.anthropic_text()


@pytest.mark.parametrize("model", TRANSLATED)
def test_translated_non_stream_carries_the_canonical_answer(gateway, claude, model):
    want = chat(gateway, {"model": model, "max_tokens": 300,
                          "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]})
    gateway.clear_mocks()
    r = claude.messages.with_raw_response.create(model=model, max_tokens=300, system=[{"type": "text", "text": "Be brief."}],
                                                 messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION}]}])
    msg = r.parse()
    assert r.headers["content-type"].startswith("application/json")
    choice = want["choices"][0]
    assert msg.type == "message" and msg.role == "assistant"
    assert text_of(msg) == choice["message"]["content"]
    assert msg.model == want["model"]
    assert msg.stop_reason == STOP[choice["finish_reason"]]
    assert_usage_matches(msg.usage, want["usage"])
    sent = only(gateway.mock_requests(MOCK_OF[model]))
    if model == "gpt-4o-mini":
        assert sent["path"] == "/v1/chat/completions"
        assert sent["body"]["messages"] == [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": [{"type": "text", "text": QUESTION}]}]
        assert sent["body"]["max_tokens"] == 300
    else:
        assert ":generateContent" in sent["path"]
        assert sent["body"]["systemInstruction"]["parts"][0]["text"] == "Be brief."
        assert sent["body"]["generationConfig"]["maxOutputTokens"] == 300


@pytest.mark.parametrize("model", MODELS)
def test_stream_accumulates_in_the_sdk(gateway, claude, model):
    with claude.messages.stream(model=model, max_tokens=300, messages=[{"role": "user", "content": QUESTION}]) as s:
        texts = list(s.text_stream)
        final = s.get_final_message()
    assert "".join(texts) == text_of(final) and texts
    if model == NATIVE:
        import recorded as rec
        events = [json.loads(d) for _, d in rec.parse_sse((rec.FIXTURES / "anthropic-sdk/basic_response.txt").read_text())]
        want_text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
        assert text_of(final) == want_text
        assert final.id == events[0]["message"]["id"]
        return
    gateway.clear_mocks()
    want = chat_stream(gateway, {"model": model, "max_tokens": 300, "messages": [{"role": "user", "content": QUESTION}]})
    assert text_of(final) == want["text"]
    assert final.stop_reason == STOP[want["finish"]]
    assert_usage_matches(final.usage, want["usage"])


@pytest.mark.parametrize("model", TRANSLATED)
def test_stream_event_sequence(gateway, model):
    r = requests.post(gateway.gateway_url + "/v1/messages", stream=True, timeout=20,
                      headers={"x-api-key": CLIENT_API_KEY, "anthropic-version": "2023-06-01"},
                      json={"model": model, "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": QUESTION}]})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    names = [line[7:] for line in r.iter_lines(decode_unicode=True) if line.startswith("event: ")]
    assert names[0] == "message_start" and names[1] == "ping"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") >= 1
    assert "content_block_delta" in names


# --------------------------------------------------------------------------------------------------
# tools round trip


def tool_turn_back(first, tool_result_text: str) -> list[dict]:
    """The conversation of a tool round trip: the question, the assistant's answer as the SDK gave
    it, and a tool_result for each tool_use."""
    blocks = [b.model_dump(exclude_none=True) for b in first.content]
    for b in blocks:
        b.pop("caller", None)
    results = [{"type": "tool_result", "tool_use_id": b["id"], "content": tool_result_text}
               for b in blocks if b["type"] == "tool_use"]
    return [{"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": blocks},
            {"role": "user", "content": results}]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_tools_round_trip(gateway, claude, model, stream):
    ask = dict(model=model, max_tokens=400, tools=[WEATHER], tool_choice={"type": "auto"},
               messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    if stream:
        with claude.messages.stream(**ask) as s:
            first = s.get_final_message()
    else:
        first = claude.messages.create(**ask)
    calls = [b for b in first.content if b.type == "tool_use"]
    assert calls and first.stop_reason == "tool_use"
    assert all(c.name == "get_weather" and isinstance(c.input, dict) and c.id for c in calls)
    sent = only(gateway.mock_requests(MOCK_OF[model]))["body"]
    if model == NATIVE:
        assert sent["tools"] == [WEATHER] and sent["tool_choice"] == {"type": "auto"}
    elif model == "gpt-4o-mini":
        assert sent["tools"] == [{"type": "function", "function": {
            "name": "get_weather", "description": WEATHER["description"], "parameters": WEATHER["input_schema"]}}]
        assert sent["tool_choice"] == "auto"
        # The canonical answer's tool calls, as the gateway's chat API gives them.
        gateway.clear_mocks()
        canonical = {k: v for k, v in sent.items() if k not in ("stream", "stream_options")}
        if stream:
            want_calls = [{"id": c["id"], "function": {"name": c["name"], "arguments": c["arguments"]}}
                          for _, c in sorted(chat_stream(gateway, canonical)["calls"].items())]
        else:
            want_calls = chat(gateway, canonical)["choices"][0]["message"]["tool_calls"]
        assert [(c.id, c.name, c.input) for c in calls] == [
            (w["id"], w["function"]["name"], json.loads(w["function"]["arguments"])) for w in want_calls]
    else:
        assert sent["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    gateway.clear_mocks()
    second = claude.messages.create(model=model, max_tokens=400, tools=[WEATHER],
                                    messages=tool_turn_back(first, "22 degrees and sunny"))
    assert second.stop_reason in ("end_turn", "tool_use") and second.content
    got = only(gateway.mock_requests(MOCK_OF[model]))["body"]
    if model == NATIVE:
        assert got["messages"] == tool_turn_back(first, "22 degrees and sunny")
    elif model == "gpt-4o-mini":
        tool_msgs = [m for m in got["messages"] if m["role"] == "tool"]
        assert [m["tool_call_id"] for m in tool_msgs] == [c.id for c in calls]
        assert all(m["content"] == "22 degrees and sunny" for m in tool_msgs)
        assistant = next(m for m in got["messages"] if m["role"] == "assistant")
        assert [tc["id"] for tc in assistant["tool_calls"]] == [c.id for c in calls]
        assert text_of(second) == chat(gateway, {"model": model, "messages": got["messages"], "tools": got["tools"]})["choices"][0]["message"]["content"]
    else:
        responses = [p["functionResponse"] for c in got["contents"] for p in c["parts"] if "functionResponse" in p]
        assert [r["name"] for r in responses] == [c.name for c in calls]
        assert "22 degrees and sunny" in json.dumps(responses)


# --------------------------------------------------------------------------------------------------
# images


@pytest.mark.parametrize("model", MODELS)
def test_images_base64_and_url(gateway, claude, model):
    url = "https://upload.wikimedia.org/wikipedia/commons/4/47/PNG_transparency_demonstration_1.png"
    content = [{"type": "text", "text": "What is in these images?"},
               {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
               {"type": "image", "source": {"type": "url", "url": url}}]
    msg = claude.messages.create(model=model, max_tokens=100, messages=[{"role": "user", "content": content}])
    assert text_of(msg)
    got = only(gateway.mock_requests(MOCK_OF[model]))["body"]
    if model == NATIVE:
        assert got["messages"][0]["content"] == content
    elif model == "gpt-4o-mini":
        assert got["messages"][0]["content"][1:] == [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
            {"type": "image_url", "image_url": {"url": url}}]
    else:
        assert got["contents"][0]["parts"][1:] == [
            {"inlineData": {"mimeType": "image/png", "data": PNG_B64}},
            {"fileData": {"mimeType": "image/png", "fileUri": url}}]


# --------------------------------------------------------------------------------------------------
# thinking


def test_thinking_native_keeps_anthropics_signed_blocks(gateway, claude):
    with claude.messages.stream(model=NATIVE, max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 1024},
                                messages=[{"role": "user", "content": "How do I cross the street?"}]) as s:
        final = s.get_final_message()
    import recorded as rec
    from test_anthropic_features import recording
    want = recording()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == want["thinking"]
    assert final.content[0].signature == want["signature"]
    assert text_of(final) == want["text"]
    assert only(gateway.mock_requests("anthropic"))["body"]["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    del rec


@pytest.mark.parametrize("model", TRANSLATED)
def test_thinking_becomes_reasoning_effort(gateway, claude, model):
    msg = claude.messages.create(model=model, max_tokens=20000, thinking={"type": "enabled", "budget_tokens": 10000},
                                 messages=[{"role": "user", "content": QUESTION}])
    assert text_of(msg)
    got = only(gateway.mock_requests(MOCK_OF[model]))["body"]
    if model == "gpt-4o-mini":
        assert got["reasoning_effort"] == "high"
    else:
        # The Gemini backend's own reasoning_effort table: "high" → 24576 thinking tokens, thoughts included.
        assert got["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 24576, "includeThoughts": True}


# --------------------------------------------------------------------------------------------------
# failover across schemas, in the Messages format


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_failover_from_openai_to_native_anthropic(gateway, claude, stream):
    """gpt-4o-mini: the OpenAI attempt fails before its first byte; Anthropic (priority 1) serves,
    natively: it gets the client's own Messages body and the client its recorded answer."""
    ask = dict(model="gpt-4o-mini", max_tokens=300, messages=[{"role": "user", "content": QUESTION}],
               extra_headers={"x-mock-openai": "503" if not stream else "reset"})
    if stream:
        with claude.messages.with_streaming_response.create(stream=True, **ask) as r:
            headers = r.headers
            body = b"".join(r.iter_bytes())
        import recorded as rec
        want = (rec.FIXTURES / "anthropic-sdk/basic_response.txt").read_bytes()
        # The native stream, byte for byte.
        assert body.replace(b"\r\n", b"\n").strip() == want.replace(b"\r\n", b"\n").strip()
    else:
        r = claude.messages.with_raw_response.create(**ask)
        headers = r.headers
        assert text_of(r.parse()) == gateway_recorded_text()["content"][0]["text"]
    assert headers["x-switchyard-backend"] == "anthropic-demo"
    assert headers["x-switchyard-attempts"] == "2"
    assert len(gateway.mock_requests("openai")) == 1
    native = only(gateway.mock_requests("anthropic"))["body"]
    assert native["messages"] == [{"role": "user", "content": QUESTION}] and native["max_tokens"] == 300
    assert "stream_options" not in native


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_failover_across_three_schemas(gateway, claude, stream):
    """any-chat: OpenAI and Gemini fail, Bedrock serves; the client gets Messages throughout."""
    ask = dict(model="any-chat", max_tokens=300, messages=[{"role": "user", "content": QUESTION}],
               extra_headers={"x-mock-openai": "reset" if stream else "503", "x-mock-more": "gemini=503"})
    if stream:
        with claude.messages.stream(**ask) as s:
            final = s.get_final_message()
    else:
        final = claude.messages.create(**ask)
    assert [q["provider"] for q in gateway.mock_requests("more")] == ["gemini", "bedrock"]
    gateway.clear_mocks()
    # The canonical answer of the same request, as the gateway's chat API gives it (Bedrock's
    # recorded stream and whole answer differ).
    canonical = {"model": "any-chat", "max_tokens": 300, "messages": [{"role": "user", "content": QUESTION}]}
    if stream:
        r = requests.post(gateway.base_url + "/chat/completions", stream=True, timeout=20,
                          json={**canonical, "stream": True, "stream_options": {"include_usage": True}},
                          headers={"authorization": f"Bearer {CLIENT_API_KEY}", "x-mock-openai": "503", "x-mock-more": "gemini=503"})
        text, usage = "", None
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("data: {"):
                ev = json.loads(line[6:])
                usage = ev.get("usage") or usage
                text += "".join((c.get("delta") or {}).get("content") or "" for c in ev.get("choices") or [])
        want_text, want_usage = text, usage
    else:
        want = chat(gateway, canonical, headers={"x-mock-openai": "503", "x-mock-more": "gemini=503"})
        want_text, want_usage = want["choices"][0]["message"]["content"], want["usage"]
    assert text_of(final) == want_text
    assert_usage_matches(final.usage, want_usage)


# --------------------------------------------------------------------------------------------------
# errors, all in Anthropic's shape


def raw(gateway, body, headers=None, method="POST", path="/v1/messages"):
    h = {"x-api-key": CLIENT_API_KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"}
    h.update(headers or {})
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.request(method, gateway.gateway_url + path, data=data, headers=h, timeout=20)


def anthropic_error(r, status: int, kind: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert set(doc) == {"type", "error"} and doc["type"] == "error", doc
    assert doc["error"]["type"] == kind, doc
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    return doc["error"]["message"]


OK = {"model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("case", [
    ("malformed JSON", b'{"model": "gpt-4o-mini", "messages": [', 400, "invalid_request_error", "JSON"),
    ("not an object", b"[1, 2]", 400, "invalid_request_error", "object"),
    ("no messages", {"model": "gpt-4o-mini", "max_tokens": 10}, 400, "invalid_request_error", "messages"),
    ("bad role", {**OK, "messages": [{"role": "system", "content": "x"}]}, 400, "invalid_request_error", "messages.0.role"),
    ("bad block", {**OK, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]}, 400, "invalid_request_error", "messages.0.content.0.source.type"),
    ("max_tokens 0", {**OK, "max_tokens": 0}, 400, "invalid_request_error", "max_tokens"),
    ("unknown model", {**OK, "model": "no-such-model"}, 404, "not_found_error", "no-such-model"),
], ids=lambda c: c[0])
def test_bad_input_is_answered_in_anthropics_shape(gateway, case):
    _, body, status, kind, mention = case
    assert mention in anthropic_error(raw(gateway, body), status, kind)
    assert gateway.mock_requests("openai") == []


def test_sdk_raises_its_own_error_classes(gateway, claude):
    with pytest.raises(anthropic.NotFoundError) as ei:
        claude.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert ei.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(model="claude-haiku", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
                               extra_headers={"x-mock-anthropic": "429"})
    with pytest.raises(anthropic.RateLimitError) as ei:
        claude.messages.create(model="gemini-flash", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
                               extra_headers={"x-mock-more": "gemini=429"})
    assert ei.value.body["error"]["type"] == "rate_limit_error"


def test_wrong_method_too_large_and_unknown_paths(gateway):
    anthropic_error(raw(gateway, b"", method="GET"), 405, "invalid_request_error")
    from helpers import max_body_bytes
    big = {**OK, "messages": [{"role": "user", "content": "x" * (max_body_bytes(gateway) + 10)}]}
    anthropic_error(raw(gateway, big), 413, "request_too_large")
    anthropic_error(raw(gateway, OK, path="/v1/messages/batches"), 404, "not_found_error")


def test_provider_errors_and_envoys_own_failures(gateway):
    # The provider's 400 (OpenAI's recorded invalid_request_error) in Anthropic's shape.
    anthropic_error(raw(gateway, OK, {"x-mock-openai": "400"}), 400, "invalid_request_error")
    # Anthropic backend's own error (native): translated for the retry policy, back in its shape.
    anthropic_error(raw(gateway, {**OK, "model": "claude-haiku"}, {"x-mock-anthropic": "529"}), 503, "overloaded_error")
    # Every candidate fails: Envoy's own answer, rewritten.
    anthropic_error(raw(gateway, OK, {"x-mock-openai": "reset", "x-mock-anthropic": "reset"}), 503, "overloaded_error")


@pytest.mark.parametrize("model", MODELS)
def test_stream_failing_mid_way_ends_with_an_error_event(gateway, claude, model):
    header = {"claude-haiku": {"x-mock-anthropic": "error-mid-stream"}, "gpt-4o-mini": {"x-mock-openai": "error-mid-stream"},
              "gemini-flash": {"x-mock-more": "gemini=error-mid-stream"}}[model]
    r = raw(gateway, {**OK, "model": model, "stream": True}, header)
    assert r.status_code == 200
    names = [line[7:] for line in r.text.splitlines() if line.startswith("event: ")]
    assert names[0] == "message_start" and names[-1] == "error" and "message_stop" not in names
    with pytest.raises(anthropic.APIStatusError):
        with claude.messages.stream(model=model, max_tokens=10, messages=[{"role": "user", "content": "hi"}],
                                    extra_headers=header) as s:
            s.get_final_message()


# --------------------------------------------------------------------------------------------------
# count_tokens, the model list, telemetry


def test_count_tokens_is_the_gateways_estimate(gateway, claude):
    short = claude.messages.count_tokens(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    long = claude.messages.count_tokens(model="claude-haiku", system="Be brief.",
                                        messages=[{"role": "user", "content": "word " * 400}])
    assert 0 < short.input_tokens < long.input_tokens
    assert 400 <= long.input_tokens <= 1000
    assert gateway.mock_requests("openai") == [] and gateway.mock_requests("anthropic") == []
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="no-such-model", messages=[{"role": "user", "content": "hi"}])


def test_models_list_is_the_one_list(gateway, claude):
    listed = {m.id for m in claude.models.list()}
    r = requests.get(gateway.base_url + "/models", headers={"authorization": f"Bearer {CLIENT_API_KEY}"}, timeout=10)
    assert listed == {m["id"] for m in r.json()["data"]} and NATIVE in listed


def requests_with_operation(gateway, op: str) -> float:
    total = 0.0
    for line in gateway.prometheus().splitlines():
        if line.startswith("switchyard_requests{") and f'gen_ai_operation_name="{op}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_and_access_log_carry_the_messages_operation(gateway, claude):
    from test_fault_matrix import access_log_line
    before = requests_with_operation(gateway, "messages")
    r = claude.messages.with_raw_response.create(model="gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": "hi"}],
                                                 extra_headers={"x-request-id": "messages-telemetry-1"})
    usage = r.parse().usage
    line = access_log_line(gateway, "messages-telemetry-1")
    assert line["operation"] == "messages"
    assert line["response_code"] == 200
    assert int(line["output_tokens"]) == usage.output_tokens
    assert int(line["input_tokens"]) == usage.input_tokens + (usage.cache_read_input_tokens or 0)
    import time
    for _ in range(50):
        if requests_with_operation(gateway, "messages") >= before + 1:
            break
        time.sleep(0.1)
    assert requests_with_operation(gateway, "messages") == before + 1


# --------------------------------------------------------------------------------------------------
# keys and limits: a second gateway with virtual keys


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    from keys_gateway import KeysGateway, key_hash
    auth = {"keys": [
        {"id": "msg-alice", "sha256": key_hash("sk-sy-msg-alice"), "models": ["gpt-4o-mini", "claude-haiku"],
         "limits": {"rpm": 3}},
        {"id": "msg-off", "sha256": key_hash("sk-sy-msg-off"), "disabled": True},
    ], "pricing": {"models": {m: {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}
                              for m in ("gpt-4o-mini", "claude-3-5-haiku-latest", "claude-3-opus-20240229",
                                        "claude-3-opus-latest", "claude-haiku")}}}
    kg = KeysGateway.start(tmp_path_factory.mktemp("messages-keys"), auth=auth)
    try:
        yield kg
    finally:
        problems = kg.stop()
        assert not problems, problems


def test_keys_and_limits_answer_in_anthropics_shape(keyed):
    url = keyed.gw.gateway_url
    ask = dict(model="gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    # No key, an unknown key, a disabled key: 401 authentication_error (the SDK's own class).
    for key in ("", "sk-sy-nobody", "sk-sy-msg-off"):
        r = requests.post(url + "/v1/messages", json=ask, timeout=10,
                          headers={"x-api-key": key} if key else {})
        anthropic_error(r, 401, "authentication_error")
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=url, api_key="sk-sy-nobody", max_retries=0).messages.create(**ask)
    # The key from x-api-key (the SDK) or Authorization: Bearer (Claude Code's ANTHROPIC_AUTH_TOKEN).
    alice = anthropic.Anthropic(base_url=url, api_key="sk-sy-msg-alice", max_retries=0)
    assert text_of(alice.messages.create(**ask))
    bearer = anthropic.Anthropic(base_url=url, auth_token="sk-sy-msg-alice", max_retries=0)
    assert text_of(bearer.messages.create(**{**ask, "model": "claude-haiku"}))
    # A model the key may not use: 403 permission_error.
    with pytest.raises(anthropic.PermissionDeniedError) as ei:
        alice.messages.create(**{**ask, "model": "gemini-flash"})
    assert ei.value.body["error"]["type"] == "permission_error"
    # The third request in the minute passes, the fourth is the key's 429 (rate_limit_error, retry-after).
    assert text_of(alice.messages.create(**ask))
    with pytest.raises(anthropic.RateLimitError) as ei:
        alice.messages.create(**ask)
    assert ei.value.body["error"]["type"] == "rate_limit_error"
    assert ei.value.response.headers.get("retry-after")
    # Both answers (translated and native) were accounted: each has its usage and a cost in the log.
    lines = keyed.log_lines("msg-alice", count=5)
    served = [ln for ln in lines if ln.get("response_code") == 200]
    assert len(served) == 3 and all(ln["operation"] == "messages" for ln in lines)
    assert all(int(ln["output_tokens"]) > 0 and ln.get("cost_micros") not in (None, "", "-") for ln in served)
