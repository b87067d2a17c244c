"""Soak: a long run of mixed traffic against the demo gateway (two workers), watching memory and
the filter's in-flight registry. Run through ``scripts/soak`` (which builds the filter first).

    soak.py run    [--minutes 30] [--sample-seconds 60] [--rps 40] [--threads 8] [--out .run/soak]
    soak.py render [--out .run/soak] [--docs docs]      # docs/soak.md + docs/soak.png from samples.json

Traffic (weighted, each request a fresh random draw): good chat on every schema (non-stream and
stream), embeddings, /v1/models, failover (the OpenAI mock answers 503 → Anthropic), streams that
end in a provider error or are cut short, client cancellations mid-stream, malformed JSON, unknown
models, wrong keys, a key at its rate limit and a key past its budget. Every answer is checked
against what its kind must get; an unexpected one is counted and fails the run.

Every ``--sample-seconds``: Envoy's resident memory (/proc/<pid>/status VmRSS), tcmalloc's
``allocated`` and ``heap_size`` (admin /memory), the in-flight gauge
(``switchyard_inflight_requests``, the registry of per-request state summed over workers) and the
request counts. At the end, with traffic stopped, the gauge must drain to zero, memory must be flat
after warm-up (the first fifth of the run, at least one sample), Envoy must be alive and no wasm VM
may have failed.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

KEYS = {  # key → (id, what it is for)
    "sk-soak-main": "main",
    "sk-soak-limited": "limited",
    "sk-soak-broke": "broke",
}

CHAT_MODELS = ["gpt-4o-mini", "claude-haiku", "gemini-flash", "gemini-vertex", "bedrock-nova", "command-r",
               "llama3", "azure-gpt", "magistral", "deepseek-reasoner", "any-chat"]
EMBED_MODELS = ["text-embedding-3-small", "gemini-embedding", "cohere-embed", "titan-embed", "ollama-embed",
                "azure-embed"]

# Growth of memory allowed between the first samples after warm-up and the last ones.
FLAT_TOLERANCE = 0.10


def auth_config() -> dict:
    h = lambda k: hashlib.sha256(k.encode()).hexdigest()  # noqa: E731
    return {
        "keys": [
            {"id": "main", "sha256": h("sk-soak-main"), "limits": {"rpm": 1000000}},
            {"id": "limited", "sha256": h("sk-soak-limited"), "limits": {"rpm": 20}},
            # Spends its whole budget in a few requests, then every request is refused.
            {"id": "broke", "sha256": h("sk-soak-broke"), "models": ["gpt-4o-mini"],
             "budget": {"amount_usd": 0.0005, "window": "monthly"}},
        ],
        "unpriced_models": "free",
    }


# --------------------------------------------------------------------------------------------------
# traffic


def chat_body(model: str, stream: bool) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": f"Hello {random.randint(0, 10**6)}"}],
            "max_tokens": 64}
    if stream:
        body["stream"] = True
        if random.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


class Client:
    """One keep-alive connection to the gateway (reopened after errors)."""

    def __init__(self, port: int):
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 30) -> tuple[int, dict, bytes]:
        hdrs = {"content-type": "application/json", "authorization": "Bearer sk-soak-main"}
        hdrs.update(headers or {})
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            try:
                self.conn.request(method, path, body=body, headers=hdrs)
                r = self.conn.getresponse()
                data = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.close()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, data
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def cancel_mid_stream(port: int) -> str | None:
    """Starts a slow stream, reads its first bytes, hangs up. None when it went as expected."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v1/chat/completions", body=chat_body("gpt-4o-mini", True),
                     headers={"content-type": "application/json", "authorization": "Bearer sk-soak-main",
                              "x-mock-openai": "slow-stream"})
        r = conn.getresponse()
        if r.status != 200:
            return f"cancel: status {r.status}"
        first = r.read1(64) if hasattr(r, "read1") else r.read(16)
        if not first:
            return "cancel: no first bytes"
        return None
    finally:
        conn.close()  # the client goes away in the middle of the stream


def sse_events(data: bytes) -> list[str]:
    return [line[6:] for line in data.decode("utf-8", "replace").splitlines() if line.startswith("data: ")]


