"""Expected values for ``test_providers.py``, computed from the recordings in ``tests/fixtures/`` that
the "more" mock provider (``tests/mocks/more_providers.py``) replays: Gemini, Bedrock, Cohere,
Ollama, Azure OpenAI, Mistral and DeepSeek. Like ``recorded.py``, this module reads the fixture
files on its own (it does not import the mock's code) and derives what a client of the gateway must
see, in OpenAI's vocabulary.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import re
import struct
import zlib
from functools import lru_cache

from recorded import FIXTURES, _load_yaml, parse_sse, sse_json


def _body(rel: str, i: int = 0):
    resp = _load_yaml(rel)["interactions"][i]["response"]
    return resp["parsed_body"] if "parsed_body" in resp else resp["body"]["string"]


def _request(rel: str, i: int = 0) -> dict:
    return _load_yaml(rel)["interactions"][i]["request"]


def f32(x: float) -> float:
    """x rounded to float32 (what an f32 embedding carries)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def mock_vector(text: str, dims: int | None = None) -> list[float]:
    """The deterministic embedding the mocks answer where no recording has one (formula documented
    in tests/e2e/README.md): ``(u16_be(stream)[i] % 2048 - 1024) / 1024`` over the byte stream
    ``sha256(text) || sha256(previous 32 bytes) || …``."""
    dims = int(dims or 8)
    stream = hashlib.sha256(text.encode()).digest()
    while len(stream) < 2 * dims:
        stream += hashlib.sha256(stream[-32:]).digest()
    return [(int.from_bytes(stream[2 * i:2 * i + 2], "big") % 2048 - 1024) / 1024
            for i in range(dims)]


def decode_f32_base64(s: str) -> list[float]:
    raw = base64.b64decode(s)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


# --------------------------------------------------------------------------------------------------
# JSON mode: every mock answers JSON mode with the documented Ollama structured output


@lru_cache(None)
def _ollama_md() -> str:
    return (FIXTURES / "ollama/api.md").read_text(encoding="utf-8")


def _md_json(heading: str) -> list:
    md = _ollama_md()
    level = len(heading) - len(heading.lstrip("#"))
    lines = md.split("\n")
    i = lines.index(heading) + 1
    out = []
    while i < len(lines):
        m = re.match(r"^(#+) ", lines[i])
        if m and len(m.group(1)) <= level:
            break
        out.append(lines[i])
        i += 1
    return [json.loads(b) for b in re.findall(r"```json\n(.*?)```", "\n".join(out), flags=re.S)]


def json_answer() -> str:
    return _md_json("#### Chat request (Structured outputs)")[0]["message"]["content"]


# --------------------------------------------------------------------------------------------------
# Gemini


GEMINI_TEXT = "gemini/test_google_model.yaml"
GEMINI_STREAM = "gemini/test_google_model_stream.yaml"
GEMINI_TOOLS = "gemini/test_multiple_agent_tool_calls.yaml"


def gemini_usage(u: dict) -> dict:
    """OpenAI usage for Gemini usageMetadata: thoughts count as completion (reasoning) tokens."""
    prompt = u.get("promptTokenCount", 0) + u.get("toolUsePromptTokenCount", 0)
    completion = u.get("candidatesTokenCount", 0) + u.get("thoughtsTokenCount", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": u.get("totalTokenCount", prompt + completion),
            "reasoning_tokens": u.get("thoughtsTokenCount", 0)}


def gemini_text() -> dict:
    return _body(GEMINI_TEXT)


def gemini_stream_events() -> list[dict]:
    return [json.loads(d) for _, d in parse_sse(_body(GEMINI_STREAM))]


def gemini_tool_call() -> dict:
    return _body(GEMINI_TOOLS, 0)


def gemini_after_tool() -> dict:
    return _body(GEMINI_TOOLS, 1)


def gemini_text_of(resp: dict) -> str:
    return "".join(p.get("text", "") for c in resp["candidates"] for p in c["content"]["parts"]
                   if not p.get("thought"))


# --------------------------------------------------------------------------------------------------
# Bedrock


