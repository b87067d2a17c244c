"""Fidelity (issue 16): every OpenAI-compatible preset answers the official `openai` SDK in OpenAI's
exact shape, whole and streamed; `reasoning_effort` reaches Claude on Bedrock as its thinking
configuration, and a Bedrock model that cannot think answers a clear 400.

A gateway of its own: envoy/demo.yaml plus one model per preset (`compat-<preset>`), each served
by the "more" mock, which tells the presets apart by the `host` the gateway sets for them
(Mistral, DeepSeek and Ollama's `/v1` replay their own recordings; the other presets replay the
OpenAI mock's), and `bedrock-claude` (Claude Sonnet 4 on Bedrock, the Bedrock mock).
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import openai
import pytest
import yaml

import harness

PRESETS = ["mistral", "deepseek", "qwen", "groq", "xai", "together", "fireworks", "openrouter", "vllm",
           "ollama"]
# Presets without a public host: the test gives them one the mock recognises.
HOSTS = {"vllm": "vllm.test", "ollama": "ollama.test"}
BEDROCK_CLAUDE = "us.anthropic.claude-sonnet-4-20250514-v1:0"
HELLO = [{"role": "user", "content": "Hello"}]
TOOL = {"type": "function", "function": {"name": "retrieve_payment_status", "description": "Payment status",
                                         "parameters": {"type": "object", "properties": {
                                             "transaction_id": {"type": "string"}}, "required": ["transaction_id"]}}}

ANSWER_FIELDS = {"id", "object", "created", "model", "choices", "usage", "system_fingerprint", "service_tier"}
CHOICE_FIELDS = {"index", "message", "finish_reason", "logprobs"}
MESSAGE_FIELDS = {"role", "content", "refusal", "tool_calls", "function_call", "reasoning_content", "annotations",
                  "audio"}
USAGE_FIELDS = {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details",
                "completion_tokens_details"}
FINISH = {"stop", "length", "tool_calls", "content_filter", "function_call"}


class FidelityGateway(harness.Gateway):
    """The demo gateway plus a model per preset and Claude on Bedrock."""

    def render(self) -> str:
        doc = yaml.safe_load(super().render())
        more_port = self.mocks.more_port
        extra = {f"compat-{p}": (f"{p}-fidelity", f"{p}-model") for p in PRESETS}
        extra["bedrock-claude"] = ("bedrock-demo", BEDROCK_CLAUDE)
        for cfg, plugin in harness.plugin_configs(doc, "gateway"):
            plugin["models"] += [{"name": name, "owned_by": "test"} for name in extra]
            cfg["value"] = json.dumps(plugin)
        for cfg, plugin in harness.plugin_configs(doc, "backend"):
            for p in PRESETS:
                plugin["backends"][f"{p}-fidelity"] = {"schema": "openai", "preset": p,
                                                       **({"host": HOSTS[p]} if p in HOSTS else {})}
            cfg["value"] = json.dumps(plugin)
        listener = doc["static_resources"]["listeners"][0]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        template = next(r for r in routes if r["match"].get("headers", [{}])[0].get("string_match", {}).get("exact") == "magistral")
        clusters = doc["static_resources"]["clusters"]
        cluster_template = next(c for c in clusters if c["name"] == "route_magistral")
        for name, (backend, model) in extra.items():
            r = copy.deepcopy(template)
            r["match"]["headers"][0]["string_match"]["exact"] = name
            r["route"]["cluster"] = f"route_{name}"
            routes.insert(0, r)
            c = copy.deepcopy(cluster_template)
            c["name"] = f"route_{name}"
            c["load_assignment"]["cluster_name"] = f"route_{name}"
            ep = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
            ep["endpoint"]["address"]["socket_address"]["port_value"] = more_port
            ep["metadata"]["filter_metadata"]["switchyard"] = {"backend": backend, "model": model}
            clusters.append(c)
        return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


@pytest.fixture(scope="module")
def fgw():
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-fidelity-"))
    wasm = harness.build_wasm()
    mocks = harness.Mocks(workdir).start()
    gw = FidelityGateway(workdir, mocks)
    try:
        gw.start(wasm)
        yield gw
        problems = gw.problems()
        assert not problems, problems
    finally:
        gw.stop()
        mocks.stop()
    harness.cleanup_workdir(workdir, keep=False)


@pytest.fixture(scope="module")
def fclient(fgw):
    return openai.OpenAI(base_url=fgw.base_url, api_key="sk-client", max_retries=0, timeout=30)


@pytest.fixture(autouse=True)
def _clear(fgw):
    fgw.clear_mocks()


def assert_openai_answer(doc: dict) -> None:
    """The JSON of a whole answer has only OpenAI's fields, in OpenAI's shapes."""
    assert set(doc) <= ANSWER_FIELDS, set(doc) - ANSWER_FIELDS
    assert doc["object"] == "chat.completion" and isinstance(doc["created"], int)
    for i, c in enumerate(doc["choices"]):
        assert set(c) <= CHOICE_FIELDS, c
        assert c["index"] == i and c["finish_reason"] in FINISH, c
        m = c["message"]
        assert set(m) <= MESSAGE_FIELDS, set(m) - MESSAGE_FIELDS
        assert m["role"] == "assistant" and "content" in m
        for call in m.get("tool_calls") or []:
            assert set(call) == {"id", "type", "function"}, call
            assert call["type"] == "function" and call["id"]
            assert set(call["function"]) == {"name", "arguments"}
            json.loads(call["function"]["arguments"])
    if doc.get("usage") is not None:
        assert set(doc["usage"]) <= USAGE_FIELDS, doc["usage"]


def assert_openai_chunks(chunks: list[dict]) -> dict:
    """Every chunk in OpenAI's shape; returns the accumulated tool calls (by index) and finish."""
    calls: dict[int, dict] = {}
    finish = None
    for ch in chunks:
        assert set(ch) <= ANSWER_FIELDS, set(ch) - ANSWER_FIELDS
        assert ch["object"] == "chat.completion.chunk"
        for c in ch["choices"]:
            assert set(c) <= CHOICE_FIELDS | {"delta"}, c
            d = c["delta"]
            assert set(d) <= MESSAGE_FIELDS, set(d) - MESSAGE_FIELDS
            for tc in d.get("tool_calls") or []:
                i = tc["index"]
                if i not in calls:  # the first delta of a call: id, type and name
                    assert tc["id"] and tc["type"] == "function" and tc["function"]["name"], tc
                    calls[i] = {"id": tc["id"], "name": tc["function"]["name"], "arguments": ""}
                else:
                    assert "id" not in tc and "type" not in tc and "name" not in tc["function"], tc
                calls[i]["arguments"] += tc["function"].get("arguments") or ""
            if c.get("finish_reason"):
                assert c["finish_reason"] in FINISH
                finish = c["finish_reason"]
        if ch.get("usage"):
            assert set(ch["usage"]) <= USAGE_FIELDS
    assert sorted(calls) == list(range(len(calls))), "tool calls numbered 0, 1, … in order"
    return {"calls": [calls[i] for i in sorted(calls)], "finish": finish}


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_text_answer_is_openai_exact(fgw, fclient, preset):
    raw = fclient.chat.completions.with_raw_response.create(model=f"compat-{preset}", messages=HELLO)
    assert raw.headers["x-switchyard-backend"] == f"{preset}-fidelity"
    doc = raw.http_response.json()
    assert_openai_answer(doc)
    completion = raw.parse()
    assert completion.choices[0].message.content or completion.choices[0].message.reasoning_content
    req = fgw.mock_requests("more")[-1]
    assert req["provider"] in ("compat", "mistral", "deepseek") and req["headers"]["host"].split(":")[0] == (
        HOSTS.get(preset) or {"mistral": "api.mistral.ai", "deepseek": "api.deepseek.com", "qwen": "dashscope-intl.aliyuncs.com",
                              "groq": "api.groq.com", "xai": "api.x.ai", "together": "api.together.xyz",
                              "fireworks": "api.fireworks.ai", "openrouter": "openrouter.ai"}[preset])
    if preset == "ollama":  # Ollama's /v1 says `reasoning`: it reaches the client as reasoning_content
        assert doc["choices"][0]["message"]["reasoning_content"]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_tool_call_is_openai_exact(fgw, fclient, preset):
    raw = fclient.chat.completions.with_raw_response.create(model=f"compat-{preset}", messages=HELLO, tools=[TOOL])
    doc = raw.http_response.json()
    assert_openai_answer(doc)
    if preset == "deepseek":  # no recorded DeepSeek tool call: the text answer, still exact
        return
    msg = raw.parse().choices[0].message
    assert msg.tool_calls and all(c.type == "function" for c in msg.tool_calls)
    assert raw.parse().choices[0].finish_reason == "tool_calls"
    if preset == "mistral":  # recorded without `type` and with `index`
        assert [c.id for c in msg.tool_calls] == ["D681PevKs"]
    if preset == "ollama":  # the real recording carries `index` on the message tool call
        assert [c.id for c in msg.tool_calls] == ["call_o2vnpxrw"]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_stream_is_openai_exact(fgw, fclient, preset):
    chunks = [c.model_dump(exclude_unset=True) for c in fclient.chat.completions.create(
        model=f"compat-{preset}", messages=HELLO, stream=True)]
    got = assert_openai_chunks(chunks)
    assert got["finish"] == "stop"
    text = "".join((c["choices"][0]["delta"].get("content") or "") + (c["choices"][0]["delta"].get("reasoning_content") or "")
                   for c in chunks if c["choices"])
    assert text


