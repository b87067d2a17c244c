#!/usr/bin/env python3
"""Builds the fuzz targets' seed corpora (fuzz/seeds/<target>/) from the recordings in
tests/fixtures/ and the configurations in envoy/ and examples/.

Each seed is in its target's input format (see the header of fuzz/fuzz_targets/<target>.rs):
  request   [backend][mode][client body]
  response  [backend][mode][upstream body]
  stream    [backend][flags][n][n chunk sizes][upstream body]
  decoders  [decoder][n][n chunk sizes][bytes]
  config    the configuration JSON
  headers   lines `name:value`, then one byte choosing the model
  responses [mode][n][n chunk sizes][bytes] (mode 0 a Responses request, 1 a chat stream or
            answer, 2 an OpenAI Responses answer or stream)

Run from anywhere: `.venv/bin/python fuzz/seed.py` (needs PyYAML, which scripts/setup installs).
Deterministic: files are named by the SHA-1 of their content, as libFuzzer names its corpus.
Seeds larger than MAX_SEED bytes are skipped (long vectors are cut to a few values first).
"""

import hashlib
import json
import os
import shutil
import struct
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
OUT = ROOT / "fuzz" / "seeds"
MAX_SEED = 8192

# Must match BACKEND_NAMES in fuzz/src/lib.rs.
BACKENDS = [
    "openai", "mistral", "deepseek", "qwen", "groq", "xai", "together", "fireworks", "openrouter", "vllm",
    "ollama-openai", "azure", "anthropic", "bedrock", "bedrock-signed", "gemini", "vertex", "cohere", "ollama",
]
B = {n: i for i, n in enumerate(BACKENDS)}
# Must match STATUSES in fuzz/fuzz_targets/response.rs.
STATUSES = [400, 401, 403, 404, 408, 409, 413, 422, 429, 499, 500, 502, 503, 504, 529, 418]
# Must match BEDROCK_EVENTS in fuzz/src/lib.rs.
BEDROCK_EVENTS = [
    "messageStart", "contentBlockStart", "contentBlockDelta", "contentBlockStop", "messageStop", "metadata",
    "internalServerException", "modelStreamErrorException", "throttlingException", "validationException",
    "serviceUnavailableException",
]

seeds = {t: set() for t in ["request", "response", "stream", "decoders", "config", "headers", "responses"]}


def add(target, data):
    if isinstance(data, str):
        data = data.encode()
    if len(data) <= MAX_SEED:
        seeds[target].add(bytes(data))


def provider_of(path):
    """The backend a recording was made against, from its folder (and name)."""
    parts = path.relative_to(FIX).parts
    top = parts[0]
    name = path.name
    if top in ("pydantic", "envoyproxy"):
        if "test_anthropic" in parts:
            return "anthropic"
        if "azure" in name:
            return "azure"
        return "openai"
    return {"gemini": "gemini", "anthropic": "anthropic", "anthropic-sdk": "anthropic", "bedrock": "bedrock",
            "cohere": "cohere", "deepseek": "deepseek", "mistral": "mistral", "azure": "azure",
            "ollama": "ollama"}.get(top, "openai")


def shorten(v):
    """Cuts long float vectors (embeddings) to a few values, recursively."""
    if isinstance(v, list):
        if len(v) > 8 and all(isinstance(x, (int, float)) for x in v):
            return v[:8]
        return [shorten(x) for x in v]
    if isinstance(v, dict):
        return {k: shorten(x) for k, x in v.items()}
    return v


def body_bytes(b):
    if b is None:
        return None
    if isinstance(b, dict) and "string" in b:
        b = b["string"]
    if isinstance(b, bytes):
        return b
    if isinstance(b, str):
        return b.encode()
    return json.dumps(b).encode()


def decode_eventstream(data):
    """(event type, payload) of each AWS event-stream message (CRCs not checked here)."""
    out = []
    at = 0
    while at + 12 <= len(data):
        total, hlen = struct.unpack(">II", data[at:at + 8])
        if total < 16 or at + total > len(data):
            break
        headers = data[at + 12:at + 12 + hlen]
        payload = data[at + 12 + hlen:at + total - 4]
        kind = None
        h = 0
        while h < len(headers):
            n = headers[h]
            name = headers[h + 1:h + 1 + n].decode("utf-8", "replace")
            t = headers[h + 1 + n]
            h += 2 + n
            if t == 7 or t == 6:
                (ln,) = struct.unpack(">H", headers[h:h + 2])
                val = headers[h + 2:h + 2 + ln]
                h += 2 + ln
                if name in (":event-type", ":exception-type"):
                    kind = val.decode()
            else:
                break
        out.append((kind, payload))
        at += total
    return out


def is_stream(content_type, body):
    ct = (content_type or "").lower()
    return "event-stream" in ct or "ndjson" in ct or body.lstrip().startswith((b"event:", b"data:"))