def one_request(c: Client, port: int) -> tuple[str, str | None]:
    """One random request; (kind, None) when it got what its kind must get, else (kind, problem)."""
    kind = random.choices(
        ["chat", "stream", "embed", "models", "failover", "stream-error", "stream-cut", "cancel",
         "bad-json", "unknown-model", "wrong-key", "limited", "broke"],
        weights=[30, 25, 8, 2, 6, 4, 4, 5, 3, 3, 3, 4, 3])[0]
    if kind == "cancel":
        return kind, cancel_mid_stream(port)
    if kind == "chat":
        st, _, b = c.request("POST", "/v1/chat/completions", chat_body(random.choice(CHAT_MODELS), False))
        ok = st == 200 and json.loads(b).get("choices")
        return kind, None if ok else f"chat: {st} {b[:200]!r}"
    if kind == "stream":
        st, _, b = c.request("POST", "/v1/chat/completions", chat_body(random.choice(CHAT_MODELS), True))
        ev = sse_events(b)
        ok = st == 200 and ev and ev[-1] == "[DONE]" and not any('"error"' in e[:12] for e in ev)
        return kind, None if ok else f"stream: {st} {b[-300:]!r}"
    if kind == "embed":
        model = random.choice(EMBED_MODELS)
        inputs = ["soak"] if model == "titan-embed" else ["soak", "test"]  # Titan embeds one input a call
        body = json.dumps({"model": model, "input": inputs}).encode()
        st, _, b = c.request("POST", "/v1/embeddings", body)
        ok = st == 200 and len(json.loads(b).get("data", [])) == len(inputs)
        return kind, None if ok else f"embed: {st} {b[:200]!r}"
    if kind == "models":
        st, _, b = c.request("GET", "/v1/models")
        return kind, None if st == 200 and json.loads(b).get("data") else f"models: {st}"
    if kind == "failover":
        st, h, b = c.request("POST", "/v1/chat/completions", chat_body("gpt-4o-mini", random.random() < 0.5),
                             {"x-mock-openai": "503"})
        ok = st == 200 and h.get("x-switchyard-backend", "").startswith("anthropic")
        return kind, None if ok else f"failover: {st} {h.get('x-switchyard-backend')} {b[:200]!r}"
    if kind in ("stream-error", "stream-cut"):
        scenario = "error-mid-stream" if kind == "stream-error" else "truncate"
        st, _, b = c.request("POST", "/v1/chat/completions", chat_body("gpt-4o-mini", True),
                             {"x-mock-openai": scenario})
        ev = sse_events(b)
        ok = st == 200 and ev and '"error"' in ev[-1] and "[DONE]" not in ev
        return kind, None if ok else f"{kind}: {st} {b[-300:]!r}"
    if kind == "bad-json":
        st, _, b = c.request("POST", "/v1/chat/completions", b'{"model": "gpt-4o-mini", "messages": [')
        return kind, None if st == 400 and b"error" in b else f"bad-json: {st}"
    if kind == "unknown-model":
        st, _, b = c.request("POST", "/v1/chat/completions", chat_body("no-such-model", False))
        return kind, None if st == 404 else f"unknown-model: {st}"
    if kind == "wrong-key":
        st, _, b = c.request("POST", "/v1/chat/completions", chat_body("gpt-4o-mini", False),
                             {"authorization": "Bearer sk-soak-wrong"})
        return kind, None if st == 401 else f"wrong-key: {st}"
    if kind == "limited":
        st, h, b = c.request("POST", "/v1/chat/completions", chat_body("gpt-4o-mini", False),
                             {"authorization": "Bearer sk-soak-limited"})
        ok = st == 200 or (st == 429 and "retry-after" in h)
        return kind, None if ok else f"limited: {st} {b[:200]!r}"
    if kind == "broke":
        st, _, b = c.request("POST", "/v1/chat/completions", chat_body("gpt-4o-mini", False),
                             {"authorization": "Bearer sk-soak-broke"})
        ok = st == 200 or (st == 429 and b"insufficient_quota" in b)
        return kind, None if ok else f"broke: {st} {b[:200]!r}"
    raise AssertionError(kind)


class Traffic:
    def __init__(self, port: int, rps: float, threads: int):
        self.port = port
        self.interval = threads / rps
        self.threads = threads
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.problems: dict[str, int] = {}
        self.examples: list[str] = []
        self.workers: list[threading.Thread] = []

    def start(self):
        for i in range(self.threads):
            t = threading.Thread(target=self._loop, args=(i,), daemon=True)
            t.start()
            self.workers.append(t)

    def _loop(self, i: int):
        random.seed(i * 7919 + int(time.time()))
        c = Client(self.port)
        next_at = time.monotonic() + random.random() * self.interval
        while not self.stop.is_set():
            now = time.monotonic()
            if now < next_at:
                self.stop.wait(next_at - now)
                continue
            next_at += self.interval
            if next_at < now - 5:  # fell far behind (a slow stretch): do not burst to catch up
                next_at = now
            try:
                kind, problem = one_request(c, self.port)
            except Exception as e:  # noqa: BLE001 - a transport error is a problem, not a crash
                kind, problem = "transport", f"{type(e).__name__}: {e}"
                c.close()
            with self.lock:
                self.counts[kind] = self.counts.get(kind, 0) + 1
                if problem:
                    self.problems[kind] = self.problems.get(kind, 0) + 1
                    if len(self.examples) < 20 and problem not in self.examples:
                        self.examples.append(problem)
        c.close()

    def finish(self):
        self.stop.set()
        for t in self.workers:
            t.join(60)

    def snapshot(self) -> tuple[dict, dict]:
        with self.lock:
            return dict(self.counts), dict(self.problems)


