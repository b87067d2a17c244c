"""End-to-end: failover, retries, provider errors, broken streams and bad client input.

Expected values come from the recordings (``recorded``), the rendered Envoy configuration
(``helpers``) and what the mocks recorded having received.
"""

from __future__ import annotations

import json
import time
import uuid

import openai
import pytest
import requests

import recorded as rec
from helpers import (HELLO, assert_upstream_hygiene, chat_url, collect, endpoints,
                     internal_headers, max_body_bytes, num_retries, openai_error, post_chat,
                     retry_stat, upstream_model, OPENAI_UPSTREAM_KEY, ANTHROPIC_UPSTREAM_KEY)

OPENAI_ROUTE = "route_gpt-4o-mini"
ANTHROPIC_ROUTE = "route_claude-haiku"


def key() -> str:
    return "k-" + uuid.uuid4().hex


def anthropic_text() -> str:
    return "".join(b["text"] for b in rec.anthropic_text()["content"] if b["type"] == "text")


def assert_no_upstream(gateway):
    assert gateway.mock_requests("openai") == []
    assert gateway.mock_requests("anthropic") == []


# ==================================================================================================
# cross-provider failover (Envoy retries on the next priority, the backend filter re-translates)


def test_config_fails_over_from_openai_to_anthropic(gateway):
    eps = endpoints(gateway, OPENAI_ROUTE)
    assert [(e["priority"], e["port"]) for e in eps] == [
        (0, gateway.mocks.openai_port), (1, gateway.mocks.anthropic_port)]


def test_failover_stream_on_503_arrives_whole_from_anthropic(client, gateway):
    recorded = rec.anthropic_stream_text()
    retries_before = retry_stat(gateway, OPENAI_ROUTE)
    chunks = collect(client.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, stream=True,
        stream_options={"include_usage": True}, extra_headers={"x-mock-openai": "503"}))
    got = rec.openai_stream_summary(chunks)
    assert got["text"] == recorded["text"]
    assert got["finish_reason"] == rec.ANTHROPIC_STOP_TO_FINISH[recorded["stop_reason"]]
    assert got["models"] == {recorded["model"]}
    assert got["ids"] == {recorded["id"]}
    assert chunks[-1]["choices"] == []
    assert {k: chunks[-1]["usage"][k] for k in ("prompt_tokens", "completion_tokens",
                                                 "total_tokens")} == \
        rec.openai_usage_from_anthropic(recorded["usage"])

    o = gateway.mock_requests("openai")
    a = gateway.mock_requests("anthropic")
    assert len(o) == 1 and o[0]["scenario"] == "503"
    assert o[0]["body"]["model"] == "gpt-4o-mini"
    assert len(a) == 1
    # the retry went out in Anthropic's wire format, with Anthropic's credential and model
    assert a[0]["path"] == "/v1/messages"
    assert a[0]["body"]["model"] == upstream_model(gateway, OPENAI_ROUTE, 1)
    assert a[0]["body"]["stream"] is True
    assert a[0]["body"]["messages"][0]["role"] == "user"
    assert_upstream_hygiene(a[0], credential_header="x-api-key",
                            credential_value=ANTHROPIC_UPSTREAM_KEY, absent=("authorization",))
    assert retry_stat(gateway, OPENAI_ROUTE) > retries_before


def test_failover_non_stream_on_connection_reset(client, gateway):
    msg = rec.anthropic_text()
    retries_before = retry_stat(gateway, OPENAI_ROUTE)
    resp = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO,
                                          extra_headers={"x-mock-openai": "reset"})
    assert resp.choices[0].message.content == anthropic_text()
    assert resp.model == msg["model"] and resp.id == msg["id"]
    o = gateway.mock_requests("openai")
    a = gateway.mock_requests("anthropic")
    assert len(o) == 1 and o[0]["scenario"] == "reset"
    assert len(a) == 1
    assert a[0]["body"]["model"] == upstream_model(gateway, OPENAI_ROUTE, 1)
    assert_upstream_hygiene(a[0], credential_header="x-api-key",
                            credential_value=ANTHROPIC_UPSTREAM_KEY, absent=("authorization",))
    assert retry_stat(gateway, OPENAI_ROUTE) > retries_before


