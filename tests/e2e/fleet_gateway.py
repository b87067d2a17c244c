"""A fleet for the end-to-end tests of shared limits and budgets (``test_fleet.py``): a real
``redis-server`` on a free port, Switchyard's rate limit service (``tools/rls``) on it, and any
number of Envoys rendered from examples/demo.yaml with an ``auth`` policy with ``"ledger": "fleet"``
and ``fleet: {rate_limit_service}`` (which renders envoy/fleet.yaml's pieces). The limits file of the service is written by the command line from
that same gateway configuration (``switchyard fleet-limits``).

    fleet = Fleet.start(workdir, auth, envoys=2)
    fleet.envoys[0].base_url, fleet.envoys[1].base_url
    fleet.stop_redis(); fleet.start_redis()      # the service's storage goes away and comes back
    problems = fleet.stop()
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import yaml

import harness
from keys_gateway import LdsGateway

REPO = harness.REPO
FLEET_YAML = REPO / "envoy" / "fleet.yaml"
RLS_DIR = REPO / "tools" / "rls"
RLS_BIN = RLS_DIR / "target" / "release" / "switchyard-rls"
FLUSH_ARGS = ("--file-flush-interval-msec", "50")


def redis_server() -> str:
    path = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(path).exists():
        raise RuntimeError("redis-server is not installed (scripts/setup installs Debian's redis-server)")
    return path


def build_rls() -> Path:
    """The service's binary (scripts/test builds it first; built here when missing)."""
    if not RLS_BIN.exists():
        subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path",
                        str(RLS_DIR / "Cargo.toml")], check=True, cwd=REPO)
    return RLS_BIN


def fleet_limits(gateway_json: Path) -> str:
    """``switchyard fleet-limits``: the service's limits from the gateway configuration."""
    out = subprocess.run(["cargo", "run", "--quiet", "--bin", "switchyard", "--", "fleet-limits",
                          str(gateway_json)], cwd=REPO, check=True, capture_output=True, text=True)
    return out.stdout


class FleetEnvoy(harness.Gateway):
    """An Envoy rendered by `switchyard render` from examples/demo.yaml with the fleet's ``auth``
    (``ledger: fleet``) and ``fleet: {rate_limit_service}``: the renderer adds envoy/fleet.yaml's
    rate limit filters, descriptors, local replies and the service's cluster."""

    rls_port: int = 0

    def render(self) -> str:
        doc = harness.local_gateway_file(harness.demo_gateway_file(), self.listener_port,
                                         self.admin_port, self.mocks, self.wasm_path,
                                         self.access_log_path)
        doc["auth"] = (self.gateway_config or {})["auth"]
        doc["fleet"] = {"rate_limit_service": f"127.0.0.1:{self.rls_port}"}
        self.replacements = {"gateway_file": str(harness.DEMO_GATEWAY_FILE)}
        return harness.render_gateway_file(doc, workdir=self.workdir)


class FleetLdsEnvoy(LdsGateway, FleetEnvoy):
    """A fleet Envoy whose listener is served over LDS from a watched file, so that its gateway
    configuration (keys) can be reloaded without a restart (``update_gateway``)."""


