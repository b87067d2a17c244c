"""pytest fixtures for Switchyard's end-to-end tests (real Envoy + wasm + mock providers).

Session fixtures
  mocks    the mock providers only (tests/mocks/providers.py) on free ports: ``.openai_url``,
           ``.anthropic_url``, ``.requests(which)``, ``.clear(which=None)``. Cheap; no Envoy.
  gateway  builds the wasm, starts Envoy with envoy/demo.yaml rewritten to free ports, and checks at
           session end that Envoy is still alive and no wasm VM failure stat is non-zero.
           Attributes: base_url (http://127.0.0.1:PORT/v1), gateway_url, admin_url,
           openai_mock_url, anthropic_mock_url, log_path, config_path, workdir, wasm_path;
           methods: mock_requests(which), clear_mocks(), stats(filter=None), stats_text(),
           prometheus(), log_tail(lines), wasm_failures(), alive().
  client   openai.OpenAI(base_url=gateway.base_url, api_key="sk-client-virtual-key", max_retries=0)

Tests that use ``gateway`` get the mocks' request logs cleared before they run, and error at
teardown if the Envoy log shows a wasm VM panic/trap while they ran (Envoy 1.40 keeps no stat for
that; see harness.WASM_CRASH_LOG).
When a test that uses ``gateway`` fails, the tail of the Envoy log is attached to its report.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

CLIENT_API_KEY = "sk-client-virtual-key"

_state: dict = {"workdir": None, "failed": False, "gateway": None}


def _workdir() -> Path:
    if _state["workdir"] is None:
        _state["workdir"] = Path(tempfile.mkdtemp(prefix="switchyard-e2e-"))
    return _state["workdir"]


@pytest.fixture(scope="session")
def mocks():
    m = harness.Mocks(_workdir()).start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="session")
def gateway(mocks):
    try:
        wasm = harness.build_wasm()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    gw = harness.Gateway(_workdir(), mocks)
    try:
        gw.start(wasm)
    except Exception as e:  # noqa: BLE001
        gw.stop()
        pytest.fail(f"could not start Envoy: {e}\n(config: {gw.config_path}, log: {gw.log_path})",
                    pytrace=False)
    _state["gateway"] = gw
    problems: list[str] = []
    try:
        yield gw
        problems = gw.problems()
        if problems:
            problems.append(f"--- Envoy log tail ({gw.log_path}) ---\n{gw.log_tail(60)}")
    finally:
        _state["gateway"] = None
        gw.stop()
    if problems:
        _state["failed"] = True
        pytest.fail("end-of-session gateway check failed:\n  " + "\n  ".join(problems),
                    pytrace=False)


@pytest.fixture(scope="session")
def client(gateway):
    import openai

    c = openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_API_KEY, max_retries=0,
                      timeout=60)
    yield c
    c.close()


@pytest.fixture(autouse=True)
def _gateway_test_guard(request):
    """For tests using `gateway`: clear the mocks' request logs first; afterwards fail the test
    (as a teardown error) if the Envoy log shows a wasm VM panic/trap during it."""
    if "gateway" not in request.fixturenames:
        yield
        return
    gw = request.getfixturevalue("gateway")
    gw.clear_mocks()
    offset = gw.log_offset()
    yield
    time.sleep(0.05)  # let Envoy write what the last request logged
    crashes = gw.wasm_crashes(since=offset)
    if crashes:
        pytest.fail("wasm VM crashed during this test:\n  " + "\n  ".join(crashes),
                    pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        _state["failed"] = True
        gw = _state.get("gateway")
        if gw is not None and "gateway" in getattr(item, "fixturenames", ()):
            rep.sections.append((f"Envoy log tail ({gw.log_path})", gw.log_tail(80)))


def pytest_sessionfinish(session, exitstatus):
    wd = _state.get("workdir")
    if wd is None:
        return
    keep = _state["failed"] or exitstatus != 0
    if keep:
        sys.stderr.write(f"\nswitchyard e2e: logs and rendered config kept in {wd}\n")
    harness.cleanup_workdir(wd, keep)


@pytest.fixture(scope="module")
def mocks_only():
    """The mock providers only, for a module that starts Envoys of its own (test_render, test_istio)."""
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-mocks-"))
    m = harness.Mocks(workdir).start()
    yield m
    m.stop()
