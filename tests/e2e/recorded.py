"""Expected values for the end-to-end tests, computed from the recordings in ``tests/fixtures/``.

The mock providers (``tests/mocks/providers.py``) replay these recordings. This module reads the same
files on its own (it does not import the mocks' code) and derives what a client of the gateway must
see: texts, token counts, tool calls, ids, error bodies. Tests compare the gateway's answers with
these values, never with constants copied from the gateway's output.

Which recording answers which request is documented in ``tests/e2e/README.md`` ("What each request
gets").
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import yaml

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
ENVOY_CASSETTES = "envoyproxy/ai-gateway/tests/internal/testopenai/cassettes"
PYDANTIC_CASSETTES = "pydantic/pydantic-ai/tests/models/cassettes"

# What OpenAI calls Anthropic's stop reasons (OpenAI's own vocabulary, per the API docs).
ANTHROPIC_STOP_TO_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}


# --------------------------------------------------------------------------------------------------
# raw readers


def _load_yaml(rel: str):
    with open(FIXTURES / rel, encoding="utf-8") as f:
        return yaml.safe_load(f)


def cassette_response(rel: str, index: int = 0) -> tuple[int, str]:
    """(status, body text) of one interaction of a go-vcr or vcrpy cassette."""
    inter = _load_yaml(rel)["interactions"][index]
    resp = inter["response"]
    if "code" in resp:
        status = int(resp["code"])
    elif isinstance(resp.get("status"), dict):
        status = int(resp["status"]["code"])
    else:
        status = int(str(resp["status"]).split()[0])
    if "parsed_body" in resp:
        return status, json.dumps(resp["parsed_body"])
    body = resp.get("body")
    if isinstance(body, dict):
        body = body.get("string")
    if isinstance(body, bytes):
        body = body.decode("utf-8")
    return status, body or ""


def cassette_json(rel: str, index: int = 0) -> dict:
    return json.loads(cassette_response(rel, index)[1])


def parse_sse(text: str) -> list[tuple[str | None, str]]:
    """An SSE body -> [(event name or None, data text)], one entry per event with data."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
        if data:
            out.append((name, "\n".join(data)))
    return out


def sse_json(text: str) -> list[dict]:
    """JSON payloads of an SSE body ([DONE] and non-JSON data skipped)."""
    out = []
    for _, data in parse_sse(text):
        try:
            out.append(json.loads(data))
        except ValueError:
            continue
    return out


# --------------------------------------------------------------------------------------------------
# OpenAI recordings


def openai_stream_summary(chunks: list[dict]) -> dict:
    """Text, finish reason, tool calls (accumulated), usage chunk, ids and models of OpenAI chunks."""
    text, finish, usage = "", None, None
    calls: dict[int, dict] = {}
    for c in chunks:
        if c.get("choices") == [] and c.get("usage"):
            usage = c["usage"]
            continue
        for ch in c.get("choices") or []:
            d = ch.get("delta") or {}
            text += d.get("content") or ""
            for tc in d.get("tool_calls") or []:
                cur = calls.setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
                if tc.get("id"):
                    cur["id"] = tc["id"]
                fn = tc.get("function") or {}
                cur["name"] += fn.get("name") or ""
                cur["arguments"] += fn.get("arguments") or ""
            if ch.get("finish_reason"):
                finish = ch["finish_reason"]
    return {
        "text": text, "finish_reason": finish, "usage": usage,
        "tool_calls": [calls[i] for i in sorted(calls)],
        "ids": {c.get("id") for c in chunks}, "models": {c.get("model") for c in chunks},
    }


@lru_cache(None)
def openai_text() -> dict:
    """Non-stream answer without tools: azure-chat-basic.yaml."""
    return cassette_json(f"{ENVOY_CASSETTES}/azure-chat-basic.yaml")


@lru_cache(None)
def openai_tools() -> dict:
    """Non-stream answer with tools: chat-tools.yaml (tool name replaced by the request's)."""
    return cassette_json(f"{ENVOY_CASSETTES}/chat-tools.yaml")


@lru_cache(None)
def openai_stream_text_chunks() -> list[dict]:
    """Stream without tools: chat-streaming.yaml (no usage chunk recorded)."""
    return sse_json(cassette_response(f"{ENVOY_CASSETTES}/chat-streaming.yaml")[1])


@lru_cache(None)
def openai_stream_usage_chunk() -> dict:
    """The usage-only chunk of chat-streaming-detailed-usage.yaml (the mock appends it to
    chat-streaming.yaml's chunks when the request has stream_options.include_usage)."""
    chunks = sse_json(cassette_response(f"{ENVOY_CASSETTES}/chat-streaming-detailed-usage.yaml")[1])
    usage = [c for c in chunks if c.get("choices") == [] and c.get("usage")]
    assert len(usage) == 1
    return usage[0]


@lru_cache(None)
def openai_stream_tools_chunks() -> list[dict]:
    """Stream with tools, no tool message: pydantic cassette interaction 0 (incl. its usage chunk)."""
    rel = f"{PYDANTIC_CASSETTES}/test_openai/test_run_stream_sync_streams_real_model.yaml"
    return sse_json(cassette_response(rel, 0)[1])