class Fleet:
    def __init__(self, workdir: Path, auth: dict):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.auth = dict(auth, ledger="fleet")
        self.redis_port, self.rls_port = harness.free_ports(2)
        self.redis: subprocess.Popen | None = None
        self.rls: subprocess.Popen | None = None
        self.mocks: harness.Mocks | None = None
        self.envoys: list[FleetEnvoy] = []
        self.retired: list[FleetEnvoy] = []
        self.wasm: Path | None = None
        self.limits_path = self.workdir / "limits.yaml"

    @classmethod
    def start(cls, workdir: Path, auth: dict, envoys: int = 2) -> "Fleet":
        f = cls(workdir, auth)
        try:
            f.start_redis()
            f.write_limits()
            f.start_rls()
            f.wasm = harness.build_wasm()
            f.mocks = harness.Mocks(f.workdir).start()
            for i in range(envoys):
                f.envoys.append(f._start_envoy(i))
        except BaseException:
            f.stop()
            raise
        return f

    # -- pieces
    def start_redis(self) -> None:
        cmd = [redis_server(), "--port", str(self.redis_port), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        self.redis = harness.start_process(cmd, self.workdir / "redis.log")
        harness.wait_until(lambda: harness.port_accepts(self.redis_port), 20, "redis-server",
                           self.redis, self.workdir / "redis.log")

    def stop_redis(self) -> None:
        harness.stop_process(self.redis)
        self.redis = None

    def gateway_json(self) -> dict:
        doc = yaml.safe_load(Path(harness.DEMO_CONFIG).read_text(encoding="utf-8"))
        (_, plugin), = harness.plugin_configs(doc, "gateway")
        return dict(plugin, auth=self.auth)

    def write_limits(self, auth: dict | None = None) -> str:
        """Writes the service's limits file from the gateway configuration (with ``auth`` if given:
        a change of keys) and returns its text. The service reads it again when it changes."""
        if auth is not None:
            self.auth = dict(auth, ledger="fleet")
        path = self.workdir / "gateway.json"
        path.write_text(json.dumps(self.gateway_json()), encoding="utf-8")
        text = fleet_limits(path)
        tmp = self.workdir / "limits.yaml.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.limits_path)
        return text

    def start_rls(self) -> None:
        cmd = [str(build_rls()), "--config", str(self.limits_path), "--listen",
               f"127.0.0.1:{self.rls_port}", "--redis", f"redis://127.0.0.1:{self.redis_port}"]
        self.rls = harness.start_process(cmd, self.workdir / "rls.log")
        harness.wait_until(lambda: harness.port_accepts(self.rls_port), 20, "switchyard-rls",
                           self.rls, self.workdir / "rls.log")

    def _start_envoy(self, i: int) -> FleetEnvoy:
        d = self.workdir / f"envoy{i}"
        d.mkdir(parents=True, exist_ok=True)
        gw = FleetLdsEnvoy(d, self.mocks, gateway_config={"auth": self.auth})
        gw.rls_port = self.rls_port
        gw.envoy_args = list(FLUSH_ARGS)
        gw.start(self.wasm)
        return gw

    def restart_envoy(self, i: int) -> None:
        """Cold restart of one Envoy: stop the process, start a new one (same ports)."""
        old = self.envoys[i]
        old.stop()
        new = copy.copy(old)
        new.proc = None
        new.start(self.wasm)
        self.retired.append(old)
        self.envoys[i] = new

    def reload(self, auth: dict, timeout: float = 20.0) -> None:
        """Keys changed, no restart: the service's limits file rewritten (it reads it again by
        itself) and every Envoy's gateway configuration reloaded over LDS."""
        log = self.workdir / "rls.log"
        before = log.read_text(errors="replace").count("reloaded")
        self.write_limits(auth)
        harness.wait_until(lambda: log.read_text(errors="replace").count("reloaded") > before,
                           timeout, "switchyard-rls to read its new limits", self.rls, log)
        for gw in self.envoys:
            cfg = gw.gateway_plugin_config()
            cfg["auth"] = self.auth
            gw.update_gateway(plugin_config=cfg, timeout=timeout)

    def stop(self) -> list[str]:
        problems: list[str] = []
        try:
            for gw in self.envoys:
                problems += gw.problems()
            if problems:
                problems += [f"--- Envoy log tail ({g.log_path}) ---\n{g.log_tail(60)}" for g in self.envoys]
        finally:
            for gw in [*self.retired, *self.envoys]:
                gw.stop()
            if self.mocks:
                self.mocks.stop()
            harness.stop_process(self.rls)
            self.stop_redis()
        return problems