# ==================================================================================================
# 429 retried


def test_anthropic_429_once_is_retried(client, gateway):
    k = key()
    resp = client.chat.completions.create(
        model="claude-haiku", messages=HELLO,
        extra_headers={"x-mock-anthropic": "once-429", "x-mock-key": k})
    assert resp.choices[0].message.content == anthropic_text()
    mine = [r for r in gateway.mock_requests("anthropic") if r["headers"].get("x-mock-key") == k]
    assert [r["scenario"] for r in mine] == ["429", None]
    assert mine[0]["body"] == mine[1]["body"]
    assert gateway.mock_requests("openai") == []


def test_openai_429_once_is_retried(client, gateway):
    k = key()
    resp = client.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO,
        extra_headers={"x-mock-openai": "once-429", "x-mock-key": k})
    o = [r for r in gateway.mock_requests("openai") if r["headers"].get("x-mock-key") == k]
    a = [r for r in gateway.mock_requests("anthropic") if r["headers"].get("x-mock-key") == k]
    assert o[0]["scenario"] == "429"
    assert len(o) + len(a) == 2
    # previous_priorities: the retry goes to the next priority (Anthropic) and is answered there.
    expected = anthropic_text() if a else rec.openai_text()["choices"][0]["message"]["content"]
    assert resp.choices[0].message.content == expected


def test_429_every_attempt_stays_429(client, gateway):
    with pytest.raises(openai.RateLimitError) as ei:
        client.chat.completions.create(model="claude-haiku", messages=HELLO,
                                       extra_headers={"x-mock-anthropic": "429"})
    assert ei.value.status_code == 429
    assert ei.value.type == "rate_limit_error"
    assert len(gateway.mock_requests("anthropic")) == num_retries(gateway, "claude-haiku") + 1


# ==================================================================================================
# provider errors mapped to OpenAI errors


def test_openai_400_passes_as_recorded(client, gateway):
    recorded = rec.openai_400()["error"]
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO,
                                       extra_headers={"x-mock-openai": "400"})
    e = ei.value
    assert e.status_code == 400
    assert e.body["message"] == recorded["message"]
    assert e.type == recorded["type"]
    assert e.code == recorded["code"]
    assert e.param == recorded["param"]
    assert len(gateway.mock_requests("openai")) == 1        # a 400 is not retried
    assert gateway.mock_requests("anthropic") == []          # ... nor failed over


def test_anthropic_400_mapped_to_openai_error(client, gateway):
    recorded = rec.anthropic_400()["error"]
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="claude-haiku", messages=HELLO,
                                       extra_headers={"x-mock-anthropic": "400"})
    e = ei.value
    assert e.status_code == 400
    assert set(e.body) >= {"message", "type", "param", "code"}
    assert e.body["message"] == recorded["message"]
    assert e.code == recorded["type"]
    assert e.type == "invalid_request_error"
    assert len(gateway.mock_requests("anthropic")) == 1


def test_anthropic_529_becomes_503_and_is_retried(gateway):
    r = post_chat(gateway, {"model": "claude-haiku", "messages": HELLO},
                  headers={"x-mock-anthropic": "529"})
    assert r.status_code == 503
    err = openai_error(r)
    assert err["code"] == "overloaded_error"
    reqs = gateway.mock_requests("anthropic")
    assert [q["scenario"] for q in reqs] == ["529"] * (num_retries(gateway, "claude-haiku") + 1)


def test_anthropic_529_via_sdk(client):
    with pytest.raises(openai.InternalServerError) as ei:
        client.chat.completions.create(model="claude-haiku", messages=HELLO,
                                       extra_headers={"x-mock-anthropic": "529"})
    assert ei.value.status_code == 503
    assert ei.value.code == "overloaded_error"


