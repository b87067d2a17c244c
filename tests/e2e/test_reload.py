"""Reloads without a restart (README "Reloading the configuration"): Envoy runs the reloadable
rendering of a gateway file (`switchyard render FILE --reloadable DIR`: a bootstrap whose listener and
clusters come from DIR/listeners.yaml and DIR/clusters.yaml, which Envoy watches), and rendering an
edited gateway file into DIR again changes what it serves:

- a model added (with its route and cluster) is served, a removed one is a 404;
- a revoked key is refused, a new key works, a changed limit applies;
- a stream running during the reload completes, whole;
- what survives: the rate-limit counters of a key that stays and the exact answer cache (shared
  data under the same vm_id);
- Envoy never restarted (same process, `server.uptime` keeps growing; no hot restart).
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
import threading
import time
from pathlib import Path

import openai
import pytest

import harness

KEYS = {"sk-reload-alice": "alice", "sk-reload-bob": "bob", "sk-reload-carol": "carol", "sk-reload-dave": "dave"}


def key_entry(key: str, **limits) -> dict:
    e = {"id": KEYS[key], "sha256": hashlib.sha256(key.encode()).hexdigest()}
    if limits:
        e["limits"] = limits
    return e


class ReloadGateway(harness.GatewayFileGateway):
    """Envoy on the reloadable rendering of a gateway file; ``reload(doc)`` renders ``doc`` into
    the same directory and waits until Envoy applied the new listener and clusters."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.xds = self.workdir / "xds"

    def render(self) -> str:
        self.xds.mkdir(parents=True, exist_ok=True)
        harness.render_gateway_file(self.local_file(), args=("--reloadable", str(self.xds)),
                                    workdir=self.workdir)
        return (self.xds / "envoy.yaml").read_text(encoding="utf-8")

    def counters(self) -> tuple[int, int]:
        s = self.stats("manager")
        return (s.get("listener_manager.lds.update_success", 0), s.get("cluster_manager.cds.update_success", 0))

    def reload(self, doc: dict, timeout: float = 20.0) -> None:
        lds, cds = self.counters()
        self.gateway_file = doc
        self.render()
        harness.wait_until(lambda: all(a > b for a, b in zip(self.counters(), (lds, cds))), timeout,
                           "Envoy applied the new listener and clusters", self.proc, self.log_path)
        # The new listener takes new connections once it is warm.
        harness.wait_until(lambda: self.stats("listener_manager").get("listener_manager.total_listeners_warming", 0) == 0,
                           timeout, "listener warm", self.proc, self.log_path)


@pytest.fixture(scope="module")
def rgw():
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-reload-"))
    mocks = harness.Mocks(workdir).start()
    doc = harness.demo_gateway_file()
    doc["auth"] = {"keys": [key_entry("sk-reload-alice", rpm=100), key_entry("sk-reload-carol", rpm=3),
                            key_entry("sk-reload-dave", rpm=100)],
                   "unpriced_models": "free"}
    doc["cache"] = {"scope": "global", "ttl_seconds": 600, "cache_sampled": True}
    gw = ReloadGateway(workdir, mocks, gateway_file=doc)
    try:
        gw.start(harness.build_wasm())
        yield gw
        problems = gw.problems()
        assert not problems, problems
    finally:
        gw.stop()
        mocks.stop()
    harness.cleanup_workdir(workdir, keep=False)


def client(gw, key: str) -> openai.OpenAI:
    # A client (and so a connection) per request: a kept-alive connection stays on the listener
    # it was made to.
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=30)


def status_of(gw, key: str, model: str) -> int:
    try:
        client(gw, key).chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}])
        return 200
    except openai.APIStatusError as e:
        return e.status_code


def cached(gw, key: str, question: str) -> tuple[str, str]:
    """The cache's verdict and the answer's text for one request on a fresh connection."""
    r = client(gw, key).chat.completions.with_raw_response.create(
        model="claude-haiku", messages=[{"role": "user", "content": question}])
    return r.headers.get("x-switchyard-cache", ""), r.parse().choices[0].message.content


