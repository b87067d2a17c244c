"""Self-tests of the mock providers (no Envoy needed).

The OpenAI SDK is pointed straight at the OpenAI mock: if it parses every answer (stream and
non-stream), the mock replays valid OpenAI data. The Anthropic mock is checked with a small
independent SSE parser.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import uuid

import openai
import pytest
import requests

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}
ANTHROPIC_WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}
HELLO = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def oai(mocks):
    c = openai.OpenAI(base_url=mocks.openai_url + "/v1", api_key="sk-test", max_retries=0,
                      timeout=20)
    yield c
    c.close()


@pytest.fixture(autouse=True)
def _clean(mocks):
    mocks.clear()


def post(url, body, headers=None, **kw):
    return requests.post(url, json=body, headers=headers or {}, timeout=kw.pop("timeout", 20), **kw)


def sse_events(raw: str) -> list[tuple[str | None, str]]:
    """Minimal, independent SSE parser -> [(event name, data)]."""
    out = []
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
        out.append((name, "\n".join(data)))
    return out


def raw_exchange(port: int, body: dict, headers: dict | None = None) -> tuple[bytes, list[bytes]]:
    """Send one request over a raw socket; returns (head, list of chunk payloads as received)."""
    payload = json.dumps(body).encode()
    hdrs = {"host": "127.0.0.1", "content-type": "application/json",
            "content-length": str(len(payload)), "connection": "close", **(headers or {})}
    req = (f"POST {'/v1/messages' if 'max_tokens' in body else '/v1/chat/completions'} HTTP/1.1\r\n"
           + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n").encode() + payload
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(req)
        data = b""
        while True:
            got = s.recv(65536)
            if not got:
                break
            data += got
    head, _, rest = data.partition(b"\r\n\r\n")
    chunks = []
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        chunks.append(rest[:size])
        rest = rest[size + 2:]
    return head, chunks


# ------------------------------------------------------------------------------------ control API


def test_health(mocks):
    for url in (mocks.openai_url, mocks.anthropic_url):
        r = requests.get(url + "/_mock/health", timeout=5)
        assert r.status_code == 200 and r.json()["ok"] is True


def test_requests_are_recorded_and_cleared(mocks, oai):
    oai.chat.completions.create(model="gpt-test", messages=HELLO,
                                extra_headers={"X-Custom-Thing": "Yes"},
                                extra_query={"api-version": "2024-10-21"})
    reqs = mocks.requests("openai")
    assert len(reqs) == 1
    r = reqs[0]
    assert r["method"] == "POST" and r["path"] == "/v1/chat/completions"
    assert r["query"] == {"api-version": "2024-10-21"}
    assert r["headers"]["x-custom-thing"] == "Yes"
    assert r["headers"]["authorization"] == "Bearer sk-test"
    assert all(k == k.lower() for k in r["headers"])
    assert r["body"] == {"model": "gpt-test", "messages": HELLO}
    assert mocks.requests("anthropic") == []
    mocks.clear()
    assert mocks.requests("openai") == []


def test_chunked_request_body_and_keepalive(mocks):
    port = int(mocks.openai_url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = json.dumps({"model": "m", "messages": HELLO}).encode()
    # chunked request body (Envoy may forward a modified body this way)
    conn.request("POST", "/v1/chat/completions", body=iter([body[:10], body[10:]]),
                 headers={"content-type": "application/json"}, encode_chunked=True)
    r1 = conn.getresponse()
    assert r1.status == 200
    json.loads(r1.read())
    sock = conn.sock
    conn.request("POST", "/v1/chat/completions", body=body,
                 headers={"content-type": "application/json"})
    r2 = conn.getresponse()
    assert r2.status == 200 and json.loads(r2.read())["object"] == "chat.completion"
    assert conn.sock is sock, "connection was not kept alive"
    conn.close()
    reqs = mocks.requests("openai")
    assert [q["body"]["model"] for q in reqs] == ["m", "m"]
    assert reqs[0]["headers"].get("transfer-encoding") == "chunked"


def test_unknown_path_is_404(mocks):
    r = post(mocks.openai_url + "/v1/completions", {"input": "x"})
    assert r.status_code == 404 and "error" in r.json()
    r = post(mocks.anthropic_url + "/v1/chat/completions", {"model": "x"})
    assert r.status_code == 404 and r.json()["type"] == "error"


# ------------------------------------------------------------------------------------ OpenAI: OK


def test_openai_text(oai):
    c = oai.chat.completions.create(model="gpt-5-nano", messages=HELLO)
    assert c.object == "chat.completion"
    assert c.choices[0].finish_reason == "stop"
    assert c.choices[0].message.content.startswith("Hi there! How can I help today?")
    assert c.usage.prompt_tokens == 8 and c.usage.completion_tokens == 271
    assert c.usage.total_tokens == 279
    assert c.usage.completion_tokens_details.reasoning_tokens == 192


def test_openai_tool_calls(oai):
    c = oai.chat.completions.create(model="gpt-5-nano", messages=HELLO, tools=[WEATHER_TOOL])
    ch = c.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.content is None
    tc = ch.message.tool_calls[0]
    assert tc.type == "function" and tc.id == "call_8fxy20OEu9ulvvaa5b5CzVA4"
    assert tc.function.name == "get_weather"  # renamed to the request's first tool
    assert json.loads(tc.function.arguments) == {"location": "Boston, MA", "unit": "fahrenheit"}
    assert c.usage.total_tokens == 449


def test_openai_tools_after_tool_result_is_text(oai):
    msgs = HELLO + [
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    c = oai.chat.completions.create(model="gpt-5-nano", messages=msgs, tools=[WEATHER_TOOL])
    assert c.choices[0].finish_reason == "stop" and c.choices[0].message.tool_calls is None


def _collect(stream):
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices
              and ch.choices[0].finish_reason]
    usage = [ch.usage for ch in chunks if ch.usage is not None]
    return chunks, text, finish, usage


def test_openai_responses_api_replays_recorded_responses(oai):
    """The OpenAI mock's /v1/responses: the SDK parses every recorded answer and stream."""
    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}
    r = oai.responses.create(model="gpt-4o", input="What is the capital of France?")
    assert r.output_text == "The capital of France is Paris."
    r = oai.responses.create(model="gpt-4o", input="What is the capital of PotatoLand?", tools=[tool])
    assert r.output[0].type == "function_call" and r.output[0].name == "lookup"
    r = oai.responses.create(model="gpt-4o", tools=[tool], input=[
        {"role": "user", "content": "What is the capital of PotatoLand?"},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "Potato City"}])
    assert r.output_text == "The capital of PotatoLand is Potato City."
    with oai.responses.stream(model="gpt-4o", input="x", tools=[tool]) as s:
        final = s.get_final_response()
    assert final.output[0].type == "function_call" and final.output[0].name == "lookup"
    with oai.responses.stream(model="gpt-4o", input="x") as s:
        final = s.get_final_response()
    assert final.output_text == "The capital of France is Paris."
    events = list(oai.responses.create(model="gpt-4o", input="x", stream=True,
                                       extra_headers={"x-mock-openai": "error-mid-stream"}))
    assert events[-1].type == "error" and len(events) == 5


