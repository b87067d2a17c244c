"""End-to-end: the OpenAI Responses API (`POST /v1/responses`) as a front door, in a real Envoy,
through the official `openai` SDK unmodified (only `base_url` changes).

Backends of the demo configuration: `gpt-4o-mini` (OpenAI, failing over to Anthropic) — a
Responses request passes through to OpenAI's own `/v1/responses`, which the OpenAI mock answers
with recorded Responses traffic (`tests/fixtures/openai-responses/`); `claude-haiku` (Anthropic) and
`gemini-flash` (Gemini) — the request is translated to chat and on to the provider, the answer back
into a Response or the Responses event stream; `any-chat` (OpenAI → Gemini → Bedrock).

Every expected value comes from a recording (the mocks replay them) or from what the mocks
recorded having received.
"""

from __future__ import annotations

import base64
import json
import math
import time
import uuid
from decimal import Decimal
from pathlib import Path

import openai
import pytest
import requests
import yaml

import harness
import recorded as rec
import recorded_providers as rp
from helpers import ANTHROPIC_UPSTREAM_KEY, CLIENT_API_KEY, OPENAI_UPSTREAM_KEY
from keys_gateway import KeysGateway, key_hash

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "openai-responses"

CAPITAL_TOOL = {
    "type": "function", "name": "get_capital", "description": "The capital of a country.",
    "parameters": {"type": "object", "properties": {"country": {"type": "string"}},
                   "required": ["country"], "additionalProperties": False},
    "strict": True,
}
WEATHER_TOOL = {
    "type": "function", "name": "get_weather", "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
}
CITY_FORMAT = {"format": {"type": "json_schema", "name": "CityLocation", "strict": True, "schema": {
    "type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"], "additionalProperties": False}}}

# A 1x1 PNG (the image the tests send inline).
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a5f6e1"
    "f30000000049454e44ae426082")).decode()


# --------------------------------------------------------------------------------------------------
# recordings


def _cassette(name: str) -> list[dict]:
    return yaml.safe_load((FIXTURES / name).read_text(encoding="utf-8"))["interactions"]


def recorded_response(name: str, i: int = 0) -> dict:
    return _cassette(name)[i]["response"]["parsed_body"]


def recorded_events(name: str, i: int) -> list[dict]:
    body = _cassette(name)[i]["response"]["body"]["string"]
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]


SIMPLE = "test_openai_responses_model_simple_response.yaml"
TOOL_CALL = "test_openai_responses_model_simple_response_with_tool_call.yaml"
STREAM = "test_openai_responses_stream.yaml"


def only(reqs: list[dict]) -> dict:
    assert len(reqs) == 1, [(r["path"], r.get("scenario")) for r in reqs]
    return reqs[0]


def raw(gateway, body: dict, headers: dict | None = None, path: str = "/v1/responses", method: str = "POST"):
    h = {"authorization": f"Bearer {CLIENT_API_KEY}", "content-type": "application/json", **(headers or {})}
    return requests.request(method, gateway.gateway_url + path, headers=h,
                            data=json.dumps(body) if body is not None else None, timeout=60)


def events_of(stream) -> list:
    return [e for e in stream]


def check_sequence(events: list) -> None:
    """What a client relies on: created first, sequence numbers from 0 without gaps, one terminal."""
    assert events[0].type == "response.created"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    terminal = [e for e in events if e.type in ("response.completed", "response.incomplete", "response.failed")]
    assert len(terminal) == 1 and terminal[0] is events[-1], [e.type for e in events]


# ==================================================================================================
# OpenAI backend: the Responses request passes through to OpenAI's own /v1/responses


def test_openai_passthrough_whole_response_is_openais_own(client, gateway):
    want = recorded_response(SIMPLE)
    r = client.responses.with_raw_response.create(model="gpt-4o-mini", input="What is the capital of France?",
                                                  store=True, metadata={"run": "e2e"})
    resp = r.parse()
    assert resp.id == want["id"] and resp.model == want["model"]
    assert resp.output_text == want["output"][0]["content"][0]["text"]
    assert resp.usage.input_tokens == want["usage"]["input_tokens"]
    assert r.headers["x-switchyard-backend"] == "openai-demo"
    sent = only(gateway.mock_requests("openai"))
    assert sent["path"] == "/v1/responses"
    # Untouched: store and metadata included (only the model could be renamed; here it is the same).
    assert sent["body"] == {"model": "gpt-4o-mini", "input": "What is the capital of France?", "store": True,
                            "metadata": {"run": "e2e"}}
    assert sent["headers"]["authorization"] == f"Bearer {OPENAI_UPSTREAM_KEY}"


