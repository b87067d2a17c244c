"""Gateways with virtual keys for the end-to-end tests of keys, rate limits, budgets and cost
(``test_keys.py``): Envoy running envoy/demo.yaml with an ``auth`` object injected into the gateway
plugin's JSON configuration, its own mock providers, and helpers to restart it (cold and hot) or to
serve its listener over LDS from a file so that its configuration can be reloaded.

    from keys_gateway import KeysGateway, key_hash
    kg = KeysGateway.start(workdir, auth={"keys": [{"id": "k", "sha256": key_hash("sk-sy-k")}]})
    ...
    problems = kg.stop()          # [] when Envoy stayed alive and no wasm VM crashed
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path

import requests
import yaml

import harness


# Envoy writes access logs every 10 s by default; the tests read them right after a request.
FLUSH_ARGS = ("--file-flush-interval-msec", "50")


def key_hash(key: str) -> str:
    """What goes in a key's ``sha256``: the lower-case hex SHA-256 of the key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------------
# gateways


class KeysGateway:
    """Mocks + one Envoy (harness.Gateway) with an ``auth`` policy. ``gw`` is the harness.Gateway."""

    def __init__(self, workdir: Path, gw: harness.Gateway, mocks: harness.Mocks, wasm: Path):
        self.workdir = Path(workdir)
        self.gw = gw
        self.mocks = mocks
        self.wasm = wasm
        self.retired: list[harness.Gateway] = []   # earlier processes (restarts), stopped at the end

    @classmethod
    def start(cls, workdir: Path, auth: dict | None = None, *, gateway_config: dict | None = None,
              gateway_cls=harness.Gateway) -> "KeysGateway":
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        wasm = harness.build_wasm()
        mocks = harness.Mocks(workdir).start()
        fields = dict(gateway_config or {})
        if auth is not None:
            fields["auth"] = auth
        gw = gateway_cls(workdir, mocks, gateway_config=fields)
        gw.envoy_args = list(FLUSH_ARGS)
        try:
            gw.start(wasm)
        except BaseException:
            gw.stop()
            mocks.stop()
            raise
        return cls(workdir, gw, mocks, wasm)

    # -- lifecycle
    def restart(self) -> None:
        """Cold restart: stop Envoy, start a new process with the same configuration and ports."""
        self.gw.stop()
        old = self.gw
        new = copy.copy(old)
        new.proc = None
        new.envoy_args = list(FLUSH_ARGS)
        new.start(self.wasm)
        self.retired.append(old)
        self.gw = new

    def hot_restart(self, epoch: int = 1) -> None:
        """Envoy hot restart: a new process (``--restart-epoch``) with the same base id takes the
        listening sockets over from the running one, which drains and exits."""
        old = self.gw
        new = copy.copy(old)
        new.proc = None
        new.envoy_args = [*FLUSH_ARGS, "--restart-epoch", str(epoch), "--drain-time-s", "0",
                          "--parent-shutdown-time-s", "1"]
        new.start(self.wasm)
        self.retired.append(old)
        self.gw = new
        # /ready may still be answered by the old process: wait for the new epoch's admin, then for
        # the old process to hand over and exit (--parent-shutdown-time-s).
        harness.wait_until(
            lambda: new.stats("server.hot_restart_epoch").get("server.hot_restart_epoch") == epoch,
            30, f"hot restart epoch {epoch} serving admin", new.proc, new.log_path)
        harness.wait_until(lambda: old.proc.poll() is not None, 30,
                           "the old Envoy to exit after the hot restart", new.proc, new.log_path)

    def stop(self) -> list[str]:
        """Stops everything; returns the end-of-run problems (Envoy dead, wasm failure stat, VM
        crash in the log) found before stopping, like the session ``gateway`` fixture."""
        problems: list[str] = []
        try:
            problems = self.gw.problems()
            for old in self.retired:
                problems += [f"(earlier process) {p}" for p in old.wasm_crashes()
                             if p not in problems]
            if problems:
                problems.append(f"--- Envoy log tail ({self.gw.log_path}) ---\n"
                                f"{self.gw.log_tail(60)}")
        finally:
            for g in [*self.retired, self.gw]:
                g.stop()
            self.mocks.stop()
        return problems

    # -- requests
    @property
    def base_url(self) -> str:
        return self.gw.base_url

    def chat(self, key: str | None, body: dict, *, headers: dict | None = None,
             stream: bool = False, timeout: float = 30) -> requests.Response:
        h = {"content-type": "application/json"}
        if key is not None:
            h["authorization"] = f"Bearer {key}"
        h.update(headers or {})
        return requests.post(self.gw.base_url + "/chat/completions", data=json.dumps(body),
                             headers=h, stream=stream, timeout=timeout)

    def access_log(self) -> list[dict]:
        """The JSON access-log lines written so far."""
        out = []
        try:
            text = Path(self.gw.access_log_path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return out
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def log_lines(self, key_id: str, *, count: int = 1, timeout: float = 5.0) -> list[dict]:
        """Access-log lines of a key, waiting until there are at least ``count``."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [r for r in self.access_log() if r.get("key_id") == key_id]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)


# --------------------------------------------------------------------------------------------------
# the listener over LDS (a configuration that can be reloaded)


class LdsGateway(harness.Gateway):
    """envoy/demo.yaml with its listener moved to an LDS file that Envoy watches
    (``dynamic_resources.lds_config.path_config_source``): ``update_gateway(...)`` rewrites the
    gateway plugin's JSON (and optionally its VM settings) and waits until Envoy applied it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lds_dir = self.workdir / "lds"
        self.lds_path = self.lds_dir / "listeners.yaml"
        self.lds_version = 0
        self.listener: dict | None = None

    def render(self) -> str:
        doc = yaml.safe_load(super().render())
        listeners = doc["static_resources"].pop("listeners")
        assert len(listeners) == 1, listeners
        self.listener = listeners[0]
        doc["node"] = {"id": "switchyard-e2e", "cluster": "switchyard-e2e"}
        doc["dynamic_resources"] = {"lds_config": {
            "resource_api_version": "V3",
            "path_config_source": {"path": str(self.lds_path),
                                   "watched_directory": {"path": str(self.lds_dir)}}}}
        self.lds_dir.mkdir(parents=True, exist_ok=True)
        self._write_lds()
        return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)

    def _write_lds(self) -> None:
        self.lds_version += 1
        listener = dict(self.listener, **{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener"})
        text = yaml.safe_dump({"version_info": str(self.lds_version), "resources": [listener]},
                              sort_keys=False, default_flow_style=False)
        tmp = self.lds_dir / f".listeners.{self.lds_version}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.lds_path)   # an atomic move: what Envoy's file watch expects

    def _gateway_wasm(self) -> dict:
        for node in harness._walk_nodes(self.listener):
            cfg = node.get("configuration")
            if isinstance(cfg, dict) and isinstance(cfg.get("value"), str) \
                    and '"gateway"' in cfg["value"]:
                if json.loads(cfg["value"]).get("role") == "gateway":
                    return node
        raise AssertionError("no gateway plugin in the listener")

    def gateway_plugin_config(self) -> dict:
        return json.loads(self._gateway_wasm()["configuration"]["value"])

    def update_gateway(self, plugin_config: dict | None = None, vm_config: dict | None = None,
                       timeout: float = 20.0) -> None:
        """Reload: new gateway plugin JSON and/or fields merged into its vm_config; returns once
        ``listener_manager.lds.update_success`` moved and the new listener is serving."""
        node = self._gateway_wasm()
        if plugin_config is not None:
            node["configuration"] = dict(node["configuration"], value=json.dumps(plugin_config))
        if vm_config is not None:
            node["vm_config"] = dict(copy.deepcopy(node["vm_config"]), **vm_config)
        before = self.stats("listener_manager").get("listener_manager.lds.update_success", 0)
        modified = self.stats("listener_manager").get("listener_manager.listener_modified", 0)
        self._write_lds()
        harness.wait_until(
            lambda: self.stats("listener_manager").get("listener_manager.lds.update_success", 0)
            > before and self.stats("listener_manager").get(
                "listener_manager.listener_modified", 0) > modified
            and self.stats("listener_manager").get("listener_manager.total_listeners_warming", 0)
            == 0,
            timeout, "LDS update applied", self.proc, self.log_path)
