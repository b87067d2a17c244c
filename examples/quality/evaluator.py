#!/usr/bin/env python3
"""A small quality evaluator for Switchyard's quality sampling (README "Quality sampling").

It reads sampled request/answer pairs — the JSON lines the gateway sends to its sink — scores each
answer and exposes a per-model quality score as Prometheus metrics:

  exact        a case file maps a question (the last user message) to what the answer must be
               ({"equals": …}, {"contains": …} or {"regex": …}); score 1 or 0
  json_schema  a request that asked for `response_format: json_schema` gets an answer that must be
               JSON valid against that schema (types, required, properties, items, enum); 1 or 0
  judge        an LLM-as-judge through the gateway itself (the `openai` SDK pointed at it): the judge
               model rates the answer 1-10 as {"score": N}; scored N/10, unparsable replies counted

Run it as the sink (it appends what it receives to --out, scores it, and serves /metrics):

  python examples/quality/evaluator.py --listen 127.0.0.1:9464 --out samples.jsonl \\
      --cases cases.json --judge-url http://127.0.0.1:10000/v1 --judge-model gpt-4o-mini --judge-key sk-…

or over a file of samples once (`--input samples.jsonl`, printing the metrics). Metrics:

  switchyard_quality_score{model,check}      mean score of the last --window samples (0..1)
  switchyard_quality_scored_total{model,check}
  switchyard_quality_unscored_total{model,check,reason}
  switchyard_quality_samples_total{model}

`model` is the model that answered (`response_model`, else the requested one). An alert example is in
examples/quality/alerts.yaml. Needs only the standard library (and `openai` for the judge).
"""

from __future__ import annotations

import argparse
import collections
import http.server
import json
import re
import sys
import threading

JUDGE_SYSTEM = (
    "You grade answers of an AI assistant. Given a conversation and the assistant's answer, rate how "
    "correct, relevant and helpful the answer is, from 1 (useless or wrong) to 10 (excellent). "
    'Reply with JSON only: {"score": <integer 1-10>}.'
)


