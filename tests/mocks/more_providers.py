#!/usr/bin/env python3
"""More mock LLM providers for Switchyard's end-to-end tests: ONE HTTP server that serves Gemini
(and its Vertex AI paths), Bedrock Runtime, Cohere v2, Ollama's native API, Azure OpenAI and two
OpenAI-compatible presets (Mistral, DeepSeek), dispatching by path. Every answer replays a REAL
recording from ``tests/fixtures/`` (or a documented example copied there; see
``tests/fixtures/README.md``), so the gateway's translations are checked against what the
providers really send.

    python tests/mocks/more_providers.py --port 18003          # on its own
    python tests/mocks/providers.py ... --more-port 18003      # with the OpenAI/Anthropic mocks

Paths (method POST unless said otherwise):

  Gemini   /v1beta/models/{m}:generateContent | :streamGenerateContent[?alt=sse] | :batchEmbedContents
  Vertex   /v1/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent | :streamGenerateContent
  Bedrock  /model/{modelId}/converse | /converse-stream (application/vnd.amazon.eventstream) | /invoke
  Cohere   /v2/chat (JSON or SSE) | /v2/embed
  Ollama   /api/chat (JSON or NDJSON) | /api/embed
  Azure    /openai/deployments/{d}/chat/completions?api-version=… | /openai/deployments/{d}/embeddings?api-version=…
  Mistral  /v1/chat/completions (magistral thinking stream) | /v1/embeddings
  DeepSeek /chat/completions (deepseek-reasoner, reasoning_content)
  GET /_mock/health, GET|DELETE /_mock/requests, DELETE /_mock/once   (as the other mocks)

Every recorded request also carries ``provider`` (gemini, vertex, bedrock, cohere, ollama, azure,
mistral, deepseek, unknown) and, for Bedrock, ``sigv4``: ``"valid"`` when the AWS Signature V4 in
``authorization`` verifies against the AWS test-suite credentials below (recomputed here with the
published algorithm), ``"absent"`` when unsigned, ``"unknown access key …"``, or ``"invalid: …"``
(then the answer is Bedrock's 403 ``InvalidSignatureException``). ``x-mock-require-credential:
bedrock=<access key id>`` (as the OpenAI and Anthropic mocks take it for their keys) makes a valid
signature by any other key ``"refused: …"``, also answered with that 403 (a provider that accepts
only the rotated key). An ``x-amz-security-token`` must be among the signed headers.

Scenarios: header ``x-mock-more: <item>[,<item>…]`` where an item is ``<scenario>`` (every
provider) or ``<provider>=<scenario>`` (that provider only; ``gemini=`` also matches Vertex). A
provider-specific item wins over a bare one. Scenarios: any 3-digit status (provider-shaped error;
429 with ``retry-after: 0``), ``reset`` (TCP RST, no answer), ``stall`` (sleep, then answer;
``x-mock-stall-seconds``), ``truncate`` (stream cut in the middle, non-stream body cut),
``error-mid-stream`` (Gemini: an SSE ``error`` object; Bedrock: a ``modelStreamErrorException``
frame; Ollama: the documented ``{"error": …}`` NDJSON line; others: a normal answer), and
``once-<scenario>`` (only the first request per ``x-mock-key`` value). Unknown scenario → 418.

What each request gets is documented in ``tests/e2e/README.md`` ("More providers").

Embedding vectors that no recording provides (Gemini, Bedrock Titan, Azure/OpenAI, Mistral) are
deterministic: see :func:`mock_vector`.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import hmac
import json
import re
import struct
import sys
import threading
import time
import zlib
from datetime import datetime, timezone
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import providers as base  # noqa: E402  (the OpenAI/Anthropic mocks: shared HTTP layer and helpers)

FIXTURES = base.FIXTURES

# AWS's published SigV4 test-suite credentials: the harness gives these to Envoy, so the mock can
# recompute and check every signature; and a second, made-up pair a test rotates to
# (tests/e2e/test_aws_signing.py). Any other access key is accepted unverified (demo use).
TEST_AWS_CREDENTIALS = {"AKIDEXAMPLE": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                        "AKIDROTATEDEXAMPLE": "rotatedSecretKeyForSwitchyardTests/0002"}
SIGV4_MAX_SKEW_SECONDS = 15 * 60

KINDS = ("gemini", "vertex", "bedrock", "cohere", "ollama", "azure", "mistral", "deepseek")
DEFAULT_DIMENSIONS = 8


# --------------------------------------------------------------------------------------------------
# small helpers


def mock_vector(text: str, dims: int | None = None) -> list[float]:
    """The deterministic embedding of ``text`` for providers without a recorded one:
    ``dims`` (default 8) values ``(u16_be(sha256 stream)[i] % 2048 - 1024) / 1024`` where the byte
    stream is ``sha256(text) || sha256(that) || …``. Every value is exact in float32."""
    dims = int(dims or DEFAULT_DIMENSIONS)
    stream = hashlib.sha256(text.encode("utf-8")).digest()
    while len(stream) < 2 * dims:
        stream += hashlib.sha256(stream[-32:]).digest()
    return [(int.from_bytes(stream[2 * i:2 * i + 2], "big") % 2048 - 1024) / 1024
            for i in range(dims)]


def f32_base64(vec: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()


def _yaml(rel: str):
    with open(FIXTURES / rel, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _inter(rel: str, i: int = 0) -> dict:
    return _yaml(rel)["interactions"][i]


def _body_string(inter: dict):
    """A vcrpy response body: ``parsed_body`` (JSON) or ``body.string`` (str or bytes)."""
    resp = inter["response"]
    if "parsed_body" in resp:
        return resp["parsed_body"]
    return resp["body"]["string"]


def _json_blocks(md: str) -> list:
    return [json.loads(b) for b in re.findall(r"```json\n(.*?)```", md, flags=re.S)]


def _md_section(md: str, heading: str) -> str:
    """Text of the markdown section whose heading line is exactly ``heading`` (up to the next
    heading of the same or a higher level)."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = md.split("\n")
    start = lines.index(heading)
    out = []
    for ln in lines[start + 1:]:
        m = re.match(r"^(#+) ", ln)
        if m and len(m.group(1)) <= level:
            break
        out.append(ln)
    return "\n".join(out)


# ---- AWS event stream (application/vnd.amazon.eventstream)


def es_frame(headers: dict[str, str], payload: bytes) -> bytes:
    hb = b""
    for k, v in headers.items():
        kb, vb = k.encode(), v.encode()
        hb += bytes([len(kb)]) + kb + b"\x07" + struct.pack(">H", len(vb)) + vb
    total = 12 + len(hb) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hb))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    msg = prelude + hb + payload
    return msg + struct.pack(">I", zlib.crc32(msg))


def es_decode(data: bytes) -> list[tuple[dict, bytes]]:
    """Frames of an event-stream body (CRCs checked) -> [(headers, payload)]."""
    out, pos = [], 0
    while pos < len(data):
        total, hlen = struct.unpack(">II", data[pos:pos + 8])
        assert struct.unpack(">I", data[pos + 8:pos + 12])[0] == zlib.crc32(data[pos:pos + 8])
        frame = data[pos:pos + total]
        assert struct.unpack(">I", frame[-4:])[0] == zlib.crc32(frame[:-4])
        hdr, payload = frame[12:12 + hlen], frame[12 + hlen:-4]
        headers, p = {}, 0
        while p < len(hdr):
            n = hdr[p]
            name = hdr[p + 1:p + 1 + n].decode()
            p += 1 + n
            typ = hdr[p]
            p += 1
            assert typ == 7, f"unexpected header type {typ}"
            ln = struct.unpack(">H", hdr[p:p + 2])[0]
            headers[name] = hdr[p + 2:p + 2 + ln].decode()
            p += 2 + ln
        out.append((headers, payload))
        pos += total
    return out