def test_models_keys_and_limits_change_without_a_restart_and_a_stream_in_flight_completes(rgw):
    pid = rgw.proc.pid
    # An answer stored before the reload (global scope: any key may be served it).
    question = f"What survives a reload? {time.time()}"
    verdict, stored = cached(rgw, "sk-reload-alice", question)
    assert verdict == "miss", verdict
    upstream_before = len(rgw.mock_requests("anthropic"))
    uptime0 = rgw.stats("server.uptime").get("server.uptime", 0)
    # Before: alice works, bob is unknown, the new model does not exist, carol has rpm 3.
    assert status_of(rgw, "sk-reload-alice", "gpt-4o-mini") == 200
    assert status_of(rgw, "sk-reload-bob", "gpt-4o-mini") == 401
    assert status_of(rgw, "sk-reload-alice", "reload-new") == 404
    assert status_of(rgw, "sk-reload-carol", "claude-haiku") == 200
    assert status_of(rgw, "sk-reload-carol", "claude-haiku") == 200

    # A slow stream (0.2 s between events) starts before the reload and runs through it.
    got: dict = {}

    def stream():
        try:
            text = ""
            for chunk in client(rgw, "sk-reload-alice").chat.completions.create(
                    model="gpt-4o-mini", stream=True,
                    # Not "Hi": that answer is in the cache, and a hit would not stream through the reload.
                    messages=[{"role": "user", "content": "Stream through the reload"}],
                    extra_headers={"x-mock-openai": "slow-stream"}):
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                got.setdefault("first", time.time())
                if chunk.choices and chunk.choices[0].finish_reason:
                    got["finish"] = chunk.choices[0].finish_reason
            got["text"] = text
            got["end"] = time.time()
        except Exception as e:  # noqa: BLE001
            got["error"] = repr(e)

    t = threading.Thread(target=stream)
    t.start()
    harness.wait_until(lambda: "first" in got or "error" in got, 20, "the stream's first chunk")

    # The reload: a new model, alice revoked, bob added with rpm 1, carol unchanged.
    doc = copy.deepcopy(rgw.gateway_file)
    doc["models"].append({"name": "reload-new", "owned_by": "test",
                          "candidates": ["anthropic-demo/claude-3-5-haiku-latest"]})
    doc["models"] = [m for m in doc["models"] if m["name"] != "magistral"]
    doc["auth"]["keys"] = [key_entry("sk-reload-bob", rpm=1), key_entry("sk-reload-carol", rpm=3),
                          key_entry("sk-reload-dave", rpm=100)]
    reload_at = time.time()
    rgw.reload(doc)

    t.join(60)
    assert "error" not in got, got
    assert got.get("finish") == "stop" and got["end"] > reload_at, got
    assert got["text"].startswith("Hi there!"), got

    assert status_of(rgw, "sk-reload-alice", "gpt-4o-mini") == 401      # revoked
    assert status_of(rgw, "sk-reload-bob", "reload-new") == 200           # new key, new model
    assert rgw.mock_requests("anthropic")[-1]["body"]["model"] == "claude-3-5-haiku-latest"
    assert status_of(rgw, "sk-reload-bob", "gpt-4o-mini") == 429          # its new limit: rpm 1
    assert status_of(rgw, "sk-reload-bob", "magistral") == 404            # removed
    # The answer cache survived the reload: the stored answer is served without an upstream call.
    upstream = len(rgw.mock_requests("anthropic"))
    assert cached(rgw, "sk-reload-dave", question) == ("hit", stored)
    assert len(rgw.mock_requests("anthropic")) == upstream
    assert upstream > upstream_before     # the mock does record claude-haiku requests
    # Carol's counter survived the reload: two requests before, one more allowed, then 429.
    assert status_of(rgw, "sk-reload-carol", "claude-haiku") == 200
    assert status_of(rgw, "sk-reload-carol", "claude-haiku") == 429

    # Same process, never restarted.
    assert rgw.proc.pid == pid and rgw.alive()
    assert rgw.stats("server.uptime").get("server.uptime", 0) >= uptime0
    assert rgw.stats("server.hot_restart_epoch").get("server.hot_restart_epoch", 0) == 0
