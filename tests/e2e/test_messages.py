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
