"""Guardrails end to end (README "Guardrails"): a real Envoy running envoy/demo.yaml with a
``guardrails`` section and virtual keys in the gateway configuration, its own mock providers, and
the official ``openai`` SDK (only ``base_url`` changes).

The OpenAI mock's ``echo`` scenario (``x-mock-openai: echo``) answers with the recorded answer whose
text is the request's last user message — streamed three characters per chunk — so a placeholder
the provider received comes back in the answer, split across chunks, and a secret in the request
comes back in the answer too. What the provider received is read from the mock's request log.
"""

from __future__ import annotations

import json
import re
import time

import openai
import pytest
import yaml

import harness
from keys_gateway import KeysGateway, key_hash

KEY = "sk-sy-guard-default"
LENIENT = "sk-sy-guard-lenient"
OPEN = "sk-sy-guard-open"

GUARDRAILS = {
    "detectors": {"pii": "redact", "ip_address": "log", "secrets": "block"},
    "custom": [{"name": "ticket_id", "pattern": "TICKET-[0-9]{5}", "action": "redact"}],
    "restore": True,
    "answers": {"scan": True, "detectors": {"secrets": "redact"}, "window_bytes": 64},
    "overrides": [
        # This key may send secrets (counted), but answers are still scanned for them.
        {"keys": ["lenient"], "detectors": {"secrets": "log"}},
        # No guardrails at all for this one.
        {"keys": ["open"], "enabled": False},
    ],
}

AUTH = {"keys": [
    {"id": "default", "sha256": key_hash(KEY)},
    {"id": "lenient", "sha256": key_hash(LENIENT)},
    {"id": "open", "sha256": key_hash(OPEN)},
]}

AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
EMAIL = "jane.doe@example.com"
LOG_FIELDS = ("guardrails_request", "guardrails_answer")


class GuardGateway(harness.Gateway):
    """The demo configuration plus the guardrail fields in the access log."""

    def render(self) -> str:
        doc = yaml.safe_load(super().render())
        hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        fmt = hcm["access_log"][0]["typed_config"]["log_format"]["json_format"]
        for f in LOG_FIELDS:
            fmt[f] = f"%FILTER_STATE(wasm.switchyard.{f}:PLAIN)%"
        return yaml.safe_dump(doc, sort_keys=False)


@pytest.fixture(scope="module")
def kg(tmp_path_factory):
    g = KeysGateway.start(tmp_path_factory.mktemp("guardrails"), AUTH,
                          gateway_config={"guardrails": GUARDRAILS}, gateway_cls=GuardGateway)
    try:
        yield g
    finally:
        problems = g.stop()
        assert not problems, "\n".join(problems)


def sdk(kg, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=kg.base_url, api_key=key, max_retries=0, timeout=30,
                         default_headers={"x-mock-openai": "echo"})


def provider_saw(kg) -> list[dict]:
    """Chat bodies the OpenAI mock received."""
    return [r["body"] for r in kg.mocks.requests("openai") if r["path"] == "/v1/chat/completions"]


def last_log(kg, key_id: str, count: int) -> dict:
    lines = kg.log_lines(key_id, count=count)
    assert len(lines) >= count, lines
    return lines[-1]


def detections(kg) -> dict[tuple[str, str, str], int]:
    """switchyard_guardrail_detections by (detector, action, direction), from /stats/prometheus."""
    out = {}
    for line in kg.gw.prometheus().splitlines():
        if not line.startswith("switchyard_guardrail_detections{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        out[(labels["detector"], labels["action"], labels["direction"])] = int(float(line.rsplit(" ", 1)[1]))
    return out


def stream_text(stream) -> str:
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_email_redacted_for_the_provider_and_restored_for_the_client(kg):
    kg.mocks.clear()
    before = detections(kg)
    prompt = f"Please write to {EMAIL} about TICKET-12345, and again to {EMAIL}."
    r = sdk(kg).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
    sent = provider_saw(kg)
    assert len(sent) == 1
    text = sent[0]["messages"][0]["content"]
    assert text == "Please write to [EMAIL_1] about [TICKET_ID_1], and again to [EMAIL_1]."
    assert EMAIL not in json.dumps(sent[0])
    # The mock echoed the placeholders; the client gets the originals back.
    assert r.choices[0].message.content == prompt
    rec = last_log(kg, "default", 1)
    assert rec["guardrails_request"] == "email:redact:2,ticket_id:redact:1"
    assert EMAIL not in json.dumps(rec)
    after = detections(kg)
    assert after.get(("email", "redact", "request"), 0) - before.get(("email", "redact", "request"), 0) == 2


def test_email_restored_in_a_stream_split_across_chunks(kg):
    kg.mocks.clear()
    prompt = f"Contact {EMAIL} or call +1 415 555 2671 today, or write to {EMAIL} again."
    s = sdk(kg).chat.completions.create(model="gpt-4o-mini", stream=True,
                                        messages=[{"role": "user", "content": prompt}])
    assert stream_text(s) == prompt
    sent = provider_saw(kg)
    assert sent[0]["messages"][0]["content"] == \
        "Contact [EMAIL_1] or call [PHONE_1] today, or write to [EMAIL_1] again."


def test_aws_key_blocked_without_echoing_it(kg):
    kg.mocks.clear()
    with pytest.raises(openai.BadRequestError) as e:
        sdk(kg).chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "user", "content": f"my key is {AWS_KEY}, is it valid?"}])
    assert e.value.status_code == 400
    body = e.value.response.text
    assert AWS_KEY not in body
    err = json.loads(body)["error"]
    assert "aws_access_key" in err["message"] and err["code"] == "guardrail_blocked"
    assert provider_saw(kg) == []
    rec = last_log(kg, "default", 3)
    assert rec["rejection"] == "guardrail" and rec["guardrails_request"] == "aws_access_key:block:1"
    assert AWS_KEY not in kg.gw.prometheus() and AWS_KEY not in json.dumps(kg.access_log())


