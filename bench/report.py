"""Turns bench/results.json into bench/results.md (tables, target checks) and bench/results.png (chart).

The hand-written analysis of misses lives in bench/analysis.md and is included at the end of
results.md; re-rendering from an existing results.json: `bench/.peers/venv/bin/python bench/report.py`.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
BASE = "envoy"
# A run during which the rest of the machine used more than this share of a core is flagged ⚠.
NOISY = 0.25
SW_CHAT = ("sw-anthropic", "chat")
SW_STREAM = ("sw-anthropic", "stream")


def _rows(result: dict) -> dict[tuple[str, str], dict]:
    return {(r["target"], r["workload"]): r for r in result["rows"] if r.get("ok")}


def _num(v, digits=0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:,.{digits}f}"


def _ms(us) -> str:
    if us is None or (isinstance(us, float) and math.isnan(us)):
        return "–"
    return f"{us / 1000:.2f} ms"


def _ratio(v, base) -> str:
    if not v or not base or (isinstance(v, float) and math.isnan(v)):
        return ""
    r = v / base
    return f" ({r:.2f}×)" if r < 10 else f" ({r:.0f}×)"


def _mib(kib) -> str:
    return f"{kib / 1024:.1f} MiB" if kib is not None else "–"


def _fc(rows, key, wl, field):
    r = rows.get((key, wl))
    return r["fixed_concurrency"][field] if r else None


def _fr(rows, key, wl, field):
    r = rows.get((key, wl))
    return r["fixed_rate"][field] if r else None


def targets(result: dict) -> list[tuple[str, str, str]]:
    """(target, verdict, evidence) for each of the issue's targets."""
    rows = _rows(result)
    out = []

    def thr(key, wl):
        return _fc(rows, key, wl, "rps")

    def verdict(ok):
        return "n/a" if ok is None else ("PASS" if ok else "**MISS**")

    for wl, label in (("chat", "Translation (OpenAI → Anthropic), non-stream, ~1 KB prompt"),
                      ("stream", "Streaming translation, 20-delta stream")):
        a, b = thr("sw-anthropic", wl), thr(BASE, wl)
        r = a / b if a and b else None
        ca, cb = _fc(rows, "sw-anthropic", wl, "cpu_us_per_request"), _fc(rows, BASE, wl, "cpu_us_per_request")
        cap = f"; by CPU per request (the single-worker capacity, whatever bounded the run): {cb / ca:.0%}" if ca and cb else ""
        out.append((f"{label}: ≥ 70% of plain Envoy's throughput", verdict(None if r is None else r >= 0.70),
                    f"{r:.0%} ({_num(a)} vs {_num(b)} req/s){cap}" if r else "not measured"))
        if wl == "chat":
            sa, sb = rows.get(("sw-anthropic", wl)), rows.get((BASE, wl))
            lone = sa["single"]["p50"] - sb["single"]["p50"] if sa and sb and "single" in sa and "single" in sb else None
            p, q = _fr(rows, "sw-anthropic", wl, "p50"), _fr(rows, BASE, wl, "p50")
            added = p - q if p is not None and q is not None else None
            rate = _fr(rows, BASE, wl, "rate")
            ev = []
            if lone is not None:
                ev.append(f"lone requests (one connection, nothing queued): {lone:+,.0f} µs "
                          f"({_ms(sa['single']['p50'])} vs {_ms(sb['single']['p50'])})")
            if added is not None:
                ev.append(f"at {rate:,.0f} req/s: {added:+,.0f} µs ({_ms(p)} vs {_ms(q)})")
            measure = lone if lone is not None else added
            out.append((f"{label}: adds ≤ 100 µs at p50", verdict(None if measure is None else measure <= 100),
                        "; ".join(ev) or "not measured"))
    for peer, factor in (("litellm", 10), ("portkey", 3)):
        parts, oks = [], []
        for sw, pk in (("sw-openai", f"{peer}-openai"), ("sw-anthropic", f"{peer}-anthropic")):
            for wl in ("chat", "stream"):
                a, b = thr(sw, wl), thr(pk, wl)
                if a and b:
                    oks.append(a / b >= factor)
                    parts.append(f"{sw.split('-')[1]} {wl} {a / b:.0f}×")
        status = result.get("peer_status", {}).get(peer, "")
        out.append((f"≥ {factor}× {'LiteLLM' if peer == 'litellm' else 'Portkey'}'s throughput",
                    verdict(all(oks) if oks else None), ", ".join(parts) if parts else f"not measured {status}".strip()))
    # Issue 15: against TensorZero (same mock, one worker each), plain Envoy, and the native prototype.
    def cpu(key, wl):
        return _fc(rows, key, wl, "cpu_us_per_request")

    for key, label, factor in (("tensorzero-anthropic", "Translation ≥ 1.4× TensorZero's throughput", 1.4),
                               (BASE, "Translation ≥ 0.45× plain Envoy's throughput", 0.45)):
        parts, oks = [], []
        for wl in ("chat", "stream"):
            a, b = thr("sw-anthropic", wl), thr(key, wl)
            ca, cb = cpu("sw-anthropic", wl), cpu(key, wl)
            if a and b:
                oks.append(a / b >= factor)
                parts.append(f"{wl} {a / b:.2f}× ({_num(a)} vs {_num(b)} req/s"
                             + (f"; by CPU per request {cb / ca:.2f}×" if ca and cb else "") + ")")
        if key != BASE:
            for wl in ("chat", "stream"):
                ca, cb = cpu("sw-native-anthropic", wl), cpu(key, wl)
                if ca and cb:
                    parts.append(f"native prototype {wl} by CPU per request {cb / ca:.2f}×")
        out.append((label, verdict(all(oks) if oks else None), ", ".join(parts) or "not measured"))
    parts, oks = [], []
    for wl in ("chat", "stream"):
        a, b, w = thr("sw-native-anthropic", wl), thr(BASE, wl), thr("sw-anthropic", wl)
        ca, cb, cw = cpu("sw-native-anthropic", wl), cpu(BASE, wl), cpu("sw-anthropic", wl)
        if a and b and ca and cb:
            oks.append(cb / ca >= 0.6)
            parts.append(f"{wl}: {a / b:.2f}× plain Envoy's throughput, by CPU per request {cb / ca:.2f}× "
                         f"({ca:.0f} vs {cb:.0f} µs" + (f"; the wasm build {cw:.0f} µs" if cw else "") + ")")
    out.append(("Native prototype (dynamic module), translation: ≥ 0.6× plain Envoy (by CPU per request)",
                verdict(all(oks) if oks else None), "; ".join(parts) or "not measured"))
    parts, oks = [], []
    for wl in ("chat", "stream"):
        ca, cb = cpu("sw-policy", wl), cpu("sw-anthropic", wl)
        if ca and cb:
            oks.append(ca / cb - 1 <= 0.10)
            parts.append(f"{wl} {ca / cb - 1:+.0%} ({ca:.0f} vs {cb:.0f} µs)")
    out.append(("Keys, limits and budgets on: CPU per request ≤ 10% more than off", verdict(all(oks) if oks else None),
                ", ".join(parts) or "not measured"))
    parts = []
    for wl in ("chat", "stream"):
        a, b, c = thr("sw-policy", wl), thr("sw-anthropic", wl), thr(BASE, wl)
        ca, cb = _fc(rows, "sw-policy", wl, "cpu_us_per_request"), _fc(rows, "sw-anthropic", wl, "cpu_us_per_request")
        if a and b and c:
            parts.append(f"{wl}: {a / c:.0%} of plain Envoy, {a / b:.0%} of Switchyard without them"
                         + (f" ({ca - cb:+.0f} µs CPU per request)" if ca and cb else ""))
    out.append(("Keys, rate limits and budgets on (translation)", "reported", "; ".join(parts) or "not measured"))
    wasm = result["meta"]["wasm_bytes"]
    out.append(("`.wasm` under 1.5 MB", verdict(wasm < 1.5e6), f"{wasm / 1e6:.2f} MB ({wasm:,} bytes)"))
    mem = result.get("memory") or {}
    sw = mem.get("switchyard.yaml")
    out.append(("Gateway + backend filter memory, per worker", "reported",
                f"{_mib(sw['per_extra_worker_kib'])} per extra worker; {_mib(sw['first_worker_kib'])} with the first "
                "worker (incl. the main thread's VM)" if sw else "not measured"))
    return out