# --------------------------------------------------------------------------------------------------
# sampling


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def sample(gw, t0: float, traffic: Traffic | None) -> dict:
    import harness
    _, _, mem = harness.http("GET", gw.admin_url + "/memory")
    mem = json.loads(mem)
    stats = gw.stats("switchyard_inflight_requests")
    inflight = sum(v for k, v in stats.items() if k.endswith("switchyard_inflight_requests"))
    counts, problems = traffic.snapshot() if traffic else ({}, {})
    return {"t": round(time.monotonic() - t0, 1), "rss_kib": rss_kib(gw.proc.pid),
            "allocated": int(mem.get("allocated", 0)), "heap_size": int(mem.get("heap_size", 0)),
            "inflight": inflight, "requests": sum(counts.values()), "problems": sum(problems.values())}


def run(args) -> int:
    import harness
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.started_utc = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-soak-"))
    wasm = harness.build_wasm()
    mocks = harness.Mocks(workdir).start()
    gw = harness.Gateway(workdir, mocks, gateway_config={"auth": auth_config()})
    gw.concurrency = 2
    samples: list[dict] = []
    verdict: dict = {}
    try:
        gw.start(wasm)
        t0 = time.monotonic()
        samples.append(sample(gw, t0, None))
        traffic = Traffic(gw.listener_port, args.rps, args.threads)
        traffic.start()
        end = t0 + args.minutes * 60
        next_sample = t0 + args.sample_seconds
        while time.monotonic() < end:
            time.sleep(max(0.0, min(next_sample, end) - time.monotonic()))
            if time.monotonic() >= next_sample:
                s = sample(gw, t0, traffic)
                samples.append(s)
                print(json.dumps(s), flush=True)
                next_sample += args.sample_seconds
            if not gw.alive():
                break
        traffic.finish()
        # Traffic stopped: the registry must drain (streams the mocks still write finish first).
        drained_after = None
        for i in range(60):
            s = sample(gw, t0, traffic)
            if s["inflight"] == 0:
                drained_after = i * 0.5
                break
            time.sleep(0.5)
        final = sample(gw, t0, traffic)
        final["phase"] = "after traffic"
        samples.append(final)
        counts, problems = traffic.snapshot()
        verdict = judge(samples, args, counts, problems, traffic.examples, drained_after, gw)
    finally:
        gw.stop()
        mocks.stop()
    (out / "samples.json").write_text(json.dumps({"samples": samples, "verdict": verdict}, indent=1))
    print(json.dumps(verdict, indent=1))
    if verdict.get("pass"):
        harness.cleanup_workdir(workdir, keep=False)
    else:
        print(f"soak: kept {workdir} (Envoy and mock logs)")
    return 0 if verdict.get("pass") else 1


def filter_provenance(wasm: Path) -> dict:
    """Which filter ran: the .wasm's sha256 and the commit of the tree it was built from."""
    import subprocess
    digest = hashlib.sha256(wasm.read_bytes()).hexdigest()
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"wasm_sha256": digest, "wasm_bytes": wasm.stat().st_size, "tree": commit}


