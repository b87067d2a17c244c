#!/usr/bin/env python3
"""Switchyard benchmark driver. Run it through `scripts/bench`, which installs what it needs first.

Measures, in one run and against one fast mock upstream (an Envoy `direct_response` listener serving
recorded OpenAI and Anthropic answers), side by side:

  envoy          plain Envoy proxying OpenAI-shaped traffic, no filter (the baseline: every ratio is
                 against it, and it is measured again at the end to show drift)
  noop           Envoy + a trivial wasm filter in the HCM (the floor any wasm filter pays)
  noop2          Envoy + the trivial filter in the HCM and as an upstream filter (the floor of a
                 gateway + backend design)
  sw-openai      Switchyard, OpenAI-compatible passthrough
  sw-anthropic   Switchyard, OpenAI -> Anthropic translation
  sw-policy      Switchyard, OpenAI -> Anthropic, with virtual keys, rate limits and budgets on
  sw-cache-hit   Switchyard, OpenAI passthrough, answer cache on: every request after the first a hit
  sw-cache-miss  ... the same, each request with `cache-control: no-cache` (no lookup; the answer goes
                 upstream and is stored again: the miss path's cost)
  sw-sampling    Switchyard, OpenAI passthrough, quality sampling of every request to a sink (the mock)
  dm-noop2       Envoy + a trivial native dynamic module in the HCM and upstream (src/native prototype)
  sw-native-*    Switchyard's native prototype (src/native, an Envoy dynamic module), same configuration
  sw-fleet       Switchyard, sw-policy with "ledger": "fleet" (rate limit service + Redis, same core)
  sw-guardrails  Switchyard, OpenAI passthrough with guardrails on (every detector, answers scanned)
  tensorzero-*   TensorZero's Rust gateway (embedded in the `tensorzero` PyPI package), one Tokio
                 worker thread, no observability database (OpenAI passthrough and Anthropic translation)
  litellm-*      LiteLLM proxy, one worker (OpenAI passthrough and Anthropic translation)
  portkey-*      Portkey gateway (node, one process)

each with two workloads: `chat` (non-stream, ~1 KB prompt) and `stream` (20 text deltas), first at a
fixed concurrency (wrk), then at a fixed request rate (h2load), then one request at a time (wrk, one
connection: the latency a gateway adds when nothing queues). Every target is checked for correct
answers before it is timed, and a timed run with any error or wrong-sized answers is reported as FAILED.

Settings (environment): BENCH_SECONDS (10) per timed run, BENCH_WARMUP (2), BENCH_CONNECTIONS (16),
BENCH_RATE (1000 requests/s, evenly spaced), BENCH_RATE_CLIENTS (8), BENCH_SINGLE_SECONDS (3), BENCH_TARGETS (comma-separated keys; default all),
BENCH_PEERS (1; 0 skips TensorZero, LiteLLM and Portkey), BENCH_MEMORY (1; 0 skips the per-worker memory runs),
BENCH_PERF (0; 1 records a `perf` profile of the Envoy under test for the Switchyard targets),
BENCH_PORT_OFFSET (0; added to every port, for a second run on the same machine).

Writes bench/results.md, bench/results.png, bench/results.json; logs and scratch files in bench/out/.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import envoy_configs  # noqa: E402
import payloads  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = BENCH / "out"
PEERS = BENCH / ".peers"
ENVOY = ROOT / ".venv" / "bin" / "envoy-bin"
WASM_PATH = ROOT / envoy_configs.WASM
NATIVE_PATH = ROOT / envoy_configs.NATIVE


def env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        sys.exit(f"bench: {name} must be an integer")


SECONDS = env_int("BENCH_SECONDS", 10)
WARMUP = env_int("BENCH_WARMUP", 2)
CONNECTIONS = env_int("BENCH_CONNECTIONS", 16)
RATE = env_int("BENCH_RATE", 1000)
RATE_CLIENTS = env_int("BENCH_RATE_CLIENTS", 8)
SINGLE_SECONDS = env_int("BENCH_SINGLE_SECONDS", 3)
RUN_PEERS = env_int("BENCH_PEERS", 1) == 1
RUN_MEMORY = env_int("BENCH_MEMORY", 1) == 1
RUN_PERF = env_int("BENCH_PERF", 0) == 1
# Other work on the machine skews every number: before each timed run wait (at most BENCH_QUIET_WAIT
# seconds per run, BENCH_QUIET_BUDGET in all) until the rest of the machine uses under BENCH_QUIET_MAX
# percent of a core. Each row records what the rest used during its run.
QUIET_MAX = env_int("BENCH_QUIET_MAX", 15) / 100
QUIET_WAIT = env_int("BENCH_QUIET_WAIT", 20)
QUIET_BUDGET = [env_int("BENCH_QUIET_BUDGET", 180)]
ONLY = [t for t in os.environ.get("BENCH_TARGETS", "").split(",") if t]

# Two cores: the system under test gets CPU 1 to itself; the load generator and the mock share CPU 0.
CPU_DUT = "1"
CPU_LOAD = "0"

# BENCH_PORT_OFFSET moves every port (two runs on one machine would otherwise share listeners:
# Envoy binds with SO_REUSEPORT, so a second run's Envoy silently takes half of the first's traffic).
_OFF = env_int("BENCH_PORT_OFFSET", 0)
MOCK_PORT, MOCK_ADMIN = 18100 + _OFF, 19100 + _OFF
DUT_PORT, DUT_ADMIN = 18200 + _OFF, 19200 + _OFF
LITELLM_PORT = 18300 + _OFF
PORTKEY_PORT = 18400 + _OFF
REDIS_PORT, RLS_PORT = 18500 + _OFF, 18501 + _OFF
RLS_BIN = ROOT / "tools" / "rls" / "target" / "release" / "switchyard-rls"

# The client's key (LiteLLM refuses to start with a weak master key; the others ignore it).
CLIENT_KEY = "sk-bench-4f1c2e9a7b3d5c8e0a6f2b9d4c7e1a3f5b8d0c2e4a6f8b1d"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")



def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------------
# targets


@dataclass
class Workload:
    name: str                # chat | stream
    path: str
    body: bytes
    headers: dict[str, str]
    answer: str              # the mock's data file this request is answered from


@dataclass
class Target:
    key: str
    label: str
    kind: str                # envoy | tensorzero | litellm | portkey | skip
    config: str | None = None
    workloads: list[Workload] = field(default_factory=list)
    note: str = ""


def _json_headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    h = {"content-type": "application/json", "authorization": f"Bearer {CLIENT_KEY}"}
    h.update(extra or {})
    return h


def _body(data: dict[str, bytes], stream: bool, model: str) -> bytes:
    raw = data["request_stream.json" if stream else "request.json"]
    return raw.replace(b'"model":"gpt-4o-mini"', f'"model":"{model}"'.encode(), 1)


def build_targets(data: dict[str, bytes]) -> list[Target]:
    def direct(key: str, label: str, config: str) -> Target:
        return Target(key, label, "envoy", config, [
            Workload("chat", "/oai/json/v1/chat/completions", _body(data, False, "gpt-4o-mini"), _json_headers(), "openai.json"),
            Workload("stream", "/oai/sse/v1/chat/completions", _body(data, True, "gpt-4o-mini"), _json_headers(), "openai.sse"),
        ])

    def by_model(chat_model: str, stream_model: str, answers: tuple[str, str], extra=None) -> list[Workload]:
        return [
            Workload("chat", "/v1/chat/completions", _body(data, False, chat_model), _json_headers(extra), answers[0]),
            Workload("stream", "/v1/chat/completions", _body(data, True, stream_model), _json_headers(extra), answers[1]),
        ]

    oai = ("openai.json", "openai.sse")
    ant = ("anthropic.json", "anthropic.sse")

    def tensorzero(chat_model: str, stream_model: str, answers: tuple[str, str]) -> list[Workload]:
        # Its OpenAI-compatible endpoint names a configured model as `tensorzero::model_name::<name>`.
        return [
            Workload("chat", "/openai/v1/chat/completions", _body(data, False, f"tensorzero::model_name::{chat_model}"),
                     _json_headers(), answers[0]),
            Workload("stream", "/openai/v1/chat/completions", _body(data, True, f"tensorzero::model_name::{stream_model}"),
                     _json_headers(), answers[1]),
        ]

    def portkey(provider: str, model: str, prefix: str, answers) -> list[Workload]:
        out = []
        for name, stream, kind in (("chat", False, "json"), ("stream", True, "sse")):
            h = _json_headers({"x-portkey-provider": provider,
                               "x-portkey-custom-host": f"http://127.0.0.1:{MOCK_PORT}/{prefix}/{kind}/v1"})
            out.append(Workload(name, "/v1/chat/completions", _body(data, stream, model), h, answers[0 if name == "chat" else 1]))
        return out

    def native_targets() -> list[Target]:
        if not NATIVE_PATH.exists():
            note = f"not built: {envoy_configs.NATIVE} missing (scripts/bench builds it unless BENCH_NATIVE=0)"
            return [Target(k, label, "skip", note=note) for k, label in (
                ("dm-noop2", "Envoy + trivial native module, downstream + upstream"),
                ("sw-native-openai", "Switchyard native (prototype), OpenAI passthrough"),
                ("sw-native-anthropic", "Switchyard native (prototype), OpenAI → Anthropic"))]
        noop2 = direct("dm-noop2", "Envoy + trivial native module, downstream + upstream", "native-noop2.yaml")
        return [
            noop2,
            Target("sw-native-openai", "Switchyard native (prototype), OpenAI passthrough", "envoy", "switchyard-native.yaml",
                   by_model("gpt-4o-mini", "gpt-4o-mini-stream", oai)),
            Target("sw-native-anthropic", "Switchyard native (prototype), OpenAI → Anthropic", "envoy", "switchyard-native.yaml",
                   by_model("claude-haiku", "claude-haiku-stream", ant)),
        ]

    return [
        direct("envoy", "Envoy, no filter (baseline)", "envoy.yaml"),
        direct("noop", "Envoy + trivial wasm filter", "noop.yaml"),
        direct("noop2", "Envoy + trivial wasm filter, downstream + upstream", "noop2.yaml"),
        Target("sw-openai", "Switchyard, OpenAI passthrough", "envoy", "switchyard.yaml",
               by_model("gpt-4o-mini", "gpt-4o-mini-stream", oai)),
        Target("sw-anthropic", "Switchyard, OpenAI → Anthropic", "envoy", "switchyard.yaml",
               by_model("claude-haiku", "claude-haiku-stream", ant)),
        Target("sw-policy", "Switchyard, OpenAI → Anthropic + keys, limits, budgets", "envoy", "switchyard-policy.yaml",
               by_model("claude-haiku", "claude-haiku-stream", ant)),
        Target("sw-fleet", "Switchyard, OpenAI → Anthropic + keys, limits, budgets in fleet mode (rate limit service + Redis)",
               "fleet", "switchyard-fleet.yaml", by_model("claude-haiku", "claude-haiku-stream", ant)),
        Target("sw-cache-hit", "Switchyard, OpenAI passthrough, cache on (hits)", "envoy", "switchyard-cache.yaml",
               by_model("gpt-4o-mini", "gpt-4o-mini-stream", oai)),
        Target("sw-cache-miss", "Switchyard, OpenAI passthrough, cache on (misses, stored)", "envoy", "switchyard-cache.yaml",
               by_model("gpt-4o-mini", "gpt-4o-mini-stream", oai, {"cache-control": "no-cache"})),
        Target("sw-sampling", "Switchyard, OpenAI passthrough, every request sampled", "envoy", "switchyard-sampling.yaml",
               by_model("gpt-4o-mini", "gpt-4o-mini-stream", oai)),
        *native_targets(),
        Target("sw-guardrails", "Switchyard, OpenAI passthrough + guardrails (every detector, answers scanned)", "envoy",
               "switchyard-guardrails.yaml", by_model("gpt-4o-mini", "gpt-4o-mini-stream", oai)),
        Target("tensorzero-openai", "TensorZero gateway, OpenAI passthrough", "tensorzero", None,
               tensorzero("gpt-4o-mini", "gpt-4o-mini-stream", oai)),
        Target("tensorzero-anthropic", "TensorZero gateway, OpenAI → Anthropic", "tensorzero", None,
               tensorzero("claude-haiku", "claude-haiku-stream", ant)),
        Target("litellm-openai", "LiteLLM proxy, OpenAI passthrough", "litellm", None,
               by_model("gpt-4o-mini", "gpt-4o-mini-stream", oai)),
        Target("litellm-anthropic", "LiteLLM proxy, OpenAI → Anthropic", "litellm", None,
               by_model("claude-haiku", "claude-haiku-stream", ant)),
        Target("portkey-openai", "Portkey gateway, OpenAI passthrough", "portkey", None,
               portkey("openai", "gpt-4o-mini", "oai", oai)),
        Target("portkey-anthropic", "Portkey gateway, OpenAI → Anthropic", "portkey", None,
               portkey("anthropic", "claude-3-5-haiku-latest", "ant", ant)),
        direct("envoy-end", "Envoy, no filter (baseline again, at the end)", "envoy.yaml"),
    ]


def write_configs(data: dict[str, bytes]) -> None:
    d = BENCH / "envoy"
    d.mkdir(exist_ok=True)
    ec = envoy_configs
    ec.write(d / "mock.yaml", ec.mock(MOCK_PORT, MOCK_ADMIN, data),
             "The mock upstream: direct_response routes serving bench/data/ (see bench/envoy_configs.py).")
    ec.write(d / "envoy.yaml", ec.plain(DUT_PORT, DUT_ADMIN, MOCK_PORT),
             "Baseline: plain Envoy, same route, retry policy and cluster as the gateway, no filter.")
    ec.write(d / "noop.yaml", ec.noop(DUT_PORT, DUT_ADMIN, MOCK_PORT),
             'Envoy + a trivial wasm filter (switchyard.wasm with {"role": "noop"}) in the HCM.')
    ec.write(d / "noop2.yaml", ec.noop(DUT_PORT, DUT_ADMIN, MOCK_PORT, upstream_too=True),
             "Envoy + the trivial wasm filter in the HCM and as an upstream filter of the cluster.")
    ec.write(d / "switchyard.yaml", ec.switchyard(DUT_PORT, DUT_ADMIN, MOCK_PORT),
             "Switchyard as in envoy/demo.yaml (gateway filter in the HCM, backend filter upstream),\n"
             "every route's endpoint being the mock upstream.")
    ec.write(d / "switchyard-policy.yaml",
             ec.switchyard(DUT_PORT, DUT_ADMIN, MOCK_PORT, ec.gateway_config(auth=ec.policy_auth(CLIENT_KEY))),
             "Switchyard with a virtual key, rate limits (rpm, tpm, concurrency) and budgets on, for key and team;\n"
             "limits far above the load, so every check runs and none refuses.")
    ec.write(d / "switchyard-fleet.yaml",
             ec.with_fleet(ec.switchyard(DUT_PORT, DUT_ADMIN, MOCK_PORT, ec.gateway_config(auth=ec.fleet_auth(CLIENT_KEY))), RLS_PORT),
             "switchyard-policy.yaml in fleet mode: envoy/fleet.yaml merged in (two rate limit filters, three\n"
             "calls to the rate limit service per request), the service (tools/rls) and redis-server on the\n"
             "same core as Envoy, their CPU counted with Envoy's.")
    gw = d / "fleet-gateway.json"
    gw.write_text(ec.gateway_config(auth=ec.fleet_auth(CLIENT_KEY)))
    limits = subprocess.run(["cargo", "run", "--quiet", "--bin", "switchyard", "--", "fleet-limits", str(gw)],
                            cwd=ROOT, capture_output=True, text=True)
    (d / "fleet-limits.yaml").write_text(limits.stdout if limits.returncode == 0 else f"# fleet-limits failed: {limits.stderr}")
    ec.write(d / "switchyard-cache.yaml",
             ec.switchyard(DUT_PORT, DUT_ADMIN, MOCK_PORT, ec.gateway_config(extra={"cache": {"scope": "global", "cache_sampled": True}})),
             "switchyard.yaml with the exact answer cache on (README \"Caching\"); the benchmark's requests have no\n"
             "temperature, so cache_sampled makes them cacheable.")
    ec.write(d / "switchyard-sampling.yaml",
             ec.switchyard(DUT_PORT, DUT_ADMIN, MOCK_PORT, ec.gateway_config(extra={"quality_sampling": {
                 "cluster": "sink", "rate": 1.0, "flush_interval_ms": 200}}), sink=True),
             "switchyard.yaml with quality sampling of every request (README \"Quality sampling\"), the sink\n"
             "being the mock's /v1/samples (204).")
    ec.write(d / "native-noop2.yaml", ec.noop(DUT_PORT, DUT_ADMIN, MOCK_PORT, upstream_too=True, native=True),
             "Envoy + a trivial native dynamic module (src/native prototype, role noop) in the HCM and upstream.")
    ec.write(d / "switchyard-native.yaml", ec.switchyard(DUT_PORT, DUT_ADMIN, MOCK_PORT, native=True),
             "switchyard.yaml with the native prototype (src/native, an Envoy dynamic module) instead of\n"
             "switchyard.wasm: the same configuration JSON.")
    ec.write(d / "switchyard-guardrails.yaml",
             ec.switchyard(DUT_PORT, DUT_ADMIN, MOCK_PORT, ec.gateway_config(extra={"guardrails": ec.BENCH_GUARDRAILS})),
             "Switchyard with guardrails on: every built-in detector on the request, answers scanned\n"
             "(the prompt holds no personal data: scanned whole, forwarded untouched).")


# --------------------------------------------------------------------------------------------------
# processes


def proc_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live descendants (all threads), in seconds."""
    total = 0
    for p in proc_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def rss_kib(pid: int, key: str = "VmHWM") -> int:
    """Peak (VmHWM) or current (VmRSS) resident memory of a process tree, KiB."""
    total = 0
    for p in proc_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total


