"""End-to-end: every backend schema in a real Envoy, driven with the official `openai` SDK.

The models of ``envoy/demo.yaml`` served by the "more" mock provider (``tests/mocks/more_providers.py``,
one port, every schema by path): Gemini (``gemini-flash``) and its Vertex AI variant
(``gemini-vertex``), Bedrock Converse with SigV4 (``bedrock-nova``, embeddings ``titan-embed``),
Cohere v2 (``command-r``, ``cohere-embed``), Ollama's native API (``llama3``, ``ollama-embed``),
Azure OpenAI (``azure-gpt``, ``azure-embed``), and two presets of the openai schema: Mistral
(``magistral``, thinking chunks) and DeepSeek (``deepseek-reasoner``, reasoning_content); plus
OpenAI embeddings (``text-embedding-3-small``) and ``any-chat``, whose cluster fails over across
three schemas (OpenAI → Gemini → Bedrock).

Every expected value comes from the recordings the mock replays (``recorded_providers``), from the
rendered Envoy configuration (``helpers``), or from what the mock recorded having received. Each
test names the capability it backs in the README's providers × features table.
"""

from __future__ import annotations

import json
import re
import time
from urllib.parse import quote

import openai
import pytest
import requests
import yaml

import harness
import recorded as rec
import recorded_providers as rp
from helpers import (CLIENT_API_KEY, HELLO, WEATHER_PARAMS, collect, endpoints, internal_headers,
                     num_retries, openai_error, plugin_config, post_chat, sse_payloads)

KEYS = harness.ENVOY_ENV

# schema (as the tests name it) -> the demo model that reaches it
MODEL = {"gemini": "gemini-flash", "vertex": "gemini-vertex", "bedrock": "bedrock-nova",
         "cohere": "command-r", "ollama": "llama3", "azure": "azure-gpt", "mistral": "magistral",
         "deepseek": "deepseek-reasoner"}
CHAT = list(MODEL)
# schemas whose tools / JSON mode / images are translated (presets pass OpenAI's bodies through)
TOOLS = ["gemini", "vertex", "bedrock", "cohere", "ollama", "azure", "mistral"]
STREAM_TOOLS = ["gemini", "vertex", "bedrock", "cohere", "ollama", "azure", "mistral"]
JSON_MODE = ["gemini", "vertex", "bedrock", "cohere", "ollama", "azure", "mistral"]
IMAGES = ["gemini", "vertex", "bedrock", "cohere", "ollama", "azure", "mistral"]

# The tool each recording calls (so the recorded call is a valid answer to the request).
TOOL_OF = {
    "gemini": ("get_capital", {"type": "object", "properties": {
        "country": {"type": "string", "description": "The country name."}},
        "required": ["country"]}),
    "bedrock": ("get_temperature", {"type": "object", "properties": {"city": {"type": "string"}},
                                    "required": ["city"]}),
    "cohere": ("get_weather", {"type": "object", "properties": {"location": {"type": "string"}},
                               "required": ["location"]}),
    "ollama": ("get_weather", {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}),
    "azure": ("get_current_weather", WEATHER_PARAMS),
    "mistral": ("retrieve_payment_status", {"type": "object", "properties": {
        "transaction_id": {"type": "string"}}, "required": ["transaction_id"]}),
}
# Mistral's tool calls lack `type` and number every call 0 (tests/fixtures/README.md says where
# this fixture comes from): the gateway must hand them to the client in OpenAI's exact shape.
MISTRAL_TOOLS = json.loads((rec.FIXTURES / "mistral/tool-calls-without-type.json").read_text())
TOOL_OF["vertex"] = TOOL_OF["gemini"]

# the image of Ollama's documented multimodal example (a real PNG)
PNG_B64 = re.search(r'"images": \["([A-Za-z0-9+/=]+)"\]',
                    (rec.FIXTURES / "ollama/api.md").read_text()).group(1)
PNG_URL = "data:image/png;base64," + PNG_B64


@pytest.fixture(scope="module", autouse=True)
def _flush_histograms_at_the_end():
    """Histogram samples reach /stats only at Envoy's next stats flush (`stats_flush_interval`):
    wait for it after this module, so that a later module taking before/after deltas
    (test_telemetry.py) does not see this module's last samples arrive late."""
    yield
    import conftest
    gw = conftest._state.get("gateway")
    if gw is not None:
        cfg = yaml.safe_load(gw.config_path.read_text(encoding="utf-8"))
        interval = float(str(cfg.get("stats_flush_interval", "5s")).rstrip("s"))
        time.sleep(2 * interval + 0.2)


# --------------------------------------------------------------------------------------------------
# helpers


def tool_def(kind: str) -> dict:
    name, params = TOOL_OF[kind]
    return {"type": "function", "function": {"name": name, "description": "A recorded tool.",
                                             "parameters": params}}


def more_requests(gateway, kind: str | None = None) -> list[dict]:
    reqs = gateway.mock_requests("more")
    return [r for r in reqs if kind is None or r["provider"] == kind]


def only(reqs: list[dict]) -> dict:
    assert len(reqs) == 1, [(r["path"], r.get("provider"), r.get("scenario")) for r in reqs]
    return reqs[0]


def route(gateway, model: str, priority: int = 0) -> dict:
    """{backend, model, port, priority} of the model's cluster at that priority."""
    return next(e for e in endpoints(gateway, f"route_{model}") if e["priority"] == priority)


def backend_cfg(gateway, name: str) -> dict:
    return plugin_config(gateway, "backend")["backends"][name]


def upstream_host(gateway, kind: str) -> str | None:
    """The :authority the backend sends: its host, or its preset's default host."""
    cfg = backend_cfg(gateway, route(gateway, MODEL[kind])["backend"])
    return cfg.get("host") or {"mistral": "api.mistral.ai", "deepseek": "api.deepseek.com"}.get(
        cfg.get("preset"))