def test_openai_passthrough_stream_is_the_recorded_event_stream(client, gateway):
    want = recorded_events(STREAM, 0)
    events = events_of(client.responses.create(model="gpt-4o-mini", input="What is the capital of France?",
                                                tools=[CAPITAL_TOOL], stream=True))
    assert [e.to_dict() for e in events] == want
    with client.responses.stream(model="gpt-4o-mini", input="What is the capital of France?",
                                 tools=[CAPITAL_TOOL]) as s:
        final = s.get_final_response()
    call = next(o for o in final.output if o.type == "function_call")
    recorded_call = next(o for o in want[-1]["response"]["output"] if o["type"] == "function_call")
    assert (call.call_id, call.name, call.arguments) == (recorded_call["call_id"], "get_capital", recorded_call["arguments"])
    assert final.usage.total_tokens == want[-1]["response"]["usage"]["total_tokens"]


def test_openai_builtin_tools_pass_through_untouched(client, gateway):
    body = {"model": "gpt-4o-mini", "input": "What was a positive news story from today?",
            "tools": [{"type": "web_search"}], "include": ["web_search_call.action.sources"]}
    resp = client.responses.create(**body)
    assert resp.output_text == recorded_response(SIMPLE)["output"][0]["content"][0]["text"]
    assert only(gateway.mock_requests("openai"))["body"] == body


def test_openai_function_tool_round_trip(client, gateway):
    first = client.responses.create(model="gpt-4o-mini", input="What is the capital of PotatoLand?", tools=[CAPITAL_TOOL])
    call = first.output[0]
    want = recorded_response(TOOL_CALL, 0)["output"][0]
    assert (call.type, call.call_id, call.arguments) == ("function_call", want["call_id"], want["arguments"])
    second = client.responses.create(model="gpt-4o-mini", tools=[CAPITAL_TOOL], input=[
        {"role": "user", "content": "What is the capital of PotatoLand?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Potato City"}])
    assert second.output_text == recorded_response(TOOL_CALL, 1)["output"][0]["content"][0]["text"]


# ==================================================================================================
# Anthropic backend: translated


def test_anthropic_whole_response(client, gateway):
    want = rec.anthropic_text()
    r = client.responses.with_raw_response.create(model="claude-haiku", instructions="You are terse.",
                                                  input="What is the capital of France?", max_output_tokens=300,
                                                  temperature=0.5)
    resp = r.parse()
    assert resp.object == "response" and resp.status == "completed" and resp.id.startswith("resp_")
    assert resp.output_text == "".join(b["text"] for b in want["content"] if b["type"] == "text")
    u = rec.openai_usage_from_anthropic(want["usage"])
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == \
        (u["prompt_tokens"], u["completion_tokens"], u["total_tokens"])
    assert resp.model == want["model"]
    assert (resp.instructions, resp.max_output_tokens, resp.temperature, resp.store) == ("You are terse.", 300, 0.5, False)
    assert r.headers["x-switchyard-backend"] == "anthropic-demo"
    sent = only(gateway.mock_requests("anthropic"))
    assert sent["path"] == "/v1/messages"
    assert sent["body"]["system"] in ("You are terse.", [{"type": "text", "text": "You are terse."}])
    assert sent["body"]["messages"] == [{"role": "user", "content": "What is the capital of France?"}] or \
        sent["body"]["messages"][0]["content"] in ("What is the capital of France?",
                                                   [{"type": "text", "text": "What is the capital of France?"}])
    assert sent["body"]["max_tokens"] == 300 and sent["body"]["temperature"] == 0.5
    assert sent["headers"]["x-api-key"] == ANTHROPIC_UPSTREAM_KEY