def test_openai_stream_text_no_usage(oai):
    chunks, text, finish, usage = _collect(oai.chat.completions.create(
        model="gpt-5-nano", messages=HELLO, stream=True))
    assert text.startswith("Hi there! How can I help")
    assert text.endswith("curious about.")
    assert finish == ["stop"]
    assert usage == []
    assert all(ch.choices for ch in chunks)


def test_openai_stream_text_with_usage(oai):
    chunks, text, finish, usage = _collect(oai.chat.completions.create(
        model="gpt-5-nano", messages=HELLO, stream=True, stream_options={"include_usage": True}))
    assert text.startswith("Hi there!") and finish == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens,
            last.usage.total_tokens) == (12, 100, 112)
    assert last.id == chunks[0].id and last.model == chunks[0].model
    assert len(usage) == 1


def _tool_stream(oai, include_usage, tool=WEATHER_TOOL):
    kw = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks, text, finish, usage = _collect(oai.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, stream=True, tools=[tool], **kw))
    calls: dict[int, dict] = {}
    for ch in chunks:
        for choice in ch.choices:
            for tc in choice.delta.tool_calls or []:
                c = calls.setdefault(tc.index, {"id": None, "name": None, "args": ""})
                if tc.id:
                    c["id"] = tc.id
                if tc.function and tc.function.name:
                    c["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    c["args"] += tc.function.arguments
    return calls, finish, usage


def test_openai_stream_tool_calls(oai):
    calls, finish, usage = _tool_stream(oai, include_usage=False)
    assert finish == ["tool_calls"] and usage == []
    assert calls == {0: {"id": "call_ZR5UUuTt3pf61kjwAJIYdVMj", "name": "get_weather",
                         "args": '{"country":"UK"}'}}
    calls, finish, usage = _tool_stream(oai, include_usage=True)
    assert finish == ["tool_calls"] and len(usage) == 1 and usage[0].total_tokens == 68


def test_openai_stream_after_tool_result(oai):
    msgs = HELLO + [
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_capital", "arguments": '{"country":"UK"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "London"},
    ]
    chunks, text, finish, usage = _collect(oai.chat.completions.create(
        model="gpt-4o-mini", messages=msgs, stream=True, tools=[WEATHER_TOOL],
        stream_options={"include_usage": True}))
    assert text == "The capital of the UK is London." and finish == ["stop"]
    assert usage[0].total_tokens == 87


def test_openai_stream_wire_format(mocks):
    port = int(mocks.openai_url.rsplit(":", 1)[1])
    head, chunks = raw_exchange(port, {"model": "m", "messages": HELLO, "stream": True})
    head_l = head.decode().lower()
    assert "transfer-encoding: chunked" in head_l
    assert "content-type: text/event-stream" in head_l
    assert "content-length" not in head_l
    assert len(chunks) > 20
    # split at awkward offsets: mid-line, mid "data:" prefix, mid UTF-8 sequence
    assert any(not c.endswith(b"\n") for c in chunks)
    assert any(len(c) < 8 for c in chunks)
    body = b"".join(chunks)
    assert body.endswith(b"data: [DONE]\n\n")
    with pytest.raises(UnicodeDecodeError):
        for c in chunks:
            c.decode("utf-8")


# ------------------------------------------------------------------------------ OpenAI: failures


@pytest.mark.parametrize("scenario,exc,status", [
    ("503", openai.InternalServerError, 503),
    ("500", openai.InternalServerError, 500),
    ("429", openai.RateLimitError, 429),
    ("400", openai.BadRequestError, 400),
])
def test_openai_error_statuses(oai, scenario, exc, status):
    with pytest.raises(exc) as ei:
        oai.chat.completions.create(model="m", messages=HELLO,
                                    extra_headers={"x-mock-openai": scenario})
    assert ei.value.status_code == status
    err = ei.value.body
    assert isinstance(err, dict) and "message" in err and "type" in err
    if scenario == "429":
        assert ei.value.response.headers["retry-after"] == "0"
        assert err["code"] == "rate_limit_exceeded"
    if scenario == "400":
        assert err["code"] == "unsupported_parameter"


def test_openai_error_also_for_stream_requests(oai):
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="m", messages=HELLO, stream=True,
                                    extra_headers={"x-mock-openai": "503"})


