"""`--target istio` with the module pulled from an OCI image (`module: {image: oci://…, sha256}`),
checked offline in Envoy 1.40: what istiod and istio-agent would deliver is emulated
(tests/e2e/istio_emulation.py) — the EnvoyFilter's patches applied to an ingress-gateway-shaped
listener, its two extension configurations (gateway role, backend role) delivered over file-based
ECDS, each rewritten as istio-agent rewrites it: the image "pulled" from scripts/package's OCI image
layout (skopeo), its manifest digest checked against `sha256`, `plugin.wasm` taken from its layer
and written to one cached file, `code.remote` replaced by that file.

Shown here: chat, streams, embeddings and failover work with both roles as ECDS references (the
gateway filter in the listener, the backend filter in every route cluster's upstream filters); the
two roles share one VM (the backend role writes the per-request state the gateway role reads back:
`x-switchyard-backend`/`-attempts` exist only then, and a negative control with the backend role in
another VM loses them); a wrong digest leaves both roles as istio-agent's deny-all filter (fail
closed: no request reaches a provider). Not shown: a real registry, istiod or istio-agent.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import openai
import pytest
import yaml

import harness
import istio_emulation
from istio_emulation import IstioLikeGateway

REPOSITORY = "registry.example.com/switchyard/filter"
IMAGE = f"oci://{REPOSITORY}:0.1.0"


@pytest.fixture(scope="module")
def image():
    """scripts/package's OCI image layout of the built module: (layout dir, manifest digest hex)."""
    wasm = harness.build_wasm()
    out = Path(tempfile.mkdtemp(prefix="switchyard-oci-")) / "oci"
    p = subprocess.run([sys.executable, str(harness.REPO / "scripts" / "package"), "--wasm", str(wasm),
                        "--out", str(out), "--tag", "0.1.0"], capture_output=True, text=True, check=True)
    info = json.loads(p.stdout)
    return out, info["manifest"].split(":", 1)[1]


def image_file(digest: str) -> dict:
    doc = harness.demo_gateway_file()
    # As scripts/package prints it (sha256:HEX); the rendering passes the hex Istio compares.
    doc["module"] = {"image": IMAGE, "sha256": f"sha256:{digest}"}
    return doc


def ecds(gw) -> dict[str, dict]:
    return {p.stem: yaml.safe_load(p.read_text())["resources"][0] for p in (gw.workdir / "ecds").glob("*.yaml")}


def test_the_rendering_carries_the_image_for_the_agent(image, tmp_path):
    layout, digest = image
    docs = list(yaml.safe_load_all(harness.render_gateway_file(image_file(digest), target="istio", workdir=tmp_path)))
    exts = istio_emulation.extension_configs(docs)
    assert sorted(exts) == ["switchyard.backend", "switchyard.gateway"]
    for ext in exts.values():
        remote = ext["typed_config"]["config"]["vm_config"]["code"]["remote"]
        assert remote == {"http_uri": {"uri": IMAGE, "cluster": "_", "timeout": "30s"}, "sha256": digest}
    assert exts["switchyard.gateway"]["typed_config"]["config"]["allow_on_headers_stop_iteration"] is True
    # --target envoy refuses an image: Envoy cannot pull one.
    src = tmp_path / "gw.yaml"
    src.write_text(yaml.safe_dump(image_file(digest)))
    p = subprocess.run([str(harness.switchyard_cli()), "render", str(src)], capture_output=True, text=True)
    assert p.returncode != 0 and "module.image" in p.stderr, p.stderr