def usage_of(u) -> dict:
    d = u if isinstance(u, dict) else u.to_dict()
    out = {k: d[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    return out


def check_usage(got, want: dict) -> None:
    assert usage_of(got) == {k: want[k] for k in ("prompt_tokens", "completion_tokens",
                                                  "total_tokens")}
    if "reasoning_tokens" in want:
        d = got if isinstance(got, dict) else got.to_dict()
        assert (d.get("completion_tokens_details") or {}).get("reasoning_tokens", 0) \
            == want["reasoning_tokens"], d


def check_auth(gateway, kind: str, req: dict) -> None:
    """The provider's own credential form, and nothing of the client's or the gateway's."""
    h = req["headers"]
    if kind == "gemini":
        assert h.get("x-goog-api-key") == KEYS["GEMINI_API_KEY"] and "authorization" not in h, h
    elif kind == "vertex":
        assert h.get("authorization") == "Bearer " + KEYS["VERTEX_ACCESS_TOKEN"], h
        assert "x-goog-api-key" not in h
    elif kind == "bedrock":
        assert req["sigv4"] == "valid", req["sigv4"]
        assert re.fullmatch(
            r"AWS4-HMAC-SHA256 Credential=" + KEYS["AWS_ACCESS_KEY_ID"]
            + r"/\d{8}/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, "
              r"Signature=[0-9a-f]{64}", h.get("authorization", "")), h.get("authorization")
        assert re.fullmatch(r"\d{8}T\d{6}Z", h.get("x-amz-date", "")), h
    elif kind == "cohere":
        assert h.get("authorization") == "Bearer " + KEYS["COHERE_API_KEY"], h
    elif kind == "ollama":
        assert "authorization" not in h, h
    elif kind == "azure":
        assert h.get("api-key") == KEYS["AZURE_OPENAI_API_KEY"] and "authorization" not in h, h
    elif kind == "mistral":
        assert h.get("authorization") == "Bearer " + KEYS["MISTRAL_API_KEY"], h
    elif kind == "deepseek":
        assert h.get("authorization") == "Bearer " + KEYS["DEEPSEEK_API_KEY"], h
    host = upstream_host(gateway, kind)
    if host:
        assert h.get("host") == host, h
    assert not internal_headers(req), h
    assert h.get("accept-encoding") == "identity", h
    assert not any(CLIENT_API_KEY in v for v in h.values()), h


def chat_path(gateway, kind: str, stream: bool) -> tuple[str, dict]:
    """(raw path, query) the provider must receive for a chat request."""
    up = route(gateway, MODEL[kind])["model"]
    if kind in ("gemini", "vertex"):
        method = "streamGenerateContent" if stream else "generateContent"
        if kind == "vertex":
            v = backend_cfg(gateway, route(gateway, MODEL[kind])["backend"])["vertex"]
            base = f"/v1/projects/{v['project']}/locations/{v['location']}/publishers/google"
        else:
            base = "/v1beta"
        return f"{base}/models/{up}:{method}", ({"alt": "sse"} if stream else {})
    if kind == "bedrock":
        return f"/model/{quote(up, safe='')}/{'converse-stream' if stream else 'converse'}", {}
    if kind == "azure":
        return f"/openai/deployments/{up}/chat/completions", {"api-version": "2024-10-21"}
    return {"cohere": "/v2/chat", "ollama": "/api/chat", "mistral": "/v1/chat/completions",
            "deepseek": "/chat/completions"}[kind], {}


def stream_text(chunks: list[dict]) -> dict:
    """Content, reasoning_content, finish reason, tool calls and usage chunks of SDK chunks."""
    out = {"text": "", "reasoning": "", "finish": None, "usage": [], "ids": set(), "calls": {}}
    for c in chunks:
        out["ids"].add(c["id"])
        if c.get("usage"):
            out["usage"].append(c)
        for ch in c.get("choices") or []:
            d = ch.get("delta") or {}
            out["text"] += d.get("content") or ""
            out["reasoning"] += d.get("reasoning_content") or ""
            for tc in d.get("tool_calls") or []:
                cur = out["calls"].setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
                cur["id"] = tc.get("id") or cur["id"]
                cur["name"] += (tc.get("function") or {}).get("name") or ""
                cur["arguments"] += (tc.get("function") or {}).get("arguments") or ""
            out["finish"] = ch.get("finish_reason") or out["finish"]
    out["calls"] = [out["calls"][i] for i in sorted(out["calls"])]
    return out


# --------------------------------------------------------------------------------------------------
# expected answers, from the recordings


def expected_text(kind: str) -> dict:
    """content, finish, usage (+ reasoning, model) of the non-stream answer to HELLO."""
    if kind in ("gemini", "vertex"):
        r = rp.gemini_text()
        return {"content": rp.gemini_text_of(r), "finish": "stop", "model": r["modelVersion"],
                "usage": rp.gemini_usage(r["usageMetadata"]), "id": "chatcmpl-" + r["responseId"]}
    if kind == "bedrock":
        r = rp.bedrock_text()
        return {"content": "".join(b["text"] for b in r["output"]["message"]["content"]),
                "finish": rp.BEDROCK_FINISH[r["stopReason"]], "usage": rp.bedrock_usage(r["usage"])}
    if kind == "cohere":
        r = rp.cohere_text()
        return {"content": "".join(p["text"] for p in r["message"]["content"]),
                "finish": rp.COHERE_FINISH[r["finish_reason"]], "usage": rp.cohere_usage(r["usage"])}
    if kind == "ollama":
        (d,) = rp.ollama("#### Chat request (No streaming)")
        return {"content": d["message"]["content"], "finish": "stop", "model": d["model"],
                "usage": rp.ollama_usage(d)}
    if kind == "azure":
        r = rec.openai_text()
        return {"content": r["choices"][0]["message"]["content"], "model": r["model"],
                "finish": r["choices"][0]["finish_reason"], "id": r["id"],
                "usage": dict(r["usage"], reasoning_tokens=r["usage"]["completion_tokens_details"][
                    "reasoning_tokens"])}
    if kind == "mistral":
        s = rp.mistral_stream_summary()
        return {"content": s["text"], "reasoning": s["reasoning"], "finish": s["finish"],
                "usage": s["usage"]}
    if kind == "deepseek":
        r = rp.deepseek_text()
        m = r["choices"][0]["message"]
        return {"content": m["content"], "reasoning": m["reasoning_content"], "model": r["model"],
                "finish": r["choices"][0]["finish_reason"], "id": r["id"],
                "usage": dict(r["usage"], reasoning_tokens=r["usage"]["completion_tokens_details"][
                    "reasoning_tokens"])}
    raise AssertionError(kind)


def expected_stream(kind: str) -> dict:
    """text, finish, usage (+ reasoning) of the streamed answer to HELLO."""
    if kind in ("gemini", "vertex"):
        evs = rp.gemini_stream_events()
        return {"text": "".join(rp.gemini_text_of(e) for e in evs), "finish": "stop",
                "usage": rp.gemini_usage(evs[-1]["usageMetadata"])}
    if kind == "bedrock":
        s = rp.bedrock_stream_summary()
        return {"text": s["text"], "finish": rp.BEDROCK_FINISH[s["stop_reason"]],
                "usage": rp.bedrock_usage(s["usage"])}
    if kind == "cohere":
        s = rp.cohere_docs_summary(1)
        return {"text": s["text"], "finish": rp.COHERE_FINISH[s["finish"]],
                "usage": rp.cohere_usage(s["usage"])}
    if kind == "ollama":
        lines = rp.ollama("#### Chat request (Streaming)")
        return {"text": "".join(ln["message"]["content"] for ln in lines), "finish": "stop",
                "usage": rp.ollama_usage(lines[-1])}
    if kind == "azure":
        s = rec.openai_stream_summary(rec.openai_stream_text_chunks())
        return {"text": s["text"], "finish": s["finish_reason"],
                "usage": rec.openai_stream_usage_chunk()["usage"]}
    if kind == "mistral":
        s = rp.mistral_stream_summary()
        return {"text": s["text"], "reasoning": s["reasoning"], "finish": s["finish"],
                "usage": s["usage"]}
    if kind == "deepseek":
        s = rp.deepseek_stream_summary()
        return {"text": s["text"], "reasoning": s["reasoning"], "finish": s["finish"],
                "usage": dict(s["usage"], reasoning_tokens=s["usage"][
                    "completion_tokens_details"]["reasoning_tokens"])}
    raise AssertionError(kind)


# ==================================================================================================
# chat: non-stream and stream, per schema


@pytest.mark.parametrize("kind", CHAT)
def test_chat(client, gateway, kind):
    """[chat] The recorded answer, translated: content, finish_reason, usage (reasoning tokens,
    reasoning_content where recorded); what the provider received: its own path, auth, body."""
    want = expected_text(kind)
    raw = client.chat.completions.with_raw_response.create(model=MODEL[kind], messages=HELLO)
    resp = raw.parse()
    assert raw.headers["x-switchyard-backend"] == route(gateway, MODEL[kind])["backend"]
    assert resp.object == "chat.completion" and len(resp.choices) == 1
    msg = resp.choices[0].message
    assert msg.role == "assistant" and msg.content == want["content"]
    assert resp.choices[0].finish_reason == want["finish"]
    check_usage(resp.usage, want["usage"])
    assert resp.model == want.get("model", route(gateway, MODEL[kind])["model"])
    if "id" in want:
        assert resp.id == want["id"]
    assert (msg.model_extra or {}).get("reasoning_content") == want.get("reasoning")

    req = only(more_requests(gateway))
    path, query = chat_path(gateway, kind, False)
    assert (req["raw_path"], req["query"]) == (path, query)
    assert req["provider"] == kind
    check_auth(gateway, kind, req)
    body, up = req["body"], route(gateway, MODEL[kind])["model"]
    if kind in ("gemini", "vertex"):
        assert body == {"contents": [{"role": "user", "parts": [{"text": HELLO[0]["content"]}]}]}
    elif kind == "bedrock":
        assert body == {"messages": [{"role": "user", "content": [{"text": HELLO[0]["content"]}]}]}
    elif kind == "cohere":
        # exactly the body Cohere's own SDK sent in the recording (model and text aside)
        assert body == dict(rp.cohere_request_body(), model=up,
                            messages=[{"role": "user", "content": HELLO[0]["content"]}])
    elif kind == "ollama":
        assert body == {"model": up, "messages": [{"role": "user", "content": HELLO[0]["content"]}],
                        "stream": False}
    else:  # the openai schema and Azure: OpenAI's body, the model renamed
        assert body["model"] == up and body["messages"] == HELLO


@pytest.mark.parametrize("include_usage", [False, True], ids=["no-usage", "usage"])
@pytest.mark.parametrize("kind", CHAT)
def test_stream(client, gateway, kind, include_usage):
    """[stream] Deltas concatenate to the recording; one id; a finish chunk; usage only when
    asked (then exactly the recorded numbers, in one last `choices: []` chunk); reasoning deltas
    as reasoning_content."""
    want = expected_stream(kind)
    kw = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = collect(client.chat.completions.create(model=MODEL[kind], messages=HELLO,
                                                    stream=True, **kw))
    got = stream_text(chunks)
    assert got["text"] == want["text"]
    assert got["reasoning"] == want.get("reasoning", "")
    assert got["finish"] == want["finish"]
    assert len(got["ids"]) == 1
    if include_usage:
        assert len(got["usage"]) == 1 and got["usage"][0] is chunks[-1], got["usage"]
        assert chunks[-1]["choices"] == []
        check_usage(chunks[-1]["usage"], want["usage"])
    else:
        assert got["usage"] == []
    req = only(more_requests(gateway))
    assert (req["raw_path"], req["query"]) == chat_path(gateway, kind, True)
    check_auth(gateway, kind, req)


@pytest.mark.parametrize("kind", CHAT)
def test_stream_wire_ends_with_done(gateway, kind):
    """[stream] On the wire: text/event-stream, every event a chat.completion.chunk, then [DONE]."""
    r = post_chat(gateway, {"model": MODEL[kind], "messages": HELLO, "stream": True}, stream=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(r)
    assert payloads[-1] == "[DONE]" and payloads.count("[DONE]") == 1
    for p in payloads[:-1]:
        c = json.loads(p)
        assert c["object"] == "chat.completion.chunk" and "error" not in c, c


# ==================================================================================================
# tools


def expected_tool_calls(kind: str, stream: bool) -> list[dict]:
    """[{id (None: any), name, arguments (parsed)}] the recording calls."""
    name = TOOL_OF[kind][0]
    if kind in ("gemini", "vertex"):
        fc = rp.gemini_tool_call()["candidates"][0]["content"]["parts"][0]["functionCall"]
        return [{"id": None, "name": name, "arguments": fc["args"]}]
    if kind == "bedrock":
        s = rp.bedrock_stream_summary(rp.BEDROCK_TOOLS, 0)
        return [{"id": t["id"], "name": t["name"], "arguments": json.loads(t["input"])}
                for t in s["tool_uses"]]
    if kind == "cohere":
        return [{"id": c["id"], "name": c["name"], "arguments": json.loads(c["arguments"])}
                for c in rp.cohere_docs_summary(0)["calls"]]
    if kind == "ollama":
        doc = rp.ollama("#### Chat request (Streaming with tools)")[0] if stream else \
            rp.ollama("#### Chat request (No streaming, with tools)")[0]
        return [{"id": None, "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                for c in doc["message"]["tool_calls"]]
    if kind == "mistral":
        if stream:
            calls = [c for ch in MISTRAL_TOOLS["stream"] for choice in ch["choices"]
                     for c in choice["delta"].get("tool_calls") or []]
        else:
            calls = MISTRAL_TOOLS["answer"]["choices"][0]["message"]["tool_calls"]
        assert all("type" not in c and c["index"] == 0 for c in calls), "the fixture is Mistral's shape"
        return [{"id": c["id"], "name": c["function"]["name"],
                 "arguments": json.loads(c["function"]["arguments"])} for c in calls]
    if stream:  # azure: the OpenAI mock's streamed tool call (name = the request's tool)
        s = rec.openai_stream_summary(rec.openai_stream_tools_chunks())
        return [{"id": c["id"], "name": name, "arguments": json.loads(c["arguments"])}
                for c in s["tool_calls"]]
    tc = rec.openai_tools()["choices"][0]["message"]["tool_calls"]
    return [{"id": c["id"], "name": name, "arguments": json.loads(c["function"]["arguments"])}
            for c in tc]


def expected_after_tool(kind: str) -> str:
    if kind in ("gemini", "vertex"):
        return rp.gemini_text_of(rp.gemini_after_tool())
    if kind == "bedrock":
        return rp.bedrock_stream_summary(rp.BEDROCK_TOOLS, 1)["text"]
    if kind == "cohere":
        return rp.cohere_docs_summary(1)["text"]
    if kind == "ollama":
        return rp.ollama("#### Chat request (With history, with tools)")[0]["message"]["content"]
    if kind == "azure":
        return rec.openai_text()["choices"][0]["message"]["content"]
    if kind == "mistral":
        return rp.mistral_stream_summary()["text"]
    raise AssertionError(kind)


def check_calls(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want), got
    for g, w in zip(got, want):
        assert g["name"] == w["name"]
        assert json.loads(g["arguments"]) == w["arguments"]
        assert isinstance(g["id"], str) and g["id"]
        if w["id"] is not None:
            assert g["id"] == w["id"]


RESULT = '{"temperature": "24C"}'


def check_tool_result_upstream(kind: str, body: dict, calls: list[dict], assistant: dict) -> None:
    """The tool round trip as the provider received it, in its own format."""
    result = json.loads(RESULT)
    if kind in ("gemini", "vertex"):
        model_turn, user_turn = body["contents"][-2], body["contents"][-1]
        assert model_turn == {"role": "model", "parts": [
            {"functionCall": {"id": c["id"], "name": c["name"], "args": json.loads(c["arguments"])}}
            for c in calls]}
        assert user_turn == {"role": "user", "parts": [
            {"functionResponse": {"id": c["id"], "name": c["name"], "response": result}}
            for c in calls]}
        decl = body["tools"][0]["functionDeclarations"][0]
        assert decl["name"] == TOOL_OF[kind][0] and decl["parameters"]["type"] == "OBJECT"
    elif kind == "bedrock":
        asst, user = body["messages"][-2], body["messages"][-1]
        assert asst["role"] == "assistant"
        assert [b["toolUse"] for b in asst["content"] if "toolUse" in b] == [
            {"toolUseId": c["id"], "name": c["name"], "input": json.loads(c["arguments"])}
            for c in calls]
        assert user == {"role": "user", "content": [
            {"toolResult": {"toolUseId": c["id"], "content": [{"text": RESULT}],
                            "status": "success"}} for c in calls]}
        spec = body["toolConfig"]["tools"][0]["toolSpec"]
        assert spec["name"] == TOOL_OF[kind][0] and spec["inputSchema"] == {"json": TOOL_OF[kind][1]}
    elif kind == "cohere":
        n = len(calls)
        asst, tools = body["messages"][-1 - n], body["messages"][-n:]
        assert asst == {"role": "assistant", "tool_plan": assistant["reasoning_content"],
                        "tool_calls": [{"id": c["id"], "type": "function", "function": {
                            "name": c["name"], "arguments": c["arguments"]}} for c in calls]}
        assert tools == [{"role": "tool", "tool_call_id": c["id"], "content": RESULT}
                         for c in calls]
    elif kind == "ollama":
        asst, tool = body["messages"][-2], body["messages"][-1]
        assert asst == {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": c["name"], "arguments": json.loads(c["arguments"])}}
            for c in calls]}
        assert tool == {"role": "tool", "content": RESULT, "tool_name": calls[0]["name"]}
    elif kind == "azure":
        assert body["messages"][-2]["tool_calls"] == assistant["tool_calls"]
        assert body["messages"][-1] == {"role": "tool", "tool_call_id": calls[0]["id"],
                                        "content": RESULT}
    elif kind == "mistral":
        # cut down to the fields Mistral's API accepts (it answers 422 to any other)
        asst, tool = body["messages"][-2], body["messages"][-1]
        assert set(asst) <= {"role", "content", "tool_calls", "prefix"}, asst
        assert asst["tool_calls"] == assistant["tool_calls"]
        assert tool == {"role": "tool", "tool_call_id": calls[0]["id"], "content": RESULT}


@pytest.mark.parametrize("kind", TOOLS)
def test_tools_round_trip(client, gateway, kind):
    """[tools] tool_calls out (as recorded); the tool result goes back in the provider's own
    format; the final answer is the recorded one."""
    tools = [tool_def(kind)]
    msgs = [{"role": "user", "content": "Which tool answers this?"}]
    first = client.chat.completions.create(model=MODEL[kind], messages=msgs, tools=tools)
    assert first.choices[0].finish_reason == "tool_calls"
    m = first.choices[0].message.to_dict()
    calls = [{"id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
             for c in m["tool_calls"]]
    assert all(c["type"] == "function" for c in m["tool_calls"])
    check_calls(calls, expected_tool_calls(kind, stream=False))
    if kind == "cohere":  # the tool plan is the model's reasoning
        assert m["reasoning_content"] == rp.cohere_docs_summary(0)["plan"]
    gateway.clear_mocks()

    assistant = {"role": "assistant", "content": m.get("content"), "tool_calls": m["tool_calls"]}
    if m.get("reasoning_content"):
        assistant["reasoning_content"] = m["reasoning_content"]
    msgs += [assistant] + [{"role": "tool", "tool_call_id": c["id"], "content": RESULT}
                           for c in calls]
    final = client.chat.completions.create(model=MODEL[kind], messages=msgs, tools=tools)
    assert final.choices[0].message.content == expected_after_tool(kind)
    assert final.choices[0].finish_reason == "stop"
    req = only(more_requests(gateway))
    check_auth(gateway, kind, req)
    check_tool_result_upstream(kind, req["body"], calls, assistant)


@pytest.mark.parametrize("kind", STREAM_TOOLS)
def test_tools_stream(client, gateway, kind):
    """[tools] Streamed tool calls (ids, names, arguments) as recorded; finish_reason tool_calls."""
    chunks = collect(client.chat.completions.create(
        model=MODEL[kind], messages=[{"role": "user", "content": "Which tool answers this?"}],
        tools=[tool_def(kind)], stream=True))
    got = stream_text(chunks)
    check_calls(got["calls"], expected_tool_calls(kind, stream=True))
    assert got["finish"] == "tool_calls"
    # OpenAI's delta shape: a call's first delta has its id and type, later ones neither.
    firsts = [tc for c in chunks for ch in c.get("choices") or [] for tc in (ch.get("delta") or {}).get("tool_calls") or []
              if tc.get("id")]
    assert len(firsts) == len(got["calls"]) and all(tc["type"] == "function" for tc in firsts), firsts
    if kind == "cohere":
        assert got["reasoning"] == rp.cohere_docs_summary(0)["plan"]
    req = only(more_requests(gateway))
    assert (req["raw_path"], req["query"]) == chat_path(gateway, kind, True)


# ==================================================================================================
# JSON mode


SCHEMA = {"type": "object", "properties": {"age": {"type": "integer"},
                                           "available": {"type": "boolean"}},
          "required": ["age", "available"]}


@pytest.mark.parametrize("fmt", ["json_object", "json_schema"])
@pytest.mark.parametrize("kind", JSON_MODE)
def test_json_mode(client, gateway, kind, fmt):
    """[JSON mode] response_format reaches the provider in its own form; the JSON answer comes
    back as content."""
    rf = {"type": "json_object"} if fmt == "json_object" else {
        "type": "json_schema", "json_schema": {"name": "status", "schema": SCHEMA}}
    resp = client.chat.completions.create(
        model=MODEL[kind], response_format=rf,
        messages=[{"role": "user", "content": "Ollama is 22 years old and busy saving the world. "
                                              "Return a JSON object with the age and availability."}])
    assert resp.choices[0].message.content == rp.json_answer()
    json.loads(resp.choices[0].message.content)
    body = only(more_requests(gateway))["body"]
    if kind in ("gemini", "vertex"):
        gc = body["generationConfig"]
        assert gc["responseMimeType"] == "application/json"
        if fmt == "json_schema":
            assert gc["responseSchema"] == {"type": "OBJECT", "properties": {
                "age": {"type": "INTEGER"}, "available": {"type": "BOOLEAN"}},
                "required": ["age", "available"], "propertyOrdering": ["age", "available"]}
    elif kind == "bedrock":  # Converse has no JSON mode: the instruction goes in the system prompt
        system = " ".join(s["text"] for s in body["system"])
        assert "JSON" in system
        if fmt == "json_schema":
            assert json.dumps(SCHEMA, separators=(",", ":"), sort_keys=True) in system \
                or json.dumps(SCHEMA, separators=(",", ":")) in system, system
    elif kind == "cohere":
        want = {"type": "json_object"} if fmt == "json_object" else {"type": "json_object",
                                                                     "json_schema": SCHEMA}
        assert body["response_format"] == want
    elif kind == "ollama":
        assert body["format"] == ("json" if fmt == "json_object" else SCHEMA)
    else:  # azure, mistral: OpenAI's own field
        assert body["response_format"] == rf


# ==================================================================================================
# images


@pytest.mark.parametrize("kind", IMAGES)
def test_image_input(client, gateway, kind):
    """[images] A base64 image part reaches the provider in its own form."""
    parts = [{"type": "text", "text": "What is in this image?"},
             {"type": "image_url", "image_url": {"url": PNG_URL}}]
    resp = client.chat.completions.create(model=MODEL[kind],
                                          messages=[{"role": "user", "content": parts}])
    assert resp.choices[0].message.content
    if kind == "ollama":
        want = rp.ollama("#### Chat request (with images)")[0]["message"]["content"]
        assert resp.choices[0].message.content == want
    body = only(more_requests(gateway))["body"]
    if kind in ("gemini", "vertex"):
        assert body["contents"][0]["parts"] == [
            {"text": "What is in this image?"},
            {"inlineData": {"mimeType": "image/png", "data": PNG_B64}}]
    elif kind == "bedrock":
        assert body["messages"][0]["content"] == [
            {"text": "What is in this image?"},
            {"image": {"format": "png", "source": {"bytes": PNG_B64}}}]
    elif kind == "cohere":
        assert body["messages"][0]["content"] == parts
    elif kind == "ollama":
        assert body["messages"][0] == {"role": "user", "content": "What is in this image?",
                                       "images": [PNG_B64]}
    else:
        assert body["messages"][0]["content"] == parts


@pytest.mark.parametrize("kind", ["gemini", "vertex", "cohere", "bedrock", "ollama"])
def test_image_url(client, gateway, kind):
    """[images] An http(s) image URL: passed on where the provider fetches URLs (Gemini
    `fileData`, Cohere), a 400 naming the part where it does not (Bedrock, Ollama)."""
    url = "https://upload.wikimedia.org/wikipedia/commons/4/47/PNG_transparency_demonstration_1.png"
    parts = [{"type": "text", "text": "What is in this image?"},
             {"type": "image_url", "image_url": {"url": url}}]
    call = lambda: client.chat.completions.create(  # noqa: E731
        model=MODEL[kind], messages=[{"role": "user", "content": parts}])
    if kind in ("bedrock", "ollama"):
        with pytest.raises(openai.BadRequestError) as ei:
            call()
        err = ei.value.body
        assert err["param"] == "messages[0].content[1].image_url.url", err
        assert more_requests(gateway) == []
        return
    call()
    body = only(more_requests(gateway))["body"]
    if kind in ("gemini", "vertex"):
        assert body["contents"][0]["parts"][1] == {"fileData": {"mimeType": "image/png",
                                                                "fileUri": url}}
    else:
        assert body["messages"][0]["content"][1] == {"type": "image_url", "image_url": {"url": url}}


# ==================================================================================================
# reasoning


@pytest.mark.parametrize("kind", ["gemini", "vertex"])
def test_gemini_reasoning_effort_and_thought_tokens(client, gateway, kind):
    """[reasoning] reasoning_effort becomes Gemini's thinkingConfig (thoughts included); the
    recorded thoughtsTokenCount comes back as reasoning_tokens. (No recording has thought text;
    `thought: true` parts -> reasoning_content is unit-tested in src/providers/gemini.rs.)"""
    resp = client.chat.completions.create(model=MODEL[kind], messages=HELLO,
                                          reasoning_effort="low")
    u = rp.gemini_text()["usageMetadata"]
    assert resp.usage.completion_tokens_details.reasoning_tokens == u["thoughtsTokenCount"]
    body = only(more_requests(gateway))["body"]
    assert body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 1024,
                                                          "includeThoughts": True}


def test_ollama_reasoning_effort_is_think(client, gateway):
    """[reasoning] reasoning_effort becomes Ollama's `think` level."""
    client.chat.completions.create(model="llama3", messages=HELLO, reasoning_effort="high")
    assert only(more_requests(gateway))["body"]["think"] == "high"


# ==================================================================================================
# embeddings


EMBED_MODELS = ["text-embedding-3-small", "gemini-embedding", "cohere-embed", "titan-embed",
                "ollama-embed", "azure-embed"]


def embed_input(model: str):
    if model == "cohere-embed":
        return rp.cohere_embed_example()["request"]["texts"]
    if model == "ollama-embed":
        return re.search(r'"input": "([^"]+)"', (rec.FIXTURES / "ollama/api.md").read_text()).group(1)
    if model == "titan-embed":
        return "Why is the sky blue?"          # Titan embeds one input per request
    return ["Why is the sky blue?", "Why is the grass green?"]


def expected_embeddings(model: str, texts: list[str]) -> tuple[list[list[float]], int]:
    """(vectors, prompt_tokens) the gateway must answer."""
    if model == "cohere-embed":
        ex = rp.cohere_embed_example()["response"]
        return ex["embeddings"]["float"], ex["meta"]["billed_units"]["input_tokens"]
    if model == "ollama-embed":
        (doc,) = rp.ollama("## Generate Embeddings")[:1]
        return doc["embeddings"], doc.get("prompt_eval_count", 0)
    vectors = [rp.mock_vector(t) for t in texts]
    if model == "gemini-embedding":
        return vectors, 0                                      # Gemini reports no usage
    return vectors, sum(len(t.split()) for t in texts)         # the mock's token count


def check_embedding_upstream(gateway, model: str, req: dict, texts: list[str], fmt: str):
    ep = route(gateway, model)
    up = ep["model"]
    if model == "text-embedding-3-small":
        assert req["path"] == "/v1/embeddings"
        assert req["headers"]["authorization"] == "Bearer " + KEYS["OPENAI_API_KEY"]
        assert req["body"]["model"] == up and req["body"]["encoding_format"] == fmt
        return
    kind = {"gemini-embedding": "gemini", "cohere-embed": "cohere", "titan-embed": "bedrock",
            "ollama-embed": "ollama", "azure-embed": "azure"}[model]
    assert req["provider"] == kind
    check_auth(gateway, kind, req)
    body = req["body"]
    if kind == "gemini":
        assert req["path"] == f"/v1beta/models/{up}:batchEmbedContents"
        assert body == {"requests": [{"model": f"models/{up}", "content": {"parts": [{"text": t}]}}
                                     for t in texts]}
    elif kind == "cohere":
        assert req["path"] == "/v2/embed"
        assert body == {"model": up, "texts": texts, "input_type": "search_document",
                        "embedding_types": ["float"]}
    elif kind == "bedrock":
        assert req["raw_path"] == f"/model/{quote(up, safe='')}/invoke"
        assert req["sigv4"] == "valid", req["sigv4"]
        assert body == {"inputText": texts[0], "normalize": True}
    elif kind == "ollama":
        assert req["path"] == "/api/embed"
        assert body == {"model": up, "input": texts[0] if len(texts) == 1 else texts}
    elif kind == "azure":
        assert (req["path"], req["query"]) == (f"/openai/deployments/{up}/embeddings",
                                               {"api-version": "2024-10-21"})
        assert body["encoding_format"] == fmt


@pytest.mark.parametrize("fmt", ["float", "base64"])
@pytest.mark.parametrize("model", EMBED_MODELS)
def test_embeddings(client, gateway, model, fmt):
    """[embeddings] Vectors equal the recorded (Cohere, Ollama) or mocked ones, in float and in
    base64 (the SDK's default, which it decodes), with the provider's usage."""
    inp = embed_input(model)
    texts = inp if isinstance(inp, list) else [inp]
    kw = {"encoding_format": "float"} if fmt == "float" else {}   # the SDK asks base64 by default
    resp = client.embeddings.create(model=model, input=inp, **kw)
    vectors, tokens = expected_embeddings(model, texts)
    assert resp.object == "list" and [d.index for d in resp.data] == list(range(len(texts)))
    assert len(resp.data) == len(vectors)
    for d, want in zip(resp.data, vectors):
        assert [rp.f32(x) for x in d.embedding] == [rp.f32(x) for x in want]
    assert (resp.usage.prompt_tokens, resp.usage.total_tokens) == (tokens, tokens)
    assert resp.model == route(gateway, model)["model"]
    req = only(gateway.mock_requests("openai") if model == "text-embedding-3-small"
               else more_requests(gateway))
    check_embedding_upstream(gateway, model, req, texts, fmt)


@pytest.mark.parametrize("model", ["gemini-embedding", "titan-embed", "ollama-embed"])
def test_embeddings_base64_on_the_wire(gateway, model):
    """[embeddings] encoding_format base64: each embedding is the base64 of little-endian f32s."""
    inp = embed_input(model)
    texts = inp if isinstance(inp, list) else [inp]
    r = requests.post(gateway.base_url + "/embeddings", timeout=30, json={
        "model": model, "input": inp, "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    vectors, _ = expected_embeddings(model, texts)
    for d, want in zip(r.json()["data"], vectors):
        assert isinstance(d["embedding"], str)
        assert rp.decode_f32_base64(d["embedding"]) == [rp.f32(x) for x in want]


@pytest.mark.parametrize("model,field", [("gemini-embedding", "outputDimensionality"),
                                         ("titan-embed", "dimensions")])
def test_embeddings_dimensions(client, gateway, model, field):
    """[embeddings] `dimensions` reaches the provider under its own name."""
    resp = client.embeddings.create(model=model, input="Why is the sky blue?", dimensions=4,
                                    encoding_format="float")
    assert [rp.f32(x) for x in resp.data[0].embedding] == rp.mock_vector("Why is the sky blue?", 4)
    body = only(more_requests(gateway))["body"]
    got = body["requests"][0][field] if model == "gemini-embedding" else body[field]
    assert got == 4


# ==================================================================================================
# errors, capabilities


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("kind", CHAT)
def test_provider_error_is_openai_shaped(gateway, kind, status):
    """[chat] A provider's 429 / 503 (in its own error shape, after Envoy's retries) reaches the
    client with that status as an OpenAI error."""
    r = post_chat(gateway, {"model": MODEL[kind], "messages": HELLO},
                  headers={"x-mock-more": f"{kind}={status}"})
    assert r.status_code == status, r.text
    err = openai_error(r)
    if kind not in ("azure", "deepseek"):  # translated (those two answer OpenAI's shape already)
        assert err["type"] == {429: "rate_limit_error", 503: "service_unavailable_error"}[status]
    if kind in ("gemini", "vertex"):
        assert err["code"] == {429: "resource_exhausted", 503: "unavailable"}[status]
    elif kind == "bedrock":
        assert err["code"] == {429: "ThrottlingException", 503: "ServiceUnavailableException"}[status]
    reqs = more_requests(gateway)
    assert len(reqs) == num_retries(gateway, MODEL[kind]) + 1
    assert all(q["scenario"] == str(status) for q in reqs)


def test_bedrock_recorded_400(gateway):
    """[chat] Bedrock's recorded ValidationException: 400 with its message, not retried."""
    r = post_chat(gateway, {"model": "bedrock-nova", "messages": HELLO},
                  headers={"x-mock-more": "bedrock=400"})
    assert r.status_code == 400
    err = openai_error(r)
    assert err["message"] == rp._body(rp.BEDROCK_ERROR)["message"]
    assert err["type"] == "invalid_request_error"
    assert len(more_requests(gateway)) == 1


@pytest.mark.parametrize("kind", ["gemini", "bedrock", "ollama"])
def test_error_mid_stream_ends_with_an_error_event(gateway, kind):
    """[stream] An error inside the provider's stream (Gemini error object, Bedrock exception
    frame, Ollama's documented error line) ends the client's stream with one OpenAI error event,
    no [DONE]."""
    r = post_chat(gateway, {"model": MODEL[kind], "messages": HELLO, "stream": True}, stream=True,
                  headers={"x-mock-more": f"{kind}=error-mid-stream"})
    assert r.status_code == 200
    payloads = sse_payloads(r)
    assert "[DONE]" not in payloads
    docs = [json.loads(p) for p in payloads]
    assert "error" in docs[-1] and all("error" not in d for d in docs[:-1]), docs[-1]
    assert docs[-1]["error"]["message"]


def test_embeddings_on_anthropic_is_400_naming_the_capability(client, gateway):
    """[capabilities] A capability the backend lacks is a 400 naming it; nothing goes upstream."""
    with pytest.raises(openai.BadRequestError) as ei:
        client.embeddings.create(model="claude-haiku", input="hello", encoding_format="float")
    err = ei.value.body
    assert err["code"] == "unsupported_capability" and "embeddings" in err["message"], err
    assert gateway.mock_requests("anthropic") == []


def test_embeddings_through_vertex_is_400(client, gateway):
    """[capabilities] Vertex AI embeddings (`:predict`) are not translated: 400, nothing sent."""
    with pytest.raises(openai.BadRequestError) as ei:
        client.embeddings.create(model="gemini-vertex", input="hello", encoding_format="float")
    assert ei.value.body["code"] == "unsupported_capability"
    assert more_requests(gateway) == []


@pytest.mark.parametrize("kind", ["bedrock", "cohere", "ollama"])
def test_n_above_one_is_400_where_unsupported(client, gateway, kind):
    """[capabilities] n > 1 on a backend that answers one choice: 400 on `n`, nothing sent."""
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=MODEL[kind], messages=HELLO, n=2)
    assert ei.value.body["param"] == "n", ei.value.body
    assert more_requests(gateway) == []


def test_titan_takes_one_input(client, gateway):
    """[capabilities] Titan embeds one input per request: a batch is a 400 on `input`."""
    with pytest.raises(openai.BadRequestError) as ei:
        client.embeddings.create(model="titan-embed", input=["a", "b"], encoding_format="float")
    assert ei.value.body["param"] == "input"
    assert more_requests(gateway) == []


# ==================================================================================================
# failover across three schemas


def test_failover_across_three_schemas(client, gateway):
    """[failover] any-chat: OpenAI fails (503), Gemini fails (503) -> Bedrock answers, each
    attempt in its own wire format; x-switchyard-backend names Bedrock."""
    eps = endpoints(gateway, "route_any-chat")
    assert len({backend_cfg(gateway, e["backend"])["schema"] for e in eps}) == 3
    raw = client.chat.completions.with_raw_response.create(
        model="any-chat", messages=HELLO,
        extra_headers={"x-mock-openai": "503", "x-mock-more": "gemini=503"})
    resp = raw.parse()
    assert raw.headers["x-switchyard-backend"] == eps[2]["backend"]
    assert raw.headers["x-switchyard-attempts"] == "3"
    want = expected_text("bedrock")
    assert resp.choices[0].message.content == want["content"]
    check_usage(resp.usage, want["usage"])
    oa = only(gateway.mock_requests("openai"))
    assert oa["path"] == "/v1/chat/completions" and oa["body"]["model"] == eps[0]["model"]
    more = more_requests(gateway)
    assert [q["provider"] for q in more] == ["gemini", "bedrock"]
    assert more[0]["raw_path"] == f"/v1beta/models/{eps[1]['model']}:generateContent"
    assert more[1]["raw_path"] == f"/model/{quote(eps[2]['model'], safe='')}/converse"
    assert more[1]["sigv4"] == "valid"


def test_failover_across_three_schemas_stream(client, gateway):
    """[failover] The same with a stream (OpenAI resets the connection, Gemini answers 429): the
    client's stream is Bedrock's, whole and in order, usage as asked."""
    eps = endpoints(gateway, "route_any-chat")
    raw = client.chat.completions.with_raw_response.create(
        model="any-chat", messages=HELLO, stream=True, stream_options={"include_usage": True},
        extra_headers={"x-mock-openai": "reset", "x-mock-more": "gemini=429"})
    assert raw.headers["x-switchyard-backend"] == eps[2]["backend"]
    chunks = collect(raw.parse())
    got, want = stream_text(chunks), expected_stream("bedrock")
    assert got["text"] == want["text"] and got["finish"] == want["finish"]
    assert len(got["usage"]) == 1 and chunks[-1]["choices"] == []
    check_usage(chunks[-1]["usage"], want["usage"])
    assert [q["provider"] for q in more_requests(gateway)] == ["gemini", "bedrock"]
    assert len(gateway.mock_requests("openai")) == 1


def test_failover_second_schema_serves(client, gateway):
    """[failover] Only OpenAI fails: Gemini (priority 1) answers, Bedrock is not asked."""
    raw = client.chat.completions.with_raw_response.create(
        model="any-chat", messages=HELLO, extra_headers={"x-mock-openai": "503"})
    eps = endpoints(gateway, "route_any-chat")
    assert raw.headers["x-switchyard-backend"] == eps[1]["backend"]
    assert raw.headers["x-switchyard-attempts"] == "2"
    assert raw.parse().choices[0].message.content == expected_text("gemini")["content"]
    assert [q["provider"] for q in more_requests(gateway)] == ["gemini"]


# ==================================================================================================
# the mock itself (no Envoy): it really checks SigV4


def test_mock_rejects_a_bad_sigv4_signature(mocks):
    """The Bedrock mock recomputes the signature: a wrong one is Bedrock's 403."""
    now = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    h = {"content-type": "application/json", "host": "bedrock-runtime.us-east-1.amazonaws.com",
         "x-amz-date": now,
         "authorization": f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{now[:8]}/us-east-1/bedrock/"
                          "aws4_request, SignedHeaders=content-type;host;x-amz-date, "
                          "Signature=" + "0" * 64}
    r = requests.post(mocks.more_url + "/model/m/converse", headers=h, timeout=10,
                      data=json.dumps({"messages": []}))
    assert r.status_code == 403 and r.headers["x-amzn-errortype"] == "InvalidSignatureException"
    assert mocks.requests("more")[-1]["sigv4"] == "invalid: signature mismatch"
    h["x-amz-date"] = "20000101T000000Z"
    h["authorization"] = h["authorization"].replace(now[:8], "20000101")
    r = requests.post(mocks.more_url + "/model/m/converse", headers=h, timeout=10,
                      data=json.dumps({"messages": []}))
    assert r.status_code == 403 and "expired" in mocks.requests("more")[-1]["sigv4"]
    r = requests.post(mocks.more_url + "/model/m/converse", json={"messages": []}, timeout=10)
    assert r.status_code == 200 and mocks.requests("more")[-1]["sigv4"] == "absent"