def test_both_providers_failing_is_a_prompt_openai_shaped_503(gateway):
    t0 = time.monotonic()
    r = post_chat(gateway, {"model": "gpt-4o-mini", "messages": HELLO},
                  headers={"x-mock-openai": "503", "x-mock-anthropic": "503"}, timeout=20)
    elapsed = time.monotonic() - t0
    assert r.status_code == 503
    openai_error(r)
    assert elapsed < 10, elapsed
    o, a = gateway.mock_requests("openai"), gateway.mock_requests("anthropic")
    assert o and a                                     # both providers were tried
    assert len(o) + len(a) == num_retries(gateway, "gpt-4o-mini") + 1


# Regression: on f685425 and before, Envoy's own text/plain local reply ("upstream connect error or
# disconnect/reset before headers ...") reached the client unchanged; fixed in 091ce0e.
@pytest.mark.parametrize("model, headers", [
    ("claude-haiku", {"x-mock-anthropic": "reset"}),
    ("gpt-4o-mini", {"x-mock-openai": "reset", "x-mock-anthropic": "reset"}),
    ("claude-haiku", {"x-mock-anthropic": "truncate"}),
], ids=["anthropic-reset", "both-reset", "anthropic-truncated-body"])
def test_upstream_resets_on_every_attempt_give_an_openai_error(gateway, model, headers):
    r = post_chat(gateway, {"model": model, "messages": HELLO}, headers=headers, timeout=20)
    assert r.status_code in (502, 503, 504)
    err = openai_error(r)
    assert err["type"] in ("api_error", "service_unavailable_error", "server_error")


# ==================================================================================================
# streams going wrong after the first byte (never switched, never silently ended)


def test_anthropic_error_mid_stream_raises_after_first_text(client, gateway):
    recorded = rec.anthropic_stream_text()
    err_event = rec.anthropic_docs_error_event()["error"]
    got_text = ""
    with pytest.raises(openai.APIError) as ei:
        stream = client.chat.completions.create(
            model="claude-haiku", messages=HELLO, stream=True,
            extra_headers={"x-mock-anthropic": "error-mid-stream"})
        for chunk in stream:
            for ch in chunk.choices:
                got_text += ch.delta.content or ""
    # the mock sends the first two text deltas before the error event
    assert got_text == "".join(recorded["text_deltas"][:2])
    assert got_text and recorded["text"].startswith(got_text) and got_text != recorded["text"]
    e = ei.value
    assert not isinstance(e, openai.APIStatusError)    # raised from inside the 200 stream
    assert e.body["code"] == err_event["type"]
    assert e.body["message"] == err_event["message"]
    assert len(gateway.mock_requests("anthropic")) == 1  # never retried once streaming


def test_anthropic_truncated_stream_is_an_error(client, gateway):
    recorded = rec.anthropic_stream_text()
    got_text = ""
    with pytest.raises(openai.APIError) as ei:
        for chunk in client.chat.completions.create(
                model="claude-haiku", messages=HELLO, stream=True,
                extra_headers={"x-mock-anthropic": "truncate"}):
            for ch in chunk.choices:
                got_text += ch.delta.content or ""
                assert ch.finish_reason is None
    assert ei.value.code == "stream_truncated"
    assert recorded["text"].startswith(got_text) and got_text != recorded["text"]
    assert len(gateway.mock_requests("anthropic")) == 1


def test_openai_error_mid_stream_raises(client, gateway):
    recorded = rec.openai_stream_summary(rec.openai_stream_text_chunks())["text"]
    got_text = ""
    with pytest.raises(openai.APIError) as ei:
        for chunk in client.chat.completions.create(
                model="gpt-4o-mini", messages=HELLO, stream=True,
                extra_headers={"x-mock-openai": "error-mid-stream"}):
            for ch in chunk.choices:
                got_text += ch.delta.content or ""
    assert got_text and recorded.startswith(got_text) and got_text != recorded
    assert not isinstance(ei.value, openai.APIStatusError)
    assert gateway.mock_requests("anthropic") == []          # a started stream is never switched


