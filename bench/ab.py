#!/usr/bin/env python3
"""Same-run A/B of filter builds: CPU per request of Envoy running Switchyard (bench/envoy/switchyard.yaml,
or another bench config) with each given `.wasm`, interleaved round by round with plain Envoy, so that
the shared machine's drift hits every variant alike. Uses bench.py's functions (mock, pinning, wrk).

  bench/.peers/venv/bin/python bench/ab.py NAME=path/to.wasm[@'"gateway_field": value'][%config.yaml] [NAME=... ...]
      [--config switchyard.yaml] [--rounds 3] [--seconds 5] [--target sw-anthropic] [--requests N]

With --requests N it instead sends N requests per workload, one connection, to each variant and prints
Envoy's log lines that contain `HOSTCALLS` (a build of the filter against an SDK that counts its
hostcalls, see bench/analysis.md section 8), then exits. `%config.yaml` gives one variant its own bench
config (e.g. `on=target/.../switchyard.wasm%switchyard-policy.yaml` against `off=...` with --target sw-policy,
whose requests carry the virtual key the policy config knows). Writes nothing outside bench/out/.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as b  # noqa: E402
import envoy_configs  # noqa: E402
import payloads  # noqa: E402


CFG = b.OUT / "ab-configs"


def variant_config(name: str, wasm: str, base: str) -> str:
    wasm, _, own_base = wasm.partition("%")
    base = own_base or base
    wasm, _, extra = wasm.partition("@")
    text = (CFG / "envoy" / base).read_text()
    if extra:
        # NAME=WASM@"field": value — extra gateway configuration, e.g. @"metrics": {"access_log_fields": false}
        text = text.replace('"role": "gateway",', f'"role": "gateway", {extra},', 1)
    if wasm.endswith(".so"):   # a build of the native prototype, for the native configs
        text = text.replace(envoy_configs.NATIVE, str(Path(wasm).resolve()))
    elif wasm != envoy_configs.WASM:
        text = text.replace(envoy_configs.WASM, str(Path(wasm).resolve()))
    path = b.OUT / f"ab-{name}.yaml"
    path.write_text(text)
    return f"../out/ab-{name}.yaml"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--config", default="switchyard.yaml")
    ap.add_argument("--target", default="sw-anthropic")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=0)
    ap.add_argument("--workloads", default="chat,stream")
    ap.add_argument("--no-plain", action="store_true")
    a = ap.parse_args()
    b.OUT.mkdir(parents=True, exist_ok=True)
    data = payloads.write()
    # The bench configs for this run's ports (BENCH_PORT_OFFSET), under bench/out/ (the checked-in ones stay).
    bench_dir, b.BENCH = b.BENCH, CFG
    CFG.mkdir(parents=True, exist_ok=True)
    b.write_configs(data)
    b.BENCH = bench_dir
    targets = {t.key: t for t in b.build_targets(data)}
    wl = [w for w in targets[a.target].workloads if w.name in a.workloads.split(",")]
    plain = {w.name: w for w in targets["envoy"].workloads}
    variants = []
    for v in a.variants:
        name, _, wasm = v.partition("=")
        variants.append((name, variant_config(name, wasm, a.config)))
    mock = b.start_envoy("mock", "../out/ab-configs/envoy/mock.yaml", b.CPU_LOAD, b.MOCK_ADMIN)
    results: dict[tuple[str, str], list[float]] = {}
    try:
        if a.requests:
            for name, cfg in variants:
                dut = b.start_envoy(f"ab-{name}", cfg, b.CPU_DUT, b.DUT_ADMIN)
                try:
                    for w in wl:
                        problem, _ = b.verify(b.DUT_PORT, w, data)
                        if problem:
                            print(f"{name}/{w.name}: FAILED {problem}")
                        for _ in range(a.requests):
                            b.http_request(b.DUT_PORT, w)
                        time.sleep(0.5)
                        lines = [ln for ln in dut.log_path.read_text(errors="replace").splitlines() if "HOSTCALLS" in ln]
                        print(f"{name}/{w.name}: {lines[-1] if lines else 'no HOSTCALLS line'}", flush=True)
                finally:
                    dut.stop()
            return 0
        for r in range(a.rounds):
            order = variants if r % 2 == 0 else list(reversed(variants))
            runs = ([] if a.no_plain else [("plain", "../out/ab-configs/envoy/envoy.yaml", True)]) + [(n, c, False) for n, c in order]
            for name, cfg, is_plain in runs:
                dut = b.start_envoy(f"ab-{name}", cfg, b.CPU_DUT, b.DUT_ADMIN)
                try:
                    for w in wl:
                        w = plain[w.name] if is_plain else w
                        problem, _ = b.verify(b.DUT_PORT, w, data)
                        if problem:
                            print(f"{name}/{w.name}: FAILED verification: {problem}", flush=True)
                            continue
                        if b.WARMUP > 0:
                            b.run_wrk(b.DUT_PORT, w, f"ab-{name}-{w.name}-warmup", b.WARMUP, b.CONNECTIONS)
                        b.wait_quiet([dut.pid, mock.pid])
                        d0, s0, t0 = b.cpu_seconds(dut.pid), b.system_busy(), time.time()
                        m0 = b.cpu_seconds(mock.pid)
                        res, wrk_cpu = b.run_wrk(b.DUT_PORT, w, f"ab-{name}-{w.name}", a.seconds, b.CONNECTIONS)
                        wall = time.time() - t0
                        d = b.cpu_seconds(dut.pid) - d0
                        others = max(0.0, (b.system_busy() - s0 - d - (b.cpu_seconds(mock.pid) - m0) - wrk_cpu) / wall)
                        n = res["requests"]
                        us = d / n * 1e6 if n else float("nan")
                        results.setdefault((name, w.name), []).append(us)
                        print(f"round {r + 1} {name:>12}/{w.name:<6} {us:6.1f} µs CPU/req  ({n} req, others {others:.0%})", flush=True)
                finally:
                    dut.stop()
    finally:
        mock.stop()
    print("\nmedian CPU per request (µs), all rounds:")
    names = ([] if a.no_plain else ["plain"]) + [n for n, _ in variants]
    for w in wl:
        cells = []
        for n in names:
            xs = results.get((n, w.name), [])
            cells.append(f"{n} {statistics.median(xs):.0f} [{', '.join(f'{x:.0f}' for x in xs)}]" if xs else f"{n} -")
        print(f"  {w.name:<6} " + " | ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
