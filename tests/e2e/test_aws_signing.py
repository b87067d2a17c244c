"""Bedrock signed by Envoy (README "Provider credentials and rotation"): a backend's
`aws: {signer: envoy, credentials_file: FILE, profile: P}` renders Envoy's AWS request signing filter
(`envoy.filters.http.aws_request_signing`, an upstream filter AFTER the backend filter, applied only to
requests whose `:authority` is that backend's host) with a credential provider chain holding only
FILE, which Envoy re-reads when it is replaced in its directory; the backend filter gets no AWS keys
for that backend. The mock Bedrock recomputes every SigV4 signature independently
(tests/mocks/more_providers.py `verify_sigv4`) and, with ``x-mock-require-credential:
bedrock=<access key id>``, refuses (403 InvalidSignatureException) a valid signature by any other key.

A second Bedrock backend on another host is signed by the filter itself (keys from the
environment), in the same Envoy: Envoy's signer must leave it alone."""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

import openai
import pytest

import harness

# The mock's second, made-up pair (more_providers.TEST_AWS_CREDENTIALS) and the SigV4 test suite's
# pair, which the harness also puts in Envoy's environment (for the filter-signed backend).
KEY1, SECRET1 = "AKIDROTATEDEXAMPLE", "rotatedSecretKeyForSwitchyardTests/0002"
KEY2, SECRET2 = harness.ENVOY_ENV["AWS_ACCESS_KEY_ID"], harness.ENVOY_ENV["AWS_SECRET_ACCESS_KEY"]
TOKEN2 = "IQoJb3JpZ2luX2VjEXAMPLEswitchyardSessionToken0003"
# The file's [default] profile holds a key the gateway must not use (profile: switchyard is chosen).
OTHER_KEY, OTHER_SECRET = "AKIDDEFAULTPROFILE", "notTheProfileTheGatewayUses/0001"
SIGNED_HOST = "bedrock-runtime.us-east-1.amazonaws.com"
FILTER_HOST = "bedrock-runtime.us-west-2.amazonaws.com"
SECRETS = (SECRET1, SECRET2, TOKEN2, OTHER_SECRET)


def write_credentials(path: Path, key: str, secret: str, token: str | None = None) -> None:
    """An AWS credentials file, replaced atomically (what Envoy's directory watch reacts to)."""
    tmp = path.with_name(f".{path.name}.tmp")
    text = (f"[default]\naws_access_key_id = {OTHER_KEY}\naws_secret_access_key = {OTHER_SECRET}\n\n"
            f"[switchyard]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
    if token:
        text += f"aws_session_token = {token}\n"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def gateway_file(creds: Path) -> dict:
    return {
        "backends": {
            "bedrock-envoy": {"schema": "bedrock", "host": SIGNED_HOST,
                              "address": f"127.0.0.1:{harness.DEMO_MORE_PORT}", "tls": False,
                              "aws": {"signer": "envoy", "credentials_file": str(creds),
                                      "profile": "switchyard"}},
            "bedrock-filter": {"schema": "bedrock", "host": FILTER_HOST,
                               "address": f"127.0.0.1:{harness.DEMO_MORE_PORT}", "tls": False},
            "anthropic-demo": {"schema": "anthropic", "base_path": "/v1",
                               "credential": {"env": "ANTHROPIC_API_KEY"},
                               "address": f"127.0.0.1:{harness.DEMO_ANTHROPIC_PORT}"},
        },
        "models": [
            {"name": "claude-bedrock", "candidates": [
                "bedrock-envoy/anthropic.claude-3-5-haiku-20241022-v1:0",
                "anthropic-demo/claude-3-5-haiku-latest"]},
            {"name": "nova-filter", "candidates": ["bedrock-filter/us.amazon.nova-micro-v1:0"]},
            {"name": "haiku-direct", "candidates": ["anthropic-demo/claude-3-5-haiku-latest"]},
        ],
    }


@pytest.fixture(scope="module")
def aws():
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-aws-signing-"))
    creds_dir = workdir / "aws"
    creds_dir.mkdir()
    creds = creds_dir / "credentials"
    write_credentials(creds, KEY1, SECRET1)
    mocks = harness.Mocks(workdir).start()
    gw = harness.GatewayFileGateway(workdir, mocks, gateway_file=gateway_file(creds))
    gw.envoy_args = ["--file-flush-interval-msec", "50"]
    try:
        gw.start(harness.build_wasm())
        yield gw, creds
        assert not gw.problems(), gw.problems()
    finally:
        gw.stop()
        mocks.stop()
    harness.cleanup_workdir(workdir, keep=False)


def client(gw):
    return openai.OpenAI(base_url=gw.base_url, api_key="sk-client-key", max_retries=0, timeout=30)


def ask(gw, require: str, model: str = "claude-bedrock", stream: bool = False):
    kw = dict(model=model, messages=[{"role": "user", "content": "Hi"}],
              extra_headers={"x-mock-require-credential": f"bedrock={require}"})
    if stream:
        kw["stream"] = True
    return client(gw).chat.completions.with_raw_response.create(**kw)


def bedrock_requests(gw) -> list[dict]:
    return [r for r in gw.mock_requests("more") if r["provider"] == "bedrock"]


def signature(req: dict) -> tuple[str, list[str]]:
    """(access key id, signed headers) of a recorded request's SigV4 `authorization`."""
    auth = req["headers"].get("authorization", "")
    m = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^/]+)/\d{8}/([^/]+)/bedrock/aws4_request, "
                     r"SignedHeaders=([a-z0-9;-]+), Signature=[0-9a-f]{64}", auth)
    assert m, auth
    return m.group(1), m.group(3).split(";")