@pytest.mark.parametrize("preset", ["mistral", "groq", "openrouter", "vllm"])
def test_preset_streamed_tool_calls_accumulate_in_the_sdk(fgw, fclient, preset):
    """The SDK's own stream accumulator (`chat.completions.stream`) builds the calls the provider
    made: for Mistral, two calls that Mistral numbers 0 stay two calls with their own ids."""
    with fclient.chat.completions.stream(model=f"compat-{preset}", messages=HELLO, tools=[TOOL]) as s:
        chunks = [e.chunk.model_dump(exclude_unset=True) for e in s if e.type == "chunk"]
        final = s.get_final_completion()
    got = assert_openai_chunks(chunks)
    calls = final.choices[0].message.tool_calls
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == \
        [(c["id"], c["name"], c["arguments"]) for c in got["calls"]]
    assert final.choices[0].finish_reason == "tool_calls"
    if preset == "mistral":
        assert [c.id for c in calls] == ["D681PevKs", "q7bXsaMeF"]
        assert [c.function.name for c in calls] == ["retrieve_payment_status", "retrieve_payment_date"]
    assert all(json.loads(c.function.arguments) for c in calls)


def test_bedrock_claude_gets_reasoning_effort_as_thinking(fgw, fclient):
    r = fclient.chat.completions.create(model="bedrock-claude", messages=HELLO, reasoning_effort="medium",
                                        temperature=0.3)
    assert r.choices[0].message.content
    req = fgw.mock_requests("more")[-1]
    assert req["provider"] == "bedrock" and "anthropic.claude-sonnet-4" in req["raw_path"]
    body = req["body"]
    assert body["additionalModelRequestFields"]["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert body["inferenceConfig"]["maxTokens"] > 8192
    assert "temperature" not in body["inferenceConfig"], "thinking takes no temperature"
    assert "reasoning_effort" not in body
    assert req["sigv4"] == "valid"


def test_bedrock_model_that_cannot_think_answers_400_for_reasoning_effort(fgw, fclient):
    with pytest.raises(openai.BadRequestError) as e:
        fclient.chat.completions.create(model="bedrock-nova", messages=HELLO, reasoning_effort="high")
    err = e.value.body
    assert err["param"] == "reasoning_effort" and "us.amazon.nova-micro-v1:0" in err["message"]
    assert fgw.mock_requests("more") == [], "refused before reaching Bedrock"
    # Asking for no reasoning is fine.
    assert fclient.chat.completions.create(model="bedrock-nova", messages=HELLO, reasoning_effort="none").choices