BEDROCK_TEXT = "bedrock/test_bedrock_model.yaml"
BEDROCK_STREAM = "bedrock/test_bedrock_model_stream.yaml"
BEDROCK_TOOLS = "bedrock/test_bedrock_model_iter_stream.yaml"
BEDROCK_ERROR = "bedrock/test_bedrock_error.yaml"
BEDROCK_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls", "guardrail_intervened": "content_filter",
                  "content_filtered": "content_filter"}


def eventstream(data: bytes) -> list[tuple[str, dict]]:
    """An AWS event-stream body -> [(:event-type, JSON payload)] (CRCs checked)."""
    out, pos = [], 0
    while pos < len(data):
        total, hlen = struct.unpack(">II", data[pos:pos + 8])
        frame = data[pos:pos + total]
        assert struct.unpack(">I", frame[-4:])[0] == zlib.crc32(frame[:-4])
        hdr, p, headers = frame[12:12 + hlen], 0, {}
        while p < len(hdr):
            n = hdr[p]
            name = hdr[p + 1:p + 1 + n].decode()
            p += 2 + n  # name, then the value type (7 = string)
            ln = struct.unpack(">H", hdr[p:p + 2])[0]
            headers[name] = hdr[p + 2:p + 2 + ln].decode()
            p += 2 + ln
        out.append((headers[":event-type"], json.loads(frame[12 + hlen:-4])))
        pos += total
    return out


def bedrock_usage(u: dict) -> dict:
    read, write = u.get("cacheReadInputTokens", 0), u.get("cacheWriteInputTokens", 0)
    prompt = u["inputTokens"] + read + write
    return {"prompt_tokens": prompt, "completion_tokens": u["outputTokens"],
            "total_tokens": prompt + u["outputTokens"]}


def bedrock_text() -> dict:
    return _body(BEDROCK_TEXT)


def bedrock_request_body(rel: str = BEDROCK_TEXT, i: int = 0) -> dict:
    return json.loads(_request(rel, i)["body"])


def bedrock_stream_summary(rel: str = BEDROCK_STREAM, i: int = 0) -> dict:
    """Text, tool uses, stop reason and usage of a recorded ConverseStream answer."""
    out = {"text": "", "tool_uses": [], "stop_reason": None, "usage": None}
    for kind, ev in eventstream(_body(rel, i)):
        if kind == "contentBlockStart" and "toolUse" in ev["start"]:
            out["tool_uses"].append({"id": ev["start"]["toolUse"]["toolUseId"],
                                     "name": ev["start"]["toolUse"]["name"], "input": ""})
        elif kind == "contentBlockDelta":
            if "text" in ev["delta"]:
                out["text"] += ev["delta"]["text"]
            elif "toolUse" in ev["delta"]:
                out["tool_uses"][-1]["input"] += ev["delta"]["toolUse"]["input"]
        elif kind == "messageStop":
            out["stop_reason"] = ev["stopReason"]
        elif kind == "metadata":
            out["usage"] = ev["usage"]
    return out


# --------------------------------------------------------------------------------------------------
# Cohere


COHERE_TEXT = "cohere/test_request_simple_success_with_vcr.yaml"
COHERE_DOCS = "cohere/tool-use-streaming.mdx"
COHERE_EMBED = "cohere/embed-v4-example.json"
COHERE_FINISH = {"COMPLETE": "stop", "STOP_SEQUENCE": "stop", "MAX_TOKENS": "length",
                 "TOOL_CALL": "tool_calls"}


def cohere_usage(u: dict) -> dict:
    """Cohere counts what the model processed in `tokens` (billed_units is what is charged)."""
    src = u.get("tokens") or u["billed_units"]
    p, c = int(src["input_tokens"]), int(src["output_tokens"])
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def cohere_text() -> dict:
    return _body(COHERE_TEXT)


def cohere_request_body() -> dict:
    return _request(COHERE_TEXT)["parsed_body"]