def test_the_module_from_the_oci_image_serves_and_fails_over_with_both_roles_in_one_vm(mocks_only, image, tmp_path):
    layout, digest = image
    wasm = harness.build_wasm()
    agent = istio_emulation.Agent(tmp_path / "wasm-cache", {REPOSITORY: layout})
    gw = IstioLikeGateway(tmp_path, mocks_only, gateway_file=image_file(digest), agent=agent)
    harness.start_or_stop(gw, wasm)
    try:
        # Both extension configurations name the one file the agent extracted: the built module.
        assert agent.fetches == [IMAGE, IMAGE]
        files = {r["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] for r in ecds(gw).values()}
        assert len(files) == 1, files
        module = Path(files.pop())
        assert module.name == f"{digest}.wasm" and module.read_bytes() == wasm.read_bytes()
        # The listener's gateway filter and every cluster's backend filter are ECDS references.
        boot = yaml.safe_load(gw.config_path.read_text())
        hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        assert hcm["http_filters"][0] == {"name": "switchyard.gateway", "config_discovery": hcm["http_filters"][0]["config_discovery"]}
        for c in boot["static_resources"]["clusters"]:
            up = c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"][0]
            assert up["name"] == "switchyard.backend" and "config_discovery" in up and "typed_config" not in up, c["name"]

        client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=30)
        # Failover: the backend role counts the attempts and names the backend in the per-request
        # state the gateway role reads back into these headers — only when both run in one VM.
        r = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}],
            extra_headers={"x-mock-openai": "503"})
        assert r.headers["x-switchyard-backend"] == "anthropic-demo"
        assert r.headers["x-switchyard-attempts"] == "2"
        assert r.parse().choices[0].message.content
        chunks = list(client.chat.completions.create(model="claude-haiku", stream=True,
                                                     messages=[{"role": "user", "content": "Hi"}]))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert client.embeddings.create(model="cohere-embed", input="Hi").data[0].embedding
        for model in ("gemini-flash", "bedrock-nova", "command-r"):
            assert client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}]).choices[0].message.content

        stats = gw.stats("extension_config_discovery")
        assert stats.get("extension_config_discovery.http_filter.switchyard.gateway.config_reload", 0) >= 1, stats
        assert stats.get("extension_config_discovery.upstream_http_filter.switchyard.backend.config_reload", 0) >= 1, stats
        assert not any(v for k, v in stats.items() if k.endswith("config_fail")), stats
        assert not gw.problems(), gw.problems()
    finally:
        gw.stop()


def test_with_the_backend_role_in_another_vm_the_shared_state_is_lost(mocks_only, image, tmp_path):
    """The negative control for the test above: the same rendering with the backend role's vm_id
    changed (another VM, same module): the request still passes, but the state the served-by
    headers come from never reaches the gateway role."""
    layout, digest = image
    agent = istio_emulation.Agent(tmp_path / "wasm-cache", {REPOSITORY: layout})

    def other_vm(ext: dict) -> dict:
        if ext["name"] == "switchyard.backend":
            ext["typed_config"]["config"]["vm_config"]["vm_id"] = "switchyard-elsewhere"
        return ext

    gw = IstioLikeGateway(tmp_path, mocks_only, gateway_file=image_file(digest), agent=agent, edit=other_vm)
    harness.start_or_stop(gw, harness.build_wasm())
    try:
        client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=30)
        # The request of the test above: the answer still comes (the backend role falls back to
        # the gateway's headers), but the served-by headers, written from the shared state, do not.
        r = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}],
            extra_headers={"x-mock-openai": "503"})
        assert r.parse().choices[0].message.content
        assert "x-switchyard-backend" not in r.headers and "x-switchyard-attempts" not in r.headers, dict(r.headers)
    finally:
        gw.stop()


def test_an_image_with_another_digest_fails_closed(mocks_only, image, tmp_path):
    """istio-agent refuses an image whose manifest digest is not `sha256` and, the filters not
    failing open, puts a deny-all RBAC filter in place of each extension configuration: every
    request is refused and none reaches a provider."""
    layout, digest = image
    wrong = hashlib.sha256(b"another image").hexdigest()
    agent = istio_emulation.Agent(tmp_path / "wasm-cache", {REPOSITORY: layout})
    gw = IstioLikeGateway(tmp_path, mocks_only, gateway_file=image_file(wrong), agent=agent)
    harness.start_or_stop(gw, harness.build_wasm())
    mocks_only.clear()
    try:
        assert agent.fetches == []
        assert {r["typed_config"]["@type"] for r in ecds(gw).values()} == {istio_emulation.RBAC}
        status, _, body = harness.http(
            "POST", gw.base_url + "/chat/completions",
            body=b'{"model":"claude-haiku","messages":[{"role":"user","content":"Hi"}]}',
            headers={"content-type": "application/json"}, timeout=10)
        assert status == 403, (status, body)
        assert not mocks_only.requests("anthropic") and not mocks_only.requests("openai")
        stats = gw.stats("extension_config_discovery")
        assert stats.get("extension_config_discovery.upstream_http_filter.switchyard.backend.config_reload", 0) >= 1, stats
        assert not any(v for k, v in stats.items() if k.endswith("config_fail")), stats
    finally:
        gw.stop()
