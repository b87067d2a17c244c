"""Provider credential rotation without a restart (README "Provider credentials"): a backend's
`credential: {sds: FILE}` renders Envoy's credential injector (an upstream filter after the backend
filter) reading a generic secret from FILE, an SDS file Envoy watches. Replacing FILE (a rename)
makes the next request carry the new key; a provider that refuses a key (401) is not asked again with
it and the request fails over. The mock OpenAI provider accepts only the key named in
``x-mock-require-credential: openai=<key>``."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import openai
import pytest

import harness

OLD, NEW = "sk-rot-old-0001", "sk-rot-new-0002"


def write_secret(path: Path, name: str, value: str) -> None:
    """An SDS file with one generic secret, replaced atomically (what Envoy's watch reacts to)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(
        "resources:\n"
        '- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n'
        f"  name: {name}\n"
        f"  generic_secret: {{ secret: {{ inline_string: {value} }} }}\n", encoding="utf-8")
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def rot():
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-rotation-"))
    secrets = workdir / "secrets"
    secrets.mkdir()
    sds = secrets / "openai-rot.yaml"
    write_secret(sds, "openai-rot", OLD)
    doc = {
        "backends": {
            "openai-rot": {"schema": "openai", "base_path": "/v1", "host": "openai.rotation.test",
                           "address": f"127.0.0.1:{harness.DEMO_OPENAI_PORT}", "tls": False,
                           "credential": {"sds": str(sds)}},
            "anthropic-demo": {"schema": "anthropic", "base_path": "/v1",
                               "credential": {"env": "ANTHROPIC_API_KEY"},
                               "address": f"127.0.0.1:{harness.DEMO_ANTHROPIC_PORT}"},
        },
        "models": [{"name": "rot", "candidates": ["openai-rot/gpt-4o-mini",
                                                  "anthropic-demo/claude-3-5-haiku-latest"]}],
    }
    mocks = harness.Mocks(workdir).start()
    gw = harness.GatewayFileGateway(workdir, mocks, gateway_file=doc)
    gw.envoy_args = ["--file-flush-interval-msec", "50"]
    try:
        gw.start(harness.build_wasm())
        yield gw, sds
        assert not gw.problems(), gw.problems()
    finally:
        gw.stop()
        mocks.stop()
    harness.cleanup_workdir(workdir, keep=False)


def ask(gw, require: str):
    c = openai.OpenAI(base_url=gw.base_url, api_key="sk-client-key", max_retries=0, timeout=30)
    return c.chat.completions.with_raw_response.create(
        model="rot", messages=[{"role": "user", "content": "Hi"}],
        extra_headers={"x-mock-require-credential": f"openai={require}"})


def test_a_rotated_key_is_used_by_the_next_request_and_a_refused_one_fails_over(rot):
    gw, sds = rot
    pid = gw.proc.pid
    gw.clear_mocks()
    r = ask(gw, OLD)
    assert r.headers["x-switchyard-backend"] == "openai-rot", r.headers
    assert gw.mock_requests("openai")[-1]["headers"]["authorization"] == f"Bearer {OLD}"

    write_secret(sds, "openai-rot", NEW)
    deadline = time.time() + 15
    while True:
        gw.clear_mocks()
        r = ask(gw, NEW)
        if r.headers["x-switchyard-backend"] == "openai-rot" or time.time() > deadline:
            break
        time.sleep(0.2)
    assert r.headers["x-switchyard-backend"] == "openai-rot", "the rotated key was not used within 15 s"
    assert gw.mock_requests("openai")[-1]["headers"]["authorization"] == f"Bearer {NEW}"
    assert r.parse().choices[0].message.content

    # The provider now accepts only the old key: the new one is refused once (401), never sent again
    # in this request, and the request fails over to the next candidate.
    gw.clear_mocks()
    r = ask(gw, OLD)
    assert r.headers["x-switchyard-backend"] == "anthropic-demo"
    assert r.headers["x-switchyard-attempts"] == "2"
    sent = gw.mock_requests("openai")
    assert len(sent) == 1 and sent[0]["headers"]["authorization"] == f"Bearer {NEW}", sent
    # The next candidate got neither OpenAI key: the backend filter set its `:authority` (retries
    # share one header map, and the injector picks its backend by `:authority`).
    # (The mock's control header, which names the key it accepts, aside.)
    other = gw.mock_requests("anthropic")
    sent_on = {k: v for k, v in other[0]["headers"].items() if k != "x-mock-require-credential"}
    assert len(other) == 1 and OLD not in str(sent_on) and NEW not in str(sent_on), sent_on
    # The client's own key never reached a provider; the same Envoy process throughout.
    assert "sk-client-key" not in str(other) + str(sent)
    assert gw.proc.pid == pid and gw.alive()
    # Credentials stay out of Envoy's log and the access log.
    time.sleep(0.2)
    logs = gw.log_since(0) + Path(gw.access_log_path).read_text(encoding="utf-8", errors="replace")
    assert OLD not in logs and NEW not in logs