def _py(line: str, key: str):
    """The Python literal after `key=` in an SDK repr line (ast-evaluated)."""
    m = re.search(rf"\b{key}=('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[-\w.]+)", line)
    return ast.literal_eval(m.group(1)) if m else None


@lru_cache(None)
def cohere_docs_summary(n: int) -> dict:
    """The n-th example stream of the Cohere tool-use streaming docs (SDK reprs), summarised:
    tool plan, tool calls, text, finish reason, usage tokens."""
    mdx = (FIXTURES / COHERE_DOCS).read_text(encoding="utf-8")
    block = mdx.split("```mdx wordWrap")[n + 1].split("```")[0]
    out = {"plan": "", "calls": [], "text": "", "finish": None, "usage": None, "id": None}
    for line in (ln.strip() for ln in block.split("\n")):
        kind = _py(line, "type") if line.startswith("type='") else None
        if kind == "message-start":
            out["id"] = _py(line, "id")
        elif kind == "tool-plan-delta":
            out["plan"] += _py(line, "tool_plan")
        elif kind == "tool-call-start":
            out["calls"].append({"id": _py(line, "id"), "name": _py(line, "name"),
                                 "arguments": _py(line, "arguments")})
        elif kind == "tool-call-delta":
            out["calls"][-1]["arguments"] += _py(line, "arguments")
        elif kind in ("content-start", "content-delta"):
            out["text"] += _py(line, "text")
        elif kind == "message-end":
            out["finish"] = _py(line, "finish_reason")
            billed = line[line.index("billed_units"):]
            tokens = line[line.index("tokens=UsageTokens"):]
            out["usage"] = {
                "billed_units": {"input_tokens": _py(billed, "input_tokens"),
                                 "output_tokens": _py(billed, "output_tokens")},
                "tokens": {"input_tokens": _py(tokens, "input_tokens"),
                           "output_tokens": _py(tokens, "output_tokens")}}
    return out


def cohere_embed_example() -> dict:
    return json.loads((FIXTURES / COHERE_EMBED).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------
# Ollama (documented examples of the official API reference)


def ollama(heading: str) -> list[dict]:
    return _md_json(heading)


def ollama_usage(doc: dict) -> dict:
    p, c = doc.get("prompt_eval_count", 0), doc.get("eval_count", 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


# --------------------------------------------------------------------------------------------------
# Mistral (magistral) and DeepSeek (reasoner)


MISTRAL_STREAM = "mistral/test_mistral_model_thinking_part_iter.yaml"
DEEPSEEK_TEXT = "deepseek/test_deepseek_model_thinking_part.yaml"
DEEPSEEK_STREAM = "deepseek/test_deepseek_model_thinking_stream.yaml"


def mistral_stream_summary() -> dict:
    """Thinking text, answer text, finish reason and usage of the recorded magistral stream."""
    out = {"reasoning": "", "text": "", "finish": None, "usage": None, "chunks": 0}
    for c in sse_json(_body(MISTRAL_STREAM)):
        out["chunks"] += 1
        for ch in c.get("choices") or []:
            content = (ch.get("delta") or {}).get("content")
            if isinstance(content, str):
                out["text"] += content
            for part in content if isinstance(content, list) else []:
                if part.get("type") == "thinking":
                    out["reasoning"] += "".join(t["text"] for t in part["thinking"])
                elif part.get("type") == "text":
                    out["text"] += part["text"]
            out["finish"] = ch.get("finish_reason") or out["finish"]
        out["usage"] = c.get("usage") or out["usage"]
    return out


def deepseek_text() -> dict:
    return _body(DEEPSEEK_TEXT)


def deepseek_stream_summary() -> dict:
    out = {"reasoning": "", "text": "", "finish": None, "usage": None}
    for c in sse_json(_body(DEEPSEEK_STREAM)):
        for ch in c.get("choices") or []:
            d = ch.get("delta") or {}
            out["reasoning"] += d.get("reasoning_content") or ""
            out["text"] += d.get("content") or ""
            out["finish"] = ch.get("finish_reason") or out["finish"]
        out["usage"] = c.get("usage") or out["usage"]
    return out
