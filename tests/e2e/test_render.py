"""Configurations rendered from gateway files (README "The gateway file") in a real Envoy 1.40.

- every example's rendering (static and reloadable) passes ``envoy --mode validate``;
- Envoy running the rendering of examples/demo.yaml (through ``harness.GatewayFileGateway``) serves
  the openai SDK and fails over across providers;
- the module fetched over HTTP with its pinned sha256 (``module: {url, sha256}`` →
  ``vm_config.code.remote``) loads and serves; a wrong digest is refused: Envoy logs the mismatch and
  no request is served by a filter built from it;
- ``--target istio`` (with ``module: {url, sha256}``), as istiod and istio-agent would deliver it
  (tests/e2e/istio_emulation.py): valid, and serving and failing over with both roles over ECDS.
  The module from an OCI image: tests/e2e/test_istio.py.
"""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import openai
import pytest
import yaml

import harness
import istio_emulation

EXAMPLES = ["examples/demo.yaml", "examples/gateway.yaml", "examples/routing.yaml"]


def envoy_validate(config: Path) -> subprocess.CompletedProcess:
    envoy = harness.REPO / ".venv" / "bin" / "envoy-bin"
    return subprocess.run([str(envoy), "--mode", "validate", "-c", str(config), "--log-level", "warn"],
                          capture_output=True, text=True, timeout=120, env=harness.ENVOY_ENV | {"PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("example", EXAMPLES)
def test_rendered_examples_are_valid_envoy_configurations(example, tmp_path):
    doc = yaml.safe_load((harness.REPO / example).read_text())
    wasm = harness.build_wasm()
    if not isinstance(doc.get("module"), dict):
        doc["module"] = str(wasm)
    text = harness.render_gateway_file(doc, workdir=tmp_path)
    (tmp_path / "envoy.yaml").write_text(text)
    r = envoy_validate(tmp_path / "envoy.yaml")
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
    # The reloadable rendering: a bootstrap with LDS and CDS from watched files.
    out = tmp_path / "xds"
    out.mkdir()
    harness.render_gateway_file(doc, args=("--reloadable", str(out)), workdir=tmp_path)
    r = envoy_validate(out / "envoy.yaml")
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


def test_the_demo_gateway_file_serves_and_fails_over(mocks_only, tmp_path):
    gw = harness.start_or_stop(harness.GatewayFileGateway(tmp_path, mocks_only), harness.build_wasm())
    try:
        client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=30)
        r = client.chat.completions.with_raw_response.create(
            model="fast", messages=[{"role": "user", "content": "Hello"}],
            extra_headers={"x-mock-openai": "503"})
        assert r.headers["x-switchyard-backend"] == "anthropic-demo"
        assert r.headers["x-switchyard-attempts"] == "2"
        assert r.parse().choices[0].message.content
        for model in ("gemini-flash", "bedrock-nova", "command-r"):
            c = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}])
            assert c.choices[0].message.content, model
        assert not gw.problems(), gw.problems()
    finally:
        gw.stop()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def module_server():
    """A local HTTP server that serves the built module."""
    wasm = harness.build_wasm()
    root = Path(tempfile.mkdtemp(prefix="switchyard-module-"))
    (root / "switchyard.wasm").write_bytes(wasm.read_bytes())
    handler = lambda *a, **k: _Quiet(*a, directory=str(root), **k)  # noqa: E731
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/switchyard.wasm", hashlib.sha256(wasm.read_bytes()).hexdigest()
    srv.shutdown()


def remote_file(url: str, sha: str) -> dict:
    doc = harness.demo_gateway_file()
    doc["module"] = {"url": url, "sha256": sha}
    return doc


def test_the_module_loads_from_an_http_url_with_its_pinned_sha256(mocks_only, module_server, tmp_path):
    url, sha = module_server
    gw = harness.GatewayFileGateway(tmp_path, mocks_only, gateway_file=remote_file(url, sha))
    harness.start_or_stop(gw, harness.build_wasm())
    try:
        cfg = yaml.safe_load(gw.config_path.read_text())
        assert "switchyard.wasm" not in str(cfg["static_resources"]["listeners"]).replace(url, "")
        # While the fetch runs, Envoy logs each plugin as "failed to load (in progress)" and
        # finishes creating it when the module arrives: every route's backend filter then serves.
        offset = gw.log_offset()
        client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=30)
        for entry in remote_file(url, sha)["models"]:
            name = entry["name"]
            if "embed" in name:
                e = client.embeddings.create(model=name, input="Hi")
                assert e.data[0].embedding, name
            else:
                c = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}])
                assert c.choices[0].message.content, name
        stats = gw.stats("remote_load")
        assert stats.get("wasm.remote_load_fetch_successes", 0) >= 1, stats
        assert stats.get("wasm.remote_load_fetch_failures", 0) == 0, stats
        assert gw.alive() and not gw.wasm_failures() and not gw.wasm_crashes(offset), gw.wasm_crashes(offset)
    finally:
        gw.stop()