def test_envoy_signs_the_translated_request_chat_and_stream(aws):
    gw, _ = aws
    gw.clear_mocks()
    r = ask(gw, KEY1)
    assert r.headers["x-switchyard-backend"] == "bedrock-envoy", r.headers
    assert r.headers["x-switchyard-attempts"] == "1"
    assert r.parse().choices[0].message.content
    [req] = bedrock_requests(gw)
    # Signed after the backend filter translated it: the Converse path, body and host.
    assert req["path"] == "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse", req["path"]
    assert req["headers"]["host"] == SIGNED_HOST
    assert req["body"]["messages"][0]["content"] == [{"text": "Hi"}], req["body"]
    assert req["sigv4"] == "valid", req["sigv4"]
    key, signed = signature(req)
    assert key == KEY1, "the credentials file's `switchyard` profile signs (not [default], not env)"
    # Envoy signs every header it forwards but `authorization` and its default exclusions
    # (x-forwarded-for, x-forwarded-proto, x-amzn-trace-id): the translated ones included.
    assert {"host", "x-amz-date", "x-amz-content-sha256", "content-type", "content-length"} <= set(signed), signed
    assert "authorization" not in signed and "x-forwarded-proto" not in signed, signed
    assert "x-amz-security-token" not in req["headers"]
    # The payload was hashed, not sent as UNSIGNED-PAYLOAD.
    import hashlib
    assert req["headers"]["x-amz-content-sha256"] == hashlib.sha256(
        req["body_text"].encode()).hexdigest()

    # ConverseStream: an ordinary POST body, buffered and hashed the same way; the answer streams.
    gw.clear_mocks()
    with client(gw).chat.completions.with_streaming_response.create(
            model="claude-bedrock", stream=True, messages=[{"role": "user", "content": "Hi"}],
            extra_headers={"x-mock-require-credential": f"bedrock={KEY1}"}) as resp:
        assert resp.headers["x-switchyard-backend"] == "bedrock-envoy", resp.headers
        chunks = list(resp.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text, chunks
    [req] = bedrock_requests(gw)
    assert req["path"].endswith("/converse-stream"), req["path"]
    assert req["sigv4"] == "valid", req["sigv4"]
    assert signature(req)[0] == KEY1


def test_envoy_signer_leaves_other_backends_alone(aws):
    """A Bedrock backend on another host keeps the filter's own SigV4 (keys from the environment):
    Envoy's signer, matched on `:authority`, does not re-sign it."""
    gw, _ = aws
    gw.clear_mocks()
    r = ask(gw, KEY2, model="nova-filter")
    assert r.headers["x-switchyard-backend"] == "bedrock-filter", r.headers
    [req] = bedrock_requests(gw)
    assert req["headers"]["host"] == FILTER_HOST
    assert req["sigv4"] == "valid", req["sigv4"]
    assert signature(req) == (KEY2, ["content-type", "host", "x-amz-date"])
    assert "x-amz-content-sha256" not in req["headers"]


def test_a_client_cannot_steer_the_signer_to_a_backend_without_host(aws):
    """A backend without `host` is sent the client's `:authority`, unless that is a configured
    backend's host: then Envoy's signer (matched on `:authority`) would sign it with Bedrock's
    credentials. The backend filter sends the backend's name instead."""
    gw, _ = aws
    gw.clear_mocks()
    r = client(gw).chat.completions.with_raw_response.create(
        model="haiku-direct", messages=[{"role": "user", "content": "Hi"}],
        extra_headers={"host": SIGNED_HOST})
    assert r.headers["x-switchyard-backend"] == "anthropic-demo", r.headers
    [req] = gw.mock_requests("anthropic")
    h = req["headers"]
    assert h["host"] == "anthropic-demo", h
    assert not any(k.startswith("x-amz-") for k in h) and "AWS4" not in h.get("authorization", ""), h
    # Another client authority passes as it was.
    gw.clear_mocks()
    client(gw).chat.completions.create(model="haiku-direct", messages=[{"role": "user", "content": "Hi"}],
                                       extra_headers={"host": "gateway.example"})
    assert gw.mock_requests("anthropic")[0]["headers"]["host"] == "gateway.example"


def test_a_replaced_credentials_file_signs_the_next_request_and_a_refused_one_fails_over(aws):
    gw, creds = aws
    pid = gw.proc.pid
    gw.clear_mocks()
    assert ask(gw, KEY1).headers["x-switchyard-backend"] == "bedrock-envoy"

    # Rotate: a new key pair with a session token, the file replaced by a rename.
    write_credentials(creds, KEY2, SECRET2, TOKEN2)
    deadline = time.time() + 15
    while True:
        gw.clear_mocks()
        r = ask(gw, KEY2)
        if r.headers["x-switchyard-backend"] == "bedrock-envoy" or time.time() > deadline:
            break
        time.sleep(0.2)
    assert r.headers["x-switchyard-backend"] == "bedrock-envoy", "the new credentials were not used within 15 s"
    assert r.parse().choices[0].message.content
    req = bedrock_requests(gw)[-1]
    assert req["sigv4"] == "valid", req["sigv4"]
    key, signed = signature(req)
    assert key == KEY2
    assert req["headers"].get("x-amz-security-token") == TOKEN2
    assert "x-amz-security-token" in signed, signed

    # The provider now accepts only the old key: the new signature is refused once (403
    # InvalidSignatureException), not sent again in this request, and the request fails over.
    gw.clear_mocks()
    r = ask(gw, KEY1)
    assert r.headers["x-switchyard-backend"] == "anthropic-demo", r.headers
    assert r.headers["x-switchyard-attempts"] == "2"
    sent = bedrock_requests(gw)
    assert len(sent) == 1, sent
    assert sent[0]["sigv4"].startswith("refused"), sent[0]["sigv4"]
    assert signature(sent[0])[0] == KEY2
    # The next candidate got nothing of the signature (retries share one header map).
    [other] = gw.mock_requests("anthropic")
    leaked = {k: v for k, v in other["headers"].items()
              if k.startswith("x-amz-") or "AWS4" in v or k == "authorization"}
    assert not leaked, leaked
    assert "sk-client-key" not in str(other) + str(sent)
    assert gw.proc.pid == pid and gw.alive()

    # No secret in Envoy's log or the access log.
    time.sleep(0.2)
    logs = gw.log_since(0) + Path(gw.access_log_path).read_text(encoding="utf-8", errors="replace")
    for s in SECRETS:
        assert s not in logs
