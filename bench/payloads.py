"""Benchmark payloads, built from the recorded provider answers in tests/fixtures.

Written to bench/data/ (committed): the mock upstream serves them, the load generators send them and
the criterion micro-benchmarks (benches/hot_paths.rs) read the same files, so every layer measures
the same bytes. Deterministic: running it again rewrites identical files.

  request.json         ~1 KB OpenAI chat request (system + user message), non-stream
  request_stream.json  the same with "stream": true
  openai.json          recorded OpenAI chat.completion (azure-chat-basic cassette), verbatim
  openai.sse           recorded OpenAI stream (chat-streaming cassette): role chunk, the first
                       STREAM_DELTAS content chunks, the recorded finish chunk, a recorded usage-only
                       chunk (chat-streaming-detailed-usage cassette) and [DONE]
  anthropic.json       recorded Anthropic Messages answer (pydantic-ai instructions cassette)
  anthropic.sse        recorded Anthropic stream (pydantic-ai thinking-part-stream cassette):
                       message_start, the text block's start, ping, its first STREAM_DELTAS
                       text_delta events, content_block_stop, message_delta and message_stop
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
DATA = ROOT / "bench" / "data"

# Text deltas per stream (the "20-chunk stream").
STREAM_DELTAS = 20

OPENAI_BASIC = "envoyproxy/ai-gateway/tests/internal/testopenai/cassettes/azure-chat-basic.yaml"
OPENAI_STREAM = "envoyproxy/ai-gateway/tests/internal/testopenai/cassettes/chat-streaming.yaml"
OPENAI_STREAM_USAGE = "envoyproxy/ai-gateway/tests/internal/testopenai/cassettes/chat-streaming-detailed-usage.yaml"
ANTHROPIC_BASIC = "anthropic/test_anthropic_model_instructions.yaml"
ANTHROPIC_STREAM = "anthropic/test_anthropic_model_thinking_part_stream.yaml"

SYSTEM_PROMPT = (
    "You are a careful assistant for a logistics company. Answer in plain English, keep answers short, "
    "cite the shipment identifiers you were given, and never invent tracking numbers. If a question is "
    "ambiguous, ask one clarifying question instead of guessing."
)
USER_PROMPT = (
    "Hello! I am preparing the weekly status note for our rail freight desk and need a friendly opening "
    "paragraph. Context: shipments SY-1042, SY-1043 and SY-1047 left the Rotterdam yard on Monday and are "
    "expected in Basel on Thursday; SY-1045 is held at customs until the importer sends the missing "
    "certificate of origin; SY-1049 was re-routed through Duisburg because of track works near Cologne, which "
    "adds roughly one day. The audience is the customer success team, not engineers, so avoid jargon like "
    "'consist' or 'marshalling'. Please greet the team, summarise the week in two or three sentences, and end "
    "with a line inviting questions. Thank you!"
)


def _response(rel: str) -> dict:
    with open(FIXTURES / rel, encoding="utf-8") as f:
        return yaml.safe_load(f)["interactions"][0]["response"]


def _events(body: str) -> list[str]:
    return [e for e in body.replace("\r\n", "\n").split("\n\n") if e.strip()]


def _data(event: str):
    lines = [ln[5:].lstrip(" ") for ln in event.split("\n") if ln.startswith("data:")]
    try:
        return json.loads("\n".join(lines))
    except ValueError:
        return None


def request(stream: bool) -> bytes:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": USER_PROMPT}],
        "temperature": 0.7,
        "max_tokens": 256,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def openai_json() -> bytes:
    return _response(OPENAI_BASIC)["body"].encode()


def openai_sse() -> bytes:
    events = _events(_response(OPENAI_STREAM)["body"])
    role, content, finish = [], [], []
    for ev in events:
        d = _data(ev)
        if not isinstance(d, dict):
            continue
        choice = (d.get("choices") or [{}])[0]
        delta = choice.get("delta") or {}
        if delta.get("role"):
            role.append(ev)
        elif choice.get("finish_reason"):
            finish.append(ev)
        elif delta.get("content"):
            content.append(ev)
    usage = [ev for ev in _events(_response(OPENAI_STREAM_USAGE)["body"])
             if isinstance(_data(ev), dict) and _data(ev).get("usage") and not _data(ev).get("choices")]
    picked = role[:1] + content[:STREAM_DELTAS] + finish[:1] + usage[:1] + ["data: [DONE]"]
    assert len(content) >= STREAM_DELTAS and finish and usage, "fixture shape changed"
    return "".join(e + "\n\n" for e in picked).encode()


def anthropic_json() -> bytes:
    return json.dumps(_response(ANTHROPIC_BASIC)["parsed_body"], separators=(",", ":")).encode()


def anthropic_sse() -> bytes:
    resp = _response(ANTHROPIC_STREAM)
    body = resp["body"]["string"] if isinstance(resp["body"], dict) else resp["body"]
    events = _events(body if isinstance(body, str) else body.decode())
    by_type: dict[str, list[str]] = {}
    text_deltas, text_start = [], None
    for ev in events:
        d = _data(ev)
        if not isinstance(d, dict):
            continue
        by_type.setdefault(d.get("type"), []).append(ev)
        if d.get("type") == "content_block_start" and (d.get("content_block") or {}).get("type") == "text":
            text_start = ev
        if d.get("type") == "content_block_delta" and (d.get("delta") or {}).get("type") == "text_delta":
            text_deltas.append(ev)
    assert text_start and len(text_deltas) >= STREAM_DELTAS, "fixture shape changed"
    # The recorded text block is the stream's second (index 1, after a thinking block); it is the only
    # block kept here, so it becomes index 0.
    renumber = lambda ev: ev.replace('"index":1', '"index":0')  # noqa: E731
    stop = [ev for ev in by_type["content_block_stop"] if '"index":1' in ev]
    picked = (by_type["message_start"][:1] + [renumber(text_start)] + by_type["ping"][:1]
              + [renumber(ev) for ev in text_deltas[:STREAM_DELTAS]] + [renumber(stop[0])]
              + by_type["message_delta"][:1] + by_type["message_stop"][:1])
    return "".join(e + "\n\n" for e in picked).encode()


def expected_text(name: str, payload: bytes) -> str:
    """The assistant text a client must receive for a mock answer, whatever gateway translated it."""
    if name == "openai.json":
        return json.loads(payload)["choices"][0]["message"]["content"]
    if name == "anthropic.json":
        return "".join(b.get("text", "") for b in json.loads(payload)["content"])
    out = []
    for ev in _events(payload.decode()):
        d = _data(ev)
        if not isinstance(d, dict):
            continue
        if name == "openai.sse":
            for c in d.get("choices") or []:
                out.append((c.get("delta") or {}).get("content") or "")
        elif d.get("type") == "content_block_delta":
            out.append((d.get("delta") or {}).get("text") or "")
    return "".join(out)


def build() -> dict[str, bytes]:
    return {
        "request.json": request(False),
        "request_stream.json": request(True),
        "openai.json": openai_json(),
        "openai.sse": openai_sse(),
        "anthropic.json": anthropic_json(),
        "anthropic.sse": anthropic_sse(),
    }


def write() -> dict[str, bytes]:
    DATA.mkdir(parents=True, exist_ok=True)
    files = build()
    for name, content in files.items():
        path = DATA / name
        if not path.exists() or path.read_bytes() != content:
            path.write_bytes(content)
    return files


if __name__ == "__main__":
    for name, content in write().items():
        print(f"{name}: {len(content)} bytes")
