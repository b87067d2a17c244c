#!/usr/bin/env python3
"""Mock LLM providers for Switchyard's end-to-end tests.

Serves an OpenAI-compatible provider and/or an Anthropic provider, both replaying REAL recorded
responses from ``tests/fixtures/`` (see ``tests/fixtures/README.md`` for where each file comes from):

    python tests/mocks/providers.py --openai-port 18001 --anthropic-port 18002

Standard library only (plus pyyaml, already a test dependency, to read the cassettes).

Endpoints (both mocks)
  POST /v1/chat/completions    OpenAI mock only
  POST /v1/embeddings          OpenAI mock only (deterministic vectors, see more_providers.mock_vector)
  POST /v1/messages            Anthropic mock only
  GET  /_mock/health           200 {"ok": true, "provider": ...}
  GET  /_mock/requests         JSON list of every request received (see ``Provider.record``)
  DELETE /_mock/requests       clear that list
  DELETE /_mock/once           forget which ``once-`` scenarios were already used

Failure scenarios are chosen per request with ``x-mock-openai: <scenario>`` (OpenAI mock only) or
``x-mock-anthropic: <scenario>`` (Anthropic mock only); see ``SCENARIOS`` below and the module
README in ``tests/e2e/README.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import re
import socket
import struct
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import yaml

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

ENVOY_CASSETTES = "envoyproxy/ai-gateway/tests/internal/testopenai/cassettes"
PYDANTIC_CASSETTES = "pydantic/pydantic-ai/tests/models/cassettes"
# OpenAI Responses API recordings (pydantic-ai cassettes, copied under their own folder).
RESPONSES_CASSETTES = "openai-responses"

# Scenarios understood by both mocks (numeric statuses other than those listed also work: they return
# that status with a provider-shaped generic error body).
SCENARIOS = (
    "503", "500", "429", "400", "529", "reset", "error-mid-stream", "truncate", "stall",
    "slow-stream", "once-<scenario>",
    # the security tests' (tests/e2e/test_security.py): a 401 quoting the credential received;
    # the normal answer plus headers a gateway must not pass on (SPOOF_HEADERS)
    "echo-auth", "echo-auth-mid-stream", "echo-auth-error-first", "spoof-headers",
    # the guardrail tests' (tests/e2e/test_guardrails.py), OpenAI mock only: the recorded answer
    # whose text is the last user message (streamed three characters per chunk)
    "echo",
    # the fault matrix's (tests/e2e/fault_matrix.py); every provider of both mock files
    "429-no-retry-after", "html", "reset-after-first-chunk", "stall-mid-stream",
    "truncate-mid-event", "malformed-json", "bad-crc", "oversize", "drip",
)
DEFAULT_STALL_SECONDS = 30.0
# Faults applied to the normal (200) answer of a request, by ``apply_fault`` and ``Handler``:
#   reset-after-first-chunk  the headers and the first unit (SSE event, NDJSON line, event-stream
#                            frame; a whole body's first third), then a TCP RST
#   stall-mid-stream         the first unit, then a pause (x-mock-stall-seconds), then the rest
#   truncate-mid-event       streams: half of the units and half of the next one, then a clean end
#   malformed-json           whole: the JSON body broken (200, same content-type); streams: the
#                            second unit's JSON cut in half (a well-formed SSE event / NDJSON line /
#                            event-stream frame with valid CRCs carrying broken JSON)
#   bad-crc                  event streams (Bedrock): the second frame's message CRC is wrong
#   oversize                 the answer's text padded to x-mock-size bytes (default 2 MiB)
#   drip                     the headers, then the body one byte per DRIP_SECONDS
ANSWER_FAULTS = ("reset-after-first-chunk", "stall-mid-stream", "truncate-mid-event",
                 "malformed-json", "bad-crc", "oversize", "drip")
DRIP_SECONDS = 0.1


def first_token_delay(headers: dict, who: str) -> float:
    """Seconds to wait before the first token, from ``x-mock-first-token-delay-ms``: ``<ms>`` for
    every mock, or ``<who>=<ms>[,…]`` per mock (``openai``, ``anthropic``, or a more-providers kind
    such as ``gemini``). A stream sends its headers at once and its events after the delay; a whole
    answer is sent after the delay."""
    raw = (headers.get("x-mock-first-token-delay-ms") or "").strip().lower()
    bare, own = None, None
    for item in (i.strip() for i in raw.split(",") if i.strip()):
        name, _, ms = item.rpartition("=")
        try:
            value = float(ms) / 1000.0
        except ValueError:
            continue
        if not name:
            bare = value
        elif name == who:
            own = value
    return own if own is not None else (bare or 0.0)
DEFAULT_OVERSIZE_BYTES = 2 * 1024 * 1024
# A load balancer's error page, as CDNs and reverse proxies put in front of an API send it.
HTML_ERROR_PAGE = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
                   "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
                   "</body>\r\n</html>\r\n")
# slow-stream: seconds between two SSE events (a stream a client can cut in the middle).
SLOW_STREAM_EVENT_SECONDS = 0.2


# --------------------------------------------------------------------------------------------------
# fixture loading


def _load_yaml(rel: str):
    with open(FIXTURES / rel, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _interactions(rel: str) -> list:
    doc = _load_yaml(rel)
    inter = doc.get("interactions") if isinstance(doc, dict) else None
    if not inter:
        raise ValueError(f"{rel}: no interactions")
    return inter


def _response_body(interaction: dict) -> str:
    """The response body of one cassette interaction, as text.

    vcrpy (pydantic-ai): ``response.parsed_body`` (JSON re-serialised as YAML) or ``response.body.string``.
    go-vcr (envoyproxy/ai-gateway): ``response.body`` is the raw body string.
    """
    resp = interaction["response"]
    if "parsed_body" in resp:
        return json.dumps(resp["parsed_body"], ensure_ascii=False)
    body = resp.get("body")
    if isinstance(body, dict):
        s = body.get("string")
        if isinstance(s, bytes):
            return s.decode("utf-8")
        return s or ""
    if isinstance(body, bytes):
        return body.decode("utf-8")
    return body or ""


def _response_status(interaction: dict) -> int:
    resp = interaction["response"]
    if "code" in resp:  # go-vcr
        return int(resp["code"])
    st = resp.get("status")
    if isinstance(st, dict):  # vcrpy
        return int(st["code"])
    return int(str(st).split()[0])


def split_sse_events(body: str) -> list[str]:
    """Split an SSE body into events (each without its terminating blank line).

    Handles LF and CRLF; drops empty fragments. Re-join with ``"\\n\\n"``.
    """
    body = body.replace("\r\n", "\n")
    return [e for e in body.split("\n\n") if e.strip()]


def join_sse_events(events: list[str]) -> str:
    return "".join(e + "\n\n" for e in events)


def _event_data(event: str):
    """The JSON payload of an SSE event (None for [DONE] / non-JSON)."""
    lines = [ln[5:].lstrip(" ") for ln in event.split("\n") if ln.startswith("data:")]
    if not lines:
        return None
    data = "\n".join(lines)
    try:
        return json.loads(data)
    except ValueError:
        return None


def _event_name(event: str) -> str | None:
    for ln in event.split("\n"):
        if ln.startswith("event:"):
            return ln[6:].strip()
    return None


def _fenced_blocks(md: str) -> list[str]:
    return re.findall(r"```[^\n]*\n(.*?)```", md, flags=re.S)


def accumulate_anthropic_stream(events: list[str]) -> dict:
    """Fold an Anthropic Messages SSE stream into the equivalent non-stream Message object."""
    message: dict = {}
    blocks: dict[int, dict] = {}
    partial: dict[int, str] = {}
    for ev in events:
        data = _event_data(ev)
        if not isinstance(data, dict):
            continue
        t = data.get("type")
        if t == "message_start":
            message = copy.deepcopy(data["message"])
        elif t == "content_block_start":
            blocks[data["index"]] = copy.deepcopy(data["content_block"])
        elif t == "content_block_delta":
            idx, delta = data["index"], data["delta"]
            if delta["type"] == "text_delta":
                blocks[idx]["text"] = blocks[idx].get("text", "") + delta["text"]
            elif delta["type"] == "input_json_delta":
                partial[idx] = partial.get(idx, "") + delta["partial_json"]
            elif delta["type"] == "thinking_delta":
                blocks[idx]["thinking"] = blocks[idx].get("thinking", "") + delta["thinking"]
            elif delta["type"] == "signature_delta":
                blocks[idx]["signature"] = delta["signature"]
        elif t == "content_block_stop":
            idx = data["index"]
            if idx in partial:
                blocks[idx]["input"] = json.loads(partial[idx]) if partial[idx] else {}
        elif t == "message_delta":
            message.update(data.get("delta", {}))
            usage = message.setdefault("usage", {})
            usage.update(data.get("usage", {}))
    message["content"] = [blocks[i] for i in sorted(blocks)]
    return message


class Fixtures:
    """Every recording the mocks replay, loaded once at start-up (fails fast on a broken fixture)."""

    def __init__(self) -> None:
        # ---- OpenAI ----------------------------------------------------------------------------
        self.openai_text_rel = f"{ENVOY_CASSETTES}/azure-chat-basic.yaml"
        self.openai_text = _response_body(_interactions(self.openai_text_rel)[0])
        json.loads(self.openai_text)

        self.openai_tools_rel = f"{ENVOY_CASSETTES}/chat-tools.yaml"
        self.openai_tools = _response_body(_interactions(self.openai_tools_rel)[0])
        assert json.loads(self.openai_tools)["choices"][0]["message"]["tool_calls"]

        self.openai_stream_text_rel = f"{ENVOY_CASSETTES}/chat-streaming.yaml"
        self.openai_stream_text = split_sse_events(
            _response_body(_interactions(self.openai_stream_text_rel)[0]))

        self.openai_usage_rel = f"{ENVOY_CASSETTES}/chat-streaming-detailed-usage.yaml"
        usage_events = split_sse_events(_response_body(_interactions(self.openai_usage_rel)[0]))
        usage_chunks = [d for d in map(_event_data, usage_events)
                        if isinstance(d, dict) and d.get("choices") == [] and d.get("usage")]
        assert len(usage_chunks) == 1, "chat-streaming-detailed-usage.yaml: expected one usage chunk"
        self.openai_usage_chunk = usage_chunks[0]

        self.openai_stream_tools_rel = (
            f"{PYDANTIC_CASSETTES}/test_openai/test_run_stream_sync_streams_real_model.yaml")
        inter = _interactions(self.openai_stream_tools_rel)
        # interaction 0: streamed tool_calls; interaction 1: the text answer after the tool result.
        self.openai_stream_tools = split_sse_events(_response_body(inter[0]))
        self.openai_stream_after_tool = split_sse_events(_response_body(inter[1]))

        self.openai_400_rel = f"{ENVOY_CASSETTES}/chat-bad-request.yaml"
        i400 = _interactions(self.openai_400_rel)[0]
        assert _response_status(i400) == 400
        self.openai_400 = _response_body(i400)

        # ---- OpenAI Responses API (/v1/responses) ---------------------------------------------
        self.responses_text_rel = f"{RESPONSES_CASSETTES}/test_openai_responses_model_simple_response.yaml"
        self.responses_text = _response_body(_interactions(self.responses_text_rel)[0])
        self.responses_tool_rel = (f"{RESPONSES_CASSETTES}/"
                                   "test_openai_responses_model_simple_response_with_tool_call.yaml")
        rinter = _interactions(self.responses_tool_rel)
        self.responses_tool = _response_body(rinter[0])        # a function_call item
        self.responses_after_tool = _response_body(rinter[1])  # the answer to its output
        self.responses_stream_rel = f"{RESPONSES_CASSETTES}/test_openai_responses_stream.yaml"
        rinter = _interactions(self.responses_stream_rel)
        self.responses_stream_tool = split_sse_events(_response_body(rinter[0]))
        self.responses_stream_text = split_sse_events(_response_body(rinter[1]))
        self.responses_json_rel = f"{RESPONSES_CASSETTES}/test_native_output.yaml"
        self.responses_json = _response_body(_interactions(self.responses_json_rel)[1])
        self.responses_image_rel = f"{RESPONSES_CASSETTES}/test_openai_responses_image_url_input.yaml"
        self.responses_image = _response_body(_interactions(self.responses_image_rel)[0])
        self.responses_reasoning_rel = f"{RESPONSES_CASSETTES}/test_openai_responses_model_thinking_part.yaml"
        self.responses_reasoning = _response_body(_interactions(self.responses_reasoning_rel)[0])
        self.responses_400_rel = f"{RESPONSES_CASSETTES}/test_openai_responses_model_http_error.yaml"
        r400 = _interactions(self.responses_400_rel)[0]
        assert _response_status(r400) == 400
        self.responses_400 = _response_body(r400)
        assert json.loads(self.responses_tool)["output"][0]["type"] == "function_call"

        # ---- Anthropic -------------------------------------------------------------------------
        self.anthropic_text_rel = (
            f"{PYDANTIC_CASSETTES}/test_anthropic/test_anthropic_model_instructions.yaml")
        self.anthropic_text = _response_body(_interactions(self.anthropic_text_rel)[0])

        self.anthropic_400_rel = (f"{PYDANTIC_CASSETTES}/test_anthropic/"
                                  "test_anthropic_explicit_effort_xhigh_unsupported_model_errors.yaml")
        a400 = _interactions(self.anthropic_400_rel)[0]
        assert _response_status(a400) == 400
        self.anthropic_400 = _response_body(a400)

        self.anthropic_stream_thinking_rel = (
            f"{PYDANTIC_CASSETTES}/test_anthropic/test_anthropic_model_thinking_part_stream.yaml")
        self.anthropic_stream_thinking = split_sse_events(
            _response_body(_interactions(self.anthropic_stream_thinking_rel)[0]))
        # Non-stream answer to a request with thinking: that stream folded into a Message.
        self.anthropic_thinking = accumulate_anthropic_stream(self.anthropic_stream_thinking)
        assert [b["type"] for b in self.anthropic_thinking["content"]] == ["thinking", "text"]

        self.anthropic_stream_text_rel = "anthropic-sdk/basic_response.txt"
        self.anthropic_stream_text = split_sse_events(
            (FIXTURES / self.anthropic_stream_text_rel).read_text(encoding="utf-8"))
        self.anthropic_stream_tools_rel = "anthropic-sdk/tool_use_response.txt"
        self.anthropic_stream_tools = split_sse_events(
            (FIXTURES / self.anthropic_stream_tools_rel).read_text(encoding="utf-8"))

        # Non-stream tool_use message: the documented tool-use stream example (real API output on
        # Anthropic's "Streaming Messages" page), folded into the equivalent Message.
        self.anthropic_tool_use_rel = "anthropic-docs/streaming-messages.md"
        md = (FIXTURES / self.anthropic_tool_use_rel).read_text(encoding="utf-8")
        example = None
        for block in _fenced_blocks(md):
            if ("event: message_start" in block and '"type":"tool_use"' in block
                    and "server_tool_use" not in block):
                example = block
                break
        assert example, "streaming-messages.md: tool use stream example not found"
        self.anthropic_tool_use = accumulate_anthropic_stream(split_sse_events(example))
        assert self.anthropic_tool_use["stop_reason"] == "tool_use"

        for evs in (self.openai_stream_text, self.openai_stream_tools, self.openai_stream_after_tool,
                    self.responses_stream_tool, self.responses_stream_text,
                    self.anthropic_stream_text, self.anthropic_stream_tools,
                    self.anthropic_stream_thinking):
            assert len(evs) >= 4

    def used_files(self) -> list[str]:
        return [v for k, v in vars(self).items() if k.endswith("_rel")]


# --------------------------------------------------------------------------------------------------
# helpers shared by both providers


def first_tool(body: dict) -> dict | None:
    tools = body.get("tools") if isinstance(body, dict) else None
    if isinstance(tools, list) and tools and isinstance(tools[0], dict):
        return tools[0]
    return None


def has_tools(body) -> bool:
    return isinstance(body, dict) and isinstance(body.get("tools"), list) and len(body["tools"]) > 0


def openai_tool_name(tool: dict | None) -> str | None:
    if not tool:
        return None
    fn = tool.get("function")
    if isinstance(fn, dict) and isinstance(fn.get("name"), str):
        return fn["name"]
    if isinstance(tool.get("name"), str):
        return tool["name"]
    return None


def example_input_for_schema(schema, recorded: dict) -> dict:
    """A tool input matching ``schema`` (JSON schema object), preferring the recorded values."""
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict) \
            or not schema["properties"]:
        return {"location": recorded.get("location", "San Francisco, CA")}
    props = schema["properties"]
    required = schema.get("required") if isinstance(schema.get("required"), list) else []
    out = {}
    for key, prop in props.items():
        prop = prop if isinstance(prop, dict) else {}
        enum = prop.get("enum") if isinstance(prop.get("enum"), list) else None
        if key in recorded and (enum is None or recorded[key] in enum):
            out[key] = recorded[key]
            continue
        if key not in required:
            continue
        if enum:
            out[key] = enum[0]
            continue
        typ = prop.get("type")
        if isinstance(typ, list):
            typ = next((t for t in typ if t != "null"), "string")
        if typ in (None, "string"):
            locish = any(w in key.lower() for w in ("location", "city", "place", "address"))
            out[key] = "San Francisco, CA" if locish else "example"
        else:
            out[key] = {"integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {},
                        "null": None}.get(typ, "example")
    return out


class Chunker:
    """Deterministic 'awkward' split sizes for streamed bodies (1..max bytes, often mid-line)."""

    SIZES = (7, 1, 53, 3, 129, 17, 2, 88, 31, 5, 211, 11, 64, 9, 150, 23)

    def __init__(self, seed: int = 0, max_size: int = 160) -> None:
        self.rnd = random.Random(seed)
        self.max = max_size
        self.i = 0

    def next(self) -> int:
        self.i += 1
        if self.i <= len(self.SIZES):
            return self.SIZES[self.i - 1]
        return self.rnd.randint(1, self.max)

    def split(self, data: bytes) -> list[bytes]:
        cuts, pos = set(), 0
        while pos < len(data):
            pos += self.next()
            cuts.add(pos)
        # always include the nastiest offsets: inside the first field name ("dat|a:"), between the
        # two newlines ending the first event, and inside the first multi-byte UTF-8 sequence.
        cuts.add(3)
        first_end = data.find(b"\n\n")
        if first_end >= 0:
            cuts.add(first_end + 1)
        mb = next((i for i, b in enumerate(data) if b >= 0xC0), None)
        if mb is not None:
            cuts.add(mb + 1)
        bounds = [0] + sorted(c for c in cuts if 0 < c < len(data)) + [len(data)]
        return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


class Reply:
    """What a handler should send back."""

    def __init__(self, status=200, body: bytes | str | dict | list | None = None, headers=None,
                 stream: bytes | str | None = None, truncate_body=False, reset=False,
                 event_delay: float = 0.0):
        self.status = status
        # One of ANSWER_FAULTS (set by the provider, completed by ``apply_fault``).
        self.fault: str | None = None
        self.stall_seconds = 0.0
        # > 0: the stream is written one SSE event at a time, this many seconds apart.
        self.event_delay = event_delay
        self.headers = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body, ensure_ascii=False)
        if isinstance(body, str):
            body = body.encode("utf-8")
        if isinstance(stream, str):
            stream = stream.encode("utf-8")
        self.body = body
        self.stream = stream
        self.truncate_body = truncate_body
        self.reset = reset


# --------------------------------------------------------------------------------------------------
# providers


class Provider:
    name = "?"
    scenario_header = "x-mock-?"
    paths: tuple[str, ...] = ()

    def __init__(self, fx: Fixtures, stall_seconds: float = DEFAULT_STALL_SECONDS) -> None:
        self.fx = fx
        self.stall_seconds = stall_seconds
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.once_used: set[tuple[str, str]] = set()
        self.counter = 0

    # -- bookkeeping
    def record(self, entry: dict) -> None:
        with self.lock:
            self.counter += 1
            entry["seq"] = self.counter
            self.requests.append(entry)

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.requests)

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()

    def clear_once(self) -> None:
        with self.lock:
            self.once_used.clear()

    def resolve_scenario(self, headers: dict) -> str | None:
        raw = (headers.get(self.scenario_header) or "").strip().lower()
        if not raw:
            return None
        if raw.startswith("once-"):
            scenario = raw[5:]
            key = (scenario, headers.get("x-mock-key", ""))
            with self.lock:
                if key in self.once_used:
                    return None
                self.once_used.add(key)
            return scenario
        return raw

    # -- to implement
    def answer(self, body, stream: bool) -> Reply:
        raise NotImplementedError

    def error(self, status: int) -> Reply:
        raise NotImplementedError

    def mid_stream_error(self, body) -> Reply:
        raise NotImplementedError

    def truncated(self, body, stream: bool) -> Reply:
        raise NotImplementedError

    def not_found(self, path: str) -> Reply:
        raise NotImplementedError

    def bad_json(self) -> Reply:
        return self.error(400)

    # -- dispatch
    def handle(self, method: str, path: str, body, scenario: str | None) -> Reply:
        if method != "POST" or path not in self.paths:
            return self.not_found(path)
        if not isinstance(body, dict):
            return self.bad_json()
        stream = body.get("stream") is True
        if scenario in (None, "", "ok", "none", "stall"):
            return self.answer(body, stream)
        if scenario == "reset":
            return Reply(reset=True)
        if scenario == "error-mid-stream":
            return self.mid_stream_error(body) if stream else self.answer(body, stream)
        if scenario == "truncate":
            return self.truncated(body, stream)
        if scenario == "slow-stream":
            reply = self.answer(body, stream)
            if reply.stream is not None:
                reply.event_delay = SLOW_STREAM_EVENT_SECONDS
            return reply
        if scenario in ANSWER_FAULTS:
            reply = self.answer(body, stream)
            reply.fault = scenario
            return reply
        if scenario == "spoof-headers":
            reply = self.answer(body, stream)
            reply.headers.update(SPOOF_HEADERS)
            return reply
        if scenario == "429-no-retry-after":
            return without_retry_after(self.error(429))
        if scenario == "html":
            return html_error()
        if scenario.isdigit() and len(scenario) == 3:
            return self.error(int(scenario))
        return self.error_unknown_scenario(scenario)

    def error_unknown_scenario(self, scenario: str) -> Reply:
        return Reply(status=418, body={"error": {
            "message": f"mock: unknown scenario {scenario!r} in {self.scenario_header}; "
                       f"known: {', '.join(SCENARIOS)} or any 3-digit status",
            "type": "mock_error", "param": None, "code": "unknown_scenario"}})


def credential_accepted(name: str, headers: dict) -> bool:
    """``x-mock-require-credential: <mock>=<value>``: that mock (openai, anthropic) answers its 401
    unless a credential header of the request contains <value> (a provider that accepts only the
    rotated key)."""
    for item in (headers.get("x-mock-require-credential") or "").split(","):
        who, sep, value = item.strip().partition("=")
        if sep and who == name:
            return any(value in headers.get(h, "") for h in CREDENTIAL_HEADERS)
    return True


def without_retry_after(reply: Reply) -> Reply:
    for k in [k for k in reply.headers if k.lower() in ("retry-after", "retry-after-ms")]:
        del reply.headers[k]
    return reply


# ``spoof-headers``: what a provider (or something between it and the gateway) could add to an
# answer: the gateway's own response headers, and its provider account's organisation and cookies.
SPOOF_HEADERS = {
    "x-switchyard-cost": "0.000000", "x-switchyard-budget-remaining": "999999.000000",
    "x-switchyard-backend": "spoofed-backend", "x-switchyard-route": "spoofed-route",
    "openai-organization": "org-mock-account", "openai-project": "proj_mock",
    "anthropic-organization-id": "mock-anthropic-org", "set-cookie": "__cf_bm=mock; path=/",
    "x-ratelimit-limit-tokens": "150000000", "x-ratelimit-remaining-tokens": "149999990",
    "x-ratelimit-remaining-requests": "29999",
}

# Request headers that carry a provider credential (SigV4's ``authorization`` quotes the key id).
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key",
                      "x-amz-security-token")


def received_credentials(headers: dict) -> str:
    received = "; ".join(f"{k}: {headers[k]}" for k in CREDENTIAL_HEADERS if k in headers)
    return f" (credential received: {received or 'none'})"


def echo_auth_in_stream(reply: Reply, headers: dict) -> Reply:
    """``echo-auth-mid-stream``: the ``error-mid-stream`` stream whose error event's message (its
    last ``"message"`` string) quotes every credential header received."""
    if reply.stream is None or "eventstream" in str(reply.headers.get("content-type", "")):
        return reply        # Bedrock's binary frames carry CRCs: left as they are
    text = reply.stream.decode("utf-8")
    at = text.rfind('"message"')
    start = text.find('"', text.find(":", at) + 1) if at >= 0 else -1
    if start < 0:
        return reply
    end = start + 1
    while text[end] != '"':
        end += 2 if text[end] == "\\" else 1
    suffix = json.dumps(received_credentials(headers))[1:-1]
    reply.stream = (text[:end] + suffix + text[end:]).encode("utf-8")
    return reply


def echo_auth(reply: Reply, headers: dict) -> Reply:
    """``echo-auth``: the provider's own 401 whose message quotes, verbatim, every credential
    header it received (as some providers do: "Incorrect API key provided: <key>")."""
    suffix = received_credentials(headers)

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("message", "error", "detail") and isinstance(v, str):
                    node[k] = v + suffix
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    try:
        doc = json.loads(reply.body or b"{}")
    except ValueError:
        doc = {"message": (reply.body or b"").decode("utf-8", "replace")}
    walk(doc)
    reply.body = json.dumps(doc, ensure_ascii=False).encode("utf-8")
    return reply


def html_error(status: int = 502) -> Reply:
    return Reply(status=status, headers={"content-type": "text/html"}, body=HTML_ERROR_PAGE)


# -- the answer faults (ANSWER_FAULTS)

EVENTSTREAM = "application/vnd.amazon.eventstream"


def _ctype(reply: Reply) -> str:
    for k, v in reply.headers.items():
        if k.lower() == "content-type":
            return v.lower()
    return ""


def split_units(data: bytes, ctype: str) -> list[bytes]:
    """A streamed body cut into its units, separators kept: SSE events, NDJSON lines, AWS
    event-stream frames; anything else is one unit."""
    if ctype.startswith(EVENTSTREAM):
        out, pos = [], 0
        while pos + 12 <= len(data):
            total = struct.unpack(">I", data[pos:pos + 4])[0]
            out.append(data[pos:pos + total])
            pos += total
        return out
    if "ndjson" in ctype:
        return [ln + b"\n" for ln in data.split(b"\n") if ln.strip()]
    if ctype.startswith("text/event-stream"):
        out, start = [], 0
        for m in re.finditer(rb"\r\n\r\n|\n\n", data):
            out.append(data[start:m.end()])
            start = m.end()
        if data[start:].strip():
            out.append(data[start:])
        return out
    return [data]


def _es_frame(headers: bytes, payload: bytes, good_crc: bool = True) -> bytes:
    total = 12 + len(headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    msg = prelude + headers + payload
    crc = zlib.crc32(msg)
    return msg + struct.pack(">I", crc if good_crc else crc ^ 0xDEADBEEF)


def _es_parts(frame: bytes) -> tuple[bytes, bytes]:
    hlen = struct.unpack(">I", frame[4:8])[0]
    return frame[12:12 + hlen], frame[12 + hlen:-4]


def _pad_text(doc, extra: int) -> bool:
    """Appends `extra` characters to the longest string under a "text"/"content"/"thinking" key
    (the answer's text, whatever the schema); False when the document has none."""
    best = [None, None, -1]

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, str) and k in ("text", "content", "thinking") and len(v) > best[2]:
                    best[:] = [node, k, len(v)]
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    if best[0] is None:
        return False
    filler = ("All work and no play makes a large answer. " * (extra // 43 + 1))[:extra]
    best[0][best[1]] += filler
    return True


def _sse_data(unit: bytes) -> tuple[list[bytes], bytes] | None:
    """(other lines, data) of an SSE event with one data line."""
    lines = unit.replace(b"\r\n", b"\n").rstrip(b"\n").split(b"\n")
    data = [ln for ln in lines if ln.startswith(b"data:")]
    if len(data) != 1:
        return None
    return [ln for ln in lines if not ln.startswith(b"data:")], data[0][5:].lstrip(b" ")


def _pad_unit(unit: bytes, ctype: str, extra: int) -> bytes | None:
    try:
        if ctype.startswith(EVENTSTREAM):
            headers, payload = _es_parts(unit)
            doc = json.loads(payload)
            return _es_frame(headers, json.dumps(doc).encode()) if _pad_text(doc, extra) else None
        if "ndjson" in ctype:
            doc = json.loads(unit)
            return (json.dumps(doc) + "\n").encode() if _pad_text(doc, extra) else None
        parts = _sse_data(unit)
        if parts is None:
            return None
        doc = json.loads(parts[1])
        if not _pad_text(doc, extra):
            return None
        return b"\n".join(parts[0] + [b"data: " + json.dumps(doc).encode()]) + b"\n\n"
    except ValueError:
        return None


def _malformed_unit(unit: bytes, ctype: str) -> bytes:
    if ctype.startswith(EVENTSTREAM):
        headers, payload = _es_parts(unit)
        return _es_frame(headers, payload[:len(payload) // 2])
    if "ndjson" in ctype:
        line = unit.rstrip(b"\n")
        return line[:len(line) // 2] + b"\n"
    parts = _sse_data(unit)
    if parts is None:
        return b"data: {\"choices\": [{\"delta\": \n\n"
    return b"\n".join(parts[0] + [b"data: " + parts[1][:len(parts[1]) // 2]]) + b"\n\n"


def not_applicable(fault: str, why: str) -> Reply:
    return Reply(status=418, headers={"content-type": "application/json"}, body={"error": {
        "message": f"mock: scenario {fault!r} does not apply here: {why}", "type": "mock_error",
        "param": None, "code": "scenario_not_applicable"}})


def apply_fault(reply: Reply, headers: dict, stall_seconds: float) -> Reply:
    """Completes an answer fault (``reply.fault``) once the request headers are known: edits the
    body for the content faults, sets the pause of ``stall-mid-stream``; the Handler sends it."""
    if reply.status == 429 and headers.get("x-mock-retry-after") and any(
            k.lower() == "retry-after" for k in reply.headers):
        reply.headers = {k: v for k, v in reply.headers.items() if k.lower() != "retry-after"}
        reply.headers["retry-after"] = headers["x-mock-retry-after"]
    fault = reply.fault
    if fault is None or reply.status != 200:
        reply.fault = None
        return reply
    ctype = _ctype(reply)
    if fault == "stall-mid-stream":
        secs = headers.get("x-mock-stall-seconds")
        reply.stall_seconds = float(secs) if secs else stall_seconds
    if fault in ("reset-after-first-chunk", "stall-mid-stream", "drip"):
        return reply
    stream = reply.stream is not None
    data = reply.stream if stream else (reply.body or b"")
    if fault == "oversize":
        size = int(headers.get("x-mock-size") or DEFAULT_OVERSIZE_BYTES)
        if not stream:
            try:
                doc = json.loads(data)
            except ValueError:
                return not_applicable(fault, "the answer is not JSON")
            if not _pad_text(doc, size):
                return not_applicable(fault, "no text to pad in the answer")
            reply.body = json.dumps(doc).encode()
            return reply
        units = split_units(data, ctype)
        for i in list(range(1, len(units))) + [0]:
            padded = _pad_unit(units[i], ctype, size)
            if padded is not None:
                units[i] = padded
                reply.stream = b"".join(units)
                return reply
        return not_applicable(fault, "no text to pad in the stream")
    if fault == "malformed-json":
        if not stream:
            body = data.rstrip()
            reply.body = body[:-1] + b',"broken": ]' if body.endswith(b"}") else body + b"{"
            return reply
        units = split_units(data, ctype)
        if len(units) < 2:
            return not_applicable(fault, "the stream has fewer than two units")
        units[1] = _malformed_unit(units[1], ctype)
        reply.stream = b"".join(units)
        return reply
    if not stream:
        return not_applicable(fault, "only for streamed answers")
    units = split_units(data, ctype)
    if fault == "truncate-mid-event":
        k = max(1, len(units) // 2)
        if k >= len(units):
            return not_applicable(fault, "the stream has a single unit")
        cut = units[k][:max(1, len(units[k]) // 2)]
        reply.stream = b"".join(units[:k]) + cut
        return reply
    if fault == "bad-crc":
        if not ctype.startswith(EVENTSTREAM) or len(units) < 2:
            return not_applicable(fault, "only for AWS event streams")
        headers_b, payload = _es_parts(units[1])
        units[1] = _es_frame(headers_b, payload, good_crc=False)
        reply.stream = b"".join(units)
        return reply
    return reply


def _sse_headers() -> dict:
    return {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


class OpenAIProvider(Provider):
    name = "openai"
    scenario_header = "x-mock-openai"
    paths = ("/v1/chat/completions", "/v1/embeddings", "/v1/responses")

    ERRORS = {
        # Messages as the OpenAI API sends them; shape {"error":{message,type,param,code}}.
        429: {"error": {
            "message": "Rate limit reached for gpt-4o-mini in organization org-mock on requests per "
                       "min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s. Visit "
                       "https://platform.openai.com/account/rate-limits to learn more.",
            "type": "requests", "param": None, "code": "rate_limit_exceeded"}},
        500: {"error": {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error", "param": None, "code": None}},
        503: {"error": {
            "message": "The server is overloaded or not ready yet.",
            "type": "server_error", "param": None, "code": None}},
    }

    @staticmethod
    def _has_tool_message(body: dict) -> bool:
        msgs = body.get("messages")
        return isinstance(msgs, list) and any(
            isinstance(m, dict) and m.get("role") == "tool" for m in msgs)

    @staticmethod
    def _include_usage(body: dict) -> bool:
        so = body.get("stream_options")
        return isinstance(so, dict) and so.get("include_usage") is True

    def _stream_events(self, body: dict) -> list[str]:
        """Recorded chunk events (without [DONE]) for this request, usage chunk set as requested."""
        if has_tools(body) and not self._has_tool_message(body):
            events = list(self.fx.openai_stream_tools)
            name = openai_tool_name(first_tool(body))
            if name and name != "get_capital":
                events = [e.replace('"name":"get_capital"', '"name":' + json.dumps(name))
                          for e in events]
        elif has_tools(body):
            events = list(self.fx.openai_stream_after_tool)
        else:
            events = list(self.fx.openai_stream_text)
        chunks = [e for e in events if _event_data(e) is not None]
        usage = [e for e in chunks
                 if _event_data(e).get("choices") == [] and _event_data(e).get("usage")]
        chunks = [e for e in chunks if e not in usage]
        if self._include_usage(body):
            if usage:
                chunks.extend(usage)
            else:
                # emulate: the recorded usage-only chunk of chat-streaming-detailed-usage.yaml,
                # re-labelled with this stream's id/created/model.
                first = _event_data(chunks[0])
                u = dict(self.fx.openai_usage_chunk)
                for k in ("id", "created", "model", "system_fingerprint"):
                    if k in first:
                        u[k] = first[k]
                chunks.append("data: " + json.dumps(u, ensure_ascii=False, separators=(",", ":")))
        return chunks

    # -- the Responses API (/v1/responses): recorded OpenAI Responses traffic
    @staticmethod
    def _is_responses(body) -> bool:
        return isinstance(body, dict) and "input" in body and "messages" not in body

    @staticmethod
    def _responses_items(body: dict) -> list:
        items = body.get("input")
        return items if isinstance(items, list) else []

    def _responses_has_output(self, body: dict) -> bool:
        return any(isinstance(i, dict) and i.get("type") == "function_call_output"
                   for i in self._responses_items(body))

    @staticmethod
    def _responses_tool_name(body: dict) -> str | None:
        for t in body.get("tools") or []:
            if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str):
                return t["name"]
        return None

    def _responses_stream_events(self, body: dict) -> list[str]:
        name = self._responses_tool_name(body)
        if name and not self._responses_has_output(body):
            events = list(self.fx.responses_stream_tool)
            if name != "get_capital":
                events = [e.replace('"name":"get_capital"', '"name":' + json.dumps(name)) for e in events]
            return events
        return list(self.fx.responses_stream_text)

    def responses_answer(self, body, stream):
        """Recorded Responses answers: a streamed or whole function call when the request offers a
        function tool and carries no call output yet; the recorded answer to the call's output
        after one; a JSON answer for ``text.format`` json_schema; the image answer for an
        ``input_image``; the reasoning answer for ``reasoning.effort``; plain text otherwise."""
        if stream:
            return Reply(headers=_sse_headers(), stream=join_sse_events(self._responses_stream_events(body)))
        name = self._responses_tool_name(body)
        fmt = ((body.get("text") or {}).get("format") or {}) if isinstance(body.get("text"), dict) else {}
        has_image = any(isinstance(p, dict) and p.get("type") == "input_image"
                        for i in self._responses_items(body) if isinstance(i, dict)
                        for p in (i.get("content") if isinstance(i.get("content"), list) else []))
        if name and not self._responses_has_output(body):
            doc = json.loads(self.fx.responses_tool)
            doc["output"][0]["name"] = name
            text = json.dumps(doc, ensure_ascii=False)
        elif self._responses_has_output(body):
            text = self.fx.responses_after_tool
        elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            text = self.fx.responses_json
        elif has_image:
            text = self.fx.responses_image
        elif isinstance(body.get("reasoning"), dict) and body["reasoning"].get("effort"):
            text = self.fx.responses_reasoning
        else:
            text = self.fx.responses_text
        return Reply(headers={"content-type": "application/json"}, body=text)

    def echo(self, body, stream):
        """The recorded answer (``azure-chat-basic.yaml``; stream: ``chat-streaming.yaml``'s chunks)
        with the text of the request's last user message as its content; a stream carries it three
        characters per chunk, so that anything in it is split across chunks."""
        text = ""
        for m in body.get("messages") or []:
            if isinstance(m, dict) and m.get("role") == "user":
                c = m.get("content")
                if isinstance(c, list):
                    c = "\n".join(p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text")
                text = c if isinstance(c, str) else ""
        if not stream:
            doc = json.loads(self.fx.openai_text)
            doc["choices"][0]["message"]["content"] = text
            return Reply(headers={"content-type": "application/json"}, body=json.dumps(doc))
        chunks = [_event_data(e) for e in self.fx.openai_stream_text if _event_data(e) is not None]
        first = next(c for c in chunks if c.get("choices") and c["choices"][0].get("delta", {}).get("content"))
        last = next(c for c in chunks if c.get("choices") and c["choices"][0].get("finish_reason"))
        events = []
        for i in range(0, len(text), 3):
            c = json.loads(json.dumps(first))
            c["choices"][0]["delta"] = {"content": text[i:i + 3]}
            events.append("data: " + json.dumps(c, separators=(",", ":")))
        events.append("data: " + json.dumps(last, separators=(",", ":")))
        events.append("data: [DONE]")
        return Reply(headers=_sse_headers(), stream=join_sse_events(events))

    def handle(self, method, path, body, scenario):
        if scenario == "echo" and method == "POST" and path == "/v1/chat/completions" and isinstance(body, dict):
            return self.echo(body, body.get("stream") is True)
        # Embeddings: deterministic vectors (more_providers.mock_vector); failure scenarios as chat.
        if path == "/v1/embeddings" and method == "POST" and isinstance(body, dict) \
                and scenario in (None, "", "ok", "none", "stall"):
            from more_providers import openai_embeddings
            return Reply(headers={"content-type": "application/json"}, body=openai_embeddings(body))
        return super().handle(method, path, body, scenario)

    def answer(self, body, stream):
        if self._is_responses(body):
            return self.responses_answer(body, stream)
        if stream:
            events = self._stream_events(body) + ["data: [DONE]"]
            return Reply(headers=_sse_headers(), stream=join_sse_events(events))
        if has_tools(body) and not self._has_tool_message(body):
            text = self.fx.openai_tools
            name = openai_tool_name(first_tool(body))
            if name and name != "get_current_weather":
                doc = json.loads(text)
                doc["choices"][0]["message"]["tool_calls"][0]["function"]["name"] = name
                text = json.dumps(doc, ensure_ascii=False, indent=2)
            return Reply(headers={"content-type": "application/json"}, body=text)
        return Reply(headers={"content-type": "application/json"}, body=self.fx.openai_text)

    def error(self, status):
        headers = {"content-type": "application/json"}
        if status == 400:
            return Reply(status=400, headers=headers, body=self.fx.openai_400)
        if status == 429:
            headers["retry-after"] = "0"
            headers["x-ratelimit-remaining-requests"] = "0"
        body = self.ERRORS.get(status) or {"error": {
            "message": f"mock provider error {status}", "type": "server_error" if status >= 500
            else "invalid_request_error", "param": None, "code": None}}
        return Reply(status=status, headers=headers, body=body)

    def mid_stream_error(self, body):
        if self._is_responses(body):
            # A few recorded events, then the Responses API's `error` event (its shape in the
            # OpenAPI spec, `ResponseErrorEvent`), then the end (no `response.completed`).
            events = self._responses_stream_events(body)[:4]
            err = {"type": "error", "code": "server_error", "message": self.ERRORS[500]["error"]["message"],
                   "param": None, "sequence_number": 4}
            events.append("event: error\ndata: " + json.dumps(err, separators=(",", ":")))
            return Reply(headers=_sse_headers(), stream=join_sse_events(events))
        # A few real chunks, then the error object OpenAI sends inside a stream, then the end
        # (no finish_reason chunk, no [DONE]).
        chunks = [e for e in self._stream_events(body)][:4]
        err = dict(self.ERRORS[500])
        chunks.append("data: " + json.dumps(err, separators=(",", ":")))
        return Reply(headers=_sse_headers(), stream=join_sse_events(chunks))

    def truncated(self, body, stream):
        if stream and self._is_responses(body):
            events = self._responses_stream_events(body)
            return Reply(headers=_sse_headers(), stream=join_sse_events(events[:max(3, len(events) // 2)]))
        if stream:
            chunks = self._stream_events(body)
            return Reply(headers=_sse_headers(),
                         stream=join_sse_events(chunks[:max(2, len(chunks) // 2)]))
        full = self.answer(body, False)
        return Reply(headers=full.headers, body=full.body, truncate_body=True)

    def not_found(self, path):
        return Reply(status=404, headers={"content-type": "application/json"}, body={"error": {
            "message": f"Invalid URL ({path})", "type": "invalid_request_error",
            "param": None, "code": None}})

    def bad_json(self):
        return Reply(status=400, headers={"content-type": "application/json"}, body={"error": {
            "message": "We could not parse the JSON body of your request. (HINT: This likely means "
                       "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                       "payload, but what was sent was not valid JSON.)",
            "type": "invalid_request_error", "param": None, "code": None}})


class AnthropicProvider(Provider):
    name = "anthropic"
    scenario_header = "x-mock-anthropic"
    paths = ("/v1/messages",)

    ERRORS = {
        429: ("rate_limit_error",
              "Number of request tokens has exceeded your per-minute rate limit "
              "(https://docs.anthropic.com/en/api/rate-limits); see the response headers for "
              "current usage. Please reduce the prompt length or the maximum tokens requested, or "
              "try again later."),
        500: ("api_error", "Internal server error"),
        503: ("api_error", "Service unavailable"),
        529: ("overloaded_error", "Overloaded"),
        401: ("authentication_error", "invalid x-api-key"),
        403: ("permission_error", "Your API key does not have permission to use the specified resource."),
        404: ("not_found_error", "Not found"),
        413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    }
    # The docs' example error event, verbatim.
    ERROR_EVENT = ('event: error\ndata: {"type": "error", "error": '
                   '{"type": "overloaded_error", "message": "Overloaded"}}')

    @staticmethod
    def _thinking(body: dict) -> bool:
        th = body.get("thinking")
        return isinstance(th, dict) and th.get("type") not in (None, "disabled")

    def _stream_events(self, body: dict) -> list[str]:
        if has_tools(body):
            events = list(self.fx.anthropic_stream_tools)
            name = openai_tool_name(first_tool(body))
            if name and name != "get_weather":
                events = [e.replace('"name":"get_weather"', '"name":' + json.dumps(name))
                          for e in events]
            return events
        if self._thinking(body):
            return list(self.fx.anthropic_stream_thinking)
        return list(self.fx.anthropic_stream_text)

    def _tool_use_message(self, body: dict) -> dict:
        msg = copy.deepcopy(self.fx.anthropic_tool_use)
        tool = first_tool(body) or {}
        for block in msg["content"]:
            if block.get("type") == "tool_use":
                recorded = block.get("input") or {}
                if isinstance(tool.get("name"), str):
                    block["name"] = tool["name"]
                block["input"] = example_input_for_schema(tool.get("input_schema"), recorded)
        return msg

    def answer(self, body, stream):
        headers = {"request-id": f"req_mock{int(time.time() * 1000)}"}
        if stream:
            headers.update(_sse_headers())
            return Reply(headers=headers, stream=join_sse_events(self._stream_events(body)))
        headers["content-type"] = "application/json"
        if has_tools(body):
            return Reply(headers=headers, body=self._tool_use_message(body))
        if self._thinking(body):
            return Reply(headers=headers, body=self.fx.anthropic_thinking)
        return Reply(headers=headers, body=self.fx.anthropic_text)

    def error(self, status):
        headers = {"content-type": "application/json"}
        if status == 400:
            return Reply(status=400, headers=headers, body=self.fx.anthropic_400)
        if status == 429:
            headers["retry-after"] = "0"
        etype, msg = self.ERRORS.get(status, ("api_error", f"mock provider error {status}"))
        return Reply(status=status, headers=headers,
                     body={"type": "error", "error": {"type": etype, "message": msg}})

    def mid_stream_error(self, body):
        events = self._stream_events(body)
        out, deltas = [], 0
        for e in events:
            if _event_name(e) in ("content_block_stop", "message_delta", "message_stop"):
                break
            out.append(e)
            if _event_name(e) == "content_block_delta":
                deltas += 1
                if deltas >= 2:
                    break
        out.append(self.ERROR_EVENT)
        return Reply(headers=_sse_headers(), stream=join_sse_events(out))

    def truncated(self, body, stream):
        if stream:
            events = self._stream_events(body)
            cut = [e for e in events[:max(3, len(events) // 2)]
                   if _event_name(e) not in ("message_delta", "message_stop")]
            return Reply(headers=_sse_headers(), stream=join_sse_events(cut))
        full = self.answer(body, False)
        return Reply(headers=full.headers, body=full.body, truncate_body=True)

    def not_found(self, path):
        return Reply(status=404, headers={"content-type": "application/json"}, body={
            "type": "error", "error": {"type": "not_found_error", "message": f"Not Found: {path}"}})

    def bad_json(self):
        return Reply(status=400, headers={"content-type": "application/json"}, body={
            "type": "error", "error": {"type": "invalid_request_error",
                                       "message": "There was an error parsing the body of your request."}})


# --------------------------------------------------------------------------------------------------
# HTTP layer


class MockServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, provider: Provider, verbose: bool = False):
        self.provider = provider
        self.verbose = verbose
        super().__init__(addr, Handler)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "switchyard-mock/1"
    server: MockServer

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("[%s] %s\n" % (self.server.provider.name, fmt % args))

    # every method goes through one dispatcher
    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_PATCH(self):
        self._dispatch()

    # -- request reading
    def _read_body(self) -> bytes:
        te = (self.headers.get("transfer-encoding") or "").lower()
        if "chunked" in te:
            parts = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("eof in chunked body")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until blank line
                    while True:
                        t = self.rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline(3)  # CRLF after chunk data
            return b"".join(parts)
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    # -- response writing
    def _send_head(self, status: int, headers: dict):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)

    def _send_reply(self, r: Reply):
        if r.reset:
            self._reset()
            return
        if r.fault is not None:
            self._send_fault(r)
            return
        delay = getattr(r, "first_token_delay", 0.0)
        if r.stream is not None:
            self._send_head(r.status, r.headers)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            time.sleep(delay)
            if r.event_delay > 0:
                for event in split_sse_events(r.stream.decode("utf-8")):
                    piece = (event + "\n\n").encode("utf-8")
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.flush()
                    time.sleep(r.event_delay)
                self.wfile.write(b"0\r\n\r\n")
                return
            chunker = Chunker(seed=self.server.provider.counter)
            for piece in chunker.split(r.stream):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                time.sleep(0.002)
            self.wfile.write(b"0\r\n\r\n")
            return
        body = r.body or b""
        time.sleep(delay)
        self._send_head(r.status, r.headers)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if r.truncate_body:
            self.wfile.write(body[:len(body) // 2])
            time.sleep(0.01)
            self.close_connection = True
            self._reset()
            return
        self.wfile.write(body)

    def _send_fault(self, r: Reply):
        """An answer with one of ANSWER_FAULTS (already completed by ``apply_fault``)."""
        stream = r.stream is not None
        data = r.stream if stream else (r.body or b"")
        self._send_head(r.status, r.headers)
        if stream:
            self.send_header("transfer-encoding", "chunked")
        else:
            self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.flush()

        def write(piece: bytes):
            if piece:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if stream else piece)
                self.wfile.flush()

        units = split_units(data, _ctype(r)) if stream else [data[:max(1, len(data) // 3)],
                                                                data[max(1, len(data) // 3):]]
        if r.fault == "reset-after-first-chunk":
            write(units[0])
            time.sleep(0.05)  # let the proxy forward it before the reset
            self._reset()
            return
        if r.fault == "stall-mid-stream":
            write(units[0])
            time.sleep(r.stall_seconds)
            for u in units[1:]:
                write(u)
        elif r.fault == "drip":
            for i in range(len(data)):
                write(data[i:i + 1])
                time.sleep(DRIP_SECONDS)
        else:  # the content faults: the edited answer, in big pieces
            for i in range(0, len(data), 65536):
                write(data[i:i + 65536])
        if stream:
            self.wfile.write(b"0\r\n\r\n")

    def _reset(self):
        """Close the TCP connection abruptly (RST, via SO_LINGER 0)."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            self.rfile.close()  # drop makefile()'s reference so close() really closes the fd
        except OSError:
            pass
        try:
            self.connection.close()
        except OSError:
            pass

    def _json(self, status: int, obj):
        self._send_reply(Reply(status=status, headers={"content-type": "application/json"}, body=obj))

    # -- dispatcher
    def _dispatch(self):
        provider = self.server.provider
        try:
            raw = self._read_body()
        except (ConnectionError, ValueError, OSError):
            self.close_connection = True
            return
        url = urlsplit(self.path)
        path = url.path
        try:
            if path.startswith("/_mock/"):
                self._control(provider, path)
                return
            headers: dict[str, str] = {}
            for k, v in self.headers.items():
                k = k.lower()
                headers[k] = f"{headers[k]}, {v}" if k in headers else v
            text = raw.decode("utf-8", errors="replace")
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            scenario = provider.resolve_scenario(headers)
            provider.record({
                "method": self.command, "path": path,
                "query": dict(parse_qsl(url.query, keep_blank_values=True)),
                "raw_query": url.query, "headers": headers, "body": body,
                "body_text": text, "scenario": scenario, "time": time.time(),
            })
            if scenario == "stall":
                secs = headers.get("x-mock-stall-seconds")
                time.sleep(float(secs) if secs else provider.stall_seconds)
            if not credential_accepted(provider.name, headers):
                reply = provider.error(401)
            else:
                if scenario == "echo-auth":
                    reply = echo_auth(provider.error(401), headers)
                elif scenario == "echo-auth-mid-stream":
                    reply = echo_auth_in_stream(provider.handle(self.command, path, body, "error-mid-stream"), headers)
                else:
                    reply = provider.handle(self.command, path, body, scenario)
            reply = apply_fault(reply, headers, provider.stall_seconds)
            reply.first_token_delay = first_token_delay(headers, provider.name)
            self._send_reply(reply)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
        except Exception as e:  # never let the mock die: answer 599 with the traceback message
            import traceback
            traceback.print_exc()
            try:
                self._json(599, {"error": {"message": f"mock crashed: {e!r}", "type": "mock_error",
                                           "param": None, "code": None}})
            except OSError:
                pass
            self.close_connection = True

    def _control(self, provider: Provider, path: str):
        if path == "/_mock/health" and self.command == "GET":
            self._json(200, {"ok": True, "provider": provider.name})
        elif path == "/_mock/requests" and self.command == "GET":
            self._json(200, provider.snapshot())
        elif path == "/_mock/requests" and self.command == "DELETE":
            provider.clear()
            self._json(200, {"ok": True})
        elif path == "/_mock/once" and self.command == "DELETE":
            provider.clear_once()
            self._json(200, {"ok": True})
        else:
            self._json(404, {"error": {"message": f"unknown mock control {self.command} {path}",
                                       "type": "mock_error", "param": None, "code": None}})


# --------------------------------------------------------------------------------------------------


def serve(openai_port=None, anthropic_port=None, host="127.0.0.1", verbose=False,
          stall_seconds=DEFAULT_STALL_SECONDS, more_port=None):
    """Start the requested mocks in background threads; returns the list of servers.
    ``more_port``: also the Gemini/Bedrock/Cohere/Ollama/Azure/… mock (more_providers.py)."""
    fx = Fixtures()
    servers = []
    if openai_port is not None:
        servers.append(MockServer((host, openai_port), OpenAIProvider(fx, stall_seconds), verbose))
    if anthropic_port is not None:
        servers.append(MockServer((host, anthropic_port), AnthropicProvider(fx, stall_seconds),
                                  verbose))
    if more_port is not None:
        import more_providers
        servers.append(more_providers.make_server(more_port, host, verbose, stall_seconds, fx))
    for s in servers:
        threading.Thread(target=s.serve_forever, name=f"mock-{s.provider.name}",
                         daemon=True).start()
    return servers


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--openai-port", type=int)
    ap.add_argument("--anthropic-port", type=int)
    ap.add_argument("--more-port", type=int,
                    help="Gemini, Bedrock, Cohere, Ollama, Azure, Mistral, DeepSeek (more_providers.py)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--stall-seconds", type=float, default=DEFAULT_STALL_SECONDS)
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = ap.parse_args(argv)
    if args.openai_port is None and args.anthropic_port is None and args.more_port is None:
        ap.error("give --openai-port, --anthropic-port and/or --more-port")
    servers = serve(args.openai_port, args.anthropic_port, args.host, args.verbose,
                    args.stall_seconds, more_port=args.more_port)
    print("mock providers ready: " + " ".join(
        f"{s.provider.name}=http://{args.host}:{s.server_address[1]}" for s in servers), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