def test_anthropic_stream_and_stream_helper(client, gateway):
    want = rec.anthropic_stream_text()
    events = events_of(client.responses.create(model="claude-haiku", input="Hello!", stream=True))
    check_sequence(events)
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == want["text"]
    done = events[-1].response
    assert done.status == "completed" and done.output_text == want["text"]
    assert done.usage.output_tokens == want["usage"]["output_tokens"]
    with client.responses.stream(model="claude-haiku", input="Hello!") as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == want["text"] == final.output_text
    assert all(r["body"]["stream"] is True for r in gateway.mock_requests("anthropic"))


def test_anthropic_function_tools_round_trip_whole_and_streamed(client, gateway):
    want = rec.anthropic_tool_use()["tool_uses"][0]
    first = client.responses.create(model="claude-haiku", input="What's the weather in San Francisco?",
                                    tools=[WEATHER_TOOL], tool_choice="required")
    call = next(o for o in first.output if o.type == "function_call")
    assert call.name == "get_weather" and call.call_id == want["id"]
    assert json.loads(call.arguments) == {"location": want["input"]["location"]}
    sent = only(gateway.mock_requests("anthropic"))["body"]
    assert sent["tools"][0]["name"] == "get_weather" and sent["tool_choice"]["type"] == "any"
    gateway.clear_mocks()
    second = client.responses.create(model="claude-haiku", tools=[WEATHER_TOOL], input=[
        {"role": "user", "content": "What's the weather in San Francisco?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "15 degrees, sunny"}])
    assert second.status == "completed"
    msgs = only(gateway.mock_requests("anthropic"))["body"]["messages"]
    tool_use = next(b for b in msgs[1]["content"] if b["type"] == "tool_use")
    assert (tool_use["id"], tool_use["input"]) == (call.call_id, json.loads(call.arguments))
    result = next(b for b in msgs[2]["content"] if b["type"] == "tool_result")
    assert result["tool_use_id"] == call.call_id
    # Streamed: the recorded tool_use stream, accumulated by the SDK's stream helper.
    streamed = rec.anthropic_stream_tools()
    with client.responses.stream(model="claude-haiku", input="Weather in Paris?", tools=[WEATHER_TOOL]) as s:
        arg_deltas = [e.delta for e in s if e.type == "response.function_call_arguments.delta"]
        final = s.get_final_response()
    call = next(o for o in final.output if o.type == "function_call")
    assert call.call_id == streamed["tool_uses"][0]["id"]
    assert "".join(arg_deltas) == call.arguments
    assert json.loads(call.arguments) == json.loads(streamed["tool_uses"][0]["partial_json"])
    assert final.output_text == streamed["text"]


def test_anthropic_image_input(client, gateway):
    client.responses.create(model="claude-haiku", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is in this image?"},
        {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}", "detail": "auto"}]}])
    content = only(gateway.mock_requests("anthropic"))["body"]["messages"][0]["content"]
    image = next(b for b in content if b["type"] == "image")
    assert image["source"] == {"type": "base64", "media_type": "image/png", "data": PNG}


def test_anthropic_reasoning_effort_becomes_thinking_and_a_reasoning_item(client, gateway):
    resp = client.responses.create(model="claude-haiku", input="How do I cross the street?",
                                   reasoning={"effort": "high"}, max_output_tokens=8000)
    sent = only(gateway.mock_requests("anthropic"))["body"]
    assert sent["thinking"]["type"] in ("enabled", "adaptive")
    # The mock answers with the recorded thinking stream folded into a Message.
    _, body = rec.cassette_response(f"{rec.PYDANTIC_CASSETTES}/test_anthropic/test_anthropic_model_thinking_part_stream.yaml")
    thinking = text = ""
    for _, data in rec.parse_sse(body):
        d = json.loads(data).get("delta") or {}
        thinking += d.get("thinking", "") if d.get("type") == "thinking_delta" else ""
        text += d.get("text", "") if d.get("type") == "text_delta" else ""
    reasoning = [o for o in resp.output if o.type == "reasoning"]
    assert len(reasoning) == 1 and reasoning[0].content[0].text == thinking
    assert resp.output_text == text
    assert resp.reasoning.effort == "high"


# ==================================================================================================
# Gemini backend: translated


def test_gemini_whole_stream_and_json_schema(client, gateway):
    want = rp.gemini_text()
    resp = client.responses.create(model="gemini-flash", input="Hello!")
    assert resp.output_text == rp.gemini_text_of(want)
    assert resp.usage.input_tokens == want["usageMetadata"]["promptTokenCount"]
    events = events_of(client.responses.create(model="gemini-flash", input="Hello!", stream=True))
    check_sequence(events)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "".join(rp.gemini_text_of(c) for c in rp.gemini_stream_events())
    gateway.clear_mocks()
    resp = client.responses.create(model="gemini-flash", input="Largest city in Mexico?", text=CITY_FORMAT)
    sent = only(gateway.mock_requests("more"))["body"]
    gc = sent["generationConfig"]
    assert gc["responseMimeType"] == "application/json"
    schema = gc.get("responseJsonSchema") or gc.get("responseSchema")
    assert schema["properties"].keys() == CITY_FORMAT["format"]["schema"]["properties"].keys()
    assert json.loads(resp.output_text) == json.loads(rp.json_answer())
    assert resp.text.format.type == "json_schema" and resp.text.format.name == "CityLocation"


def test_gemini_function_tool_round_trip(client, gateway):
    want = rp.gemini_tool_call()
    first = client.responses.create(model="gemini-flash", input="What is the capital of France?", tools=[CAPITAL_TOOL])
    call = next(o for o in first.output if o.type == "function_call")
    fc = next(p["functionCall"] for p in want["candidates"][0]["content"]["parts"] if "functionCall" in p)
    assert call.name == "get_capital" and json.loads(call.arguments) == fc["args"]
    second = client.responses.create(model="gemini-flash", tools=[CAPITAL_TOOL], input=[
        {"role": "user", "content": "What is the capital of France?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Paris"}])
    assert second.output_text == rp.gemini_text_of(rp.gemini_after_tool())


# ==================================================================================================
# presets (translated through the canonical chat request): DeepSeek's reasoning


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_deepseek_reasoning_becomes_a_reasoning_item(client, gateway, stream):
    if stream:
        want = rp.deepseek_stream_summary()
        with client.responses.stream(model="deepseek-reasoner", input="Hello!") as s:
            reasoning = "".join(e.delta for e in s if e.type == "response.reasoning_text.delta")
            resp = s.get_final_response()
        assert reasoning == want["reasoning"]
        usage = want["usage"]
    else:
        doc = rp.deepseek_text()
        msg = doc["choices"][0]["message"]
        want = {"reasoning": msg["reasoning_content"], "text": msg["content"]}
        resp = client.responses.create(model="deepseek-reasoner", input="Hello!")
        usage = doc["usage"]
    kinds = [o.type for o in resp.output]
    assert kinds == ["reasoning", "message"]
    assert resp.output[0].content[0].text == want["reasoning"]
    assert resp.output_text == want["text"]
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    sent = only(gateway.mock_requests("more"))
    assert sent["provider"] == "deepseek" and sent["body"]["messages"] == [{"role": "user", "content": "Hello!"}]


# ==================================================================================================
# failover across schemas


def test_failover_from_openai_passthrough_to_anthropic_whole_and_streamed(client, gateway):
    r = client.responses.with_raw_response.create(model="gpt-4o-mini", input="What is the capital of France?",
                                                  extra_headers={"x-mock-openai": "503"})
    resp = r.parse()
    assert r.headers["x-switchyard-backend"] == "anthropic-demo" and r.headers["x-switchyard-attempts"] == "2"
    assert resp.object == "response" and resp.output_text == "".join(
        b["text"] for b in rec.anthropic_text()["content"] if b["type"] == "text")
    assert [q["path"] for q in gateway.mock_requests("openai")] == ["/v1/responses"]
    gateway.clear_mocks()
    with client.responses.stream(model="gpt-4o-mini", input="Hello!", extra_headers={"x-mock-openai": "reset"}) as s:
        events = list(s)
        final = s.get_final_response()
    assert final.output_text == rec.anthropic_stream_text()["text"]
    check_sequence([e for e in events])
    assert len(gateway.mock_requests("anthropic")) == 1


def test_failover_from_openai_to_gemini_on_any_chat(client, gateway):
    events = events_of(client.responses.create(model="any-chat", input="Hello!", stream=True,
                                               extra_headers={"x-mock-openai": "500"}))
    check_sequence(events)
    assert events[-1].response.output_text == "".join(rp.gemini_text_of(c) for c in rp.gemini_stream_events())


def test_openai_only_features_fail_over_to_a_clear_400_not_a_degraded_request(client, gateway):
    # OpenAI fails; its fallback (Anthropic) cannot run a built-in tool: the client learns why.
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="gpt-4o-mini", input="news?", tools=[{"type": "web_search"}],
                                extra_headers={"x-mock-openai": "503"})
    assert e.value.body["code"] == "unsupported_on_backend" and e.value.body["param"] == "tools[0]"
    assert "web_search" in e.value.message and "anthropic-demo" in e.value.message
    assert gateway.mock_requests("anthropic") == []


def test_openai_passthrough_errors_and_stream_failures_reach_the_client_as_openai_sent_them(client, gateway):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="gpt-4o-mini", input="hi", extra_headers={"x-mock-openai": "400"})
    want = rec.openai_400()["error"]
    assert (e.value.body["message"], e.value.body["code"]) == (want["message"], want["code"])
    events = events_of(client.responses.create(model="gpt-4o-mini", input="hi", stream=True,
                                               extra_headers={"x-mock-openai": "error-mid-stream"}))
    assert [e.to_dict() for e in events[:4]] == recorded_events(STREAM, 1)[:4]
    assert events[-1].type == "error" and events[-1].code == "server_error"
    # OpenAI's stream cut before its terminal event: the gateway ends it with an `error` event.
    events = events_of(client.responses.create(model="gpt-4o-mini", input="hi", stream=True,
                                               extra_headers={"x-mock-openai": "truncate"}))
    recorded = recorded_events(STREAM, 1)
    assert [e.to_dict() for e in events[:-1]] == recorded[:len(events) - 1]
    assert len(events) - 1 < len(recorded)
    assert events[-1].type == "error" and events[-1].code == "stream_truncated"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_failover_across_three_schemas_to_bedrock(client, gateway, stream):
    """any-chat: OpenAI (native) and Gemini fail before their first byte, Bedrock serves."""
    headers = {"x-mock-openai": "reset" if stream else "503", "x-mock-more": "gemini=503"}
    if stream:
        want = rp.bedrock_stream_summary()
        events = events_of(client.responses.create(model="any-chat", input="Hello!", stream=True, extra_headers=headers))
        check_sequence(events)
        resp = events[-1].response
        usage = rp.bedrock_usage(want["usage"])
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == want["text"]
    else:
        doc = rp.bedrock_text()
        want = {"text": "".join(c.get("text", "") for c in doc["output"]["message"]["content"])}
        resp = client.responses.create(model="any-chat", input="Hello!", extra_headers=headers)
        usage = rp.bedrock_usage(doc["usage"])
    assert resp.output_text == want["text"]
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert [q["provider"] for q in gateway.mock_requests("more")] == ["gemini", "bedrock"]
    assert [q["path"] for q in gateway.mock_requests("openai")] == ["/v1/responses"]


# ==================================================================================================
# bad inputs, in the Responses API's error shape (OpenAI's)


@pytest.mark.parametrize("body,param,code", [
    ({"model": "claude-haiku", "input": "hi", "previous_response_id": "resp_123"}, "previous_response_id", "unsupported_parameter"),
    ({"model": "claude-haiku", "input": "hi", "conversation": "conv_1"}, "conversation", "unsupported_parameter"),
    ({"model": "claude-haiku", "input": "hi", "background": True}, "background", "unsupported_parameter"),
    ({"model": "claude-haiku"}, "input", None),
    ({"model": "claude-haiku", "input": [{"role": "wizard", "content": "hi"}]}, "input[0].role", None),
    ({"model": "claude-haiku", "input": "hi", "tools": [{"type": "function"}]}, "tools[0].name", None),
    ({"input": "hi"}, "model", None),
    ({"model": "claude-haiku", "input": "hi", "tools": [{"type": "web_search"}]}, "tools[0]", "unsupported_on_backend"),
])
def test_bad_inputs_are_400s_in_openais_error_shape(gateway, body, param, code):
    r = raw(gateway, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", param, code)
    assert err["message"]
    assert gateway.mock_requests("anthropic") == []


def test_sdk_errors_and_stateless_retrieval(client, gateway):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="claude-haiku", input="hi", previous_response_id="resp_abc")
    assert "stateless" in e.value.message
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="no-such-model", input="hi")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="claude-haiku", input="hi", extra_headers={"x-mock-anthropic": "429"})
    with pytest.raises(openai.BadRequestError):
        client.responses.retrieve("resp_abc")
    r = raw(gateway, None, path="/v1/responses/resp_abc", method="GET")
    assert r.status_code == 400 and "stateless" in r.json()["error"]["message"]


