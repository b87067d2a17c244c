"""End-to-end: the happy paths of Switchyard in a real Envoy, against the mock providers.

Every expected value comes from the recordings the mocks replay (``recorded``), from the rendered
Envoy configuration (``helpers``), or from what the mocks recorded having received.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

import recorded as rec
from helpers import (ANTHROPIC_UPSTREAM_KEY, CLIENT_API_KEY, HELLO, OPENAI_UPSTREAM_KEY,
                     WEATHER_PARAMS, assert_upstream_hygiene, collect, configured_models,
                     internal_headers, post_chat, sse_payloads, upstream_model, weather_tool)

OPENAI_ROUTE = "route_gpt-4o-mini"
ANTHROPIC_ROUTE = "route_claude-haiku"


def only(reqs: list[dict]) -> dict:
    assert len(reqs) == 1, [(r["path"], r.get("scenario")) for r in reqs]
    return reqs[0]


def expected_usage(u: dict) -> dict:
    return {k: u[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def usage_numbers(u) -> dict:
    d = u if isinstance(u, dict) else u.to_dict()
    return {k: d[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def anthropic_message_text(msg: dict) -> str:
    return "".join(b["text"] for b in msg["content"] if b["type"] == "text")


# ==================================================================================================
# /v1/models


def test_models_list_is_exactly_the_configured_names_and_aliases(client, gateway):
    configured = []
    for m in configured_models(gateway):
        configured += [m["name"], *m.get("aliases", [])]
    assert sorted(configured) == sorted([
        "gpt-4o-mini", "fast", "claude-haiku", "claude-3-5-haiku-latest",
        # the more providers (test_providers.py)
        "gemini-flash", "gemini-vertex", "bedrock-nova", "command-r", "llama3", "azure-gpt",
        "magistral", "deepseek-reasoner", "any-chat", "text-embedding-3-small",
        "gemini-embedding", "cohere-embed", "titan-embed", "ollama-embed", "azure-embed"])
    page = client.models.list()
    ids = [m.id for m in page.data]
    assert sorted(ids) == sorted(configured)          # exactly: nothing missing, nothing extra
    assert len(ids) == len(set(ids))
    owners = {m["name"]: m.get("owned_by") for m in configured_models(gateway)}
    for m in configured_models(gateway):
        for name in [m["name"], *m.get("aliases", [])]:
            listed = next(x for x in page.data if x.id == name)
            assert listed.object == "model"
            assert listed.owned_by == owners[m["name"]]
    assert gateway.mock_requests("openai") == [] and gateway.mock_requests("anthropic") == []


def test_models_retrieve_alias(client, gateway):
    m = client.models.retrieve("fast")
    assert m.id == "fast" and m.object == "model"
    owner = next(x["owned_by"] for x in configured_models(gateway) if "fast" in x.get("aliases", []))
    assert m.owned_by == owner


def test_models_retrieve_unknown_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.models.retrieve("gpt-9-ultra")
    assert ei.value.status_code == 404
    assert "gpt-9-ultra" in ei.value.body["message"]


def test_models_post_is_405(gateway):
    r = requests.post(gateway.base_url + "/models", json={}, timeout=10)
    assert r.status_code == 405
    assert "GET" in r.headers.get("allow", "")
    assert r.json()["error"]["type"] == "invalid_request_error"


# ==================================================================================================
# OpenAI-compatible backend


def test_openai_non_stream_equals_recording(client, gateway):
    expected = rec.openai_text()
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
    # The OpenAI-compatible answer passes through untouched.
    assert raw.http_response.json() == expected
    resp = raw.parse()
    assert resp.id == expected["id"]
    assert resp.model == expected["model"]
    assert resp.choices[0].message.content == expected["choices"][0]["message"]["content"]
    assert resp.choices[0].finish_reason == expected["choices"][0]["finish_reason"]
    assert usage_numbers(resp.usage) == expected_usage(expected["usage"])
    assert resp.usage.completion_tokens_details.reasoning_tokens == \
        expected["usage"]["completion_tokens_details"]["reasoning_tokens"]

    sent = only(gateway.mock_requests("openai"))
    assert gateway.mock_requests("anthropic") == []
    assert sent["method"] == "POST" and sent["path"] == "/v1/chat/completions"
    assert sent["body"]["model"] == upstream_model(gateway, OPENAI_ROUTE, 0) == "gpt-4o-mini"
    assert sent["body"]["messages"] == HELLO
    assert "stream_options" not in sent["body"]
    assert_upstream_hygiene(sent, credential_header="authorization",
                            credential_value=f"Bearer {OPENAI_UPSTREAM_KEY}")
    assert sent["headers"]["authorization"] != f"Bearer {CLIENT_API_KEY}"


def test_openai_alias_is_sent_as_the_model(client, gateway):
    resp = client.chat.completions.create(model="fast", messages=HELLO)
    assert resp.choices[0].message.content == \
        rec.openai_text()["choices"][0]["message"]["content"]
    sent = only(gateway.mock_requests("openai"))
    assert sent["body"]["model"] == "gpt-4o-mini"
    assert gateway.mock_requests("anthropic") == []


def test_openai_unknown_fields_reach_the_provider(client, gateway):
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, seed=7,
                                   logit_bias={"1734": -100}, user="u-42",
                                   extra_body={"x_vendor_field": {"a": [1, 2]}})
    body = only(gateway.mock_requests("openai"))["body"]
    assert body["seed"] == 7 and body["logit_bias"] == {"1734": -100} and body["user"] == "u-42"
    assert body["x_vendor_field"] == {"a": [1, 2]}


def test_openai_stream_text_and_no_usage_chunk_unless_asked(client, gateway):
    recorded = rec.openai_stream_summary(rec.openai_stream_text_chunks())
    chunks = collect(client.chat.completions.create(model="gpt-4o-mini", messages=HELLO,
                                                    stream=True))
    got = rec.openai_stream_summary(chunks)
    assert got["text"] == recorded["text"] and got["text"]
    assert got["finish_reason"] == recorded["finish_reason"]
    assert got["ids"] == recorded["ids"] and got["models"] == recorded["models"]
    assert len(chunks) == len(rec.openai_stream_text_chunks())
    # The backend asked for usage, the gateway must not show the usage chunk to this client.
    assert all(c.get("choices") for c in chunks), [c for c in chunks if not c.get("choices")]
    assert all(c.get("usage") is None for c in chunks)

    sent = only(gateway.mock_requests("openai"))
    assert sent["body"]["stream"] is True
    assert sent["body"]["stream_options"]["include_usage"] is True
    assert_upstream_hygiene(sent, credential_header="authorization",
                            credential_value=f"Bearer {OPENAI_UPSTREAM_KEY}")


def test_openai_stream_raw_events_are_the_recorded_ones(gateway):
    r = post_chat(gateway, {"model": "gpt-4o-mini", "messages": HELLO, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(r)
    assert payloads[-1] == "[DONE]"
    assert [json.loads(p) for p in payloads[:-1]] == rec.openai_stream_text_chunks()


def test_openai_stream_with_include_usage_ends_with_recorded_usage(client, gateway):
    usage_chunk = rec.openai_stream_usage_chunk()
    chunks = collect(client.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, stream=True,
        stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"] == usage_chunk["usage"]
    assert sum(1 for c in chunks if c.get("usage")) == 1
    assert rec.openai_stream_summary(chunks[:-1])["text"] == \
        rec.openai_stream_summary(rec.openai_stream_text_chunks())["text"]
    sent = only(gateway.mock_requests("openai"))
    assert sent["body"]["stream_options"] == {"include_usage": True}


def test_openai_stream_include_usage_false_gets_no_usage(client, gateway):
    chunks = collect(client.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, stream=True,
        stream_options={"include_usage": False}))
    assert all(c.get("choices") for c in chunks)
    assert only(gateway.mock_requests("openai"))["body"]["stream_options"]["include_usage"] is True


def test_openai_tools_non_stream(client, gateway):
    expected = rec.openai_tools()
    exp_call = expected["choices"][0]["message"]["tool_calls"][0]
    tool = weather_tool("lookup_weather")
    resp = client.chat.completions.create(
        model="gpt-4o-mini", tools=[tool], tool_choice="auto",
        messages=[{"role": "user", "content": "What is the weather like in Boston today?"}])
    choice = resp.choices[0]
    assert choice.finish_reason == expected["choices"][0]["finish_reason"] == "tool_calls"
    assert len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.id == exp_call["id"]
    assert call.function.name == "lookup_weather"     # the mock answers with the request's tool
    assert json.loads(call.function.arguments) == json.loads(exp_call["function"]["arguments"])
    assert usage_numbers(resp.usage) == expected_usage(expected["usage"])
    sent = only(gateway.mock_requests("openai"))
    assert sent["body"]["tools"] == [tool]
    assert sent["body"]["tool_choice"] == "auto"


def test_openai_tools_stream(client, gateway):
    recorded = rec.openai_stream_summary(rec.openai_stream_tools_chunks())
    assert recorded["tool_calls"]
    tool = {"type": "function", "function": {
        "name": "capital_of", "parameters": {"type": "object",
                                             "properties": {"country": {"type": "string"}},
                                             "required": ["country"]}}}
    chunks = collect(client.chat.completions.create(
        model="gpt-4o-mini", tools=[tool], stream=True,
        messages=[{"role": "user", "content": "What is the capital of the UK?"}]))
    got = rec.openai_stream_summary(chunks)
    assert len(got["tool_calls"]) == len(recorded["tool_calls"]) == 1
    assert got["tool_calls"][0]["id"] == recorded["tool_calls"][0]["id"]
    assert got["tool_calls"][0]["name"] == "capital_of"
    assert json.loads(got["tool_calls"][0]["arguments"]) == \
        json.loads(recorded["tool_calls"][0]["arguments"])
    assert got["finish_reason"] == recorded["finish_reason"] == "tool_calls"
    assert got["usage"] is None       # recorded, but not asked for by this client


def test_openai_tool_result_round_trip_passes_unchanged(client, gateway):
    first = rec.openai_stream_summary(rec.openai_stream_tools_chunks())["tool_calls"][0]
    after = rec.openai_stream_summary(rec.openai_stream_after_tool_chunks())
    tool = {"type": "function", "function": {
        "name": "get_capital", "description": "",
        "parameters": {"type": "object", "properties": {"country": {"type": "string"}},
                       "required": ["country"], "additionalProperties": False},
        "strict": True}}
    messages = [
        {"role": "user", "content": "What is the capital of the UK? Use the tool, then answer."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": first["id"], "type": "function",
             "function": {"name": "get_capital", "arguments": first["arguments"]}}]},
        {"role": "tool", "tool_call_id": first["id"], "content": "London"},
    ]
    chunks = collect(client.chat.completions.create(model="gpt-4o-mini", tools=[tool],
                                                    messages=messages, stream=True))
    got = rec.openai_stream_summary(chunks)
    assert got["text"] == after["text"] and got["text"]
    assert got["finish_reason"] == after["finish_reason"]
    sent = only(gateway.mock_requests("openai"))
    assert sent["body"]["messages"] == messages
    assert sent["body"]["tools"] == [tool]


# ==================================================================================================
# Anthropic backend


def test_anthropic_non_stream_translation(client, gateway):
    msg = rec.anthropic_text()
    resp = client.chat.completions.create(
        model="claude-haiku",
        messages=[{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "What is the capital of France?"}],
        extra_headers={"x-api-key": "sk-client-should-not-leak"})
    assert resp.object == "chat.completion"
    assert resp.id == msg["id"]
    assert resp.model == msg["model"]
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == anthropic_message_text(msg)
    assert resp.choices[0].finish_reason == rec.ANTHROPIC_STOP_TO_FINISH[msg["stop_reason"]]
    assert usage_numbers(resp.usage) == rec.openai_usage_from_anthropic(msg["usage"])

    sent = only(gateway.mock_requests("anthropic"))
    assert gateway.mock_requests("openai") == []
    assert sent["method"] == "POST" and sent["path"] == "/v1/messages"
    assert_upstream_hygiene(sent, credential_header="x-api-key",
                            credential_value=ANTHROPIC_UPSTREAM_KEY, absent=("authorization",))
    assert sent["headers"].get("anthropic-version") == "2023-06-01", sent["headers"]
    body = sent["body"]
    assert body["model"] == upstream_model(gateway, ANTHROPIC_ROUTE, 0)
    assert body["system"] == "You are a helpful assistant."
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert body["messages"][0]["content"] in (
        "What is the capital of France?",
        [{"type": "text", "text": "What is the capital of France?"}])
    assert body["max_tokens"] == 4096
    assert "stream" not in body or body["stream"] is False


@pytest.mark.parametrize("limits, expected", [
    ({"max_tokens": 123}, 123),
    ({"max_completion_tokens": 77}, 77),
    ({"max_tokens": 500, "max_completion_tokens": 64}, 64),   # OpenAI: the newer field wins
])
def test_anthropic_max_tokens_from_client(client, gateway, limits, expected):
    client.chat.completions.create(model="claude-haiku", messages=HELLO, **limits)
    assert only(gateway.mock_requests("anthropic"))["body"]["max_tokens"] == expected


def test_anthropic_sampling_and_stop(client, gateway):
    client.chat.completions.create(model="claude-haiku", messages=HELLO, stop=["END", "\n\nHuman:"],
                                   temperature=0.25, top_p=0.5)
    body = only(gateway.mock_requests("anthropic"))["body"]
    assert body["stop_sequences"] == ["END", "\n\nHuman:"]
    assert "stop" not in body
    assert body["temperature"] == 0.25 and body["top_p"] == 0.5
    gateway.clear_mocks()
    client.chat.completions.create(model="claude-3-5-haiku-latest", messages=HELLO, stop="###")
    body = only(gateway.mock_requests("anthropic"))["body"]
    assert body["stop_sequences"] == ["###"]
    assert "temperature" not in body and "top_p" not in body


def test_anthropic_stream_translation(client, gateway):
    recorded = rec.anthropic_stream_text()
    chunks = collect(client.chat.completions.create(model="claude-haiku", messages=HELLO,
                                                    stream=True))
    got = rec.openai_stream_summary(chunks)
    assert got["text"] == recorded["text"] == "".join(recorded["text_deltas"])
    assert got["finish_reason"] == rec.ANTHROPIC_STOP_TO_FINISH[recorded["stop_reason"]]
    assert got["ids"] == {recorded["id"]}
    assert got["models"] == {recorded["model"]}
    assert len({c["created"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c.get("choices") for c in chunks)          # no usage chunk: not asked for
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    sent = only(gateway.mock_requests("anthropic"))
    assert sent["body"]["stream"] is True
    assert_upstream_hygiene(sent, credential_header="x-api-key",
                            credential_value=ANTHROPIC_UPSTREAM_KEY, absent=("authorization",))


def test_anthropic_stream_with_include_usage(client, gateway):
    recorded = rec.anthropic_stream_text()
    chunks = collect(client.chat.completions.create(
        model="claude-haiku", messages=HELLO, stream=True,
        stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last["choices"] == []
    assert usage_numbers(last["usage"]) == rec.openai_usage_from_anthropic(recorded["usage"])
    assert sum(1 for c in chunks if c.get("usage")) == 1
    assert {c["id"] for c in chunks} == {recorded["id"]}
    assert rec.openai_stream_summary(chunks)["text"] == recorded["text"]


def test_anthropic_stream_raw_ends_with_done(gateway):
    r = post_chat(gateway, {"model": "claude-haiku", "messages": HELLO, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(r)
    assert payloads[-1] == "[DONE]"
    assert payloads.count("[DONE]") == 1


def test_anthropic_tools_non_stream(client, gateway):
    recorded = rec.anthropic_tool_use()
    rec_call = recorded["tool_uses"][0]
    tool = weather_tool("lookup_weather")
    resp = client.chat.completions.create(
        model="claude-haiku", tools=[tool],
        messages=[{"role": "user", "content": "What's the weather like in San Francisco?"}])
    choice = resp.choices[0]
    assert choice.finish_reason == rec.ANTHROPIC_STOP_TO_FINISH[recorded["stop_reason"]] \
        == "tool_calls"
    assert choice.message.content == recorded["text"]
    assert len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.id == rec_call["id"]
    assert call.function.name == "lookup_weather"
    expected_input = {k: v for k, v in rec_call["input"].items() if k in WEATHER_PARAMS["properties"]}
    assert json.loads(call.function.arguments) == expected_input
    assert usage_numbers(resp.usage) == rec.openai_usage_from_anthropic(recorded["usage"])
    body = only(gateway.mock_requests("anthropic"))["body"]
    assert body["tools"] == [{"name": "lookup_weather",
                              "description": tool["function"]["description"],
                              "input_schema": WEATHER_PARAMS}]


def test_anthropic_tools_stream(client, gateway):
    recorded = rec.anthropic_stream_tools()
    rec_call = recorded["tool_uses"][0]
    chunks = collect(client.chat.completions.create(
        model="claude-haiku", tools=[weather_tool("weather_now")], stream=True,
        messages=[{"role": "user", "content": "What's the weather in Paris?"}]))
    got = rec.openai_stream_summary(chunks)
    assert got["text"] == recorded["text"]
    assert len(got["tool_calls"]) == 1
    call = got["tool_calls"][0]
    assert call["id"] == rec_call["id"]
    assert call["name"] == "weather_now"
    assert call["arguments"] == rec_call["partial_json"]
    assert json.loads(call["arguments"]) == json.loads(rec_call["partial_json"])
    assert got["finish_reason"] == rec.ANTHROPIC_STOP_TO_FINISH[recorded["stop_reason"]]
    assert got["ids"] == {recorded["id"]} and got["models"] == {recorded["model"]}


def test_anthropic_tool_round_trip_blocks(client, gateway):
    rec_call = rec.anthropic_tool_use()["tool_uses"][0]
    args = json.dumps(rec_call["input"])
    messages = [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "What's the weather like in San Francisco?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": rec_call["id"], "type": "function",
             "function": {"name": "get_weather", "arguments": args}}]},
        {"role": "tool", "tool_call_id": rec_call["id"], "content": "15 degrees, sunny"},
    ]
    resp = client.chat.completions.create(model="claude-haiku", messages=messages,
                                          tools=[weather_tool()])
    assert resp.choices[0].message.content is not None or resp.choices[0].message.tool_calls
    body = only(gateway.mock_requests("anthropic"))["body"]
    assert body["system"] == "Use tools."
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["user", "assistant", "user"], roles
    assistant = body["messages"][1]["content"]
    uses = [b for b in assistant if b["type"] == "tool_use"]
    assert {"type": "text", "text": "Let me check."} in assistant
    assert uses == [{"type": "tool_use", "id": rec_call["id"], "name": "get_weather",
                     "input": rec_call["input"]}]
    results = [b for b in body["messages"][2]["content"] if b["type"] == "tool_result"]
    assert len(results) == 1
    assert results[0]["tool_use_id"] == uses[0]["id"] == rec_call["id"]
    content = results[0].get("content")
    if isinstance(content, list):
        content = "".join(b.get("text", "") for b in content)
    assert content == "15 degrees, sunny"


@pytest.mark.parametrize("choice, expected", [
    ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}},
     {"type": "tool", "name": "get_weather"}),
    ("auto", {"type": "auto"}),
])
def test_anthropic_tool_choice(client, gateway, choice, expected):
    client.chat.completions.create(model="claude-haiku", messages=HELLO,
                                   tools=[weather_tool()], tool_choice=choice)
    assert only(gateway.mock_requests("anthropic"))["body"]["tool_choice"] == expected


# ==================================================================================================
# image parts, response_format


def _png_1x1() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


PNG_B64 = base64.b64encode(_png_1x1()).decode()
IMAGE_URL = "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg"
IMAGE_MESSAGES = [{"role": "user", "content": [
    {"type": "text", "text": "Compare these two images."},
    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
    {"type": "image_url", "image_url": {"url": IMAGE_URL, "detail": "low"}},
]}]


def test_image_parts_become_anthropic_image_blocks(client, gateway):
    client.chat.completions.create(model="claude-haiku", messages=IMAGE_MESSAGES)
    blocks = only(gateway.mock_requests("anthropic"))["body"]["messages"][0]["content"]
    assert blocks == [
        {"type": "text", "text": "Compare these two images."},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
        {"type": "image", "source": {"type": "url", "url": IMAGE_URL}},
    ]


def test_image_parts_pass_unchanged_to_openai(client, gateway):
    client.chat.completions.create(model="gpt-4o-mini", messages=IMAGE_MESSAGES)
    assert only(gateway.mock_requests("openai"))["body"]["messages"] == IMAGE_MESSAGES


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"},
                                           "population": {"type": "integer"}},
          "required": ["city", "population"], "additionalProperties": False}
RESPONSE_FORMATS = {
    "json_object": {"type": "json_object"},
    "json_schema": {"type": "json_schema", "json_schema": {"name": "city_info", "strict": True,
                                                           "schema": SCHEMA}},
}


@pytest.mark.parametrize("kind", sorted(RESPONSE_FORMATS))
def test_response_format_passes_to_openai(client, gateway, kind):
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO,
                                   response_format=RESPONSE_FORMATS[kind])
    assert only(gateway.mock_requests("openai"))["body"]["response_format"] == \
        RESPONSE_FORMATS[kind]


def _json_values_in(text: str) -> list:
    dec, out = json.JSONDecoder(), []
    for i, ch in enumerate(text):
        if ch == "{":
            try:
                out.append(dec.raw_decode(text[i:])[0])
            except ValueError:
                pass
    return out


@pytest.mark.parametrize("kind", sorted(RESPONSE_FORMATS))
def test_response_format_emulated_for_anthropic(client, gateway, kind):
    client.chat.completions.create(
        model="claude-haiku", response_format=RESPONSE_FORMATS[kind],
        messages=[{"role": "system", "content": "You know geography."},
                  {"role": "user", "content": "Tell me about Paris."}])
    body = only(gateway.mock_requests("anthropic"))["body"]
    assert "response_format" not in body
    system = body["system"]
    if isinstance(system, list):
        system = "\n".join(b["text"] for b in system)
    assert system.startswith("You know geography.")
    extra = system[len("You know geography."):]
    assert "json" in extra.lower()
    if kind == "json_schema":
        assert "city_info" in extra
        assert SCHEMA in _json_values_in(extra)


# ==================================================================================================
# concurrency


def test_twenty_concurrent_mixed_requests(client, gateway):
    openai_text = rec.openai_text()["choices"][0]["message"]["content"]
    openai_stream = rec.openai_stream_summary(rec.openai_stream_text_chunks())["text"]
    anth_text = anthropic_message_text(rec.anthropic_text())
    anth_stream = rec.anthropic_stream_text()["text"]

    def non_stream(model, expected):
        def run():
            r = client.chat.completions.create(model=model, messages=HELLO)
            return r.choices[0].message.content, expected
        return run

    def stream(model, expected):
        def run():
            chunks = collect(client.chat.completions.create(model=model, messages=HELLO,
                                                            stream=True))
            return rec.openai_stream_summary(chunks)["text"], expected
        return run

    kinds = [non_stream("gpt-4o-mini", openai_text), stream("gpt-4o-mini", openai_stream),
             non_stream("claude-haiku", anth_text), stream("claude-haiku", anth_stream),
             non_stream("fast", openai_text)]
    jobs = [kinds[i % len(kinds)] for i in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda job: job(), jobs))
    for i, (got, expected) in enumerate(results):
        assert got == expected, (i, got, expected)
    openai_reqs = gateway.mock_requests("openai")
    anth_reqs = gateway.mock_requests("anthropic")
    assert len(openai_reqs) == 12 and len(anth_reqs) == 8
    assert {r["body"]["model"] for r in openai_reqs} == {"gpt-4o-mini"}
    assert not any(internal_headers(r) for r in openai_reqs + anth_reqs)


def test_concurrent_requests_sharing_a_client_request_id_do_not_mix(client, gateway):
    """Clients may reuse x-request-id; requests in flight together must still each get their own
    model, backend translation and answer (including one that fails over)."""
    openai_text = rec.openai_text()["choices"][0]["message"]["content"]
    anth_text = anthropic_message_text(rec.anthropic_text())
    same_id = {"x-request-id": "client-fixed-request-id"}

    def job(i):
        if i % 3 == 0:
            r = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO,
                                               extra_headers=same_id)
            return r.choices[0].message.content, openai_text
        if i % 3 == 1:
            r = client.chat.completions.create(model="claude-haiku", messages=HELLO,
                                               extra_headers=same_id)
            return r.choices[0].message.content, anth_text
        r = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO,
                                           extra_headers={**same_id, "x-mock-openai": "503"})
        return r.choices[0].message.content, anth_text

    with ThreadPoolExecutor(max_workers=18) as pool:
        results = list(pool.map(job, range(18)))
    for i, (got, expected) in enumerate(results):
        assert got == expected, (i, got, expected)
    openai_reqs = gateway.mock_requests("openai")
    anth_reqs = gateway.mock_requests("anthropic")
    assert len(openai_reqs) == 12 and len(anth_reqs) == 12
    assert {r["body"]["model"] for r in openai_reqs} == {"gpt-4o-mini"}
    assert {r["body"]["model"] for r in anth_reqs} == {upstream_model(gateway, ANTHROPIC_ROUTE, 0)}
    assert all(r["path"] == "/v1/messages" for r in anth_reqs)
    assert all(r["path"] == "/v1/chat/completions" for r in openai_reqs)
