"""scripts/package: the filter as an OCI image in the Wasm image spec's "compat" variant (what
Istio's WasmPlugin and Envoy Gateway pull), checked with skopeo (Debian's, installed by
scripts/setup): reproducible bytes, layout and digests that skopeo reads and verifies, one
tar+gzip layer holding exactly plugin.wasm, and a corrupted blob refused."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import harness

SKOPEO = shutil.which("skopeo")


def package(wasm: Path, out: Path, tag: str = "test") -> dict:
    p = subprocess.run([sys.executable, str(harness.REPO / "scripts" / "package"), "--wasm", str(wasm),
                        "--out", str(out), "--tag", tag], capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def wasm() -> Path:
    return harness.build_wasm()


def test_skopeo_is_installed():
    assert SKOPEO, "skopeo is missing: scripts/setup installs it (apt-get install skopeo)"


def test_the_image_is_reproducible(wasm, tmp_path):
    a = package(wasm, tmp_path / "a")
    b = package(wasm, tmp_path / "b")
    assert a["manifest"] == b["manifest"] and a["layer"] == b["layer"]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    # Another module, another image.
    other = tmp_path / "other.wasm"
    other.write_bytes(wasm.read_bytes() + b"\0")
    assert package(other, tmp_path / "c")["manifest"] != a["manifest"]


def test_skopeo_reads_and_verifies_the_image(wasm, tmp_path):
    info = package(wasm, tmp_path / "oci", tag="0.1.0")
    ref = f"oci:{tmp_path / 'oci'}:0.1.0"
    raw = json.loads(subprocess.run([SKOPEO, "inspect", "--raw", ref], capture_output=True, text=True,
                                    check=True).stdout)
    assert raw["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert raw["annotations"] == {"module.wasm.image/variant": "compat"}
    assert [l["mediaType"] for l in raw["layers"]] == ["application/vnd.oci.image.layer.v1.tar+gzip"]
    assert raw["layers"][0]["digest"] == info["layer"]
    inspect = json.loads(subprocess.run([SKOPEO, "inspect", ref], capture_output=True, text=True,
                                        check=True).stdout)
    assert inspect["Digest"] == info["manifest"]
    # skopeo copy checks every blob against its digest.
    out = tmp_path / "copy"
    subprocess.run([SKOPEO, "copy", "--quiet", ref, f"dir:{out}"], capture_output=True, text=True, check=True)
    layer = (out / info["layer"].split(":", 1)[1]).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        assert tar.getnames() == ["plugin.wasm"]
        member = tar.extractfile("plugin.wasm").read()
    assert hashlib.sha256(member).hexdigest() == hashlib.sha256(wasm.read_bytes()).hexdigest()
    assert member[:4] == b"\0asm"


def test_a_corrupted_blob_is_refused(wasm, tmp_path):
    info = package(wasm, tmp_path / "oci")
    blob = tmp_path / "oci" / "blobs" / "sha256" / info["layer"].split(":", 1)[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    p = subprocess.run([SKOPEO, "copy", "--quiet", f"oci:{tmp_path / 'oci'}:test", f"dir:{tmp_path / 'copy'}"],
                       capture_output=True, text=True)
    assert p.returncode != 0
    assert "Digest did not match" in p.stderr or "digest" in p.stderr.lower(), p.stderr