def es_event(event_type: str, payload: dict) -> bytes:
    return es_frame({":event-type": event_type, ":content-type": "application/json",
                     ":message-type": "event"},
                    json.dumps(payload, separators=(",", ":")).encode())


def fold_converse_stream(data: bytes) -> dict:
    """A ConverseStream body folded into the equivalent Converse (non-stream) answer."""
    blocks: dict[int, dict] = {}
    tool_input: dict[int, str] = {}
    out = {"output": {"message": {"role": "assistant", "content": []}}}
    for headers, payload in es_decode(data):
        ev = json.loads(payload)
        kind = headers.get(":event-type")
        idx = ev.get("contentBlockIndex")
        if kind == "contentBlockStart":
            tu = ev["start"]["toolUse"]
            blocks[idx] = {"toolUse": {"toolUseId": tu["toolUseId"], "name": tu["name"]}}
        elif kind == "contentBlockDelta":
            d = ev["delta"]
            if "text" in d:
                b = blocks.setdefault(idx, {"text": ""})
                b["text"] += d["text"]
            elif "toolUse" in d:
                tool_input[idx] = tool_input.get(idx, "") + d["toolUse"]["input"]
        elif kind == "messageStop":
            out["stopReason"] = ev["stopReason"]
        elif kind == "metadata":
            out["usage"] = {k: v for k, v in ev["usage"].items() if k != "serverToolUsage"}
            out["metrics"] = ev["metrics"]
    for idx, s in tool_input.items():
        blocks[idx]["toolUse"]["input"] = json.loads(s) if s else {}
    out["output"]["message"]["content"] = [blocks[i] for i in sorted(blocks)]
    return out