def test_a_stream_failing_midway_ends_with_error_and_response_failed(client, gateway):
    events = events_of(client.responses.create(model="claude-haiku", input="Hello!", stream=True,
                                               extra_headers={"x-mock-anthropic": "error-mid-stream"}))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-2].type == "error" and events[-1].type == "response.failed"
    assert events[-1].response.status == "failed" and events[-1].response.error.message
    with pytest.raises(RuntimeError):
        with client.responses.stream(model="claude-haiku", input="Hello!",
                                     extra_headers={"x-mock-anthropic": "error-mid-stream"}) as s:
            s.get_final_response()


# ==================================================================================================
# metrics and the access log


def _access_lines(gateway, ids, timeout=20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        harness.http("POST", gateway.admin_url + "/reopen_logs")
        found = {}
        try:
            for line in Path(gateway.access_log_path).read_text(encoding="utf-8").splitlines():
                if line.strip():
                    doc = json.loads(line)
                    if doc.get("request_id") in ids:
                        found[doc["request_id"]] = doc
        except OSError:
            pass
        if set(found) == set(ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def requests_with_operation(gateway, op: str) -> float:
    total = 0.0
    for line in gateway.prometheus().splitlines():
        if line.startswith("switchyard_requests{") and f'gen_ai_operation_name="{op}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_operation_is_responses_in_the_access_log_and_metrics(client, gateway):
    before = requests_with_operation(gateway, "responses")
    ids = {name: f"responses-{name}-{uuid.uuid4().hex}" for name in ("native", "translated", "stream")}
    client.responses.create(model="gpt-4o-mini", input="What is the capital of France?", extra_headers={"x-request-id": ids["native"]})
    client.responses.create(model="claude-haiku", input="What is the capital of France?", extra_headers={"x-request-id": ids["translated"]})
    events_of(client.responses.create(model="claude-haiku", input="Hello!", stream=True, extra_headers={"x-request-id": ids["stream"]}))
    log = _access_lines(gateway, set(ids.values()))
    assert set(log) == set(ids.values())
    native, translated, stream = (log[ids[k]] for k in ("native", "translated", "stream"))
    assert {l["operation"] for l in log.values()} == {"responses"}
    assert (native["backend"], native["provider"]) == ("openai-demo", "openai")
    assert int(native["input_tokens"]) == recorded_response(SIMPLE)["usage"]["input_tokens"]
    u = rec.openai_usage_from_anthropic(rec.anthropic_text()["usage"])
    assert (int(translated["input_tokens"]), int(translated["output_tokens"])) == (u["prompt_tokens"], u["completion_tokens"])
    assert stream["stream"] == "true" and int(stream["output_tokens"]) == rec.anthropic_stream_text()["usage"]["output_tokens"]
    for _ in range(50):
        if requests_with_operation(gateway, "responses") >= before + 3:
            break
        time.sleep(0.1)
    assert requests_with_operation(gateway, "responses") == before + 3


# ==================================================================================================
# keys, limits and budgets: the same as for chat (a gateway of its own, with an auth policy)

PRICES = {"gpt-4o-mini": (Decimal("0.000001"), Decimal("0.000002")),
          "claude-3-5-haiku-latest": (Decimal("0.000003"), Decimal("0.000005"))}


def cost_micros(model: str, prompt: int, completion: int) -> int:
    p_in, p_out = PRICES[model]
    return math.ceil((prompt * p_in + completion * p_out) * 1_000_000)


def _key(name: str) -> str:
    return f"sk-sy-responses-{name}"


KEYS_AUTH = {
    "keys": [
        {"id": "r-budget", "sha256": key_hash(_key("budget")), "budget": {"amount_usd": 1, "window": "total"}},
        {"id": "r-haiku-only", "sha256": key_hash(_key("haiku")), "models": ["claude-haiku"]},
        {"id": "r-rpm", "sha256": key_hash(_key("rpm")), "limits": {"rpm": 1}},
    ],
    "pricing": {
        "builtin": False,
        "models": {m: {"input_cost_per_token": float(i), "output_cost_per_token": float(o), "max_output_tokens": 1000}
                   for m, (i, o) in PRICES.items()},
        "aliases": {"claude-haiku": "claude-3-5-haiku-latest"},
    },
}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    try:
        g = KeysGateway.start(tmp_path_factory.mktemp("responses-keys"), KEYS_AUTH)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"could not start the keys gateway: {e}", pytrace=False)
    try:
        yield g
    finally:
        problems = g.stop()
    if problems:
        pytest.fail("keys gateway end-of-module check failed:\n  " + "\n  ".join(problems), pytrace=False)


def keyed_client(g, key: str | None) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base_url, api_key=key or "no-key", max_retries=0, timeout=60)


