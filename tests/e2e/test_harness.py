"""Checks of the harness itself (no Envoy needed): config rewriting and failure detection."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import harness


def _walk_keys(node):
    if isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from _walk_keys(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_keys(v)


def _port_values(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "port_value":
                yield v
            else:
                yield from _port_values(v)
    elif isinstance(node, list):
        for v in node:
            yield from _port_values(v)


@pytest.mark.skipif(not harness.DEMO_CONFIG.is_file(), reason="envoy/demo.yaml not there yet")
def test_render_demo_config():
    wasm = Path("/abs/path/switchyard.wasm")
    text, counts = harness.render_config(harness.DEMO_CONFIG.read_text(), 41000, 41001, 41002,
                                         41003, wasm, more=41004)
    assert all(counts[k] >= 1
               for k in ("listener", "admin", "openai", "anthropic", "more", "wasm"))
    doc = yaml.safe_load(text)
    assert "outlier_detection" not in set(_walk_keys(doc))
    ports = set(_port_values(doc))
    assert ports <= {41000, 41001, 41002, 41003, 41004}, ports
    # Without the more mock's port the config still renders (other configs need not have it).
    text, counts = harness.render_config(harness.DEMO_CONFIG.read_text(), 41000, 41001, 41002,
                                         41003, wasm)
    assert "more" not in counts
    assert str(wasm) in text and harness.WASM_REL not in text.replace(str(wasm), "")


def test_render_config_requires_every_replacement():
    good = (f"a: {{port_value: 10000}}\nb: {{port_value: 9901}}\nc: {{port_value: 18001}}\n"
            f"d: {{port_value: 18002}}\ne: {{filename: {harness.WASM_REL}}}\n"
            "f: {outlier_detection: {consecutive_5xx: 1}, x: [{outlier_detection: {}}]}\n")
    text, counts = harness.render_config(good, 1, 2, 3, 4, Path("/w.wasm"))
    assert counts["outlier_detection_removed"] == 2
    assert yaml.safe_load(text)["e"]["filename"] == "/w.wasm"
    for missing in ("port_value: 18002", f"filename: {harness.WASM_REL}", "port_value: 9901"):
        with pytest.raises(AssertionError):
            harness.render_config(good.replace(missing, "z: 0"), 1, 2, 3, 4, Path("/w.wasm"))
    # port_value: 100000 / 99010 must not be mistaken for 10000 / 9901
    with pytest.raises(AssertionError):
        harness.render_config(good.replace("port_value: 10000", "port_value: 100000"),
                              1, 2, 3, 4, Path("/w.wasm"))


def test_wasm_failure_stats():
    stats = harness.parse_stats(
        "wasm.envoy.wasm.runtime.v8.active: 4\n"
        "wasm.envoy.wasm.runtime.v8.created: 6\n"
        "wasm.remote_load_fetch_failures: 0\n"
        "wasm.switchyard-gateway.vm_reload: 0\n"
        "wasm.switchyard-gateway.vm_reload_failure: 0\n"
        "cluster.x.upstream_rq_time: P0(nan,1) P25(nan,2)\n"
        "some.text_readout: \"abc\"\n")
    assert stats["wasm.envoy.wasm.runtime.v8.created"] == 6
    assert "cluster.x.upstream_rq_time" not in stats
    assert harness.wasm_failure_stats(stats) == {}
    stats.update({"wasm.switchyard-backend.vm_reload_backoff": 2,
                  "wasm.remote_load_fetch_failures": 1,
                  "wasm.envoy.wasm.runtime.v8.crashed": 1,
                  "wasm.x.on_request_failed": 3,
                  "cluster.x.upstream_rq_failed": 7})
    assert set(harness.wasm_failure_stats(stats)) == {
        "wasm.switchyard-backend.vm_reload_backoff", "wasm.remote_load_fetch_failures",
        "wasm.envoy.wasm.runtime.v8.crashed", "wasm.x.on_request_failed"}


def test_wasm_crash_lines():
    # Real lines from Envoy 1.40 when a filter panics (no stat counts this).
    log = (
        "[2026-11-26 01:58:01.674][9558][info][main] [source/server/server.cc:1098] starting main "
        "dispatch loop\n"
        "[2026-11-26 01:58:02.456][9570][critical][wasm] [source/extensions/common/wasm/context.cc:"
        "1160] wasm log switchyard switchyard switchyard: panicked at src/lib.rs:17:72:\n"
        "boom\n"
        "[2026-11-26 01:58:02.457][9570][error][wasm] [source/extensions/common/wasm/wasm_vm.cc:38] "
        "Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable\n")
    lines = harness.wasm_crash_lines(log)
    assert len(lines) == 2 and "panicked at" in lines[0] and "proxy_on_request_headers" in lines[1]
    assert harness.wasm_crash_lines("[info][wasm] wasm log switchyard: all good\n") == []