# ---- AWS Signature Version 4 (checked independently of the gateway's implementation)


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def verify_sigv4(method: str, raw_path: str, raw_query: str, headers: dict, body: bytes,
                 now: float | None = None) -> str:
    auth = headers.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return "absent"
    fields = dict(p.strip().split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(",")
                  if "=" in p)
    try:
        key_id, date, region, service, term = fields["Credential"].split("/")
        signed = fields["SignedHeaders"].split(";")
        signature = fields["Signature"]
    except (KeyError, ValueError):
        return "invalid: malformed authorization header"
    secret = TEST_AWS_CREDENTIALS.get(key_id)
    if secret is None:
        return f"unknown access key {key_id}"
    amz_date = headers.get("x-amz-date", "")
    if term != "aws4_request" or service != "bedrock" or not amz_date.startswith(date):
        return f"invalid: credential scope {fields['Credential']} (x-amz-date {amz_date})"
    if "host" not in signed or "x-amz-date" not in signed or signed != sorted(signed):
        return f"invalid: SignedHeaders {fields['SignedHeaders']}"
    try:
        t = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return f"invalid: x-amz-date {amz_date!r}"
    if abs((now or time.time()) - t) > SIGV4_MAX_SKEW_SECONDS:
        return f"invalid: signature expired (x-amz-date {amz_date})"
    missing = [h for h in signed if h not in headers]
    if missing:
        return f"invalid: signed headers missing from the request: {missing}"
    if "x-amz-security-token" in headers and "x-amz-security-token" not in signed:
        return "invalid: x-amz-security-token is not signed"
    # Every AWS service but S3: the wire path (already percent-encoded) is encoded once more.
    canonical_uri = quote(raw_path or "/", safe="/~")
    pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~"))
                   for k, v in parse_qsl(raw_query, keep_blank_values=True))
    canonical_query = "&".join(f"{k}={v}" for k, v in pairs)
    canonical_headers = "".join(f"{h}:{' '.join(headers[h].split())}\n" for h in signed)
    canonical_request = "\n".join([method, canonical_uri, canonical_query, canonical_headers,
                                   ";".join(signed), hashlib.sha256(body).hexdigest()])
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                                hashlib.sha256(canonical_request.encode()).hexdigest()])
    k = _hmac(("AWS4" + secret).encode(), date)
    for part in (region, service, "aws4_request"):
        k = _hmac(k, part)
    expected = hmac.new(k, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return "invalid: signature mismatch"
    return "valid"


def signing_key_id(headers: dict) -> str | None:
    """The access key id in a SigV4 ``authorization`` (its Credential's first part)."""
    m = re.search(r"Credential=([^/,\s]+)/", headers.get("authorization", ""))
    return m.group(1) if m else None


def required_aws_key(headers: dict) -> str | None:
    """``x-mock-require-credential: bedrock=<access key id>``: the only key this mock accepts."""
    for item in (headers.get("x-mock-require-credential") or "").split(","):
        who, sep, value = item.strip().partition("=")
        if sep and who == "bedrock":
            return value.strip()
    return None


# ---- Cohere's documented streams (Python SDK reprs in the docs) rebuilt into wire JSON


def _py_unescape(s: str) -> str:
    out, it = [], iter(s)
    for c in it:
        if c == "\\":
            n = next(it, "")
            out.append({"n": "\n", "t": "\t"}.get(n, n))
        else:
            out.append(c)
    return "".join(out)


def _py_field(line: str, key: str):
    at = line.find(f"{key}=")
    if at < 0:
        return None
    rest = line[at + len(key) + 1:]
    quote_ch = rest[:1]
    if quote_ch not in ("'", '"'):
        m = re.match(r"[^,) ]*", rest)
        return m.group(0)
    body, esc = rest[1:], False
    for i, c in enumerate(body):
        if esc:
            esc = False
        elif c == "\\":
            esc = True
        elif c == quote_ch:
            return _py_unescape(body[:i])
    return _py_unescape(body)


def cohere_docs_stream(mdx: str, n: int) -> list[dict]:
    """The n-th "Example stream" of cohere/tool-use-streaming.mdx as wire events (dicts)."""
    block = mdx.split("```mdx wordWrap")[n + 1].split("```")[0]
    evs = []
    for line in (ln.strip() for ln in block.split("\n")):
        if not line.startswith("type='"):
            continue
        kind = _py_field(line, "type")
        index = _py_field(line, "index")
        index = int(index) if index not in (None, "None") else None
        if kind == "message-start":
            v = {"id": _py_field(line, "id"), "type": kind, "delta": {"message": {
                "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [],
                "citations": []}}}
        elif kind == "tool-plan-delta":
            v = {"type": kind, "delta": {"message": {"tool_plan": _py_field(line, "tool_plan")}}}
        elif kind == "tool-call-start":
            v = {"type": kind, "index": index, "delta": {"message": {"tool_calls": {
                "id": _py_field(line, "id"), "type": "function",
                "function": {"name": _py_field(line, "name"),
                             "arguments": _py_field(line, "arguments")}}}}}
        elif kind == "tool-call-delta":
            v = {"type": kind, "index": index, "delta": {"message": {"tool_calls": {
                "function": {"arguments": _py_field(line, "arguments")}}}}}
        elif kind == "content-start":
            v = {"type": kind, "index": index, "delta": {"message": {"content": {
                "type": "text", "text": _py_field(line, "text")}}}}
        elif kind == "content-delta":
            v = {"type": kind, "index": index, "delta": {"message": {"content": {
                "text": _py_field(line, "text")}}}}
        elif kind == "citation-start":
            v = {"type": kind, "index": index, "delta": {"message": {"citations": {
                "start": int(_py_field(line, "start")), "end": int(_py_field(line, "end")),
                "text": _py_field(line, "text"),
                "sources": [{"type": "tool", "id": _py_field(line, "id"), "tool_output": {}}],
                "type": "TEXT_CONTENT"}}}}
        elif kind == "message-end":
            billed = line[line.index("billed_units"):]
            tokens = line[line.index("tokens=UsageTokens"):]
            v = {"type": kind, "delta": {"finish_reason": _py_field(line, "finish_reason"),
                                         "usage": {
                "billed_units": {"input_tokens": float(_py_field(billed, "input_tokens")),
                                 "output_tokens": float(_py_field(billed, "output_tokens"))},
                "tokens": {"input_tokens": float(_py_field(tokens, "input_tokens")),
                           "output_tokens": float(_py_field(tokens, "output_tokens"))}}}}
        else:
            v = {"type": kind} if index is None else {"type": kind, "index": index}
        evs.append(v)
    assert len(evs) > 5, f"cohere docs example {n}: too few events"
    return evs


def fold_cohere_stream(evs: list[dict]) -> dict:
    """Cohere v2 stream events folded into the equivalent ChatResponse."""
    out = {"id": None, "finish_reason": None, "message": {"role": "assistant"}, "usage": None}
    plan, text, calls, citations = "", None, [], []
    for ev in evs:
        t, msg = ev["type"], (ev.get("delta") or {}).get("message") or {}
        if t == "message-start":
            out["id"] = ev["id"]
        elif t == "tool-plan-delta":
            plan += msg["tool_plan"]
        elif t == "tool-call-start":
            tc = copy.deepcopy(msg["tool_calls"])
            calls.append(tc)
        elif t == "tool-call-delta":
            calls[-1]["function"]["arguments"] += msg["tool_calls"]["function"]["arguments"]
        elif t == "content-start":
            text = (text or "") + msg["content"]["text"]
        elif t == "content-delta":
            text = (text or "") + msg["content"]["text"]
        elif t == "citation-start":
            citations.append(msg["citations"])
        elif t == "message-end":
            out["finish_reason"] = ev["delta"]["finish_reason"]
            out["usage"] = ev["delta"]["usage"]
    if plan:
        out["message"]["tool_plan"] = plan
    if calls:
        out["message"]["tool_calls"] = calls
    if text is not None:
        out["message"]["content"] = [{"type": "text", "text": text}]
    if citations:
        out["message"]["citations"] = citations
    return out


# --------------------------------------------------------------------------------------------------
# fixtures


class MoreFixtures:
    """Every recording (or documented example) these mocks replay, loaded once (fails fast)."""

    def __init__(self, base_fx: base.Fixtures | None = None) -> None:
        self.base = base_fx or base.Fixtures()
        # ---- Gemini
        self.gemini_text_rel = "gemini/test_google_model.yaml"
        self.gemini_text = _body_string(_inter(self.gemini_text_rel))
        self.gemini_stream_rel = "gemini/test_google_model_stream.yaml"
        raw = _body_string(_inter(self.gemini_stream_rel))
        self.gemini_stream_events = [e[len("data: "):] for e in raw.split("\r\n\r\n") if e.strip()]
        assert all(json.loads(e) for e in self.gemini_stream_events)
        self.gemini_tools_rel = "gemini/test_multiple_agent_tool_calls.yaml"
        self.gemini_tool_call = _body_string(_inter(self.gemini_tools_rel, 0))
        self.gemini_after_tool = _body_string(_inter(self.gemini_tools_rel, 1))
        assert "functionCall" in self.gemini_tool_call["candidates"][0]["content"]["parts"][0]
        # ---- Bedrock
        self.bedrock_text_rel = "bedrock/test_bedrock_model.yaml"
        self.bedrock_text = _body_string(_inter(self.bedrock_text_rel))
        self.bedrock_stream_rel = "bedrock/test_bedrock_model_stream.yaml"
        self.bedrock_stream = _body_string(_inter(self.bedrock_stream_rel))
        self.bedrock_tools_rel = "bedrock/test_bedrock_model_iter_stream.yaml"
        self.bedrock_tool_stream = _body_string(_inter(self.bedrock_tools_rel, 0))
        self.bedrock_after_tool_stream = _body_string(_inter(self.bedrock_tools_rel, 1))
        for b in (self.bedrock_stream, self.bedrock_tool_stream, self.bedrock_after_tool_stream):
            assert isinstance(b, bytes) and es_decode(b)
        self.bedrock_400_rel = "bedrock/test_bedrock_error.yaml"
        self.bedrock_400 = _body_string(_inter(self.bedrock_400_rel))
        # ---- Cohere
        self.cohere_text_rel = "cohere/test_request_simple_success_with_vcr.yaml"
        self.cohere_text = _body_string(_inter(self.cohere_text_rel))
        self.cohere_docs_rel = "cohere/tool-use-streaming.mdx"
        mdx = (FIXTURES / self.cohere_docs_rel).read_text(encoding="utf-8")
        self.cohere_tool_events = cohere_docs_stream(mdx, 0)
        self.cohere_text_events = cohere_docs_stream(mdx, 1)
        self.cohere_embed_rel = "cohere/embed-v4-example.json"
        self.cohere_embed = json.loads((FIXTURES / self.cohere_embed_rel).read_text("utf-8"))
        # ---- Ollama (documented examples of the official API reference)
        self.ollama_rel = "ollama/api.md"
        md = (FIXTURES / self.ollama_rel).read_text(encoding="utf-8")

        def blocks(heading):
            return _json_blocks(_md_section(md, heading))

        self.ollama_stream = blocks("#### Chat request (Streaming)")
        self.ollama_stream_tools = blocks("#### Chat request (Streaming with tools)")
        (self.ollama_text,) = blocks("#### Chat request (No streaming)")
        (self.ollama_tools,) = blocks("#### Chat request (No streaming, with tools)")
        (self.ollama_structured,) = blocks("#### Chat request (Structured outputs)")
        (self.ollama_after_tool,) = blocks("#### Chat request (With history, with tools)")
        (self.ollama_image,) = blocks("#### Chat request (with images)")
        self.ollama_embed = blocks("## Generate Embeddings")
        assert len(self.ollama_stream) == 2 and len(self.ollama_embed) == 2
        self.ollama_errors_rel = "ollama/errors.mdx"
        emdx = (FIXTURES / self.ollama_errors_rel).read_text(encoding="utf-8")
        self.ollama_error_line = [ln for ln in emdx.split("\n") if ln.startswith('{"error"')][0]
        # ---- Mistral (magistral) and DeepSeek (reasoner)
        self.mistral_stream_rel = "mistral/test_mistral_model_thinking_part_iter.yaml"
        self.mistral_stream = _body_string(_inter(self.mistral_stream_rel))
        self.deepseek_text_rel = "deepseek/test_deepseek_model_thinking_part.yaml"
        self.deepseek_text = _body_string(_inter(self.deepseek_text_rel))
        self.deepseek_stream_rel = "deepseek/test_deepseek_model_thinking_stream.yaml"
        self.deepseek_stream = _body_string(_inter(self.deepseek_stream_rel))
        # Mistral's tool calls without `type` (written from Mistral's docs and OpenAPI schema).
        self.mistral_tools_rel = "mistral/tool-calls-without-type.json"
        self.mistral_tools = json.loads((FIXTURES / self.mistral_tools_rel).read_text("utf-8"))
        # Ollama's OpenAI-compatible /v1 (ollama.com cloud): tool calls with `index`, `reasoning`.
        self.ollama_v1_tools_rel = "ollama/test_ollama_cloud_tool_output.yaml"
        self.ollama_v1_tools = _body_string(_inter(self.ollama_v1_tools_rel, 1))
        self.ollama_v1_text_rel = "ollama/test_ollama_local_native_output_uses_json_schema.yaml"
        self.ollama_v1_text = _body_string(_inter(self.ollama_v1_text_rel))
        assert "index" in self.ollama_v1_tools["choices"][0]["message"]["tool_calls"][0]
        # The JSON every provider answers in JSON mode: the documented Ollama structured output.
        self.json_answer = self.ollama_structured["message"]["content"]
        json.loads(self.json_answer)


# --------------------------------------------------------------------------------------------------
# requests and answers


class Req:
    def __init__(self, method, path, raw_path, raw_query, headers, raw, body):
        self.method, self.path, self.raw_path, self.raw_query = method, path, raw_path, raw_query
        self.query = dict(parse_qsl(raw_query, keep_blank_values=True))
        self.headers, self.raw, self.body = headers, raw, body


def _json(status, obj, headers=None):
    h = {"content-type": "application/json"}
    h.update(headers or {})
    return base.Reply(status=status, headers=h, body=obj)


def _status_name(status: int) -> str:
    return {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
            404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
            504: "DEADLINE_EXCEEDED"}.get(status, "UNKNOWN")


def _tool_names(tools) -> list[str]:
    out = []
    for t in tools or []:
        if isinstance(t, dict):
            fn = t.get("function") if isinstance(t.get("function"), dict) else t
            if isinstance(fn.get("name"), str):
                out.append(fn["name"])
    return out


def _fit_args(recorded: dict, schema) -> dict:
    """Recorded tool arguments kept where the declared schema has them, required ones filled."""
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        return dict(recorded)
    props, req = schema["properties"], schema.get("required") or []
    out = {k: v for k, v in recorded.items() if k in props}
    for k in req:
        out.setdefault(k, "example")
    return out


class Sub:
    """One emulated provider."""

    kind = "?"

    def __init__(self, fx: MoreFixtures):
        self.fx = fx

    def answer(self, req: Req) -> base.Reply:
        raise NotImplementedError

    def error(self, status: int) -> base.Reply:
        raise NotImplementedError

    def mid_stream_error(self, req: Req) -> base.Reply:
        return self.answer(req)

    def truncated(self, req: Req) -> base.Reply:
        full = self.answer(req)
        if full.stream is not None:
            full.stream = full.stream[:len(full.stream) // 2]
            return full
        full.truncate_body = True
        return full


# ---- Gemini (and Vertex AI)


class Gemini(Sub):
    kind = "gemini"
    MESSAGES = {
        400: "Request contains an invalid argument.",
        401: "Request had invalid authentication credentials.",
        403: "The caller does not have permission",
        404: "models/unknown is not found for API version v1beta.",
        429: "Resource has been exhausted (e.g. check quota).",
        500: "An internal error has occurred. Please retry or report in "
             "https://developers.generativeai.google/guide/troubleshooting",
        503: "The model is overloaded. Please try again later.",
    }

    @staticmethod
    def method(req: Req) -> str:
        return req.path.rsplit(":", 1)[-1]

    @staticmethod
    def _json_mode(body) -> bool:
        gc = body.get("generationConfig") or {}
        return gc.get("responseMimeType") == "application/json"

    @staticmethod
    def _has_function_response(body) -> bool:
        return any("functionResponse" in p for c in body.get("contents") or []
                   for p in c.get("parts") or [])

    def _declarations(self, body) -> list[dict]:
        return [d for t in body.get("tools") or [] for d in t.get("functionDeclarations") or []]

    def response(self, body) -> dict | None:
        """The whole GenerateContentResponse for this request (None: the recorded text stream)."""
        if self._json_mode(body):
            r = copy.deepcopy(self.fx.gemini_text)
            r["candidates"][0]["content"]["parts"] = [{"text": self.fx.json_answer}]
            return r
        if self._has_function_response(body):
            return copy.deepcopy(self.fx.gemini_after_tool)
        decls = self._declarations(body)
        if decls:
            r = copy.deepcopy(self.fx.gemini_tool_call)
            fc = r["candidates"][0]["content"]["parts"][0]["functionCall"]
            fc["name"] = decls[0].get("name", fc["name"])
            fc["args"] = _fit_args(fc["args"], decls[0].get("parameters"))
            return r
        return None

    def answer(self, req):
        body = req.body
        m = self.method(req)
        if m == "batchEmbedContents":
            out = []
            for r in body.get("requests") or []:
                text = "".join(p.get("text", "") for p in (r.get("content") or {}).get("parts", []))
                out.append({"values": mock_vector(text, r.get("outputDimensionality"))})
            return _json(200, {"embeddings": out})
        if m == "generateContent":
            return _json(200, self.response(body) or self.fx.gemini_text)
        if m != "streamGenerateContent":
            return self.error(404)
        whole = self.response(body)
        events = [json.dumps(whole)] if whole else list(self.fx.gemini_stream_events)
        return self._stream(req, events)

    def _stream(self, req, events: list[str]) -> base.Reply:
        if req.query.get("alt") == "sse":
            return base.Reply(headers={"content-type": "text/event-stream"},
                              stream="".join(f"data: {e}\r\n\r\n" for e in events))
        return base.Reply(headers={"content-type": "application/json; charset=UTF-8"},
                          stream="[" + ",\r\n".join(events) + "]")

    def error(self, status):
        h = {"retry-after": "0"} if status == 429 else {}
        return _json(status, {"error": {"code": status, "message": self.MESSAGES.get(
            status, f"mock provider error {status}"), "status": _status_name(status)}}, h)

    def mid_stream_error(self, req):
        if self.method(req) != "streamGenerateContent":
            return self.answer(req)
        events = self.fx.gemini_stream_events[:2] + [json.dumps(
            {"error": {"code": 503, "message": self.MESSAGES[503], "status": "UNAVAILABLE"}})]
        return self._stream(req, events)

    def truncated(self, req):
        if self.method(req) == "streamGenerateContent":
            return self._stream(req, self.fx.gemini_stream_events[:1])
        return super().truncated(req)


# ---- Bedrock Runtime


class Bedrock(Sub):
    kind = "bedrock"
    EXCEPTIONS = {
        400: ("ValidationException", None),
        403: ("AccessDeniedException", "You don't have access to the model with the specified "
                                       "model ID."),
        404: ("ResourceNotFoundException", "Could not resolve the foundation model from the "
                                           "provided model identifier."),
        408: ("ModelTimeoutException", "Model has timed out in processing the request."),
        424: ("ModelErrorException", "The model produced an error."),
        429: ("ThrottlingException", "Too many requests, please wait before trying again."),
        500: ("InternalServerException", "The server encountered an error processing your "
                                         "request."),
        503: ("ServiceUnavailableException", "Bedrock is unable to process your request."),
    }
    PATH = re.compile(r"^/model/([^/]+)/(converse|converse-stream|invoke)$")

    def _parts(self, req):
        m = self.PATH.match(req.path)
        return (unquote(m.group(1)), m.group(2)) if m else (None, None)

    @staticmethod
    def _json_mode(body) -> bool:
        # Converse has no JSON mode: the gateway asks in the system prompt, the model obeys.
        return any("JSON" in (s.get("text") or "") for s in body.get("system") or [])

    @staticmethod
    def _has_tool_result(body) -> bool:
        return any("toolResult" in b for m in body.get("messages") or []
                   for b in m.get("content") or [])

    def _tool_stream(self, body) -> bytes:
        data = self.fx.bedrock_tool_stream
        specs = [t.get("toolSpec") or {} for t in (body.get("toolConfig") or {}).get("tools", [])]
        name = specs[0].get("name") if specs else None
        if not name or name == "get_temperature":
            return data
        out = b""
        for headers, payload in es_decode(data):
            ev = json.loads(payload)
            if headers.get(":event-type") == "contentBlockStart" and "toolUse" in ev.get("start", {}):
                ev["start"]["toolUse"]["name"] = name
                payload = json.dumps(ev, separators=(",", ":")).encode()
            out += es_frame(headers, payload)
        return out

    def _json_stream(self) -> bytes:
        u = self.fx.bedrock_text["usage"]
        return b"".join([
            es_event("messageStart", {"p": "abc", "role": "assistant"}),
            es_event("contentBlockDelta", {"contentBlockIndex": 0,
                                           "delta": {"text": self.fx.json_answer}, "p": "ab"}),
            es_event("contentBlockStop", {"contentBlockIndex": 0, "p": "abcd"}),
            es_event("messageStop", {"p": "a", "stopReason": "end_turn"}),
            es_event("metadata", {"metrics": {"latencyMs": 1}, "p": "abcdef", "usage": u}),
        ])

    def stream_body(self, body) -> bytes:
        if self._json_mode(body):
            return self._json_stream()
        if self._has_tool_result(body):
            return self.fx.bedrock_after_tool_stream
        if body.get("toolConfig"):
            return self._tool_stream(body)
        return self.fx.bedrock_stream

    def answer(self, req):
        model, action = self._parts(req)
        body = req.body
        if action is None:
            return _json(404, {"message": f"Unknown operation {req.path}"},
                         {"x-amzn-errortype": "UnknownOperationException"})
        if action == "invoke":
            return self._invoke(model, body)
        if action == "converse-stream":
            return base.Reply(headers={"content-type": "application/vnd.amazon.eventstream",
                                       "x-amzn-requestid": "mock-bedrock"},
                              stream=self.stream_body(body))
        if self._json_mode(body):
            r = copy.deepcopy(self.fx.bedrock_text)
            r["output"]["message"]["content"] = [{"text": self.fx.json_answer}]
        elif self._has_tool_result(body) or body.get("toolConfig"):
            r = fold_converse_stream(self.stream_body(body))
        else:
            r = self.fx.bedrock_text
        return _json(200, r, {"x-amzn-requestid": "mock-bedrock"})

    def _invoke(self, model, body):
        if "texts" in body:  # Cohere embed on Bedrock
            texts = body["texts"]
            return _json(200, {"id": "mock-bedrock-cohere", "response_type": "embeddings_floats",
                               "texts": texts, "embeddings": [mock_vector(t) for t in texts]})
        text = body.get("inputText")
        if not isinstance(text, str):
            return self.error(400)
        return _json(200, {"embedding": mock_vector(text, body.get("dimensions")),
                           "inputTextTokenCount": len(text.split())})

    def error(self, status):
        if status == 400:
            return _json(400, self.fx.bedrock_400, {"x-amzn-errortype": "ValidationException"})
        etype, msg = self.EXCEPTIONS.get(status, ("InternalServerException",
                                                  f"mock provider error {status}"))
        h = {"x-amzn-errortype": f"{etype}:http://internal.amazon.com/coral/com.amazon.bedrock/"}
        if status == 429:
            h["retry-after"] = "0"
        return _json(status, {"message": msg}, h)

    def signature_error(self, detail: str) -> base.Reply:
        msg = ("Signature expired" if "expired" in detail else
               "The request signature we calculated does not match the signature you provided. "
               "Check your AWS Secret Access Key and signing method. Consult the service "
               "documentation for details.")
        return _json(403, {"message": msg}, {"x-amzn-errortype": "InvalidSignatureException"})

    def mid_stream_error(self, req):
        model, action = self._parts(req)
        if action != "converse-stream":
            return self.answer(req)
        frames = es_decode(self.stream_body(req.body))[:3]
        out = b"".join(es_frame(h, p) for h, p in frames)
        out += es_frame({":exception-type": "modelStreamErrorException",
                         ":content-type": "application/json", ":message-type": "exception"},
                        json.dumps({"message": "The model stream encountered an error."}).encode())
        return base.Reply(headers={"content-type": "application/vnd.amazon.eventstream"},
                          stream=out)

    def truncated(self, req):
        model, action = self._parts(req)
        if action != "converse-stream":
            return super().truncated(req)
        frames = es_decode(self.stream_body(req.body))
        cut = [f for f in frames[:max(2, len(frames) // 2)]
               if f[0].get(":event-type") not in ("messageStop", "metadata")]
        return base.Reply(headers={"content-type": "application/vnd.amazon.eventstream"},
                          stream=b"".join(es_frame(h, p) for h, p in cut))


# ---- Cohere v2


class Cohere(Sub):
    kind = "cohere"
    MESSAGES = {
        400: "invalid request: message must be at least 1 token long or tool results must be "
             "specified.",
        401: "invalid api token",
        404: "model 'unknown' not found, make sure the correct model ID was used and that you "
             "have access to the model.",
        429: "You are using a Trial key, which is limited to 10 API calls / minute. You can "
             "continue to use the Trial key for free or upgrade to a Production key with higher "
             "rate limits at 'https://dashboard.cohere.com/api-keys'. Contact us on "
             "'https://discord.gg/XW44jPfYJu' or email us at support@cohere.com with any questions",
        500: "internal server error, this has been reported to our developers. id "
             "mock-cohere-500",
        503: "service unavailable",
    }

    @staticmethod
    def _has_tool_message(body) -> bool:
        return any(m.get("role") == "tool" for m in body.get("messages") or [])

    def _tool_events(self, body) -> list[dict]:
        evs = copy.deepcopy(self.fx.cohere_tool_events)
        names = _tool_names(body.get("tools"))
        if names and names[0] != "get_weather":
            for ev in evs:
                if ev["type"] == "tool-call-start":
                    ev["delta"]["message"]["tool_calls"]["function"]["name"] = names[0]
        return evs

    def _json_events(self) -> list[dict]:
        end = {"type": "message-end", "delta": {"finish_reason": "COMPLETE",
                                                "usage": self.fx.cohere_text["usage"]}}
        return [{"id": self.fx.cohere_text["id"], "type": "message-start", "delta": {"message": {
                    "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [],
                    "citations": []}}},
                {"type": "content-start", "index": 0,
                 "delta": {"message": {"content": {"type": "text", "text": ""}}}},
                {"type": "content-delta", "index": 0,
                 "delta": {"message": {"content": {"text": self.fx.json_answer}}}},
                {"type": "content-end", "index": 0}, end]

    def events(self, body) -> list[dict]:
        if body.get("response_format"):
            return self._json_events()
        if self._has_tool_message(body):
            return copy.deepcopy(self.fx.cohere_text_events)
        if body.get("tools"):
            return self._tool_events(body)
        return copy.deepcopy(self.fx.cohere_text_events)

    @staticmethod
    def _sse(evs: list[dict]) -> str:
        return "".join(f"event: {e['type']}\ndata: {json.dumps(e, ensure_ascii=False)}\n\n"
                       for e in evs) + "data: [DONE]\n\n"

    def answer(self, req):
        body = req.body
        if req.path == "/v2/embed":
            ex = self.fx.cohere_embed["response"]
            texts = body.get("texts") or []
            vecs = ex["embeddings"]["float"]
            return _json(200, {"id": ex["id"], "texts": texts,
                               "embeddings": {"float": [vecs[i % len(vecs)]
                                                        for i in range(len(texts))]},
                               "meta": ex["meta"], "response_type": "embeddings_by_type"})
        if body.get("stream") is True:
            return base.Reply(headers={"content-type": "text/event-stream"},
                              stream=self._sse(self.events(body)))
        if body.get("response_format"):
            r = copy.deepcopy(self.fx.cohere_text)
            r["message"]["content"] = [{"type": "text", "text": self.fx.json_answer}]
            return _json(200, r)
        if self._has_tool_message(body) or body.get("tools"):
            return _json(200, fold_cohere_stream(self.events(body)))
        return _json(200, self.fx.cohere_text)

    def error(self, status):
        h = {"retry-after": "0"} if status == 429 else {}
        return _json(status, {"id": f"mock-cohere-{status}", "message": self.MESSAGES.get(
            status, f"mock provider error {status}")}, h)

    def truncated(self, req):
        if req.path == "/v2/chat" and req.body.get("stream") is True:
            evs = self.events(req.body)
            cut = [e for e in evs[:max(3, len(evs) // 2)] if e["type"] != "message-end"]
            return base.Reply(headers={"content-type": "text/event-stream"},
                              stream="".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n"
                                             for e in cut))
        return super().truncated(req)


# ---- Ollama native API


class Ollama(Sub):
    kind = "ollama"
    MESSAGES = {
        400: "invalid request",
        404: "model \"unknown\" not found, try pulling it first",
        429: "too many requests",
        500: "the model failed to generate a response",
        502: "the cloud model cannot be reached",
        503: "server busy, please try again.  maximum pending requests exceeded",
    }

    @staticmethod
    def _has(body, role=None, key=None) -> bool:
        for m in body.get("messages") or []:
            if role and m.get("role") == role:
                return True
            if key and m.get(key):
                return True
        return False

    def whole(self, body) -> dict:
        if body.get("format") is not None:
            return self.fx.ollama_structured
        if self._has(body, role="tool"):
            return self.fx.ollama_after_tool
        if body.get("tools"):
            r = copy.deepcopy(self.fx.ollama_tools)
            names = _tool_names(body["tools"])
            if names:
                r["message"]["tool_calls"][0]["function"]["name"] = names[0]
            return r
        if self._has(body, key="images"):
            return self.fx.ollama_image
        return self.fx.ollama_text

    def lines(self, body) -> list[dict]:
        if body.get("tools") and not self._has(body, role="tool") and body.get("format") is None:
            lines = copy.deepcopy(self.fx.ollama_stream_tools)
            names = _tool_names(body["tools"])
            if names:
                lines[0]["message"]["tool_calls"][0]["function"]["name"] = names[0]
            return lines
        if (body.get("format") is None and not self._has(body, role="tool")
                and not self._has(body, key="images")):
            return copy.deepcopy(self.fx.ollama_stream)
        # The documented whole answer, streamed as Ollama does: the content, then the done line.
        w = copy.deepcopy(self.whole(body))
        first = {"model": w["model"], "created_at": w["created_at"],
                 "message": {"role": "assistant", "content": w["message"]["content"]},
                 "done": False}
        w["message"]["content"] = ""
        return [first, w]

    def answer(self, req):
        body = req.body
        if req.path == "/api/embed":
            inp = body.get("input")
            many = isinstance(inp, list)
            texts = inp if many else [inp]
            ex = self.fx.ollama_embed[1 if many else 0]
            out = copy.deepcopy(ex)
            out["model"] = body.get("model", ex["model"])
            out["embeddings"] = [ex["embeddings"][i % len(ex["embeddings"])]
                                 for i in range(len(texts))]
            return _json(200, out)
        if body.get("stream", True):
            return base.Reply(headers={"content-type": "application/x-ndjson"},
                              stream="".join(json.dumps(ln) + "\n" for ln in self.lines(body)))
        return _json(200, self.whole(body))

    def error(self, status):
        return _json(status, {"error": self.MESSAGES.get(status, f"mock provider error {status}")},
                     {"retry-after": "0"} if status == 429 else None)

    def mid_stream_error(self, req):
        if req.path != "/api/chat" or not req.body.get("stream", True):
            return self.answer(req)
        lines = self.lines(req.body)[:1]
        return base.Reply(headers={"content-type": "application/x-ndjson"},
                          stream="".join(json.dumps(ln) + "\n" for ln in lines)
                          + self.fx.ollama_error_line + "\n")

    def truncated(self, req):
        if req.path == "/api/chat" and req.body.get("stream", True):
            lines = self.lines(req.body)[:1]
            return base.Reply(headers={"content-type": "application/x-ndjson"},
                              stream="".join(json.dumps(ln) + "\n" for ln in lines))
        return super().truncated(req)


# ---- OpenAI-shaped: Azure OpenAI, Mistral, DeepSeek


def openai_embeddings(body: dict, model: str | None = None) -> dict:
    """An OpenAI embeddings answer with :func:`mock_vector` vectors (base64 when asked)."""
    inp = body.get("input")
    texts = inp if isinstance(inp, list) else [inp]
    texts = [t if isinstance(t, str) else json.dumps(t) for t in texts]
    b64 = body.get("encoding_format") == "base64"
    data = []
    for i, t in enumerate(texts):
        v = mock_vector(t, body.get("dimensions"))
        data.append({"object": "embedding", "index": i, "embedding": f32_base64(v) if b64 else v})
    n = sum(len(t.split()) for t in texts)
    return {"object": "list", "data": data, "model": model or body.get("model"),
            "usage": {"prompt_tokens": n, "total_tokens": n}}


class Azure(Sub):
    kind = "azure"
    PATH = re.compile(r"^/openai/deployments/([^/]+)/(chat/completions|embeddings)$")

    def __init__(self, fx):
        super().__init__(fx)
        self.oai = base.OpenAIProvider(fx.base)

    def answer(self, req):
        m = self.PATH.match(req.path)
        if not m:
            return _json(404, {"error": {"code": "404", "message": "Resource not found"}})
        if not req.query.get("api-version"):
            return _json(404, {"error": {"code": "404", "message": "Resource not found"}})
        body = req.body
        if m.group(2) == "embeddings":
            return _json(200, openai_embeddings(body, unquote(m.group(1))))
        rf = body.get("response_format") or {}
        if rf.get("type") in ("json_object", "json_schema") and body.get("stream") is not True:
            doc = json.loads(self.fx.base.openai_text)
            doc["choices"][0]["message"]["content"] = self.fx.json_answer
            return _json(200, doc)
        return self.oai.answer(body, body.get("stream") is True)

    def error(self, status):
        return self.oai.error(status)

    def mid_stream_error(self, req):
        if req.body.get("stream") is True:
            return self.oai.mid_stream_error(req.body)
        return self.answer(req)

    def truncated(self, req):
        return self.oai.truncated(req.body, req.body.get("stream") is True)


class Mistral(Sub):
    """Mistral's API with a Magistral model: thinking chunks inside `content`; extra fields 422."""

    kind = "mistral"
    # Top-level fields of Mistral's ChatCompletionRequest (openapi.yaml, additionalProperties: false).
    CHAT_FIELDS = {"model", "temperature", "top_p", "max_tokens", "stream", "stop", "random_seed",
                   "metadata", "messages", "response_format", "tools", "tool_choice",
                   "presence_penalty", "frequency_penalty", "n", "prediction",
                   "parallel_tool_calls", "prompt_mode", "reasoning_effort", "guardrails",
                   "prompt_cache_key", "safe_prompt"}

    def _chunks(self) -> list[dict]:
        return [d for d in map(base._event_data, base.split_sse_events(self.fx.mistral_stream))
                if isinstance(d, dict)]

    def folded(self) -> dict:
        """The recorded magistral stream as Mistral's non-stream answer (content chunks)."""
        chunks = self._chunks()
        thinking, text, usage, finish = "", "", None, None
        for c in chunks:
            for ch in c.get("choices") or []:
                content = (ch.get("delta") or {}).get("content")
                if isinstance(content, str):
                    text += content
                elif isinstance(content, list):
                    for part in content:
                        if part.get("type") == "thinking":
                            thinking += "".join(t.get("text", "") for t in part["thinking"])
                        elif part.get("type") == "text":
                            text += part.get("text", "")
                finish = ch.get("finish_reason") or finish
            usage = c.get("usage") or usage
        first = chunks[0]
        return {"id": first["id"], "object": "chat.completion", "created": first["created"],
                "model": first["model"], "usage": usage, "choices": [{
                    "index": 0, "finish_reason": finish, "message": {
                        "role": "assistant", "tool_calls": None, "content": [
                            {"type": "thinking", "thinking": [{"type": "text", "text": thinking}]},
                            {"type": "text", "text": text}]}}]}

    def answer(self, req):
        body = req.body
        if req.path == "/v1/embeddings":
            return _json(200, openai_embeddings(body))
        extra = sorted(set(body) - self.CHAT_FIELDS)
        if extra:
            return _json(422, {"object": "error", "message": {"detail": [
                {"type": "extra_forbidden", "loc": ["body", k], "msg": "Extra inputs are not "
                 "permitted", "input": body[k]} for k in extra]},
                "type": "invalid_request_message_error", "param": None, "code": None})
        wants_tool = body.get("tools") and not any(m.get("role") == "tool" for m in body["messages"])
        if body.get("stream") is True:
            if wants_tool:  # two tool calls, both numbered 0 by Mistral, no `type`
                stream = "".join(f"data: {json.dumps(c)}\n\n" for c in self.fx.mistral_tools["stream"])
                return base.Reply(headers={"content-type": "text/event-stream; charset=utf-8"},
                                  stream=(stream + "data: [DONE]\n\n").encode())
            return base.Reply(headers={"content-type": "text/event-stream; charset=utf-8"},
                              stream=self.fx.mistral_stream)
        rf = body.get("response_format") or {}
        doc = self.folded()
        if rf.get("type") in ("json_object", "json_schema"):
            doc["choices"][0]["message"]["content"] = self.fx.json_answer
        elif wants_tool:  # a tool call without `type`, with `index`, and `prefix` on the message
            return _json(200, self.fx.mistral_tools["answer"])
        return _json(200, doc)


    def error(self, status):
        h = {"retry-after": "0"} if status == 429 else {}
        return _json(status, {"object": "error", "message": {
            429: "Requests rate limit exceeded", 503: "Service unavailable"}.get(
            status, f"mock provider error {status}"), "type": "invalid_request_error"
            if status < 500 and status != 429 else "service_error", "param": None,
            "code": str(status)}, h)

class Compat(Sub):
    """The other OpenAI-compatible presets, told apart by the `host` the gateway sets for them:
    Ollama's /v1 replays its real recordings (tool calls with `index`, `reasoning`); the others are
    OpenAI-compatible and replay the OpenAI mock's recordings."""

    kind = "compat"
    HOSTS = {"dashscope-intl.aliyuncs.com": "qwen", "api.groq.com": "groq", "api.x.ai": "xai",
             "api.together.xyz": "together", "api.fireworks.ai": "fireworks",
             "openrouter.ai": "openrouter", "vllm.test": "vllm", "ollama.test": "ollama-v1"}

    def answer(self, req):
        body = req.body
        who = self.HOSTS.get(req.headers.get("host", "").split(":")[0], "")
        wants_tool = body.get("tools") and not any(m.get("role") == "tool" for m in body["messages"])
        if who == "ollama-v1" and not body.get("stream"):
            return _json(200, self.fx.ollama_v1_tools if wants_tool else self.fx.ollama_v1_text)
        return base.OpenAIProvider(self.fx.base).answer(body, body.get("stream") is True)

    def error(self, status):
        return base.OpenAIProvider(self.fx.base).error(status)


class DeepSeek(Sub):
    kind = "deepseek"

    def answer(self, req):
        if req.body.get("stream") is True:
            return base.Reply(headers={"content-type": "text/event-stream; charset=utf-8"},
                              stream=self.fx.deepseek_stream)
        return _json(200, self.fx.deepseek_text)

    def error(self, status):
        h = {"retry-after": "0"} if status == 429 else {}
        return _json(status, {"error": {"message": {429: "Rate Limit Reached",
                                                    503: "Server Overloaded"}.get(
            status, f"mock provider error {status}"), "type": "invalid_request_error"
            if status < 500 else "server_error", "param": None, "code": None}}, h)


# --------------------------------------------------------------------------------------------------
# the server


def classify(path: str, host: str = "") -> str:
    if host.split(":")[0] in Compat.HOSTS and path.endswith("/chat/completions"):
        return "compat"
    if re.match(r"^/v1beta/(models|tunedModels)/[^:/]+:\w+$", path):
        return "gemini"
    if re.match(r"^/v1/projects/[^/]+/locations/[^/]+/publishers/google/models/[^:/]+:\w+$", path):
        return "vertex"
    if Bedrock.PATH.match(path):
        return "bedrock"
    if path in ("/v2/chat", "/v2/embed"):
        return "cohere"
    if path in ("/api/chat", "/api/embed"):
        return "ollama"
    if Azure.PATH.match(path):
        return "azure"
    if path in ("/v1/chat/completions", "/v1/embeddings"):
        return "mistral"
    if path == "/chat/completions":
        return "deepseek"
    return "unknown"


class MoreProvider(base.Provider):
    name = "more"
    scenario_header = "x-mock-more"
    paths = ()

    def __init__(self, fx: MoreFixtures, stall_seconds: float = base.DEFAULT_STALL_SECONDS):
        super().__init__(fx.base, stall_seconds)
        self.more = fx
        gemini = Gemini(fx)
        self.subs = {"gemini": gemini, "vertex": gemini, "bedrock": Bedrock(fx),
                     "cohere": Cohere(fx), "ollama": Ollama(fx), "azure": Azure(fx),
                     "mistral": Mistral(fx), "deepseek": DeepSeek(fx), "compat": Compat(fx)}

    def scenario_for(self, kind: str, headers: dict) -> str | None:
        raw = (headers.get(self.scenario_header) or "").strip().lower()
        if not raw:
            return None
        names = {kind, "gemini"} if kind == "vertex" else {kind}
        specific, bare = None, None
        for item in (i.strip() for i in raw.split(",")):
            if not item:
                continue
            if "=" in item:
                who, sc = (x.strip() for x in item.split("=", 1))
                if who in names and specific is None:
                    specific = sc
            elif bare is None:
                bare = item
        scenario = specific if specific is not None else bare
        if scenario and scenario.startswith("once-"):
            scenario = scenario[5:]
            key = (kind, scenario, headers.get("x-mock-key", ""))
            with self.lock:
                if key in self.once_used:
                    return None
                self.once_used.add(key)
        return scenario

    def route(self, kind: str, req: Req, scenario: str | None, entry: dict) -> base.Reply:
        sub = self.subs.get(kind)
        if sub is None or req.method != "POST":
            return _json(404, {"error": {"message": f"mock: no provider serves {req.method} "
                                                    f"{req.path}", "type": "mock_error",
                                         "param": None, "code": None}})
        if not isinstance(req.body, dict):
            return sub.error(400)
        if kind == "bedrock" and entry.get("sigv4", "").startswith(("invalid", "refused")):
            return sub.signature_error(entry["sigv4"])
        if scenario in (None, "", "ok", "none", "stall"):
            return sub.answer(req)
        if scenario == "reset":
            return base.Reply(reset=True)
        if scenario == "echo-auth":
            return base.echo_auth(sub.error(401), req.headers)
        if scenario == "echo-auth-mid-stream":
            return base.echo_auth_in_stream(sub.mid_stream_error(req), req.headers)
        if scenario == "echo-auth-error-first" and isinstance(sub, Gemini) and sub.method(req) == "streamGenerateContent":
            # A stream whose first event is the error (no token before it), quoting the credential.
            err = json.dumps({"error": {"code": 503, "message": sub.MESSAGES[503], "status": "UNAVAILABLE"}})
            return base.echo_auth_in_stream(sub._stream(req, [err]), req.headers)
        if scenario in base.ANSWER_FAULTS:
            reply = sub.answer(req)
            reply.fault = scenario
            return reply
        if scenario == "429-no-retry-after":
            return base.without_retry_after(sub.error(429))
        if scenario == "html":
            return base.html_error()
        if scenario == "error-mid-stream":
            return sub.mid_stream_error(req)
        if scenario == "truncate":
            return sub.truncated(req)
        if scenario.isdigit() and len(scenario) == 3:
            return sub.error(int(scenario))
        return base.Reply(status=418, headers={"content-type": "application/json"}, body={
            "error": {"message": f"mock: unknown scenario {scenario!r} in x-mock-more; known: "
                                 f"{', '.join(base.SCENARIOS)} or any 3-digit status, optionally "
                                 f"as <provider>=<scenario> ({', '.join(KINDS)})",
                      "type": "mock_error", "param": None, "code": "unknown_scenario"}})


class MoreHandler(base.Handler):
    def _send_reply(self, r):
        if r.stream is not None and not r.reset and not r.event_delay and r.fault is None:
            # Big recordings (DeepSeek: 78 KB) go in bigger awkward pieces to keep tests quick.
            self._send_head(r.status, r.headers)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            time.sleep(getattr(r, "first_token_delay", 0.0))
            chunker = base.Chunker(seed=self.server.provider.counter,
                                   max_size=max(160, len(r.stream) // 60))
            for piece in chunker.split(r.stream):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
                time.sleep(0.002)
            self.wfile.write(b"0\r\n\r\n")
            return
        super()._send_reply(r)

    def _dispatch(self):
        provider: MoreProvider = self.server.provider
        try:
            raw = self._read_body()
        except (ConnectionError, ValueError, OSError):
            self.close_connection = True
            return
        url = urlsplit(self.path)
        path = url.path
        try:
            if url.path.startswith("/_mock/"):
                self._control(provider, url.path)
                return
            headers: dict[str, str] = {}
            for k, v in self.headers.items():
                k = k.lower()
                headers[k] = f"{headers[k]}, {v}" if k in headers else v
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            kind = classify(url.path, headers.get("host", ""))
            scenario = provider.scenario_for(kind, headers)
            entry = {"method": self.command, "path": path, "raw_path": url.path,
                     "query": dict(parse_qsl(url.query, keep_blank_values=True)),
                     "raw_query": url.query, "headers": headers, "body": body,
                     "body_text": raw.decode("utf-8", errors="replace"), "scenario": scenario,
                     "provider": kind, "time": time.time()}
            if kind == "bedrock":
                entry["sigv4"] = verify_sigv4(self.command, url.path, url.query, headers, raw)
                required = required_aws_key(headers)
                if entry["sigv4"] == "valid" and required is not None:
                    key_id = signing_key_id(headers)
                    if key_id != required:
                        entry["sigv4"] = f"refused: signed by {key_id}, this mock accepts {required}"
            provider.record(entry)
            if scenario == "stall":
                secs = headers.get("x-mock-stall-seconds")
                time.sleep(float(secs) if secs else provider.stall_seconds)
            req = Req(self.command, path, url.path, url.query, headers, raw, body)
            reply = base.apply_fault(provider.route(kind, req, scenario, entry), headers,
                                     provider.stall_seconds)
            reply.first_token_delay = base.first_token_delay(headers, kind)
            self._send_reply(reply)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
        except Exception as e:  # never let the mock die: answer 599 with the message
            import traceback
            traceback.print_exc()
            try:
                self._json(599, {"error": {"message": f"mock crashed: {e!r}", "type": "mock_error",
                                           "param": None, "code": None}})
            except OSError:
                pass
            self.close_connection = True


class MoreServer(base.MockServer):
    def __init__(self, addr, provider: MoreProvider, verbose: bool = False):
        self.provider = provider
        self.verbose = verbose
        ThreadingHTTPServer.__init__(self, addr, MoreHandler)


def make_server(port: int, host: str = "127.0.0.1", verbose: bool = False,
                stall_seconds: float = base.DEFAULT_STALL_SECONDS, base_fx=None) -> MoreServer:
    """The server, not started (``providers.serve`` starts it with the others)."""
    return MoreServer((host, port), MoreProvider(MoreFixtures(base_fx), stall_seconds), verbose)


def serve_more(port: int, host: str = "127.0.0.1", verbose: bool = False,
               stall_seconds: float = base.DEFAULT_STALL_SECONDS,
               base_fx=None) -> MoreServer:
    """Start the server in a background thread; returns it."""
    server = make_server(port, host, verbose, stall_seconds, base_fx)
    threading.Thread(target=server.serve_forever, name="mock-more", daemon=True).start()
    return server


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--stall-seconds", type=float, default=base.DEFAULT_STALL_SECONDS)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    s = serve_more(args.port, args.host, args.verbose, args.stall_seconds)
    print(f"mock providers ready: more=http://{args.host}:{s.server_address[1]}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
