"""Self-tests of the mock providers' fault-matrix scenarios (no Envoy): each fault does what the
scenario tables in tests/e2e/README.md say, read with independent parsers (SSE, NDJSON, AWS
event-stream with its CRCs recomputed here)."""

from __future__ import annotations

import json
import socket
import struct
import time
import zlib

import pytest
import requests

HELLO = [{"role": "user", "content": "Hello!"}]
OPENAI_BODY = {"model": "gpt-4o-mini", "messages": HELLO}
BEDROCK_STREAM = "/model/us.amazon.nova-micro-v1%3A0/converse-stream"
BEDROCK_BODY = {"messages": [{"role": "user", "content": [{"text": "Hello!"}]}]}


def post(url, body, headers=None, stream=False, timeout=20):
    return requests.post(url, json=body, headers=headers or {}, stream=stream, timeout=timeout)


def sse_blocks(text: str) -> list[str]:
    return [b for b in text.replace("\r\n", "\n").split("\n\n") if b.strip()]


def sse_data(block: str) -> str:
    return "\n".join(ln[5:].lstrip(" ") for ln in block.split("\n") if ln.startswith("data:"))


def frames(data: bytes) -> list[tuple[bool, bytes]]:
    """(message CRC correct, payload) of each AWS event-stream frame (prelude CRC asserted)."""
    out, pos = [], 0
    while pos < len(data):
        total, hlen = struct.unpack(">II", data[pos:pos + 8])
        assert struct.unpack(">I", data[pos + 8:pos + 12])[0] == zlib.crc32(data[pos:pos + 8])
        frame = data[pos:pos + total]
        assert len(frame) == total, "cut frame"
        ok = struct.unpack(">I", frame[-4:])[0] == zlib.crc32(frame[:-4])
        out.append((ok, frame[12 + hlen:-4]))
        pos += total
    return out


def is_json(s) -> bool:
    try:
        json.loads(s)
        return True
    except ValueError:
        return False


def test_429_without_retry_after_and_html(mocks):
    r = post(mocks.openai_url + "/v1/chat/completions", OPENAI_BODY,
             {"x-mock-openai": "429-no-retry-after"})
    assert r.status_code == 429 and "retry-after" not in r.headers
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    r = post(mocks.more_url + "/v2/chat", {"model": "c", "messages": HELLO},
             {"x-mock-more": "cohere=429-no-retry-after"})
    assert r.status_code == 429 and "retry-after" not in r.headers
    for url, h in ((mocks.anthropic_url + "/v1/messages", {"x-mock-anthropic": "html"}),
                   (mocks.more_url + "/api/chat", {"x-mock-more": "html"})):
        r = post(url, {"model": "m", "messages": HELLO, "max_tokens": 5}, h)
        assert r.status_code == 502 and r.headers["content-type"] == "text/html"
        assert "<h1>502 Bad Gateway</h1>" in r.text