def system_busy() -> float:
    """Busy CPU seconds of the whole machine so far (all cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLK_TCK


class Proc:
    def __init__(self, name: str, cmd: list[str], cpu: str | None, env: dict | None = None, cwd: Path = ROOT):
        self.name = name
        self.log_path = OUT / f"{name}.log"
        full = (["taskset", "-c", cpu] if cpu else []) + cmd
        self.log = open(self.log_path, "wb")
        self.p = subprocess.Popen(full, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd,
                                  env={**os.environ, **(env or {})}, start_new_session=True)
        self.pid = self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self) -> None:
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)  # its own session: the process and its children only
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.p.wait()
        self.log.close()

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def wait_http(url: str, proc: Proc, timeout: float, ok=lambda status: status == 200) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not proc.alive():
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if ok(r.status):
                    return True
        except urllib.error.HTTPError as e:
            if ok(e.code):
                return True
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    return False


def start_envoy(name: str, config: str, cpu: str | None, admin: int, concurrency: int = 1) -> Proc:
    proc = Proc(name, [str(ENVOY), "-c", f"bench/envoy/{config}", "--concurrency", str(concurrency),
                       "--disable-hot-restart", "--log-level", "warn"], cpu,
                env={"OPENAI_API_KEY": "sk-bench-openai", "ANTHROPIC_API_KEY": "sk-bench-anthropic"})
    if not wait_http(f"http://127.0.0.1:{admin}/ready", proc, 30):
        proc.stop()
        raise RuntimeError(f"{name}: Envoy did not become ready:\n{proc.tail()}")
    return proc


def start_fleet(name: str, config: str, cpu: str | None, admin: int) -> Proc:
    """redis-server, switchyard-rls and Envoy as one process tree (Envoy execs in place of the shell,
    the other two are its children), pinned to the same CPU, so the DUT's CPU counts all three."""
    if not RLS_BIN.exists():
        raise RuntimeError(f"{RLS_BIN} missing (scripts/bench builds it)")
    redis = shutil.which("redis-server") or "/usr/bin/redis-server"
    script = (f"{redis} --port {REDIS_PORT} --bind 127.0.0.1 --save '' --appendonly no >/dev/null & "
              f"{RLS_BIN} --config bench/envoy/fleet-limits.yaml --listen 127.0.0.1:{RLS_PORT} "
              f"--redis redis://127.0.0.1:{REDIS_PORT} & "
              f"exec {ENVOY} -c bench/envoy/{config} --concurrency 1 --disable-hot-restart --log-level warn")
    proc = Proc(name, ["bash", "-c", script], cpu,
                env={"OPENAI_API_KEY": "sk-bench-openai", "ANTHROPIC_API_KEY": "sk-bench-anthropic"})
    if not wait_http(f"http://127.0.0.1:{admin}/ready", proc, 30):
        proc.stop()
        raise RuntimeError(f"{name}: Envoy did not become ready:\n{proc.tail()}")
    return proc


