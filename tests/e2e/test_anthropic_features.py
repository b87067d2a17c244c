"""End-to-end: Anthropic-only features through the OpenAI API, in a real Envoy.

* ``"anthropic": {…}`` in the request body (the OpenAI SDK's ``extra_body``) carries Anthropic-only
  fields: ``thinking``, ``top_k``, ``metadata``, ``service_tier``, ``output_config``,
  ``anthropic_beta`` (→ the ``anthropic-beta`` header) and ``cache_control``; an unknown key is a
  400 naming ``anthropic.<key>``. Backends of other schemas ignore the namespace, and OpenAI-compatible
  ones do not even receive it (OpenAI rejects unknown fields).
* ``reasoning_effort`` becomes an Anthropic thinking budget.
* Anthropic's thinking comes back as ``reasoning_content``, on the message and on stream deltas.

The Anthropic mock answers a request with ``thinking`` enabled with the recorded thinking stream
(``test_anthropic_model_thinking_part_stream.yaml``), or, without ``stream``, with that stream folded
into a Message. Every expected value is read from that recording here, or from what the mocks
received. Backs the "reasoning" mark of the Anthropic row in the README's providers × features table.
"""

from __future__ import annotations

import json
from functools import lru_cache

import openai
import pytest
import yaml

import recorded as rec
from helpers import HELLO, collect, post_chat

THINKING_REL = (f"{rec.PYDANTIC_CASSETTES}/test_anthropic/"
                "test_anthropic_model_thinking_part_stream.yaml")

# The budgets `reasoning_effort` maps to (the gateway's documented table).
EFFORT_BUDGET = {"low": 1024, "medium": 8192, "high": 24576}


@lru_cache(None)
def recording() -> dict:
    """The recorded thinking stream: the request pydantic-ai sent and what the answer carries
    (thinking text, answer text, id, model, stop reason, usage, signature)."""
    doc = yaml.safe_load((rec.FIXTURES / THINKING_REL).read_text(encoding="utf-8"))
    status, stream = rec.cassette_response(THINKING_REL)
    assert status == 200
    out = {"request": doc["interactions"][0]["request"]["parsed_body"], "thinking": "", "text": "",
           "signature": "", "id": None, "model": None, "stop_reason": None, "usage": {}}
    for _, data in rec.parse_sse(stream):
        ev = json.loads(data)
        t = ev.get("type")
        if t == "message_start":
            out["id"], out["model"] = ev["message"]["id"], ev["message"]["model"]
            out["usage"].update({k: v for k, v in ev["message"]["usage"].items()
                                 if isinstance(v, int)})
        elif t == "content_block_start":
            block = ev["content_block"]
            out["thinking"] += block.get("thinking") or ""
            out["text"] += block.get("text") or ""
        elif t == "content_block_delta":
            d = ev["delta"]
            if d["type"] == "thinking_delta":
                out["thinking"] += d["thinking"]
            elif d["type"] == "text_delta":
                out["text"] += d["text"]
            elif d["type"] == "signature_delta":
                out["signature"] += d["signature"]
        elif t == "message_delta":
            out["stop_reason"] = ev["delta"].get("stop_reason") or out["stop_reason"]
            out["usage"].update({k: v for k, v in (ev.get("usage") or {}).items()
                                 if isinstance(v, int)})
    assert out["thinking"] and out["text"] and out["signature"], "recording has thinking + text"
    return out


def question() -> list[dict]:
    """The recorded request's user message."""
    msg = recording()["request"]["messages"][0]
    return [{"role": msg["role"], "content": msg["content"][0]["text"]}]


def only(reqs: list[dict]) -> dict:
    assert len(reqs) == 1, [(r["path"], r.get("scenario")) for r in reqs]
    return reqs[0]


def stream_summary(chunks: list[dict]) -> dict:
    out = {"reasoning": "", "text": "", "reasoning_chunks": 0, "finish": None, "ids": set(),
           "models": set()}
    for c in chunks:
        out["ids"].add(c["id"])
        out["models"].add(c["model"])
        for ch in c.get("choices") or []:
            d = ch.get("delta") or {}
            if d.get("reasoning_content"):
                out["reasoning"] += d["reasoning_content"]
                out["reasoning_chunks"] += 1
            out["text"] += d.get("content") or ""
            out["finish"] = ch.get("finish_reason") or out["finish"]
    return out


