"""The in-flight registry (per-request state shared by the gateway and backend roles) is counted by
the gauge ``switchyard_inflight_requests``: it rises while requests are in flight and drains back to
zero when they end — whether they completed, failed over, were refused, or the client hung up in the
middle of a stream. A registry entry that outlived its request would be a leak on every worker."""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlparse

GAUGE = "switchyard_inflight_requests"


def inflight(gateway) -> int:
    return sum(v for k, v in gateway.stats(GAUGE).items() if k.endswith(GAUGE))


def wait_for(gateway, pred, timeout=10.0) -> int:
    deadline = time.monotonic() + timeout
    value = inflight(gateway)
    while not pred(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = inflight(gateway)
    return value


def start_slow_stream(gateway) -> http.client.HTTPConnection:
    url = urlparse(gateway.gateway_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "Hello"}]}
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                 headers={"content-type": "application/json", "x-mock-openai": "slow-stream"})
    return conn


def test_gauge_counts_streams_in_flight_and_drains_after_cancellation(gateway, client):
    assert wait_for(gateway, lambda v: v == 0) == 0, "registry not empty before the test"
    conns = [start_slow_stream(gateway) for _ in range(3)]
    responses = [c.getresponse() for c in conns]
    for r in responses:
        assert r.status == 200
        assert r.read1(32), "the slow stream sends its first event"
    assert inflight(gateway) == 3
    # Two clients hang up in the middle of their streams; one reads to the end.
    conns[0].close()
    conns[1].close()
    assert wait_for(gateway, lambda v: v == 1) == 1
    rest = responses[2].read()
    assert b"[DONE]" in rest
    conns[2].close()
    assert wait_for(gateway, lambda v: v == 0) == 0


def test_gauge_drains_after_completed_failed_over_and_refused_requests(gateway, client):
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}])
    failed_over = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}],
        extra_headers={"x-mock-openai": "503"})
    assert failed_over.headers["x-switchyard-attempts"] == "2"
    stream = client.chat.completions.create(model="claude-haiku", stream=True,
                                            messages=[{"role": "user", "content": "Hello"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    except Exception:  # noqa: BLE001 - the 404 is expected; the point is the registry afterwards
        pass
    assert wait_for(gateway, lambda v: v == 0) == 0