def test_openai_truncated_stream_is_an_error(client, gateway):
    """An OpenAI-compatible stream cut before `data: [DONE]` ends with a stream_truncated error."""
    with pytest.raises(openai.APIError) as ei:
        for _ in client.chat.completions.create(
                model="gpt-4o-mini", messages=HELLO, stream=True,
                extra_headers={"x-mock-openai": "truncate"}):
            pass
    assert "ended before completion" in str(ei.value)


# ==================================================================================================
# bad client input, answered by the gateway itself (no upstream request)


def _expect(r, status, param=None, code=None):
    assert r.status_code == status, (r.status_code, r.text[:300])
    err = openai_error(r)
    assert err["type"] == "invalid_request_error", err
    assert err["param"] == param, err
    assert err["code"] == code, err
    return err


M = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("raw", [b"{not json", b'{"model": "gpt-4o-mini", "messages": [',
                                 b'{"model":"gpt-4o-mini","messages":[]} trailing'],
                         ids=["garbage", "cut", "trailing"])
def test_invalid_json_is_400(gateway, raw):
    _expect(post_chat(gateway, raw=raw), 400)
    assert_no_upstream(gateway)


def test_empty_body_is_400(gateway):
    _expect(post_chat(gateway, raw=b""), 400)
    assert_no_upstream(gateway)


@pytest.mark.parametrize("raw", [
    b"[]",
    b"[1, 2]",
    # serde would read this positionally as {model, messages}: it must still be refused.
    b'["claude-haiku", [{"role": "user", "content": "Hi"}]]',
    b'"just a string"', b"null", b"42",
], ids=["empty-array", "array", "positional-array", "string", "null", "number"])
def test_non_object_body_is_400(gateway, raw):
    _expect(post_chat(gateway, raw=raw), 400)
    assert_no_upstream(gateway)


@pytest.mark.parametrize("body, param", [
    ({"messages": M}, "model"),
    ({"model": "gpt-4o-mini"}, "messages"),
    ({"model": "gpt-4o-mini", "messages": []}, "messages"),
    ({"model": "gpt-4o-mini", "messages": "Hi"}, "messages"),
    ({"model": 5, "messages": M}, "model"),
    ({"model": "gpt-4o-mini", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": "gpt-4o-mini", "messages": [M[0], {"content": "x"}]}, "messages[1].role"),
    ({"model": "gpt-4o-mini", "messages": M, "temperature": "hot"}, "temperature"),
    ({"model": "claude-haiku", "messages": M, "max_tokens": "many"}, "max_tokens"),
], ids=["no-model", "no-messages", "empty-messages", "messages-string", "model-number",
        "bad-role", "missing-role", "temperature-string", "max-tokens-string"])
def test_invalid_fields_name_the_param(gateway, body, param):
    err = _expect(post_chat(gateway, body), 400, param=param)
    assert param.split("[")[0].split(".")[0] in err["message"]
    assert_no_upstream(gateway)


def test_invalid_field_via_sdk(client, gateway):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "wizard", "content": "x"}])
    assert ei.value.param == "messages[0].role"
    assert_no_upstream(gateway)


def test_unknown_model_is_404(client, gateway):
    r = post_chat(gateway, {"model": "gpt-7-turbo", "messages": M})
    err = _expect(r, 404, param="model", code="model_not_found")
    assert "gpt-7-turbo" in err["message"]
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="gpt-7-turbo", messages=M)
    assert ei.value.code == "model_not_found"
    assert_no_upstream(gateway)


@pytest.mark.parametrize("method, path", [("GET", "/v1/nope"), ("POST", "/v1/nope"),
                                          ("GET", "/"), ("POST", "/v1/completions")])