def test_secret_in_a_tool_call_argument_is_blocked(kg):
    kg.mocks.clear()
    with pytest.raises(openai.BadRequestError):
        sdk(kg).chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "user", "content": "deploy"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
                "name": "deploy", "arguments": json.dumps({"token": "ghp_1234567890abcdefghijABCDEFGHIJ123456"})}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "done"}])
    assert provider_saw(kg) == []


def test_log_only_is_counted_and_passes(kg):
    kg.mocks.clear()
    before = detections(kg)
    sdk(kg).chat.completions.create(model="gpt-4o-mini", messages=[
        {"role": "user", "content": "Is 10.20.30.40 or 2001:db8::1 reachable?"}])
    assert provider_saw(kg)[0]["messages"][0]["content"] == "Is 10.20.30.40 or 2001:db8::1 reachable?"
    key = ("ip_address", "log", "request")
    deadline = time.monotonic() + 5
    while detections(kg).get(key, 0) - before.get(key, 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert detections(kg).get(key, 0) - before.get(key, 0) == 2


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_secret_in_the_answer_is_caught(kg, stream):
    kg.mocks.clear()
    prompt = f"Repeat after me: the key {AWS_KEY} belongs to the build account."
    c = sdk(kg, LENIENT)
    if stream:
        text = stream_text(c.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                    messages=[{"role": "user", "content": prompt}]))
    else:
        text = c.chat.completions.create(model="gpt-4o-mini",
                                         messages=[{"role": "user", "content": prompt}]).choices[0].message.content
    # The lenient key may send it (counted as log) ...
    assert provider_saw(kg)[0]["messages"][0]["content"] == prompt
    # ... but the answer that repeats it is masked, whole or split across three-character chunks.
    assert AWS_KEY not in text
    assert text == "Repeat after me: the key [REDACTED_AWS_ACCESS_KEY] belongs to the build account."
    rec = last_log(kg, "lenient", 2 if stream else 1)
    assert rec["guardrails_request"] == "aws_access_key:log:1"
    assert rec["guardrails_answer"] == "aws_access_key:redact:1"


def test_disabled_for_a_key(kg):
    kg.mocks.clear()
    prompt = f"write to {EMAIL}"
    r = sdk(kg, OPEN).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
    assert provider_saw(kg)[0]["messages"][0]["content"] == prompt
    assert r.choices[0].message.content == prompt
    rec = last_log(kg, "open", 1)
    assert "guardrails_request" not in rec or rec["guardrails_request"] in ("", "-", None)


# -- other ingress APIs: the guardrails run on the canonical chat request they are translated into


def claude(kg, key: str = KEY):
    import anthropic
    return anthropic.Anthropic(base_url=kg.gw.gateway_url, api_key=key, max_retries=0, timeout=30,
                               default_headers={"x-mock-openai": "echo"})


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_messages_api_redacted_and_restored(kg, stream):
    kg.mocks.clear()
    prompt = f"Forward this to {EMAIL}, please."
    ask = dict(model="gpt-4o-mini", max_tokens=100, messages=[{"role": "user", "content": prompt}])
    c = claude(kg)
    if stream:
        with c.messages.stream(**ask) as s:
            text = "".join(s.text_stream)
    else:
        msg = c.messages.create(**ask)
        text = "".join(b.text for b in msg.content if b.type == "text")
    assert text == prompt
    sent = provider_saw(kg)
    assert len(sent) == 1 and EMAIL not in json.dumps(sent[0])
    assert "Forward this to [EMAIL_1], please." in json.dumps(sent[0])


def test_messages_api_block_in_anthropic_shape(kg):
    import anthropic
    kg.mocks.clear()
    with pytest.raises(anthropic.BadRequestError) as e:
        claude(kg).messages.create(model="gpt-4o-mini", max_tokens=50, messages=[
            {"role": "user", "content": f"aws_access_key_id={AWS_KEY}"}])
    body = e.value.response.text
    assert AWS_KEY not in body
    doc = json.loads(body)
    assert doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error"
    assert "aws_access_key" in doc["error"]["message"]
    assert provider_saw(kg) == []


def test_responses_api_redacted_and_restored(kg):
    kg.mocks.clear()
    prompt = f"Remind {EMAIL} about TICKET-54321."
    r = sdk(kg).responses.create(model="gpt-4o-mini", input=prompt)
    assert r.output_text == prompt
    sent = provider_saw(kg)
    assert len(sent) == 1 and EMAIL not in json.dumps(sent[0])
    assert "Remind [EMAIL_1] about [TICKET_ID_1]." in json.dumps(sent[0])