def write_markdown(result: dict, path: Path) -> None:
    m, s = result["meta"], result["meta"]["settings"]
    rows = _rows(result)
    L = []
    L.append("# Switchyard benchmark results\n")
    L.append(f"Generated by `scripts/bench` on {m['date']} at commit `{m['commit']}`{' (with local changes)' if m['dirty'] else ''}; "
             f"{m['cores']} × {m['cpu']}, Linux {m['kernel']}, Envoy {m['envoy']}, `switchyard.wasm` {m['wasm_bytes']:,} bytes. "
             f"Whole run: {m['duration_s']} s.\n")
    L.append(f"Every ratio `(n×)` is against plain Envoy (`{BASE}`) with the same workload, measured in the same run. "
             "Rows marked FAILED answered wrongly or with errors and are not timed or ranked.\n")

    L.append("## Targets\n")
    L.append("| target | verdict | measured |")
    L.append("|---|---|---|")
    for name, v, ev in targets(result):
        L.append(f"| {name} | {v} | {ev} |")
    L.append("")

    L.append(f"## Fixed concurrency — wrk, {s['connections']} connections, {s['seconds']} s per run\n")
    L.append("| target | workload | throughput | p50 | p90 | p99 | CPU per request | peak RSS | CPU use: SUT / mock / wrk / others |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        if r.get("skipped"):
            L.append(f"| {r['label']} | – | {r['skipped']} | | | | | | |")
            continue
        if not r.get("ok"):
            L.append(f"| {r['label']} | {r['workload']} | FAILED: {r.get('failure', '?')} | | | | | | |")
            continue
        f, b = r["fixed_concurrency"], rows.get((BASE, r["workload"]))
        bf = b["fixed_concurrency"] if b else {}
        noisy = " ⚠" if f["other_cpu_util"] > NOISY else ""
        L.append(
            f"| {r['label']}{noisy} | {r['workload']} | {_num(f['rps'])} req/s{_ratio(f['rps'], bf.get('rps'))} "
            f"| {_ms(f['p50'])}{_ratio(f['p50'], bf.get('p50'))} | {_ms(f['p90'])}{_ratio(f['p90'], bf.get('p90'))} "
            f"| {_ms(f['p99'])}{_ratio(f['p99'], bf.get('p99'))} "
            f"| {_num(f['cpu_us_per_request'])} µs{_ratio(f['cpu_us_per_request'], bf.get('cpu_us_per_request'))} "
            f"| {_mib(r['peak_rss_kib'])}{_ratio(r['peak_rss_kib'], b['peak_rss_kib'] if b else None)} "
            f"| {f['dut_cpu_util']:.0%} / {f['mock_cpu_util']:.0%} / {f['loadgen_cpu_util']:.0%} / {f['other_cpu_util']:.0%} |")
    L.append("")
    if any(r.get("ok") and r["fixed_concurrency"]["other_cpu_util"] > NOISY for r in result["rows"]):
        L.append(f"⚠ other processes on the machine used more than {NOISY:.0%} of a core during that run: its throughput "
                 "and latency are less trustworthy than its CPU per request.\n")

    L.append(f"## Fixed rate — h2load, {s['rate']:,} req/s over {s['rate_clients']} connections, {s['seconds']} s per run\n")
    L.append("A peer that cannot sustain that rate runs at half its own fixed-concurrency throughput (column *rate*). "
             "*Added p50* is the target's p50 minus plain Envoy's.\n")
    L.append("| target | workload | rate | achieved | p50 | p90 | p99 | added p50 |")
    L.append("|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        if not r.get("ok"):
            continue
        f, b = r["fixed_rate"], rows.get((BASE, r["workload"]))
        bf = b["fixed_rate"] if b else {}
        added = f["p50"] - bf["p50"] if bf else None
        L.append(f"| {r['label']} | {r['workload']} | {_num(f['rate'])}/s | {_num(f['achieved'])}/s{_ratio(f['achieved'], bf.get('achieved'))} "
                 f"| {_ms(f['p50'])}{_ratio(f['p50'], bf.get('p50'))} | {_ms(f['p90'])}{_ratio(f['p90'], bf.get('p90'))} "
                 f"| {_ms(f['p99'])}{_ratio(f['p99'], bf.get('p99'))} | {'' if added is None else f'{added:+,.0f} µs'} |")
    L.append("")

    s1 = s.get("single_seconds", 3)
    L.append(f"## Lone requests — one connection, one request at a time (wrk -c1), {s1} s per run\n")
    L.append("Nothing queues here, so a target's p50 minus plain Envoy's is the latency it adds to each request.\n")
    L.append("| target | workload | p50 | p90 | p99 | added p50 |")
    L.append("|---|---|---|---|---|---|")
    for r in result["rows"]:
        if not r.get("ok") or "single" not in r:
            continue
        f, b = r["single"], rows.get((BASE, r["workload"]))
        bf = b.get("single", {}) if b else {}
        added = f["p50"] - bf["p50"] if bf else None
        L.append(f"| {r['label']} | {r['workload']} | {_ms(f['p50'])}{_ratio(f['p50'], bf.get('p50'))} "
                 f"| {_ms(f['p90'])}{_ratio(f['p90'], bf.get('p90'))} | {_ms(f['p99'])}{_ratio(f['p99'], bf.get('p99'))} "
                 f"| {'' if added is None else f'{added:+,.0f} µs'} |")
    L.append("")

    mem = result.get("memory")
    if mem:
        L.append("## Filter memory per worker\n")
        ws = mem.get("workers", [1, 2])
        L.append(f"Anonymous resident memory (`RssAnon`: heap, V8, wasm linear memory; not the binary's file pages) of Envoy "
                 f"after a short mixed load at `--concurrency` {', '.join(map(str, ws))}. A worker's share is the growth per added "
                 "worker; the filters' share is that growth minus plain Envoy's.\n")
        L.append("| configuration | " + " | ".join(f"{w} worker{'s' if w > 1 else ''}" for w in ws)
                 + " | filters, first worker (incl. main-thread VM) | filters, per extra worker |")
        L.append("|---|" + "---|" * len(ws) + "---|---|")
        key = "rss_anon_kib" if "rss_anon_kib" in mem else "rss_kib"
        for cfg, label in (("envoy.yaml", "plain Envoy"), ("noop2.yaml", "trivial wasm filter ×2"), ("switchyard.yaml", "Switchyard gateway + backend")):
            rss = {int(k): v for k, v in mem[key][cfg].items()}
            d = mem.get(cfg, {})
            L.append(f"| {label} | " + " | ".join(_mib(rss.get(w)) for w in ws)
                     + f" | {_mib(d.get('first_worker_kib')) if d else '–'} | {_mib(d.get('per_extra_worker_kib')) if d else '–'} |")
        L.append("")

    L.append("## Baseline drift\n")
    parts = []
    for wl in ("chat", "stream"):
        a, b = rows.get((BASE, wl)), rows.get(("envoy-end", wl))
        if a and b:
            fa, fb = a["fixed_concurrency"], b["fixed_concurrency"]
            parts.append(f"{wl}: throughput {fb['rps'] / fa['rps'] - 1:+.1%}, CPU per request "
                         f"{fb['cpu_us_per_request'] / fa['cpu_us_per_request'] - 1:+.1%}, p50 at fixed rate "
                         f"{b['fixed_rate']['p50'] / a['fixed_rate']['p50'] - 1:+.1%} (other processes used "
                         f"{fa['other_cpu_util']:.0%} of a core at the start, {fb['other_cpu_util']:.0%} at the end)")
    L.append("Plain Envoy measured again at the end of the run, against the start: " + ("; ".join(parts) if parts else "not measured") + ".\n")

    L.append("## Peers\n")
    versions, status = m.get("peers", {}), result.get("peer_status", {})
    for peer, label, how in (
        ("tensorzero", "TensorZero gateway", "`pip install tensorzero` into bench/.peers/tensorzero; its embedded Rust gateway "
                                             "served over HTTP by bench/tensorzero_gateway.py with `TOKIO_WORKER_THREADS=1`, "
                                             "`gateway.observability.enabled = false`, one model per route with its provider's "
                                             "`api_base` on the mock"),
        ("litellm", "LiteLLM proxy", "`pip install 'litellm[proxy]'` into bench/.peers/litellm; `litellm --num_workers 1`, "
                                     "models as `openai/…` and `anthropic/…` with `api_base` on the mock"),
        ("portkey", "Portkey gateway", "`npm install @portkey-ai/gateway` into bench/.peers/portkey; `node build/start-server.js`, "
                                       "`x-portkey-provider` + `x-portkey-custom-host` on the mock"),
    ):
        ran = [r for r in result["rows"] if r["target"].startswith(peer)]
        state = status.get(peer, "")
        if versions.get(peer):
            state = f"{versions[peer]} installed" + (f"; {state}" if state and "installed" not in state else "")
        ok = [r for r in ran if r.get("ok")]
        bad = [r for r in ran if not r.get("ok")]
        res = f"{len(ok)} rows measured" + (f", {len(bad)} not: " + "; ".join(
            f"{r['target']}/{r['workload']}: {r.get('failure') or r.get('skipped')}" for r in bad) if bad else "")
        logged = status.get(f"{peer}_log")
        L.append(f"- **{label}** — {state or 'not run'}. {how}. {res if ran else 'Not run (BENCH_PEERS=0 or not installed).'}"
                 + (f" Its log: {logged}." if logged and bad else ""))
    L.append("")

    L.append("## How it was measured\n")
    L.append(f"- **Mock upstream**: Envoy (`--concurrency 1`) with `direct_response` routes ([bench/envoy/mock.yaml](envoy/mock.yaml)) "
             "serving recorded provider answers from [bench/data/](data/) (built from tests/fixtures by bench/payloads.py): "
             f"an OpenAI `chat.completion` ({m['payload_bytes']['openai.json']:,} B), an OpenAI stream with 20 content deltas "
             f"({m['payload_bytes']['openai.sse']:,} B), an Anthropic Message ({m['payload_bytes']['anthropic.json']:,} B) and "
             f"an Anthropic stream with 20 `text_delta` events ({m['payload_bytes']['anthropic.sse']:,} B). The request is "
             f"{m['payload_bytes']['request.json']:,} B (system + user message).")
    L.append(f"- **Pinning** (2 cores): the system under test — Envoy with `--concurrency 1`, LiteLLM's single worker, Portkey's node "
             f"process — runs under `taskset -c {s['cpu_dut']}`; the mock and the load generator (`wrk -t1`, `h2load -t1`) share "
             f"`taskset -c {s['cpu_load']}`. The last column of the first table is each party's CPU use during the run "
             "(1 core = 100%); *others* is everything else on the machine.")
    L.append(f"- **Load**: fixed concurrency with {m['tools']['wrk']} ({s['warmup']} s warm-up first, then {s['seconds']} s); "
             f"fixed rate with `h2load --h1` ({m['tools']['h2load']}): connections started 1000/rate ms apart, each sending every connections × 1000/rate ms, so requests leave evenly spaced (h2load paces per connection; started together they would fire in bursts); percentiles from its per-request log.")
    L.append("- **Correctness first**: before timing, each target gets three requests read as a keep-alive client reads them; "
             "the answer must be a valid OpenAI `chat.completion` (or `chat.completion.chunk` stream ending in `[DONE]`) "
             "carrying exactly the mock's text. During the timed runs any socket error or non-2xx status, or an average "
             "answer size off by more than 20% from the verified one, marks the row FAILED.")
    L.append("- **CPU per request**: user + system CPU of the process tree under test (all threads, `/proc/PID/stat`) "
             "during the fixed-concurrency run, divided by the requests completed. **Peak RSS**: `VmHWM` of that tree "
             "at the end of the row (Envoy targets: one process per target; each peer: one process for all its rows).")
    L.append("- **Baselines**: `envoy.yaml` has the same route, retry policy, cluster and router settings as the Switchyard "
             "configuration, without filters; `noop` adds the trivial wasm filter (`{\"role\": \"noop\"}` of the same "
             "switchyard.wasm) in the HCM, `noop2` also as an upstream filter of the cluster, the way Switchyard's backend "
             "filter runs.")
    L.append("- **Caveat**: `direct_response` writes each stream in one piece, so the filters see a stream in one or two "
             "body callbacks, not one per chunk as from a real provider; the per-chunk cost is measured without Envoy by the "
             "criterion benches (`cargo bench --bench hot_paths`).")
    L.append("")
    analysis = BENCH / "analysis.md"
    if analysis.exists():
        L.append(analysis.read_text().rstrip() + "\n")
    path.write_text("\n".join(L))


def write_chart(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(result)
    keys = [r["target"] for r in result["rows"] if r.get("ok")]
    keys = list(dict.fromkeys(keys))
    labels = {r["target"]: r["label"] for r in result["rows"]}
    for r in result["rows"]:
        if r.get("ok") and r["fixed_concurrency"]["other_cpu_util"] > NOISY:
            labels[r["target"]] = r["label"] + "\n(other load on the machine)"
    fig, (ax1, ax3, ax2) = plt.subplots(1, 3, figsize=(19, 0.55 * len(keys) + 2.4), gridspec_kw={"width_ratios": [1.2, 1, 1]})
    y = list(range(len(keys)))
    h = 0.38
    colors = {"chat": "#2f6db5", "stream": "#e08a2c"}
    max_ratio, max_lat, max_cpu = 0.0, 0.0, 0.0
    for i, wl in enumerate(("chat", "stream")):
        base = rows.get((BASE, wl))
        ratios, lat, cpu = [], [], []
        for k in keys:
            r = rows.get((k, wl))
            ratios.append(r["fixed_concurrency"]["rps"] / base["fixed_concurrency"]["rps"] if r and base else 0)
            lat.append(r.get("single", r["fixed_rate"])["p50"] / 1000 if r else 0)
            cpu.append(r["fixed_concurrency"]["cpu_us_per_request"] if r else 0)
        max_ratio = max([max_ratio] + ratios)
        max_lat, max_cpu = max([max_lat] + lat), max([max_cpu] + cpu)
        ys = [v + (i - 0.5) * h for v in y]
        b1 = ax1.barh(ys, ratios, h, color=colors[wl], label=wl)
        ax1.bar_label(b1, labels=[f"{v:.2f}×" if v else "" for v in ratios], padding=2, fontsize=8)
        b2 = ax2.barh(ys, lat, h, color=colors[wl], label=wl)
        ax2.bar_label(b2, labels=[f"{v:.2f}" if v else "" for v in lat], padding=2, fontsize=8)
        b3 = ax3.barh(ys, cpu, h, color=colors[wl], label=wl)
        ax3.bar_label(b3, labels=[f"{v:,.0f}" if v else "" for v in cpu], padding=2, fontsize=8)
    for ax in (ax1, ax3, ax2):
        ax.set_yticks(y)
        ax.set_yticklabels([labels[k] for k in keys] if ax is ax1 else [], fontsize=9)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    ax1.axvline(0.7, color="#b03030", linestyle="--", linewidth=1)
    ax1.text(0.71, len(keys) - 0.45, "70% target", color="#b03030", fontsize=8)
    s = result["meta"]["settings"]
    ax1.set_title(f"Throughput relative to plain Envoy\n(wrk, {s['connections']} connections)", fontsize=10)
    ax1.set_xlim(0, max(1.25, max_ratio * 1.2))
    ax1.legend(loc="lower right", fontsize=8)
    ax2.set_xscale("log")
    ax3.set_xscale("log")
    if max_lat:
        ax2.set_xlim(right=max_lat * 4)
    if max_cpu:
        ax3.set_xlim(right=max_cpu * 4)
    ax3.set_title("CPU per request (µs) of the system under test\n(fixed-concurrency run; lower is better)", fontsize=10)
    ax2.set_title("p50 latency (ms) of lone requests\n(one connection, one request at a time)", fontsize=10)
    fig.suptitle(f"Switchyard vs plain Envoy and peers: one worker each, same mock upstream\n"
                 f"{result['meta']['date']}, commit {result['meta']['commit']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict, md: Path, png: Path) -> None:
    write_markdown(result, md)
    write_chart(result, png)


if __name__ == "__main__":
    res = json.loads((BENCH / "results.json").read_text())
    write(res, BENCH / "results.md", BENCH / "results.png")
    print("wrote bench/results.md and bench/results.png", file=sys.stderr)