def test_malformed_json_whole_and_stream(mocks):
    r = post(mocks.openai_url + "/v1/chat/completions", OPENAI_BODY, {"x-mock-openai": "malformed-json"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert not is_json(r.content) and '"Hi there!' in r.text
    r = post(mocks.openai_url + "/v1/chat/completions", {**OPENAI_BODY, "stream": True},
             {"x-mock-openai": "malformed-json"})
    blocks = sse_blocks(r.text)
    assert is_json(sse_data(blocks[0])) and not is_json(sse_data(blocks[1]))
    assert all(is_json(sse_data(b)) for b in blocks[2:-1]) and sse_data(blocks[-1]) == "[DONE]"
    # Bedrock: a frame with valid CRCs whose JSON payload is cut
    r = post(mocks.more_url + BEDROCK_STREAM, BEDROCK_BODY, {"x-mock-more": "malformed-json"})
    fs = frames(r.content)
    assert all(ok for ok, _ in fs)
    assert [is_json(p) for _, p in fs[:3]] == [True, False, True]


def test_truncate_mid_event_cuts_inside_an_event(mocks):
    full = post(mocks.openai_url + "/v1/chat/completions", {**OPENAI_BODY, "stream": True}).text
    cut = post(mocks.openai_url + "/v1/chat/completions", {**OPENAI_BODY, "stream": True},
               {"x-mock-openai": "truncate-mid-event"}).text
    assert full.startswith(cut) and len(cut) < len(full)
    assert not cut.endswith("\n\n") and not is_json(sse_data(sse_blocks(cut)[-1]))
    r = post(mocks.openai_url + "/v1/chat/completions", OPENAI_BODY,
             {"x-mock-openai": "truncate-mid-event"})
    assert r.status_code == 418  # streams only
    # Ollama: an NDJSON line cut in the middle
    r = post(mocks.more_url + "/api/chat", {"model": "llama3.2", "messages": HELLO},
             {"x-mock-more": "ollama=truncate-mid-event"})
    lines = r.content.split(b"\n")
    assert is_json(lines[0]) and lines[-1] and not is_json(lines[-1])
    # Bedrock: the last frame is cut (its declared length is longer than what came)
    r = post(mocks.more_url + BEDROCK_STREAM, BEDROCK_BODY, {"x-mock-more": "truncate-mid-event"})
    with pytest.raises(AssertionError, match="cut frame"):
        frames(r.content)


def test_bad_crc_only_for_event_streams(mocks):
    r = post(mocks.more_url + BEDROCK_STREAM, BEDROCK_BODY, {"x-mock-more": "bedrock=bad-crc"})
    assert [ok for ok, _ in frames(r.content)][:3] == [True, False, True]
    r = post(mocks.openai_url + "/v1/chat/completions", {**OPENAI_BODY, "stream": True},
             {"x-mock-openai": "bad-crc"})
    assert r.status_code == 418 and r.json()["error"]["code"] == "scenario_not_applicable"


def test_oversize_pads_the_answer_text(mocks):
    size = 100_000
    r = post(mocks.openai_url + "/v1/chat/completions", OPENAI_BODY,
             {"x-mock-openai": "oversize", "x-mock-size": str(size)})
    content = r.json()["choices"][0]["message"]["content"]
    assert content.startswith("Hi there!") and len(content) > size
    r = post(mocks.more_url + BEDROCK_STREAM, BEDROCK_BODY,
             {"x-mock-more": "oversize", "x-mock-size": str(size)})
    fs = frames(r.content)
    assert all(ok for ok, _ in fs) and max(len(p) for _, p in fs) > size


def raw_post(port: int, path: str, body: dict, headers: dict) -> socket.socket:
    payload = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = "".join(f"{k}: {v}\r\n" for k, v in {
        "host": "127.0.0.1", "content-type": "application/json",
        "content-length": str(len(payload)), **headers}.items())
    s.sendall(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + payload)
    return s


def read_until_closed(s: socket.socket) -> tuple[bytes, Exception | None]:
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data, None
            data += chunk
    except OSError as e:
        return data, e
    finally:
        s.close()


def test_reset_after_first_chunk(mocks):
    s = raw_post(mocks.openai_port, "/v1/chat/completions", {**OPENAI_BODY, "stream": True},
                 {"x-mock-openai": "reset-after-first-chunk"})
    data, err = read_until_closed(s)
    assert isinstance(err, ConnectionResetError)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    assert body.count(b"data: ") == 1 and b"\n\n" in body and not body.endswith(b"0\r\n\r\n")
    # non-stream: a third of the announced body
    s = raw_post(mocks.openai_port, "/v1/chat/completions", OPENAI_BODY,
                 {"x-mock-openai": "reset-after-first-chunk"})
    data, err = read_until_closed(s)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n")
                      if ln.lower().startswith(b"content-length")))
    assert isinstance(err, ConnectionResetError) and 0 < len(body) < length


def test_stall_mid_stream_and_drip_timing(mocks):
    t0 = time.monotonic()
    r = post(mocks.more_url + "/v2/chat", {"model": "c", "messages": HELLO, "stream": True},
             {"x-mock-more": "cohere=stall-mid-stream", "x-mock-stall-seconds": "0.5"},
             stream=True)
    it = r.iter_content(chunk_size=None)
    first = next(it)
    t_first = time.monotonic() - t0
    rest = b"".join(it)
    total = time.monotonic() - t0
    assert t_first < 0.4 and total >= 0.5, (t_first, total)
    assert first.count(b"data:") == 1 and rest.rstrip().endswith(b"[DONE]")
    # drip: one byte every 100 ms (read the first few only)
    s = raw_post(mocks.openai_port, "/v1/chat/completions", OPENAI_BODY,
                 {"x-mock-openai": "drip"})
    t0 = time.monotonic()
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    body = data.partition(b"\r\n\r\n")[2]
    while len(body) < 4:
        body += s.recv(1)
    elapsed = time.monotonic() - t0
    s.close()
    assert body[:1] == b"{"
    assert elapsed >= 0.25, elapsed
