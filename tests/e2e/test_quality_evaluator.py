"""examples/quality/evaluator.py on its own (no Envoy): the schema check, the judge's score parsing
with a stand-in judge, the sink endpoint and the metrics. The end-to-end run against the gateway's
sampled pairs is in test_cache.py."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
import types
from pathlib import Path

import harness

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("evaluator", REPO / "examples" / "quality" / "evaluator.py")
evaluator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(evaluator)


class StandInJudge:
    """Answers like a chat model would: the reply text given, for every call; records the calls."""

    def __init__(self, reply: str):
        self.calls = []
        self.chat = types.SimpleNamespace(completions=types.SimpleNamespace(create=self._create))
        self.reply = reply

    def _create(self, **kw):
        self.calls.append(kw)
        msg = types.SimpleNamespace(content=self.reply)
        return types.SimpleNamespace(choices=[types.SimpleNamespace(message=msg)])


def sample(question: str, answer: str, model: str = "m1", **req) -> dict:
    return {"response_model": model, "request": {"messages": [{"role": "user", "content": question}], **req},
            "response": {"choices": [{"message": {"role": "assistant", "content": answer}}]}}


def test_schema_check():
    s = {"type": "object", "required": ["a"], "additionalProperties": False,
         "properties": {"a": {"type": "integer"}, "b": {"type": "array", "items": {"enum": ["x", "y"]}}}}
    assert evaluator.schema_ok({"a": 1, "b": ["x"]}, s)
    for bad in ({"a": 1.5}, {"b": []}, {"a": 1, "c": 0}, {"a": 1, "b": ["z"]}, {"a": True}, [1]):
        assert not evaluator.schema_ok(bad, s), bad


def test_judge_scores_and_per_model_means():
    judge = StandInJudge('Sure. {"score": 8}')
    ev = evaluator.Evaluator(judge=judge, judge_model="judge-model")
    ev.score(sample("q1", "a1", "m1"))
    judge.reply = '{"score": 4}'
    ev.score(sample("q2", "a2", "m1"))
    judge.reply = "I cannot grade this."
    ev.score(sample("q3", "a3", "m2"))
    m = ev.metrics()
    assert 'switchyard_quality_score{model="m1",check="judge"} 0.6000' in m, m
    assert 'switchyard_quality_unscored_total{model="m2",check="judge",reason="judge_unparsed"} 1' in m, m
    assert judge.calls[0]["model"] == "judge-model" and judge.calls[0]["temperature"] == 0
    assert "a1" in judge.calls[0]["messages"][1]["content"] and "q1" in judge.calls[0]["messages"][1]["content"]


def test_it_serves_as_the_sink():
    ev = evaluator.Evaluator(cases={"q": {"contains": "paris"}})
    port = harness.free_ports(1)[0]
    srv = evaluator.serve(ev, "127.0.0.1", port, None)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        lines = "\n".join(json.dumps(s) for s in (sample("q", "It is Paris."), sample("q", "Lyon"))) + "\nnot json\n"
        status, _, _ = harness.http("POST", f"http://127.0.0.1:{port}/v1/samples", lines.encode(), {"content-type": "application/x-ndjson"})
        assert status == 204
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            status, _, body = harness.http("GET", f"http://127.0.0.1:{port}/metrics")
            if b'check="exact"} 0.5000' in body:
                break
            time.sleep(0.05)
        assert b'switchyard_quality_score{model="m1",check="exact"} 0.5000' in body, body
        assert b'reason="bad_json"} 1' in body
    finally:
        srv.shutdown()
        srv.server_close()