def test_unknown_path_is_404(gateway, method, path):
    r = requests.request(method, gateway.gateway_url + path, json={"model": "gpt-4o-mini",
                                                                   "messages": M}, timeout=10)
    assert r.status_code == 404
    err = openai_error(r)
    assert err["type"] == "invalid_request_error" and err["param"] is None
    assert isinstance(err["code"], str) and err["code"]
    assert_no_upstream(gateway)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method_on_chat_is_405(gateway, method):
    r = requests.request(method, chat_url(gateway), timeout=10)
    assert r.status_code == 405
    assert r.headers.get("allow") == "POST"
    err = openai_error(r)
    assert err["type"] == "invalid_request_error" and err["param"] is None
    assert isinstance(err["code"], str) and err["code"]
    assert_no_upstream(gateway)


def _big_body(gateway) -> bytes:
    size = 9 * 1024 * 1024
    assert size > max_body_bytes(gateway)
    body = json.dumps({"model": "gpt-4o-mini",
                       "messages": [{"role": "user", "content": "x" * size}]}).encode()
    assert len(body) > max_body_bytes(gateway)
    return body


def _expect_413(gateway, r):
    assert r.status_code == 413, (r.status_code, r.text[:300])
    err = openai_error(r)
    assert err["type"] == "invalid_request_error" and err["param"] is None
    assert isinstance(err["code"], str) and err["code"]
    assert str(max_body_bytes(gateway)) in err["message"]
    assert_no_upstream(gateway)


def test_body_over_limit_with_content_length_is_413(gateway):
    body = _big_body(gateway)
    r = requests.post(chat_url(gateway), data=body, timeout=30,
                      headers={"content-type": "application/json"})
    _expect_413(gateway, r)


def test_body_over_limit_chunked_is_413(gateway):
    body = _big_body(gateway)

    def gen():
        for i in range(0, len(body), 256 * 1024):
            yield body[i:i + 256 * 1024]

    r = requests.post(chat_url(gateway), data=gen(), timeout=30,
                      headers={"content-type": "application/json"})
    assert r.request.headers.get("transfer-encoding") == "chunked"
    _expect_413(gateway, r)


def test_body_just_under_limit_is_served(gateway):
    limit = max_body_bytes(gateway)
    skeleton = json.dumps({"model": "gpt-4o-mini",
                           "messages": [{"role": "user", "content": ""}]}).encode()
    body = json.dumps({"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": "x" * (limit - len(skeleton))}]}).encode()
    assert len(body) == limit
    r = requests.post(chat_url(gateway), data=body, timeout=60,
                      headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text[:300]
    sent = gateway.mock_requests("openai")
    assert len(sent) == 1 and len(sent[0]["body"]["messages"][0]["content"]) == \
        limit - len(skeleton)


@pytest.mark.parametrize("model, spoofed, served_by", [
    ("gpt-4o-mini", "claude-haiku", "openai"),
    ("claude-haiku", "gpt-4o-mini", "anthropic"),
])
def test_client_internal_headers_are_ignored_and_stripped(client, gateway, model, spoofed,
                                                         served_by):
    resp = client.chat.completions.create(model=model, messages=HELLO, extra_headers={
        "x-switchyard-route": spoofed, "x-switchyard-model": spoofed,
        "X-Switchyard-Backend": "anthropic-demo", "x-switchyard-anything": "1"})
    expected = (rec.openai_text()["choices"][0]["message"]["content"] if served_by == "openai"
                else anthropic_text())
    assert resp.choices[0].message.content == expected
    other = "anthropic" if served_by == "openai" else "openai"
    served = gateway.mock_requests(served_by)
    assert len(served) == 1 and gateway.mock_requests(other) == []
    for req in served:
        assert not internal_headers(req), req["headers"]
    if served_by == "openai":
        assert served[0]["body"]["model"] == "gpt-4o-mini"
        assert_upstream_hygiene(served[0], credential_header="authorization",
                                credential_value=f"Bearer {OPENAI_UPSTREAM_KEY}")