def interactions():
    for path in sorted(FIX.rglob("*.yaml")):
        try:
            doc = yaml.safe_load(path.read_text())
        except Exception as e:  # noqa: BLE001 - a fixture that is not a cassette
            print(f"skip {path}: {e}", file=sys.stderr)
            continue
        if not isinstance(doc, dict) or "interactions" not in doc:
            continue
        for it in doc["interactions"]:
            yield path, it


def header(h, name):
    for k, v in (h or {}).items():
        if k.lower() == name:
            return v[0] if isinstance(v, list) else v
    return None


def main():
    chat_requests = []
    for path, it in interactions():
        prov = provider_of(path)
        req = it.get("request", {})
        resp = it.get("response", {})
        reqb = body_bytes(req.get("body")) or (json.dumps(req["parsed_body"]).encode() if req.get("parsed_body") else None)
        uri = req.get("uri", "")
        # Client-side requests: OpenAI-shaped chat / embeddings bodies.
        if reqb and prov in ("openai", "azure", "deepseek", "mistral") or (reqb and "/v1/chat/completions" in uri):
            try:
                j = json.loads(reqb)
                if "messages" in j:
                    chat_requests.append(json.dumps(shorten(j)).encode())
                elif "input" in j:
                    for b in (B["openai"], B["cohere"], B["gemini"], B["bedrock"], B["ollama"]):
                        add("request", bytes([b, 1]) + json.dumps(shorten(j)).encode())
            except ValueError:
                pass
        st = resp.get("status") or 200
        status = st.get("code", 200) if isinstance(st, dict) else resp.get("code", int(str(st).split()[0]))
        body = body_bytes(resp.get("body"))
        if body is None and resp.get("parsed_body") is not None:
            body = json.dumps(resp["parsed_body"]).encode()
        if body is None:
            continue
        ctype = header(resp.get("headers"), "content-type")
        b = B[prov]
        if status >= 400:
            idx = STATUSES.index(status) if status in STATUSES else 0
            add("response", bytes([b, 0x80 | (idx << 2)]) + body)
            continue
        if prov == "bedrock" and "eventstream" in (ctype or ""):
            add("stream", bytes([b, 2, 0]) + body)
            add("decoders", bytes([2, 0]) + body)
            framed = b"\n".join(bytes([BEDROCK_EVENTS.index(k) if k in BEDROCK_EVENTS else 0]) + p
                               for k, p in decode_eventstream(body))
            add("stream", bytes([b, 0, 0]) + framed)
            add("stream", bytes([b, 1, 3, 7, 1, 30]) + framed)
            add("decoders", bytes([3, 0]) + framed)
            continue
        if is_stream(ctype, body):
            if len(body) > MAX_SEED - 64:
                # A long recording: its first events (cut at an event boundary).
                cut = body[:MAX_SEED - 64]
                body = cut[:cut.rfind(b"\n\n") + 2] if b"\n\n" in cut else cut
            add("stream", bytes([b, 0, 0]) + body)
            add("stream", bytes([b, 1, 4, 1, 13, 2, 64]) + body)
            if prov in ("openai", "azure"):
                add("decoders", bytes([4, 0]) + body)
                add("decoders", bytes([0x84, 2, 5, 9]) + body)
            elif b"ndjson" in (ctype or "").encode():
                add("decoders", bytes([1, 0]) + body)
            else:
                add("decoders", bytes([0, 3, 1, 2, 200]) + body)
            continue
        try:
            body = json.dumps(shorten(json.loads(body))).encode()
        except ValueError:
            pass
        mode = 1 if b'"embedding' in body or b'"embeddings' in body else 0
        add("response", bytes([b, mode]) + body)
        if mode:
            add("response", bytes([b, mode | 2]) + body)

    # The Anthropic SDK's SSE fixtures.
    for path in sorted(FIX.rglob("*.txt")):
        data = path.read_bytes()
        if b"event:" in data:
            add("stream", bytes([B["anthropic"], 0, 0]) + data)
            add("decoders", bytes([0, 0]) + data)

    # The Cohere embed example (vectors cut).
    ex = FIX / "cohere" / "embed-v4-example.json"
    if ex.exists():
        j = json.loads(ex.read_text())
        if isinstance(j, dict) and "response" in j:
            add("response", bytes([B["cohere"], 1]) + json.dumps(shorten(j["response"])).encode())
            add("response", bytes([B["cohere"], 3]) + json.dumps(shorten(j["response"])).encode())
        if isinstance(j, dict) and "request" in j:
            r = dict(j["request"])
            add("request", bytes([B["cohere"], 1]) + json.dumps({"model": "m", "input": r.get("texts", ["x"])}).encode())

    # Chat requests against every backend (each recorded body against a few, round-robin).
    for i, body in enumerate(sorted(set(chat_requests))):
        for k in range(4):
            add("request", bytes([(i * 4 + k) % len(BACKENDS), 0]) + body)
    # Hand-written requests exercising the translators' branches.
    rich = {
        "model": "m", "n": 2, "stop": ["x", "y"], "temperature": 0.5, "top_p": 0.9, "max_completion_tokens": 20,
        "seed": 7, "user": "u", "stream": True, "stream_options": {"include_usage": True},
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}},
        "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": False,
        "reasoning_effort": "low",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"},
                                          {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":\"b\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "result"},
        ],
    }
    for b in range(len(BACKENDS)):
        add("request", bytes([b, 0]) + json.dumps(rich).encode())
    add("request", bytes([B["openai"], 1]) + b'{"model":"e","input":"hello","encoding_format":"base64","dimensions":8}')
    add("request", bytes([B["gemini"], 1]) + b'{"model":"e","input":["a","b"]}')
    add("request", bytes([B["bedrock-signed"], 1]) + b'{"model":"e","input":"hello"}')

    # Ollama's NDJSON stream examples from its API docs (lines of JSON objects).
    api = FIX / "ollama" / "api.md"
    if api.exists():
        lines = [l for l in api.read_text().splitlines() if l.startswith('{"model"') and '"done"' in l]
        if lines:
            nd = ("\n".join(lines[:12]) + "\n").encode()
            add("stream", bytes([B["ollama"], 0, 0]) + nd)
            add("decoders", bytes([1, 2, 3, 17]) + nd)

    # Configurations: the demo / example ones and the fuzz backends.
    for path in sorted((ROOT / "envoy").glob("*.yaml")):
        def walk(v):
            if isinstance(v, dict):
                for x in v.values():
                    walk(x)
            elif isinstance(v, list):
                for x in v:
                    walk(x)
            elif isinstance(v, str) and '"role"' in v and v.lstrip().startswith("{"):
                add("config", v)
        walk(yaml.safe_load(path.read_text()))
    for path in sorted((ROOT / "examples").glob("*.json")):
        add("config", path.read_bytes())
    lib = (ROOT / "fuzz" / "src" / "lib.rs").read_text()
    start = lib.index('r#"{"role":"backend"') + 2
    add("config", lib[start:lib.index('}}"#', start) + 2])

    # Headers.
    for h in [
        "0.25\na:Bearer sk-fuzz-key-alpha\n",
        "1\nk:sk-fuzz-key-beta\nb:sk-provider-own\n",
        "x\na:Bearer sk-fuzz-key-alpha, Bearer sk-fuzz-key-alpha\n",
        "0.000001\na:Bearer sk-fuzz-key-gamma\n",
        "3\na:Basic dXNlcjpwYXNz\nk:sk-fuzz-key-beta\n",
        "0.5\nAuthorization:bearer\tsk-fuzz-key-beta\n",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\nk: sk-fuzz-key-alpha \n",
    ]:
        for m in range(4):
            add("headers", h.encode() + bytes([m]))

    responses_seeds()

    if OUT.exists():
        shutil.rmtree(OUT)
    total = 0
    for t, items in seeds.items():
        d = OUT / t
        d.mkdir(parents=True, exist_ok=True)
        for s in sorted(items):
            (d / hashlib.sha1(s).hexdigest()).write_bytes(s)
            total += len(s)
        print(f"{t}: {len(items)} seeds")
    print(f"total {total} bytes")


def responses_seeds():
    """The `responses` target: recorded Responses requests (mode 0) and answers and streams (mode 2),
    recorded chat streams and answers (mode 1)."""
    def body(it):
        r = it["response"]
        if "parsed_body" in r:
            return json.dumps(r["parsed_body"]).encode()
        b = r["body"]
        return (b["string"] if isinstance(b, dict) else b).encode()
    for path in sorted((FIX / "openai-responses").glob("*.yaml")):
        for it in yaml.safe_load(path.read_text())["interactions"]:
            if "parsed_body" in it["request"]:
                add("responses", bytes([0, 0]) + json.dumps(it["request"]["parsed_body"]).encode())
            add("responses", bytes([2, 3, 7, 1, 13]) + body(it))
    cassettes = "envoyproxy/ai-gateway/tests/internal/testopenai/cassettes/"
    for rel in [cassettes + "chat-streaming.yaml", cassettes + "chat-tools.yaml",
                "deepseek/test_deepseek_model_thinking_stream.yaml", "deepseek/test_deepseek_model_thinking_part.yaml"]:
        it = yaml.safe_load((FIX / rel).read_text())["interactions"][0]
        add("responses", bytes([1, 3, 5, 1, 11]) + body(it))


if __name__ == "__main__":
    main()