def assert_recorded_thinking_stream(chunks: list[dict]) -> None:
    want = recording()
    got = stream_summary(chunks)
    assert got["reasoning"] == want["thinking"]
    assert got["text"] == want["text"]
    assert got["reasoning_chunks"] > 1, "reasoning arrives as deltas, not at once"
    assert got["finish"] == rec.ANTHROPIC_STOP_TO_FINISH[want["stop_reason"]]
    assert got["ids"] == {want["id"]} and got["models"] == {want["model"]}
    assert want["signature"] not in json.dumps(chunks), "signatures are not forwarded"


# --------------------------------------------------------------------------------------------------
# thinking


def test_anthropic_thinking_namespace_stream(client, gateway):
    budget = 2048
    chunks = collect(client.chat.completions.create(
        model="claude-haiku", messages=question(), stream=True, temperature=0.3,
        extra_body={"anthropic": {"thinking": {"type": "enabled", "budget_tokens": budget}}}))
    assert_recorded_thinking_stream(chunks)
    body = only(gateway.mock_requests("anthropic"))["body"]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert body["max_tokens"] > budget
    assert "temperature" not in body, "Anthropic takes no temperature while thinking"
    assert "anthropic" not in body
    assert body["messages"] == recording()["request"]["messages"]
    assert body["stream"] is True


def test_anthropic_reasoning_effort_low_stream(client, gateway):
    chunks = collect(client.chat.completions.create(
        model="claude-haiku", messages=question(), stream=True, reasoning_effort="low"))
    assert_recorded_thinking_stream(chunks)
    body = only(gateway.mock_requests("anthropic"))["body"]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": EFFORT_BUDGET["low"]}
    assert body["max_tokens"] > EFFORT_BUDGET["low"]
    assert "reasoning_effort" not in body


def test_anthropic_reasoning_effort_capped_below_max_tokens(client, gateway):
    limit = 3000
    client.chat.completions.create(model="claude-haiku", messages=question(),
                                   reasoning_effort="high", max_completion_tokens=limit)
    body = only(gateway.mock_requests("anthropic"))["body"]
    assert body["max_tokens"] == limit
    assert body["thinking"] == {"type": "enabled", "budget_tokens": limit - 1}
    assert limit - 1 < EFFORT_BUDGET["high"]


@pytest.mark.parametrize("effort", ["none", "minimal"])
def test_anthropic_reasoning_effort_none_sends_no_thinking(client, gateway, effort):
    resp = client.chat.completions.create(model="claude-haiku", messages=HELLO,
                                          reasoning_effort=effort)
    assert resp.choices[0].message.content == "".join(
        b["text"] for b in rec.anthropic_text()["content"] if b["type"] == "text")
    assert "thinking" not in only(gateway.mock_requests("anthropic"))["body"]


def test_anthropic_thinking_non_stream_reasoning_content(client, gateway):
    want = recording()
    resp = client.chat.completions.create(
        model="claude-haiku", messages=question(),
        extra_body={"anthropic": {"thinking": {"type": "enabled", "budget_tokens": 1024}}})
    msg = resp.choices[0].message.to_dict()
    assert msg["reasoning_content"] == want["thinking"]
    assert msg["content"] == want["text"]
    assert resp.id == want["id"] and resp.model == want["model"]
    assert resp.choices[0].finish_reason == rec.ANTHROPIC_STOP_TO_FINISH[want["stop_reason"]]
    assert resp.usage.completion_tokens == want["usage"]["output_tokens"]
    assert want["signature"] not in resp.to_json()
    body = only(gateway.mock_requests("anthropic"))["body"]
    assert body["thinking"] == want["request"]["thinking"]
    assert "stream" not in body or body["stream"] is False