@lru_cache(None)
def openai_stream_after_tool_chunks() -> list[dict]:
    """Stream with tools and a tool message: pydantic cassette interaction 1."""
    rel = f"{PYDANTIC_CASSETTES}/test_openai/test_run_stream_sync_streams_real_model.yaml"
    return sse_json(cassette_response(rel, 1)[1])


@lru_cache(None)
def openai_400() -> dict:
    status, body = cassette_response(f"{ENVOY_CASSETTES}/chat-bad-request.yaml")
    assert status == 400
    return json.loads(body)


# --------------------------------------------------------------------------------------------------
# Anthropic recordings


def fold_anthropic_stream(events: list[tuple[str | None, str]]) -> dict:
    """Anthropic SSE events -> {id, model, text, text_deltas, tool_uses [{id,name,partial_json}],
    stop_reason, usage (input/output/cache counters, last value wins)}."""
    out = {"id": None, "model": None, "text": "", "text_deltas": [], "tool_uses": [],
           "stop_reason": None, "usage": {}}
    blocks: dict[int, dict] = {}
    for _, data in events:
        try:
            ev = json.loads(data)
        except ValueError:
            continue
        t = ev.get("type")
        if t == "message_start":
            m = ev["message"]
            out["id"], out["model"] = m.get("id"), m.get("model")
            out["usage"].update({k: v for k, v in (m.get("usage") or {}).items()
                                 if isinstance(v, int)})
        elif t == "content_block_start":
            cb = ev["content_block"]
            blocks[ev["index"]] = cb
            if cb.get("type") == "tool_use":
                out["tool_uses"].append({"id": cb["id"], "name": cb["name"], "partial_json": "",
                                         "index": ev["index"]})
            elif cb.get("type") == "text" and cb.get("text"):
                out["text"] += cb["text"]
        elif t == "content_block_delta":
            d = ev["delta"]
            if d.get("type") == "text_delta":
                out["text"] += d["text"]
                out["text_deltas"].append(d["text"])
            elif d.get("type") == "input_json_delta":
                for tu in out["tool_uses"]:
                    if tu["index"] == ev["index"]:
                        tu["partial_json"] += d["partial_json"]
        elif t == "message_delta":
            out["stop_reason"] = (ev.get("delta") or {}).get("stop_reason") or out["stop_reason"]
            out["usage"].update({k: v for k, v in (ev.get("usage") or {}).items()
                                 if isinstance(v, int)})
    return out


def openai_usage_from_anthropic(u: dict) -> dict:
    """OpenAI usage numbers for Anthropic usage: OpenAI's prompt_tokens counts every prompt token,
    Anthropic splits them into input_tokens + cache reads + cache writes."""
    prompt = (u.get("input_tokens") or 0) + (u.get("cache_read_input_tokens") or 0) \
        + (u.get("cache_creation_input_tokens") or 0)
    completion = u.get("output_tokens") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


@lru_cache(None)
def anthropic_text() -> dict:
    """Non-stream answer without tools: test_anthropic_model_instructions.yaml."""
    return cassette_json(f"{PYDANTIC_CASSETTES}/test_anthropic/test_anthropic_model_instructions.yaml")


@lru_cache(None)
def anthropic_400() -> dict:
    rel = (f"{PYDANTIC_CASSETTES}/test_anthropic/"
           "test_anthropic_explicit_effort_xhigh_unsupported_model_errors.yaml")
    status, body = cassette_response(rel)
    assert status == 400
    return json.loads(body)


@lru_cache(None)
def anthropic_stream_text() -> dict:
    """Stream without tools: anthropic-sdk/basic_response.txt, folded."""
    return fold_anthropic_stream(
        parse_sse((FIXTURES / "anthropic-sdk/basic_response.txt").read_text(encoding="utf-8")))


@lru_cache(None)
def anthropic_stream_tools() -> dict:
    """Stream with tools: anthropic-sdk/tool_use_response.txt, folded (name = request's tool)."""
    return fold_anthropic_stream(
        parse_sse((FIXTURES / "anthropic-sdk/tool_use_response.txt").read_text(encoding="utf-8")))


def _docs_blocks() -> list[str]:
    md = (FIXTURES / "anthropic-docs/streaming-messages.md").read_text(encoding="utf-8")
    return re.findall(r"```[^\n]*\n(.*?)```", md, flags=re.S)


@lru_cache(None)
def anthropic_tool_use() -> dict:
    """Non-stream answer with tools: the tool-use stream example of Anthropic's "Streaming
    Messages" docs page, folded (name = request's tool; input = the recorded input restricted to
    the tool's schema properties)."""
    for block in _docs_blocks():
        if "event: message_start" in block and '"type":"tool_use"' in block \
                and "server_tool_use" not in block:
            folded = fold_anthropic_stream(parse_sse(block))
            for tu in folded["tool_uses"]:
                tu["input"] = json.loads(tu["partial_json"])
            return folded
    raise AssertionError("tool-use example not found in streaming-messages.md")


@lru_cache(None)
def anthropic_docs_error_event() -> dict:
    """The `event: error` example of the docs page (what the mock sends for error-mid-stream)."""
    for block in _docs_blocks():
        for name, data in parse_sse(block):
            if name == "error":
                return json.loads(data)
    raise AssertionError("error event example not found in streaming-messages.md")