def test_keys_limits_and_budgets_apply_to_responses(keyed):
    g = keyed
    # No key, or an unknown one: 401 in OpenAI's shape.
    with pytest.raises(openai.AuthenticationError) as e:
        keyed_client(g, None).responses.create(model="claude-haiku", input="hi")
    assert e.value.body["code"] == "invalid_api_key"
    # A key limited to another model.
    with pytest.raises(openai.PermissionDeniedError) as e:
        keyed_client(g, _key("haiku")).responses.create(model="gpt-4o-mini", input="hi")
    assert e.value.body["code"] == "model_not_allowed"
    assert g.mocks.requests("openai") == [] and g.mocks.requests("anthropic") == []
    # Translated (Anthropic): the cost of the recorded usage at the configured prices.
    c = keyed_client(g, _key("budget"))
    r = c.responses.with_raw_response.create(model="claude-haiku", input="What is the capital of France?")
    u = rec.openai_usage_from_anthropic(rec.anthropic_text()["usage"])
    want_translated = cost_micros("claude-3-5-haiku-latest", u["prompt_tokens"], u["completion_tokens"])
    assert int(Decimal(r.headers["x-switchyard-cost"]) * 1_000_000) == want_translated
    # Native (OpenAI's own /v1/responses): its Responses usage, read through the canonical view.
    r = c.responses.with_raw_response.create(model="gpt-4o-mini", input="What is the capital of France?")
    ru = recorded_response(SIMPLE)["usage"]
    want_native = cost_micros("gpt-4o-mini", ru["input_tokens"], ru["output_tokens"])
    assert int(Decimal(r.headers["x-switchyard-cost"]) * 1_000_000) == want_native
    left = Decimal(r.headers["x-switchyard-budget-remaining"])
    assert int((Decimal(1) - left) * 1_000_000) == want_translated + want_native
    # A native stream is charged from its `response.completed` usage.
    events = events_of(c.responses.create(model="gpt-4o-mini", input="x", tools=[CAPITAL_TOOL], stream=True))
    su = events[-1].response.usage
    lines = g.log_lines("r-budget", count=3)
    streamed = [l for l in lines if l["stream"] == "true"]
    assert len(streamed) == 1 and streamed[0]["operation"] == "responses"
    assert int(streamed[0]["cost_micros"]) == cost_micros("gpt-4o-mini", su.input_tokens, su.output_tokens)
    # rpm: the second request in the minute is a 429.
    c = keyed_client(g, _key("rpm"))
    c.responses.create(model="claude-haiku", input="hi")
    with pytest.raises(openai.RateLimitError) as e:
        c.responses.create(model="claude-haiku", input="hi")
    assert e.value.body["code"] == "rate_limit_exceeded"