def last_user_text(request: dict) -> str:
    for m in reversed(request.get("messages") or []):
        if m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, list):
                return "\n".join(p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text")
            return c if isinstance(c, str) else ""
    return ""


def answer_text(response: dict) -> str | None:
    try:
        return response["choices"][0]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None


def schema_ok(value, schema: dict) -> bool:
    """A small JSON Schema check: type, properties, required, additionalProperties false, items, enum."""
    if not isinstance(schema, dict):
        return True
    if "enum" in schema and value not in schema["enum"]:
        return False
    t = schema.get("type")
    types = t if isinstance(t, list) else [t] if t else []
    py = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if types:
        def is_type(name):
            if name == "integer":
                return isinstance(value, int) and not isinstance(value, bool)
            if name == "number":
                return isinstance(value, (int, float)) and not isinstance(value, bool)
            return isinstance(value, py.get(name, object))
        if not any(is_type(n) for n in types):
            return False
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        if any(k not in value for k in schema.get("required") or []):
            return False
        if schema.get("additionalProperties") is False and any(k not in props for k in value):
            return False
        return all(schema_ok(value[k], s) for k, s in props.items() if k in value)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return all(schema_ok(v, schema["items"]) for v in value)
    return True


class Evaluator:
    def __init__(self, cases: dict | None = None, judge=None, judge_model: str | None = None, window: int = 100,
                 judge_headers: dict | None = None):
        self.cases = cases or {}
        self.judge = judge
        self.judge_model = judge_model
        self.judge_headers = judge_headers or {}
        self.window = window
        self.lock = threading.Lock()
        self.scores: dict[tuple[str, str], collections.deque] = {}
        self.scored = collections.Counter()
        self.unscored = collections.Counter()
        self.samples = collections.Counter()

    def _record(self, model: str, check: str, score: float | None, reason: str = ""):
        with self.lock:
            if score is None:
                self.unscored[(model, check, reason)] += 1
                return
            self.scored[(model, check)] += 1
            self.scores.setdefault((model, check), collections.deque(maxlen=self.window)).append(score)

    def score(self, sample: dict) -> dict[str, float | None]:
        """Scores one sample; returns {check: score or None}."""
        req, resp = sample.get("request") or {}, sample.get("response") or {}
        model = sample.get("response_model") or sample.get("requested_model") or "unknown"
        with self.lock:
            self.samples[model] += 1
        out: dict[str, float | None] = {}
        text = answer_text(resp)
        question = last_user_text(req)
        case = self.cases.get(question)
        if case is not None:
            s = None
            if text is not None:
                if "equals" in case:
                    s = float(text.strip() == str(case["equals"]).strip())
                elif "contains" in case:
                    s = float(str(case["contains"]).lower() in text.lower())
                elif "regex" in case:
                    s = float(re.search(case["regex"], text) is not None)
            out["exact"] = s
            self._record(model, "exact", s, "" if s is not None else "no_text")
        rf = req.get("response_format") or {}
        if rf.get("type") == "json_schema":
            schema = (rf.get("json_schema") or {}).get("schema") or {}
            try:
                s = float(schema_ok(json.loads(text or ""), schema))
            except ValueError:
                s = 0.0   # not even JSON
            out["json_schema"] = s
            self._record(model, "json_schema", s)
        if self.judge is not None and text is not None:
            s, reason = self._judge(req, text)
            out["judge"] = s
            self._record(model, "judge", s, reason)
        return out

    def _judge(self, req: dict, text: str) -> tuple[float | None, str]:
        convo = "\n".join(f"{m.get('role')}: {m.get('content') if isinstance(m.get('content'), str) else json.dumps(m.get('content'))}"
                          for m in req.get("messages") or [])
        try:
            r = self.judge.chat.completions.create(
                model=self.judge_model, temperature=0, extra_headers=self.judge_headers,
                messages=[{"role": "system", "content": JUDGE_SYSTEM},
                          {"role": "user", "content": f"Conversation:\n{convo}\n\nAnswer to grade:\n{text}"}])
        except Exception as e:  # noqa: BLE001 - a judge failure is counted, never fatal
            return None, f"judge_error_{type(e).__name__}"
        reply = r.choices[0].message.content or ""
        m = re.search(r'"score"\s*:\s*(\d+(?:\.\d+)?)', reply)
        if not m:
            return None, "judge_unparsed"
        return max(0.0, min(1.0, float(m.group(1)) / 10.0)), ""

    def metrics(self) -> str:
        def lbl(**kv):
            return "{" + ",".join(f'{k}="{str(v).replace(chr(34), "")}"' for k, v in kv.items()) + "}"
        lines = ["# HELP switchyard_quality_score Mean quality score of the last samples (0..1).",
                 "# TYPE switchyard_quality_score gauge"]
        with self.lock:
            for (model, check), q in sorted(self.scores.items()):
                lines.append(f"switchyard_quality_score{lbl(model=model, check=check)} {sum(q) / len(q):.4f}")
            lines += ["# TYPE switchyard_quality_scored_total counter"]
            lines += [f"switchyard_quality_scored_total{lbl(model=m, check=c)} {n}" for (m, c), n in sorted(self.scored.items())]
            lines += ["# TYPE switchyard_quality_unscored_total counter"]
            lines += [f"switchyard_quality_unscored_total{lbl(model=m, check=c, reason=r)} {n}"
                      for (m, c, r), n in sorted(self.unscored.items())]
            lines += ["# TYPE switchyard_quality_samples_total counter"]
            lines += [f"switchyard_quality_samples_total{lbl(model=m)} {n}" for m, n in sorted(self.samples.items())]
        return "\n".join(lines) + "\n"

    def feed_lines(self, text: str, out=None):
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            if out is not None:
                out.write(line + "\n")
                out.flush()
            try:
                self.score(json.loads(line))
            except ValueError:
                with self.lock:
                    self.unscored[("unknown", "parse", "bad_json")] += 1


def serve(ev: Evaluator, host: str, port: int, out_path: str | None) -> http.server.ThreadingHTTPServer:
    out = open(out_path, "a", encoding="utf-8") if out_path else None

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _reply(self, status: int, body: bytes = b"", ctype: str = "text/plain; version=0.0.4"):
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):  # noqa: N802 - the sink: JSON lines from the gateway
            body = self.rfile.read(int(self.headers.get("content-length") or 0)).decode("utf-8", "replace")
            # Answer at once (the gateway never waits on scoring); score in the background.
            self._reply(204)
            threading.Thread(target=ev.feed_lines, args=(body, out), daemon=True).start()

        def do_GET(self):  # noqa: N802
            if self.path == "/metrics":
                return self._reply(200, ev.metrics().encode())
            self._reply(404)

        def log_message(self, *a):
            pass

    return http.server.ThreadingHTTPServer((host, port), H)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", help="a file of sampled JSON lines to score once (- for stdin)")
    ap.add_argument("--listen", help="HOST:PORT to serve as the sink (POST) and /metrics (GET)")
    ap.add_argument("--out", help="with --listen: append received samples to this file")
    ap.add_argument("--cases", help="JSON file: {question: {equals|contains|regex: …}}")
    ap.add_argument("--judge-url", help="the gateway's OpenAI base URL (…/v1) for the LLM judge")
    ap.add_argument("--judge-model", default="gpt-4o-mini")
    ap.add_argument("--judge-key", default="none", help="the judge's virtual key at the gateway")
    ap.add_argument("--judge-header", action="append", default=[], help="NAME=VALUE sent with judge calls")
    ap.add_argument("--window", type=int, default=100)
    a = ap.parse_args(argv)
    cases = json.load(open(a.cases, encoding="utf-8")) if a.cases else {}
    judge = None
    if a.judge_url:
        import openai
        judge = openai.OpenAI(base_url=a.judge_url, api_key=a.judge_key, max_retries=0, timeout=60)
    headers = dict(h.split("=", 1) for h in a.judge_header)
    ev = Evaluator(cases, judge, a.judge_model, a.window, headers)
    if a.input:
        ev.feed_lines(sys.stdin.read() if a.input == "-" else open(a.input, encoding="utf-8").read())
        sys.stdout.write(ev.metrics())
    if a.listen:
        host, port = a.listen.rsplit(":", 1)
        print(f"evaluator: sink and /metrics on {a.listen}", flush=True)
        serve(ev, host, int(port), a.out).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