def test_earlier_reasoning_content_is_not_sent_back_to_anthropic(client, gateway):
    want = recording()
    messages = question() + [
        {"role": "assistant", "content": want["text"], "reasoning_content": want["thinking"]},
        {"role": "user", "content": "Thanks!"}]
    client.chat.completions.create(model="claude-haiku", messages=messages)
    body = only(gateway.mock_requests("anthropic"))["body"]
    assert body["messages"][1] == {"role": "assistant",
                                   "content": [{"type": "text", "text": want["text"]}]}
    assert want["thinking"] not in json.dumps(body)


# --------------------------------------------------------------------------------------------------
# the other namespace fields


def test_anthropic_namespace_fields_and_beta_header(client, gateway):
    client.chat.completions.create(
        model="claude-haiku", messages=HELLO, user="user-7",
        extra_body={"anthropic": {
            "top_k": 20, "service_tier": "standard_only", "metadata": {"user_id": "acct-9"},
            "anthropic_beta": ["interleaved-thinking-2025-05-14", "context-1m-2025-08-07"],
            "cache_control": {"type": "ephemeral"}}})
    sent = only(gateway.mock_requests("anthropic"))
    body = sent["body"]
    assert body["top_k"] == 20
    assert body["service_tier"] == "standard_only"
    assert body["metadata"] == {"user_id": "acct-9"}
    assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert "anthropic" not in body and "anthropic_beta" not in body
    assert sent["headers"].get("anthropic-beta") == \
        "interleaved-thinking-2025-05-14,context-1m-2025-08-07"
    assert sent["headers"].get("anthropic-version") == "2023-06-01"


@pytest.mark.parametrize("namespace, param", [
    ({"bogus": 1}, "anthropic.bogus"),
    ({"thinking": {"type": "enabled", "budget_tokens": 512}}, "anthropic.thinking.budget_tokens"),
    ({"anthropic_beta": "x\r\ny"}, "anthropic.anthropic_beta"),
    ("thinking", "anthropic"),
])
def test_anthropic_namespace_errors_name_the_field(client, gateway, namespace, param):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="claude-haiku", messages=HELLO,
                                       extra_body={"anthropic": namespace})
    assert ei.value.status_code == 400
    assert ei.value.body["param"] == param
    assert ei.value.body["type"] == "invalid_request_error"
    assert param.split(".")[-1] in ei.value.body["message"]
    assert gateway.mock_requests("anthropic") == []


def test_thinking_budget_must_fit_the_client_max_tokens(client, gateway):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(
            model="claude-haiku", messages=HELLO, max_tokens=2048,
            extra_body={"anthropic": {"thinking": {"type": "enabled", "budget_tokens": 2048}}})
    assert ei.value.body["param"] == "anthropic.thinking.budget_tokens"
    assert "max_tokens" in ei.value.body["message"]
    assert gateway.mock_requests("anthropic") == []


# --------------------------------------------------------------------------------------------------
# other backends ignore the namespace


NAMESPACES = {"anthropic": {"thinking": {"type": "enabled", "budget_tokens": 2048}, "top_k": 5},
              "gemini": {"safetySettings": []},
              "bedrock": {"guardrailConfig": {"guardrailIdentifier": "g", "guardrailVersion": "1"}}}


def test_namespaces_do_not_reach_the_openai_backend(client, gateway):
    resp = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO,
                                          extra_body=NAMESPACES, seed=7)
    assert resp.choices[0].message.content == rec.openai_text()["choices"][0]["message"]["content"]
    body = only(gateway.mock_requests("openai"))["body"]
    for ns in NAMESPACES:
        assert ns not in body, body
    assert body["seed"] == 7, "other fields still pass through"
    assert body["messages"] == HELLO
    assert gateway.mock_requests("anthropic") == []


def test_anthropic_namespace_is_ignored_by_gemini(gateway):
    r = post_chat(gateway, {"model": "gemini-flash", "messages": HELLO,
                            "anthropic": {"bogus": 1, "thinking": {"type": "enabled"}}})
    assert r.status_code == 200, r.text
    sent = only(gateway.mock_requests("more"))
    assert sent["provider"] == "gemini"
    assert "anthropic" not in sent["body"]
    assert "thinkingConfig" not in (sent["body"].get("generationConfig") or {})