def test_scenario_header_is_provider_specific(oai):
    c = oai.chat.completions.create(model="m", messages=HELLO,
                                    extra_headers={"x-mock-anthropic": "503"})
    assert c.choices[0].message.content


def test_openai_reset(mocks):
    with pytest.raises(requests.exceptions.ConnectionError):
        post(mocks.openai_url + "/v1/chat/completions", {"model": "m", "messages": HELLO},
             {"x-mock-openai": "reset"})
    assert mocks.requests("openai")[0]["scenario"] == "reset"


def test_reset_is_a_tcp_rst(mocks):
    port = int(mocks.openai_url.rsplit(":", 1)[1])
    with pytest.raises(ConnectionResetError):
        raw_exchange(port, {"model": "m", "messages": HELLO}, {"x-mock-openai": "reset"})


def test_once_scenario(oai):
    key = uuid.uuid4().hex
    h = {"x-mock-openai": "once-503", "x-mock-key": key}
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="m", messages=HELLO, extra_headers=h)
    assert oai.chat.completions.create(model="m", messages=HELLO, extra_headers=h).choices
    assert oai.chat.completions.create(model="m", messages=HELLO, extra_headers=h).choices
    with pytest.raises(openai.InternalServerError):  # another key fails once again
        oai.chat.completions.create(model="m", messages=HELLO,
                                    extra_headers={**h, "x-mock-key": key + "-2"})