def envoy_stats(admin: int) -> dict[str, int]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?format=json", timeout=5) as r:
            stats = json.load(r)["stats"]
    except (OSError, ValueError, KeyError):
        return {}
    keep = ("downstream_rq_2xx", "downstream_rq_4xx", "downstream_rq_5xx", "downstream_cx_total",
            "upstream_cx_total", "upstream_rq_total", "upstream_rq_retry", "wasm.", "vm.")
    return {s["name"]: s["value"] for s in stats if "value" in s and any(k in s["name"] for k in keep)}


# --------------------------------------------------------------------------------------------------
# peers


def peer_versions() -> dict[str, str]:
    out = {}
    try:
        r = subprocess.run([str(PEERS / "litellm" / "bin" / "python"), "-c",
                            "import importlib.metadata as m; print(m.version('litellm'))"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            out["litellm"] = r.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        r = subprocess.run([str(PEERS / "tensorzero" / "bin" / "python"), "-c",
                            "import importlib.metadata as m; print(m.version('tensorzero'))"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            out["tensorzero"] = r.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    pkg = PEERS / "portkey" / "node_modules" / "@portkey-ai" / "gateway" / "package.json"
    if pkg.exists():
        out["portkey"] = json.loads(pkg.read_text()).get("version", "?")
    return out


def peer_log_errors(proc: Proc) -> str:
    """The distinct error lines a peer logged (why a row failed, in its own words)."""
    try:
        lines = proc.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    seen: list[str] = []
    for ln in lines:
        ln = ln.strip()
        if ln and not ln.startswith("at ") and "error" in ln.lower() and ln not in seen:
            seen.append(ln)
    return "; ".join(f"`{x[:200]}`" for x in seen[:3])


def litellm_config() -> Path:
    base = f"http://127.0.0.1:{MOCK_PORT}"
    models = []
    for name, route in envoy_configs.GATEWAY_MODELS.items():
        prefix, _, _, schema, upstream_model = envoy_configs.MOCK_ROUTES[route]
        if schema == "openai":
            params = {"model": f"openai/{upstream_model}", "api_base": f"{base}{prefix}v1", "api_key": "sk-bench-openai"}
        else:
            params = {"model": f"anthropic/{upstream_model}", "api_base": f"{base}{prefix.rstrip('/')}", "api_key": "sk-bench-anthropic"}
        models.append({"model_name": name, "litellm_params": params})
    cfg = {"model_list": models,
           "litellm_settings": {"drop_params": True, "set_verbose": False, "json_logs": False, "telemetry": False,
                                "request_timeout": 60},
           "general_settings": {"master_key": CLIENT_KEY, "disable_spend_logs": True,
                                "disable_adding_master_key_hash_to_db": True}}
    path = OUT / "litellm.yaml"
    path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
    return path


def tensorzero_config() -> Path:
    """TensorZero's configuration: one model per gateway model, its one provider on the mock."""
    base = f"http://127.0.0.1:{MOCK_PORT}"
    lines = ["[gateway.observability]", "enabled = false", ""]
    for name, route in envoy_configs.GATEWAY_MODELS.items():
        prefix, _, _, schema, upstream_model = envoy_configs.MOCK_ROUTES[route]
        # OpenAI: the base URL ends in /v1/; Anthropic: TensorZero appends v1/messages itself.
        api_base = f"{base}{prefix}v1/" if schema == "openai" else f"{base}{prefix}"
        env = "OPENAI_API_KEY" if schema == "openai" else "ANTHROPIC_API_KEY"
        lines += [f'[models."{name}"]', 'routing = ["mock"]', f'[models."{name}".providers.mock]', f'type = "{schema}"',
                  f'model_name = "{upstream_model}"', f'api_base = "{api_base}"', f'api_key_location = "env::{env}"', ""]
    path = OUT / "tensorzero.toml"
    path.write_text("\n".join(lines))
    return path


def start_tensorzero() -> tuple[Proc, int]:
    py = PEERS / "tensorzero" / "bin" / "python"
    if not py.exists():
        raise RuntimeError("TensorZero is not installed (bench/.peers/tensorzero); see the install log in bench/.peers/")
    env = {"TOKIO_WORKER_THREADS": "1", "OPENAI_API_KEY": "sk-bench-openai", "ANTHROPIC_API_KEY": "sk-bench-anthropic",
           "RUST_LOG": "warn", "TENSORZERO_DISABLE_PSEUDONYMOUS_USAGE_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}
    proc = Proc("tensorzero", [str(py), str(BENCH / "tensorzero_gateway.py"), str(tensorzero_config())], CPU_DUT, env=env)
    deadline = time.time() + 60
    while time.time() < deadline and proc.alive():
        for ln in proc.log_path.read_text(errors="replace").splitlines():
            if ln.startswith("BASE_URL "):
                port = int(ln.split()[1].split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
                # Any answer means it serves (the embedded gateway has no /health route).
                if wait_http(f"http://127.0.0.1:{port}/health", proc, 30, ok=lambda status: status < 500):
                    return proc, port
        time.sleep(0.5)
    proc.stop()
    raise RuntimeError(f"TensorZero did not start:\n{proc.tail()}")


def start_litellm() -> Proc:
    exe = PEERS / "litellm" / "bin" / "litellm"
    if not exe.exists():
        raise RuntimeError("LiteLLM is not installed (bench/.peers/litellm); see the install log in bench/out/")
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
           "DISABLE_SCHEMA_UPDATE": "True", "NO_DOCS": "True", "PYTHONUNBUFFERED": "1"}
    proc = Proc("litellm", [str(exe), "--config", str(litellm_config()), "--host", "127.0.0.1",
                            "--port", str(LITELLM_PORT), "--num_workers", "1"], CPU_DUT, env=env)
    if not wait_http(f"http://127.0.0.1:{LITELLM_PORT}/health/liveliness", proc, 180):
        proc.stop()
        raise RuntimeError(f"LiteLLM did not start:\n{proc.tail()}")
    return proc


def start_portkey() -> Proc:
    entry = PEERS / "portkey" / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if not entry.exists():
        raise RuntimeError("the Portkey gateway is not installed (bench/.peers/portkey); see the install log in bench/out/")
    proc = Proc("portkey", ["node", str(entry), f"--port={PORTKEY_PORT}", "--headless"], CPU_DUT,
                env={"NODE_ENV": "production"}, cwd=PEERS / "portkey")
    if not wait_http(f"http://127.0.0.1:{PORTKEY_PORT}/", proc, 60, ok=lambda s: s < 500):
        proc.stop()
        raise RuntimeError(f"Portkey did not start:\n{proc.tail()}")
    return proc


# --------------------------------------------------------------------------------------------------
# correctness


def http_request(port: int, w: Workload, timeout: float = 10) -> tuple[int, dict[str, str], bytes, int]:
    """One keep-alive HTTP/1.1 request read the way a load generator reads it (by content-length or
    chunked framing, never until close): returns status, headers, de-chunked body and bytes on the wire.
    An answer shorter than its framing says raises TimeoutError, as it would hang a real client."""
    head = f"POST {w.path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-length: {len(w.body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in w.headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode() + w.body)
        buf = b""

        def need(n: int) -> None:
            nonlocal buf
            while len(buf) < n:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
                buf += chunk

        while b"\r\n\r\n" not in buf:
            need(len(buf) + 1)
        header_bytes, _, buf = buf.partition(b"\r\n\r\n")
        wire = len(header_bytes) + 4
        lines = header_bytes.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body, pos = b"", 0
            while True:
                while b"\r\n" not in buf[pos:]:
                    need(len(buf) + 1)
                eol = buf.index(b"\r\n", pos)
                size = int(buf[pos:eol].split(b";")[0], 16)
                need(eol + 2 + size + 2)
                body += buf[eol + 2:eol + 2 + size]
                pos = eol + 2 + size + 2
                if size == 0:
                    break
            wire += pos
        elif "content-length" in headers:
            n = int(headers["content-length"])
            need(n)
            body = buf[:n]
            wire += n
        else:
            while chunk := s.recv(65536):
                buf += chunk
            body = buf
            wire += len(buf)
    return status, headers, body, wire


def check_answer(w: Workload, status: int, headers: dict[str, str], body: bytes, expected: str) -> str | None:
    """None when the answer is a correct OpenAI answer carrying the expected text; else what is wrong."""
    if status != 200:
        return f"HTTP {status}: {body[:300]!r}"
    ctype = headers.get("content-type", "")
    if w.name == "chat":
        if "application/json" not in ctype:
            return f"content-type {ctype!r}"
        try:
            obj = json.loads(body)
            text = obj["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return f"not an OpenAI chat.completion: {body[:300]!r}"
        if obj.get("object") != "chat.completion":
            return f"object is {obj.get('object')!r}"
    else:
        if "text/event-stream" not in ctype:
            return f"content-type {ctype!r}: {body[:300]!r}"
        parts, done = [], False
        for event in body.decode("utf-8", "replace").replace("\r\n", "\n").split("\n\n"):
            data = "\n".join(ln[5:].lstrip() for ln in event.split("\n") if ln.startswith("data:"))
            if not data:
                continue
            if data == "[DONE]":
                done = True
                continue
            try:
                chunk = json.loads(data)
            except ValueError:
                return f"unreadable SSE data: {data[:200]!r}"
            if "error" in chunk:
                return f"error event: {data[:300]}"
            if chunk.get("object") != "chat.completion.chunk":
                return f"not an OpenAI chunk: {data[:200]}"
            for c in chunk.get("choices") or []:
                parts.append((c.get("delta") or {}).get("content") or "")
        if not done:
            return "the stream did not end with data: [DONE]"
        text = "".join(parts)
    if text != expected:
        return f"wrong content: {text[:120]!r} (expected {expected[:120]!r})"
    return None


def verify(port: int, w: Workload, data: dict[str, bytes], tries: int = 3) -> tuple[str | None, int]:
    expected = payloads.expected_text(w.answer, data[w.answer])
    sizes = []
    for _ in range(tries):
        try:
            status, headers, body, wire = http_request(port, w)
        except OSError as e:  # includes timeouts: an answer shorter than its framing
            return f"request failed or answer incomplete: {e!r}", 0
        problem = check_answer(w, status, headers, body, expected)
        if problem:
            return problem, 0
        sizes.append(wire)
    return None, int(statistics.median(sizes))


# --------------------------------------------------------------------------------------------------
# load


WRK_SCRIPT = """-- generated by bench/bench.py
local f = assert(io.open("{body}", "rb")); wrk.body = f:read("*a"); f:close()
wrk.method = "POST"
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('\\nWRKJSON {{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"mean":%.1f,"max":%d}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""


def wrk_files(tag: str, w: Workload) -> Path:
    body = OUT / f"{tag}.body"
    body.write_bytes(w.body)
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in w.headers.items())
    script = OUT / f"{tag}.lua"
    script.write_text(WRK_SCRIPT.format(body=body, headers=headers))
    return script


def run_wrk(port: int, w: Workload, tag: str, seconds: int, connections: int) -> tuple[dict, float]:
    """Fixed concurrency; returns wrk's summary and the load generator's own CPU seconds."""
    script = wrk_files(tag, w)
    cmd = ["taskset", "-c", CPU_LOAD, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
           "-s", str(script), f"http://127.0.0.1:{port}{w.path}"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.read().decode(errors="replace")
    _, _, ru = os.wait4(p.pid, 0)
    p.returncode = 0
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[8:]), ru.ru_utime + ru.ru_stime
    raise RuntimeError(f"wrk failed:\n{out[-2000:]}")


def run_h2load(port: int, w: Workload, tag: str, seconds: int, rate: float, clients: int) -> dict:
    """Fixed request rate, requests evenly spaced: `clients` connections started `spacing` ms apart,
    each sending every clients*spacing ms, so that one request leaves every `spacing` ms (h2load's
    pacing is per connection; without the staggered start all of them would fire at once).
    Percentiles come from h2load's per-request log."""
    spacing = max(1, round(1000 / rate))          # ms between requests (h2load takes whole ms)
    rate = 1000 / spacing
    body = OUT / f"{tag}.body"
    body.write_bytes(w.body)
    logf = OUT / f"{tag}.h2load.tsv"
    logf.unlink(missing_ok=True)                  # h2load appends
    total = max(clients, int(rate * seconds))
    cmd = ["taskset", "-c", CPU_LOAD, "h2load", "--h1", "-t1", "-c", str(clients), "-r", "1", "--rate-period", f"{spacing}ms",
           "--rps", f"{rate / clients:.4f}", "-n", str(total), "-d", str(body), "--log-file", str(logf)]
    for k, v in w.headers.items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(f"http://127.0.0.1:{port}{w.path}")
    started = time.time()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=3 * seconds + 60)
        stdout = r.stdout
    except subprocess.TimeoutExpired as e:
        stdout = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    elapsed = time.time() - started
    lat, bad = [], 0
    for line in (logf.read_text().splitlines() if logf.exists() else []):
        cols = line.split("\t")
        if len(cols) < 3:
            continue
        status, us = int(cols[1]), int(cols[2])
        if 200 <= status < 300:
            lat.append(us)
        else:
            bad += 1
    errored = 0
    for line in stdout.splitlines():
        if line.startswith("requests:"):
            # requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
            nums = [int(x.split()[0]) for x in line.split(":", 1)[1].split(",")]
            errored = nums[4] + nums[5] + nums[6]
    lat.sort()

    def pct(q: float) -> float:
        return float(lat[min(len(lat) - 1, int(q / 100 * len(lat)))]) if lat else float("nan")

    errored += max(0, total - len(lat) - bad - errored)  # never answered (h2load stopped at the time limit)
    return {"rate": rate, "clients": clients, "requests": len(lat), "achieved": len(lat) / elapsed, "bad_status": bad, "errors": errored,
            "p50": pct(50), "p90": pct(90), "p99": pct(99), "mean": statistics.fmean(lat) if lat else float("nan")}


def wait_quiet(pids: list[int]) -> float:
    """Waits until the machine's other processes are quiet; returns the cores they last used."""
    deadline = time.time() + min(QUIET_WAIT, QUIET_BUDGET[0])
    started = time.time()
    while True:
        b0, c0 = system_busy(), sum(cpu_seconds(p) for p in pids)
        time.sleep(1.0)
        others = (system_busy() - b0) - (sum(cpu_seconds(p) for p in pids) - c0)
        if others <= QUIET_MAX or time.time() >= deadline:
            QUIET_BUDGET[0] = max(0, QUIET_BUDGET[0] - (time.time() - started - 1.0))
            if others > QUIET_MAX:
                log(f"  the machine is busy (other processes use {others:.0%} of a core); measuring anyway")
            return others


# --------------------------------------------------------------------------------------------------
# one row


def measure(t: Target, w: Workload, port: int, dut: Proc, mock: Proc, data: dict[str, bytes], admin: int | None) -> dict:
    row = {"target": t.key, "label": t.label, "workload": w.name, "ok": False}
    problem, wire = verify(port, w, data)
    if problem:
        row["failure"] = f"wrong answer before timing: {problem}"
        log(f"  {t.key}/{w.name}: FAILED verification: {problem}")
        return row
    row["bytes_per_answer"] = wire
    tag = f"{t.key}-{w.name}"
    if WARMUP > 0:   # BENCH_WARMUP=0: no warm-up (wrk refuses a zero duration)
        run_wrk(port, w, tag + "-warmup", WARMUP, CONNECTIONS)

    wait_quiet([dut.pid, mock.pid])
    d0, m0, s0, t0 = cpu_seconds(dut.pid), cpu_seconds(mock.pid), system_busy(), time.time()
    perf = None
    if RUN_PERF and t.kind == "envoy" and t.key.startswith("sw-"):
        perf = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-o", str(OUT / f"{tag}.perf.data"), "-p", str(dut.pid),
                                 "--", "sleep", str(max(1, SECONDS - 1))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res, wrk_cpu = run_wrk(port, w, tag, SECONDS, CONNECTIONS)
    wall = time.time() - t0
    d_cpu, m_cpu, s_busy = cpu_seconds(dut.pid) - d0, cpu_seconds(mock.pid) - m0, system_busy() - s0
    if perf:
        perf.wait()
    n = res["requests"]
    errors = {k: res[k] for k in ("connect", "read", "write", "status", "timeout") if res[k]}
    bpr = res["bytes"] / n if n else 0
    row["fixed_concurrency"] = {
        "connections": CONNECTIONS, "seconds": res["duration_us"] / 1e6, "requests": n,
        "rps": n / (res["duration_us"] / 1e6) if n else 0.0,
        "p50": res["p50"], "p90": res["p90"], "p99": res["p99"], "mean": res["mean"], "max": res["max"],
        "errors": errors, "bytes_per_response": bpr,
        "cpu_us_per_request": d_cpu / n * 1e6 if n else float("nan"),
        "dut_cpu_util": d_cpu / wall, "mock_cpu_util": m_cpu / wall, "loadgen_cpu_util": wrk_cpu / wall,
        "other_cpu_util": max(0.0, (s_busy - d_cpu - m_cpu - wrk_cpu) / wall),
    }
    if errors:
        row["failure"] = f"errors during the fixed-concurrency run: {errors}"
    elif n == 0:
        row["failure"] = "no request completed"
    elif not 0.8 * wire <= bpr <= 1.25 * wire:
        row["failure"] = f"answers of {bpr:.0f} bytes on average under load, {wire} when verified"

    rate = RATE
    if t.kind in ("litellm", "portkey") and n:
        # A peer that cannot sustain the rate is measured at half its own fixed-concurrency throughput.
        rate = min(RATE, max(1.0, round(row["fixed_concurrency"]["rps"] / 2, 1)))
    wait_quiet([dut.pid, mock.pid])
    s0, t0 = system_busy(), time.time()
    d0, m0 = cpu_seconds(dut.pid), cpu_seconds(mock.pid)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    fr = run_h2load(port, w, tag + "-rate", SECONDS, rate, RATE_CLIENTS if t.kind in ("envoy", "fleet") else 2 * RATE_CLIENTS)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    h2_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    fr["dut_cpu_util"] = (cpu_seconds(dut.pid) - d0) / (time.time() - t0)
    fr["other_cpu_util"] = max(0.0, (system_busy() - s0 - (cpu_seconds(dut.pid) - d0) - (cpu_seconds(mock.pid) - m0)
                                     - h2_cpu) / (time.time() - t0))
    row["fixed_rate"] = fr
    if (fr["bad_status"] or fr["errors"]) and "failure" not in row:
        row["failure"] = f"errors during the fixed-rate run: {fr['bad_status']} bad statuses, {fr['errors']} failed"
    # A lone client: one connection, one request at a time. Nothing queues, so the latency is the
    # request's own path through the system: the cleanest measure of what a gateway adds.
    wait_quiet([dut.pid, mock.pid])
    single, _ = run_wrk(port, w, tag + "-single", SINGLE_SECONDS, 1)
    row["single"] = {"requests": single["requests"], "p50": single["p50"], "p90": single["p90"], "p99": single["p99"],
                     "mean": single["mean"]}
    serr = {k: single[k] for k in ("connect", "read", "write", "status", "timeout") if single[k]}
    if serr and "failure" not in row:
        row["failure"] = f"errors during the single-connection run: {serr}"
    row["peak_rss_kib"] = rss_kib(dut.pid)
    if admin:
        row["envoy_stats"] = envoy_stats(admin)
    row["ok"] = "failure" not in row
    fc = row["fixed_concurrency"]
    log(f"  {t.key}/{w.name}: {fc['rps']:.0f} req/s, p50 {fc['p50'] / 1000:.2f} ms, {fc['cpu_us_per_request']:.0f} µs CPU/req "
        f"(DUT {fc['dut_cpu_util']:.0%}, mock {fc['mock_cpu_util']:.0%}, wrk {fc['loadgen_cpu_util']:.0%}, "
        f"others {fc['other_cpu_util']:.0%}); at {fr['rate']:.0f}/s: p50 {fr['p50'] / 1000:.2f} ms; "
        f"lone requests: p50 {row['single']['p50'] / 1000:.2f} ms"
        + ("" if row["ok"] else f"  FAILED: {row['failure']}"))
    return row


# --------------------------------------------------------------------------------------------------
# memory per worker


MEMORY_WORKERS = (1, 2, 4)


def memory_per_worker(data: dict[str, bytes], targets: dict[str, Target]) -> dict:
    """Anonymous resident memory (RssAnon: heap, V8, wasm linear memory; not the binary's file pages)
    after a short mixed load at --concurrency 1, 2 and 4. The growth per added worker is what a
    worker costs; minus plain Envoy's, it is the filters' share per worker."""
    out: dict[str, dict[int, int]] = {}
    for config, keys in (("envoy.yaml", ["envoy"]), ("noop2.yaml", ["noop2"]), ("switchyard.yaml", ["sw-openai", "sw-anthropic"])):
        out[config] = {}
        for conc in MEMORY_WORKERS:
            proc = start_envoy(f"mem-{config}-{conc}", config, None, DUT_ADMIN, conc)
            try:
                for key in keys:
                    for w in targets[key].workloads:
                        run_wrk(DUT_PORT, w, f"mem-{key}-{w.name}", 2, 16)
                time.sleep(0.5)
                out[config][conc] = rss_kib(proc.pid, "RssAnon")
            finally:
                proc.stop()
    res: dict = {"rss_anon_kib": out, "workers": list(MEMORY_WORKERS)}
    lo, hi = MEMORY_WORKERS[0], MEMORY_WORKERS[-1]
    base = out["envoy.yaml"]
    base_slope = (base[hi] - base[lo]) / (hi - lo)
    for config in ("noop2.yaml", "switchyard.yaml"):
        c = out[config]
        res[config] = {
            "first_worker_kib": c[lo] - base[lo],  # with the main thread's VM
            "per_extra_worker_kib": (c[hi] - c[lo]) / (hi - lo) - base_slope,
        }
    log(f"memory: {res}")
    return res


# --------------------------------------------------------------------------------------------------
# main


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for f in OUT.glob("*"):
        if f.is_file():
            f.unlink()
    for tool in ("wrk", "h2load", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found (scripts/bench installs it)")
    if not WASM_PATH.exists():
        sys.exit(f"bench: {WASM_PATH} missing (scripts/bench builds it)")
    data = payloads.write()
    write_configs(data)
    targets = build_targets(data)
    by_key = {t.key: t for t in targets}
    selected = [t for t in targets if not ONLY or t.key in ONLY or t.key == "envoy"]
    if not RUN_PEERS:
        selected = [t for t in selected if t.kind not in ("tensorzero", "litellm", "portkey")]

    started = time.time()
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "dirty": bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                     capture_output=True, text=True).stdout.strip()),
        "cpu": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name")), platform.processor()),
        "cores": os.cpu_count(), "kernel": platform.release(),
        "envoy": (subprocess.run([str(ENVOY), "--version"], capture_output=True, text=True).stdout.strip().split("version:")[-1].strip().split("/") + ["", "?"])[1],
        "wasm_bytes": WASM_PATH.stat().st_size,
        "settings": {"seconds": SECONDS, "warmup": WARMUP, "connections": CONNECTIONS, "rate": RATE,
                     "rate_clients": RATE_CLIENTS, "single_seconds": SINGLE_SECONDS, "cpu_dut": CPU_DUT, "cpu_load": CPU_LOAD},
        "tools": {"wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0].strip(),
                  "h2load": subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.strip()},
        "peers": peer_versions() if RUN_PEERS else {},
        "payload_bytes": {k: len(v) for k, v in data.items()},
    }
    peer_status = {}
    for name in ("tensorzero", "litellm", "portkey"):
        note = OUT.parent / ".peers" / f"{name}.status"
        if note.exists():
            peer_status[name] = note.read_text().strip()
    rows = []
    mock = start_envoy("mock", "mock.yaml", CPU_LOAD, MOCK_ADMIN)
    try:
        i = 0
        while i < len(selected):
            t = selected[i]
            if t.kind == "skip":
                log(f"{t.key}: {t.note}")
                rows.append({"target": t.key, "label": t.label, "workload": "-", "ok": False, "skipped": t.note})
                i += 1
                continue
            group = [t]
            while t.kind in ("tensorzero", "litellm", "portkey") and i + len(group) < len(selected) and selected[i + len(group)].kind == t.kind:
                group.append(selected[i + len(group)])
            i += len(group)
            log(f"{', '.join(g.key for g in group)}: starting")
            try:
                if t.kind == "envoy":
                    dut, port, admin = start_envoy(t.key, t.config, CPU_DUT, DUT_ADMIN), DUT_PORT, DUT_ADMIN
                elif t.kind == "fleet":
                    dut, port, admin = start_fleet(t.key, t.config, CPU_DUT, DUT_ADMIN), DUT_PORT, DUT_ADMIN
                elif t.kind == "tensorzero":
                    (dut, port), admin = start_tensorzero(), None
                elif t.kind == "litellm":
                    dut, port, admin = start_litellm(), LITELLM_PORT, None
                else:
                    dut, port, admin = start_portkey(), PORTKEY_PORT, None
            except RuntimeError as e:
                log(f"  could not start: {e}")
                peer_status.setdefault(t.kind, f"did not start: {str(e).splitlines()[0]}")
                for g in group:
                    rows.append({"target": g.key, "label": g.label, "workload": "-", "ok": False, "skipped": f"did not start: {e}"})
                continue
            try:
                for g in group:
                    for w in g.workloads:
                        rows.append(measure(g, w, port, dut, mock, data, admin))
            finally:
                dut.stop()
            if t.kind in ("tensorzero", "litellm", "portkey"):
                errors = peer_log_errors(dut)
                if errors:
                    peer_status[f"{t.kind}_log"] = errors
        memory = memory_per_worker(data, by_key) if RUN_MEMORY else None
    finally:
        mock.stop()
    meta["duration_s"] = round(time.time() - started)
    result = {"meta": meta, "rows": rows, "memory": memory, "peer_status": peer_status}
    (BENCH / "results.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    import report  # noqa: E402  (matplotlib is only in the bench venv)
    report.write(result, BENCH / "results.md", BENCH / "results.png")
    log(f"done in {meta['duration_s']} s: bench/results.md, bench/results.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