def judge(samples, args, counts, problems, examples, drained_after, gw) -> dict:
    during = [s for s in samples[1:] if "phase" not in s]
    warm = max(1, len(during) // 5)
    steady = during[warm:]
    v = {"filter": filter_provenance(gw.wasm_path), "started_utc": args.started_utc, "minutes": args.minutes, "rps_target": args.rps, "threads": args.threads, "workers": 2,
         "requests": sum(counts.values()), "by_kind": counts, "unexpected": problems,
         "unexpected_examples": examples, "registry_drained_after_s": drained_after,
         "envoy_alive": gw.alive(), "wasm_failures": {}, "wasm_crash_lines": []}
    if gw.alive():
        v["wasm_failures"] = gw.wasm_failures()
    v["wasm_crash_lines"] = gw.wasm_crashes()
    checks = {"registry drained to 0": drained_after is not None,
              "no unexpected answer": not problems,
              "Envoy alive": v["envoy_alive"],
              "no wasm failure": not v["wasm_failures"] and not v["wasm_crash_lines"]}
    if len(steady) >= 2:
        head = steady[: min(3, len(steady) // 2 or 1)]
        tail = steady[-len(head):]
        for field in ("rss_kib", "allocated"):
            a = statistics.median(s[field] for s in head)
            b = statistics.median(s[field] for s in tail)
            growth = (b - a) / a if a else 0.0
            v[f"{field}_after_warmup"] = a
            v[f"{field}_at_end"] = b
            v[f"{field}_growth"] = round(growth, 4)
            checks[f"{field} flat after warm-up (growth < {FLAT_TOLERANCE:.0%})"] = growth < FLAT_TOLERANCE
    else:
        checks["enough samples to judge memory"] = False
    v["checks"] = checks
    v["pass"] = all(checks.values())
    return v


# --------------------------------------------------------------------------------------------------
# report


def render(args) -> int:
    data = json.loads((Path(args.out) / "samples.json").read_text())
    samples, v = data["samples"], data["verdict"]
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    during = [s for s in samples if "phase" not in s]
    t = [s["t"] / 60 for s in during]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    axes[0].plot(t, [s["rss_kib"] / 1024 for s in during], label="Envoy RSS")
    axes[0].plot(t, [s["heap_size"] / 2**20 for s in during], label="tcmalloc heap_size")
    axes[0].plot(t, [s["allocated"] / 2**20 for s in during], label="tcmalloc allocated")
    axes[0].set_ylabel("MiB")
    axes[0].set_ylim(bottom=0)
    axes[0].legend(loc="lower right")
    axes[0].set_title(f"Soak: {v['minutes']} min mixed traffic, 2 workers, {v['requests']} requests")
    axes[1].plot(t, [s["inflight"] for s in during], color="tab:orange", label="during traffic")
    after = [s for s in samples if s.get("phase")]
    if after:
        axes[1].plot([s["t"] / 60 for s in after], [s["inflight"] for s in after], "o", color="tab:red",
                     label="after traffic stopped")
    axes[1].set_ylabel("in-flight registry")
    axes[1].set_ylim(bottom=0)
    axes[1].legend(loc="upper left")
    rates = [0] + [(b["requests"] - a["requests"]) / max(1e-9, b["t"] - a["t"]) for a, b in zip(during, during[1:])]
    axes[2].plot(t, rates, color="tab:green")
    axes[2].set_ylabel("requests/s")
    axes[2].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(docs / "soak.png", dpi=90)
    lines = [
        "# Soak run",
        "",
        f"`scripts/soak` — {v['minutes']} minutes of mixed traffic against the demo gateway (Envoy 1.40, two workers,",
        f"virtual keys on), {v['rps_target']} requests/s target from {v['threads']} client threads, started "
        f"{v.get('started_utc', '?')} on a 2-core machine. Generated by `scripts/soak.py render` from the run's samples.",
        "",
        f"**Verdict: {'PASS' if v['pass'] else 'FAIL'}**",
        "",
        f"Filter: `{v.get('filter', {}).get('tree', 'unknown')}` (git describe of the tree it was built from), "
        f"{v.get('filter', {}).get('wasm_bytes', '?')} bytes, sha256 `{v.get('filter', {}).get('wasm_sha256', '?')[:16]}…`.",
        "",
        "| check | result |",
        "|---|---|",
    ]
    lines += [f"| {k} | {'yes' if ok else '**no**'} |" for k, ok in v["checks"].items()]
    lines += [
        "",
        f"Requests: {v['requests']} — " + ", ".join(f"{k} {n}" for k, n in sorted(v["by_kind"].items())) + ".",
        f"Unexpected answers: {sum(v['unexpected'].values())}"
        + (f" ({v['unexpected']}; e.g. {v['unexpected_examples'][:3]})" if v["unexpected"] else "") + ".",
        f"Registry drained to 0 after traffic stopped: after {v['registry_drained_after_s']} s.",
    ]
    for field, name in (("rss_kib", "Envoy RSS (KiB)"), ("allocated", "tcmalloc allocated (bytes)")):
        if f"{field}_growth" in v:
            lines.append(f"{name}: {v[f'{field}_after_warmup']} after warm-up → {v[f'{field}_at_end']} at the end "
                         f"({v[f'{field}_growth']:+.1%}).")
    lines += ["", "![soak](soak.png)", "", "| minute | RSS MiB | allocated MiB | heap MiB | in-flight | requests |",
              "|---|---|---|---|---|---|"]
    for s in samples:
        lines.append(f"| {s['t'] / 60:.1f}{' (after)' if 'phase' in s else ''} | {s['rss_kib'] / 1024:.1f} | "
                     f"{s['allocated'] / 2**20:.1f} | {s['heap_size'] / 2**20:.1f} | {s['inflight']} | {s['requests']} |")
    (docs / "soak.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {docs / 'soak.md'} and {docs / 'soak.png'}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["run", "render"])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--sample-seconds", type=float, default=60)
    ap.add_argument("--rps", type=float, default=40)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--out", default=str(REPO / ".run" / "soak"))
    ap.add_argument("--docs", default=str(REPO / "docs"))
    args = ap.parse_args()
    return run(args) if args.command == "run" else render(args)


if __name__ == "__main__":
    sys.exit(main())