def test_openai_error_mid_stream(oai):
    stream = oai.chat.completions.create(model="m", messages=HELLO, stream=True,
                                         extra_headers={"x-mock-openai": "error-mid-stream"})
    got = []
    with pytest.raises(openai.APIError):
        for ch in stream:
            got.append(ch)
    assert got and got[0].choices[0].delta.role == "assistant"


def test_openai_truncate_stream(mocks):
    r = post(mocks.openai_url + "/v1/chat/completions",
             {"model": "m", "messages": HELLO, "stream": True}, {"x-mock-openai": "truncate"})
    assert r.status_code == 200
    ev = sse_events(r.text)
    assert len(ev) >= 2 and all(d != "[DONE]" for _, d in ev)
    assert all(json.loads(d)["choices"][0]["finish_reason"] is None for _, d in ev)


def test_truncate_non_stream_body(mocks):
    with pytest.raises(requests.exceptions.RequestException):
        r = post(mocks.openai_url + "/v1/chat/completions", {"model": "m", "messages": HELLO},
                 {"x-mock-openai": "truncate"})
        r.json()


def test_stall(mocks, oai):
    t = time.monotonic()
    c = oai.chat.completions.create(model="m", messages=HELLO, extra_headers={
        "x-mock-openai": "stall", "x-mock-stall-seconds": "0.5"})
    assert c.choices and time.monotonic() - t >= 0.5
    with pytest.raises(requests.exceptions.Timeout):
        post(mocks.openai_url + "/v1/chat/completions", {"model": "m", "messages": HELLO},
             {"x-mock-openai": "stall"}, timeout=1)


# ------------------------------------------------------------------------------------ Anthropic


def anth(mocks, body, headers=None, **kw):
    body = {"model": "claude-x", "max_tokens": 64, "messages": HELLO, **body}
    return post(mocks.anthropic_url + "/v1/messages", body,
                {"x-api-key": "k", "anthropic-version": "2023-06-01", **(headers or {})}, **kw)