def test_a_module_with_another_sha256_is_refused(mocks_only, module_server, tmp_path):
    """Envoy fetches the module, finds another digest, retries, gives up: the plugins stay unloaded
    (fail closed) and no request is served by the module."""
    url, sha = module_server
    wrong = hashlib.sha256(b"not the module").hexdigest()
    assert wrong != sha
    gw = harness.GatewayFileGateway(tmp_path, mocks_only, gateway_file=remote_file(url, wrong))
    harness.start_or_stop(gw, harness.build_wasm())
    mocks_only.clear()
    try:
        status, _, body = harness.http(
            "POST", gw.base_url + "/chat/completions",
            body=b'{"model":"claude-haiku","messages":[{"role":"user","content":"Hi"}]}',
            headers={"content-type": "application/json"}, timeout=10)
        assert status >= 500, (status, body)
        assert not mocks_only.requests("anthropic"), "a request reached a provider without the filter"
        stats = gw.stats("remote_load")
        assert stats.get("wasm.remote_load_fetch_failures", 0) >= 1, stats
        assert stats.get("wasm.remote_load_fetch_successes", 0) == 0, stats
        assert "Retry limit exceeded for fetching data from remote data source" in gw.log_since(0)
    finally:
        gw.stop()


# --------------------------------------------------------------------------------------------------
# --target istio, checked offline (tests/e2e/istio_emulation.py): no cluster is available, so the
# EnvoyFilter's patches are applied here the way Istio applies them to a listener shaped like an
# Istio ingress gateway's, and its extension configurations are delivered over file-based ECDS,
# rewritten the way istio-agent rewrites them (the module fetched, checked, made a local file).
# The module from an OCI image: tests/e2e/test_istio.py.


def test_the_istio_rendering_of_the_routing_example_is_valid_envoy_configuration(tmp_path):
    docs = list(yaml.safe_load_all(harness.render_gateway_file(
        yaml.safe_load((harness.REPO / "examples/routing.yaml").read_text()), target="istio", workdir=tmp_path)))
    wasm = harness.build_wasm()
    # artifacts.example.com is not reachable: the "agent" hands over the built module.
    boot = istio_emulation.istio_like_bootstrap(docs, 1, 2, tmp_path / "ecds", lambda uri, sha: wasm)
    (tmp_path / "istio-envoy.yaml").write_text(yaml.safe_dump(boot))
    r = envoy_validate(tmp_path / "istio-envoy.yaml")
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


def test_the_istio_patches_serve_and_fail_over_in_envoy(mocks_only, module_server, tmp_path):
    """module: {url, sha256}: the agent fetches the URL and checks the module's digest."""
    url, sha = module_server
    agent = istio_emulation.Agent(tmp_path / "wasm-cache")
    gw = istio_emulation.IstioLikeGateway(tmp_path, mocks_only, gateway_file=remote_file(url, sha), agent=agent)
    harness.start_or_stop(gw, harness.build_wasm())
    try:
        assert agent.fetches == [url, url]  # both extension configurations, one cached file
        client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=30)
        r = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}],
            extra_headers={"x-mock-openai": "503"})
        assert r.headers["x-switchyard-backend"] == "anthropic-demo"
        chunks = list(client.chat.completions.create(model="gemini-flash", stream=True,
                                                     messages=[{"role": "user", "content": "Hi"}]))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert client.embeddings.create(model="cohere-embed", input="Hi").data[0].embedding
        assert gw.alive() and not gw.wasm_failures()
    finally:
        gw.stop()


def test_the_gateway_filter_needs_allow_on_headers_stop_iteration(mocks_only, tmp_path):
    """Why --target istio does not use a WasmPlugin for the gateway role: a WasmPlugin cannot set
    allow_on_headers_stop_iteration, and without it (Envoy's default, false) the gateway filter
    stalls a request it pauses for the body."""

    class NoStopIteration(harness.GatewayFileGateway):
        def render(self) -> str:
            doc = yaml.safe_load(super().render())
            hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            cfg = hcm["http_filters"][0]["typed_config"]["config"]
            assert cfg["allow_on_headers_stop_iteration"] is True
            del cfg["allow_on_headers_stop_iteration"]
            return yaml.safe_dump(doc, sort_keys=False)

    gw = harness.start_or_stop(NoStopIteration(tmp_path, mocks_only), harness.build_wasm())
    try:
        client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=5)
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": "Hi"}])
    finally:
        gw.stop()
