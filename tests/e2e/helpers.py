"""Shared helpers of the gateway end-to-end tests: facts read from the rendered Envoy config (models,
endpoint metadata, retry policy, body limit), raw HTTP calls, stream collection, header checks."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import requests
import yaml

import harness

INTERNAL_PREFIX = "x-switchyard-"
CLIENT_API_KEY = "sk-client-virtual-key"   # conftest's client fixture
OPENAI_UPSTREAM_KEY = harness.ENVOY_ENV["OPENAI_API_KEY"]
ANTHROPIC_UPSTREAM_KEY = harness.ENVOY_ENV["ANTHROPIC_API_KEY"]

HELLO = [{"role": "user", "content": "Hello!"}]

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["location"],
}


def weather_tool(name: str = "get_weather") -> dict:
    return {"type": "function", "function": {
        "name": name, "description": "Get the current weather in a given location",
        "parameters": WEATHER_PARAMS}}


# --------------------------------------------------------------------------------------------------
# the rendered Envoy configuration (what the running gateway actually loaded)


@lru_cache(None)
def _config(path: str) -> dict:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def _walk(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def plugin_config(gateway, role: str) -> dict:
    """The JSON configuration of the wasm plugin with this role ("gateway" / "backend")."""
    for node in _walk(_config(str(gateway.config_path))):
        # wasm: `configuration`; the native prototype (dynamic modules): `filter_config`.
        cfg = (node.get("configuration") or node.get("filter_config")) if isinstance(node, dict) else None
        if isinstance(cfg, dict) and isinstance(cfg.get("value"), str):
            doc = json.loads(cfg["value"])
            if doc.get("role") == role:
                return doc
    raise AssertionError(f"no {role} plugin configuration in {gateway.config_path}")


def configured_models(gateway) -> list[dict]:
    return plugin_config(gateway, "gateway")["models"]


def max_body_bytes(gateway) -> int:
    return plugin_config(gateway, "gateway")["max_request_body_bytes"]


def endpoints(gateway, cluster: str) -> list[dict]:
    """[{priority, port, backend, model}] of a cluster, by priority."""
    for c in _config(str(gateway.config_path))["static_resources"]["clusters"]:
        if c["name"] != cluster:
            continue
        out = []
        for group in c["load_assignment"]["endpoints"]:
            for ep in group["lb_endpoints"]:
                md = ep["metadata"]["filter_metadata"]["switchyard"]
                out.append({"priority": group.get("priority", 0),
                            "port": ep["endpoint"]["address"]["socket_address"]["port_value"],
                            "backend": md["backend"], "model": md.get("model")})
        return sorted(out, key=lambda e: e["priority"])
    raise AssertionError(f"cluster {cluster} not in {gateway.config_path}")


def upstream_model(gateway, cluster: str, priority: int) -> str:
    return next(e["model"] for e in endpoints(gateway, cluster) if e["priority"] == priority)


def num_retries(gateway, route_header_value: str) -> int:
    for node in _walk(_config(str(gateway.config_path))):
        if not (isinstance(node, dict) and "match" in node and "route" in node):
            continue
        hs = node["match"].get("headers") or []
        if any(h.get("string_match", {}).get("exact") == route_header_value for h in hs):
            return node["route"]["retry_policy"]["num_retries"]
    raise AssertionError(f"no route for {route_header_value}")


def retry_stat(gateway, cluster: str) -> int:
    return gateway.stats(f"cluster.{cluster}.upstream_rq_retry$").get(
        f"cluster.{cluster}.upstream_rq_retry", 0)


# --------------------------------------------------------------------------------------------------
# HTTP


def chat_url(gateway) -> str:
    return gateway.base_url + "/chat/completions"


def post_chat(gateway, body=None, *, raw: bytes | None = None, headers=None, stream=False,
              timeout=30) -> requests.Response:
    h = {"content-type": "application/json", "authorization": f"Bearer {CLIENT_API_KEY}"}
    h.update(headers or {})
    data = raw if raw is not None else json.dumps(body).encode()
    return requests.post(chat_url(gateway), data=data, headers=h, stream=stream, timeout=timeout)


def openai_error(resp: requests.Response) -> dict:
    """The `error` object of an OpenAI-shaped error answer (asserts the shape)."""
    assert resp.headers.get("content-type", "").startswith("application/json"), \
        (resp.status_code, resp.headers, resp.text[:300])
    doc = resp.json()
    assert isinstance(doc, dict) and set(doc) == {"error"}, doc
    err = doc["error"]
    assert isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"], err
    assert {"message", "type", "param", "code"} <= set(err), err
    return err


def sse_payloads(resp: requests.Response) -> list[str]:
    """data payloads of an SSE response, in order."""
    text = resp.content.decode("utf-8")
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = [ln[5:].lstrip(" ") for ln in block.split("\n") if ln.startswith("data:")]
        if data:
            out.append("\n".join(data))
    return out


def collect(stream) -> list[dict]:
    """Every chunk of an SDK stream, as the dicts the gateway sent (fields as received)."""
    return [c.to_dict() for c in stream]


def internal_headers(req: dict) -> list[str]:
    return [k for k in req["headers"] if k.lower().startswith(INTERNAL_PREFIX)]


def assert_upstream_hygiene(req: dict, *, credential_header: str, credential_value: str,
                            absent: tuple[str, ...] = ()) -> None:
    """What every upstream request must look like: the upstream credential (never the client's),
    no x-switchyard-* header, an uncompressed answer asked for."""
    h = req["headers"]
    assert h.get(credential_header) == credential_value, h
    assert not internal_headers(req), h
    assert h.get("accept-encoding") == "identity", h
    assert not any(CLIENT_API_KEY in v for v in h.values()), h
    for name in absent:
        assert name not in h, (name, h)