def fold(events):
    """Independent Anthropic stream accumulator -> (message, event names)."""
    msg, blocks, partial, names = None, {}, {}, []
    for name, data in events:
        names.append(name)
        d = json.loads(data)
        assert d["type"] == name, (name, d)
        if name == "message_start":
            msg = d["message"]
        elif name == "content_block_start":
            blocks[d["index"]] = dict(d["content_block"])
        elif name == "content_block_delta":
            b, delta = blocks[d["index"]], d["delta"]
            if delta["type"] == "text_delta":
                b["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                b["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                b["signature"] = delta["signature"]
            elif delta["type"] == "input_json_delta":
                partial[d["index"]] = partial.get(d["index"], "") + delta["partial_json"]
        elif name == "message_delta":
            msg.update(d["delta"])
            msg["usage"].update(d["usage"])
    for i, p in partial.items():
        blocks[i]["input"] = json.loads(p)
    if msg is not None:
        msg["content"] = [blocks[i] for i in sorted(blocks)]
    return msg, names


def test_anthropic_text(mocks):
    r = anth(mocks, {})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    m = r.json()
    assert m["type"] == "message" and m["stop_reason"] == "end_turn"
    assert m["content"] == [{"type": "text", "text": "The capital of France is Paris."}]
    assert m["usage"]["input_tokens"] == 20 and m["usage"]["output_tokens"] == 10
    q = mocks.requests("anthropic")[0]
    assert q["headers"]["x-api-key"] == "k" and q["body"]["max_tokens"] == 64


def test_anthropic_tool_use(mocks):
    r = anth(mocks, {"tools": [ANTHROPIC_WEATHER_TOOL]})
    m = r.json()
    assert m["stop_reason"] == "tool_use"
    tu = [b for b in m["content"] if b["type"] == "tool_use"]
    assert tu[0]["name"] == "get_weather" and tu[0]["id"].startswith("toolu_")
    assert tu[0]["input"] == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    # another tool: name from the request, input matching its schema
    tool = {"name": "lookup_city", "input_schema": {
        "type": "object", "properties": {"location": {"type": "string"},
                                         "limit": {"type": "integer"}},
        "required": ["location", "limit"]}}
    m = anth(mocks, {"tools": [tool]}).json()
    tu = [b for b in m["content"] if b["type"] == "tool_use"][0]
    assert tu["name"] == "lookup_city"
    assert tu["input"] == {"location": "San Francisco, CA", "limit": 1}
    tool = {"name": "ping", "input_schema": {"type": "object"}}
    tu = [b for b in anth(mocks, {"tools": [tool]}).json()["content"] if b["type"] == "tool_use"]
    assert tu[0]["input"] == {"location": "San Francisco, CA"}


def test_anthropic_stream_text(mocks):
    r = anth(mocks, {"stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    msg, names = fold(sse_events(r.text))
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert msg["content"] == [{"type": "text", "text": "Hello there!"}]
    assert msg["stop_reason"] == "end_turn" and msg["usage"]["output_tokens"] == 6
    assert r.text.endswith("\n\n")


def test_anthropic_stream_tools(mocks):
    tool = dict(ANTHROPIC_WEATHER_TOOL, name="weather_now")
    msg, names = fold(sse_events(anth(mocks, {"stream": True, "tools": [tool]}).text))
    assert msg["stop_reason"] == "tool_use" and names[-1] == "message_stop"
    assert msg["content"][1]["type"] == "tool_use"
    assert msg["content"][1]["name"] == "weather_now"
    assert msg["content"][1]["input"] == {"location": "Paris"}


def test_anthropic_stream_thinking(mocks):
    r = anth(mocks, {"stream": True, "thinking": {"type": "enabled", "budget_tokens": 1024}})
    msg, names = fold(sse_events(r.text))
    assert [b["type"] for b in msg["content"]] == ["thinking", "text"]
    assert msg["content"][0]["thinking"].startswith("This is a straightforward question")
    assert msg["content"][0]["signature"]
    assert names[-1] == "message_stop"


def test_anthropic_stream_wire_format(mocks):
    port = int(mocks.anthropic_url.rsplit(":", 1)[1])
    head, chunks = raw_exchange(port, {"model": "m", "max_tokens": 5, "messages": HELLO,
                                       "stream": True})
    assert b"transfer-encoding: chunked" in head.lower()
    assert len(chunks) > 10 and any(not c.endswith(b"\n") for c in chunks)


@pytest.mark.parametrize("scenario,status,etype", [
    ("529", 529, "overloaded_error"),
    ("429", 429, "rate_limit_error"),
    ("500", 500, "api_error"),
    ("503", 503, "api_error"),
    ("400", 400, "invalid_request_error"),
])
def test_anthropic_error_statuses(mocks, scenario, status, etype):
    r = anth(mocks, {"stream": True}, {"x-mock-anthropic": scenario})
    assert r.status_code == status
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == etype
    if scenario == "429":
        assert r.headers["retry-after"] == "0"
    if scenario == "529":
        assert body == {"type": "error",
                        "error": {"type": "overloaded_error", "message": "Overloaded"}}


def test_anthropic_error_mid_stream(mocks):
    r = anth(mocks, {"stream": True}, {"x-mock-anthropic": "error-mid-stream"})
    assert r.status_code == 200
    ev = sse_events(r.text)
    names = [n for n, _ in ev]
    assert names[0] == "message_start" and names.count("content_block_delta") == 2
    assert names[-1] == "error" and "message_stop" not in names
    assert json.loads(ev[-1][1])["error"]["type"] == "overloaded_error"


def test_anthropic_truncate(mocks):
    r = anth(mocks, {"stream": True}, {"x-mock-anthropic": "truncate"})
    assert r.status_code == 200
    names = [n for n, _ in sse_events(r.text)]
    assert names[0] == "message_start"
    assert "message_stop" not in names and "message_delta" not in names


def test_anthropic_reset_and_once(mocks):
    with pytest.raises(requests.exceptions.ConnectionError):
        anth(mocks, {}, {"x-mock-anthropic": "reset"})
    key = uuid.uuid4().hex
    h = {"x-mock-anthropic": "once-529", "x-mock-key": key}
    assert anth(mocks, {}, h).status_code == 529
    assert anth(mocks, {}, h).status_code == 200
    # the OpenAI scenario header does not affect the Anthropic mock
    assert anth(mocks, {}, {"x-mock-openai": "503"}).status_code == 200
