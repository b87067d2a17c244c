"""What istiod and istio-agent would make of `switchyard render --target istio`, emulated offline for
Envoy 1.40 (no cluster, registry, istiod or istio-agent is available here).

- istiod: the EnvoyFilter's patches applied the way Istio applies them (``HTTP_FILTER``
  ``INSERT_BEFORE`` the router, ``HTTP_ROUTE`` ``INSERT_FIRST`` in the virtual host, ``CLUSTER``
  ``ADD``) to a listener shaped like an ingress gateway's; the ``EXTENSION_CONFIG`` ``ADD`` values
  served as ECDS resources by name (istio/istio pilot/pkg/networking/core/envoyfilter/
  extension_configuration_patch.go). Here ECDS is delivered from files (``path_config_source``
  in place of ``ads``): each extension configuration in its own file.
- istio-agent: every ECDS resource holding a Wasm HTTP filter whose ``vm_config.code`` is
  ``remote.http_uri`` is fetched and rewritten to ``code.local.filename`` (pkg/wasm/convert.go);
  its cache (pkg/wasm/cache.go, imagefetcher.go) pulls ``oci://`` images — the compat variant's
  last layer, ``application/vnd.oci.image.layer.v1.tar+gzip``, member ``plugin.wasm`` — and checks
  ``sha256`` against the image's manifest digest, or fetches http(s) and checks the module's
  digest; one file per module name and digest, so two resources with the same URI share one file.
  A failed fetch with ``fail_open: false`` replaces the resource with a deny-all RBAC filter of
  the same name. The "registry" here is scripts/package's OCI image layout, read with skopeo
  (which verifies every blob's digest).
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Callable

import yaml

import harness

WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
TYPED_EXTENSION_CONFIG = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

Fetch = Callable[[str, "str | None"], Path]


class FetchError(Exception):
    pass


class Agent:
    """istio-agent's Wasm module cache, with OCI layouts standing in for registries:
    ``registry`` maps ``host/repository`` to a layout directory (scripts/package's output)."""

    def __init__(self, cache_dir: Path, registry: dict[str, Path] | None = None):
        self.dir = Path(cache_dir)
        self.registry = registry or {}
        # Every module handed over (a URI per successful Get, cached or not).
        self.fetches: list[str] = []

    def _path(self, name: str, digest: str) -> Path:
        d = self.dir / hashlib.sha256(name.encode()).hexdigest()
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{digest}.wasm"

    def fetch(self, uri: str, sha256: str | None) -> Path:
        if uri.startswith("oci://"):
            ref = uri[len("oci://"):]
            if "@" in ref:
                repo, digest = ref.rsplit("@", 1)
                tag = None
                sha256 = sha256 or digest.removeprefix("sha256:")
            else:
                repo, tag = ref.rsplit(":", 1)
            name = "oci://" + repo
            layout = self.registry.get(repo)
            if layout is None:
                raise FetchError(f"could not fetch Wasm OCI image: no registry serves {repo}")
            source = f"oci:{layout}:{tag}" if tag else f"oci:{layout}@{sha256}"
            with tempfile.TemporaryDirectory() as tmp:
                # skopeo copy checks every blob against its digest.
                p = subprocess.run(["skopeo", "copy", "--quiet", source, f"dir:{tmp}/img"],
                                   capture_output=True, text=True)
                if p.returncode != 0:
                    raise FetchError(f"could not fetch manifest: {p.stderr.strip()}")
                raw = Path(tmp, "img", "manifest.json").read_bytes()
                digest = hashlib.sha256(raw).hexdigest()  # go-containerregistry's img.Digest()
                if sha256 and sha256 != digest:
                    raise FetchError(f"module downloaded from {uri} has checksum {digest}, which does not match: {sha256}")
                manifest = json.loads(raw)
                layer = manifest["layers"][-1]
                if layer["mediaType"] != OCI_LAYER:
                    raise FetchError(f"invalid media type {layer['mediaType']} (expect {OCI_LAYER})")
                blob = Path(tmp, "img", layer["digest"].split(":", 1)[1]).read_bytes()
            module = None
            with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
                for m in tar.getmembers():
                    if Path(m.name).name == "plugin.wasm":
                        module = tar.extractfile(m).read()
                        break
            if module is None:
                raise FetchError("plugin.wasm not found in the archive")
        elif uri.startswith(("http://", "https://")):
            name = uri
            with urllib.request.urlopen(uri, timeout=10) as r:
                module = r.read()
            digest = hashlib.sha256(module).hexdigest()
            if sha256 and sha256 != digest:
                raise FetchError(f"module downloaded from {uri} has checksum {digest}, which does not match: {sha256}")
        else:
            raise FetchError(f"unsupported Wasm module downloading URL scheme: {uri}")
        if module[:4] != b"\0asm" or len(module) < 8:
            raise FetchError(f"fetched Wasm binary from {uri} is invalid")
        path = self._path(name, digest)
        if not path.exists():
            path.write_bytes(module)
        self.fetches.append(uri)
        return path


def rewrite(ext: dict, fetch: Fetch) -> dict:
    """istio-agent's rewrite of one ECDS resource (a TypedExtensionConfig as data)."""
    ext = copy.deepcopy(ext)
    tc = ext.get("typed_config", {})
    if tc.get("@type") != WASM:
        return ext
    cfg = tc["config"]
    remote = cfg["vm_config"].get("code", {}).get("remote")
    if remote is None:
        return ext
    try:
        path = fetch(remote["http_uri"]["uri"], remote.get("sha256") or None)
    except FetchError:
        if cfg.get("fail_open"):
            return {"name": ext["name"], "typed_config": {"@type": RBAC, "rules_stat_prefix": "wasm-default-allow"}}
        # Empty rules: deny every request.
        return {"name": ext["name"], "typed_config": {"@type": RBAC, "rules": {}, "rules_stat_prefix": "wasm-default-deny"}}
    cfg["vm_config"]["code"] = {"local": {"filename": str(path)}}
    return ext


def envoy_filter(docs: list[dict]) -> dict:
    kinds = [d["kind"] for d in docs]
    assert kinds.count("EnvoyFilter") == 1, kinds
    return next(d for d in docs if d["kind"] == "EnvoyFilter")


def extension_configs(docs: list[dict]) -> dict[str, dict]:
    out = {}
    for p in envoy_filter(docs)["spec"]["configPatches"]:
        if p["applyTo"] == "EXTENSION_CONFIG":
            assert p["patch"]["operation"] == "ADD", p
            out[p["patch"]["value"]["name"]] = p["patch"]["value"]
    return out


def _ecds_references(node, found: list):
    if isinstance(node, dict):
        if "config_discovery" in node:
            found.append(node)
        for v in node.values():
            _ecds_references(v, found)
    elif isinstance(node, list):
        for v in node:
            _ecds_references(v, found)


def istio_like_bootstrap(docs: list[dict], listener: int, admin: int, ecds_dir: Path, fetch: Fetch,
                         edit: Callable[[dict], dict] | None = None) -> dict:
    """The Envoy configuration istiod and istio-agent would give an ingress gateway (see the module
    docstring); writes the agent-rewritten extension configurations into ``ecds_dir``. ``edit``
    changes an extension configuration before the rewrite (for negative controls)."""
    router = {"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    vhost = {"name": "*:80", "domains": ["*"], "routes": [
        {"match": {"prefix": "/mesh-service"}, "direct_response": {"status": 204}}]}
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
           "stat_prefix": "outbound_0.0.0.0_8080", "route_config": {"name": "http.8080", "virtual_hosts": [vhost]},
           "http_filters": [router]}
    clusters = []
    for p in envoy_filter(docs)["spec"]["configPatches"]:
        what, op, value = p["applyTo"], p["patch"]["operation"], copy.deepcopy(p["patch"]["value"])
        if what == "EXTENSION_CONFIG" and op == "ADD":
            continue
        if what == "CLUSTER" and op == "ADD":
            clusters.append(value)
        elif what == "HTTP_ROUTE" and op == "INSERT_FIRST":
            vhost["routes"].insert(0, value)
        elif what == "HTTP_FILTER" and op == "INSERT_BEFORE":
            assert p["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == router["name"]
            hcm["http_filters"].insert(hcm["http_filters"].index(router), value)
        else:
            raise AssertionError(f"unexpected patch {what} {op}")
    # istiod serves each extension configuration by the name a filter asks for (over ADS);
    # here each comes from its own file, rewritten as istio-agent would.
    ecds_dir = Path(ecds_dir)
    ecds_dir.mkdir(parents=True, exist_ok=True)
    exts = extension_configs(docs)
    refs: list[dict] = []
    _ecds_references({"hcm": hcm, "clusters": clusters}, refs)
    for ref in refs:
        source = ref["config_discovery"]["config_source"]
        assert "ads" in source, source
        del source["ads"]
        source["path_config_source"] = {"path": str(ecds_dir / f"{ref['name']}.yaml")}
    for name, ext in exts.items():
        ext = edit(copy.deepcopy(ext)) if edit else ext
        resource = {"@type": TYPED_EXTENSION_CONFIG, **rewrite(ext, fetch)}
        tmp = ecds_dir / f".{name}.tmp"
        tmp.write_text(yaml.safe_dump({"resources": [resource]}, sort_keys=False))
        tmp.rename(ecds_dir / f"{name}.yaml")
    assert {r["name"] for r in refs} <= set(exts), (sorted(r["name"] for r in refs), sorted(exts))
    return {"node": {"id": "router~10.0.0.1~istio-ingressgateway.istio-system~istio-system.svc.cluster.local",
                     "cluster": "istio-ingressgateway.istio-system"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {"listeners": [{
                "name": "0.0.0.0_8080",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}]}],
                "clusters": clusters}}


class IstioLikeGateway(harness.GatewayFileGateway):
    """Envoy configured as istiod and istio-agent would configure an ingress gateway from the
    gateway file's `--target istio` rendering (``istio_like_bootstrap``, ``agent``'s fetches)."""

    def __init__(self, *a, agent: Agent, edit: Callable[[dict], dict] | None = None, **kw):
        super().__init__(*a, **kw)
        self.agent = agent
        self.edit = edit

    def render(self) -> str:
        text = harness.render_gateway_file(self.local_file(), target="istio", workdir=self.workdir)
        docs = list(yaml.safe_load_all(text))
        boot = istio_like_bootstrap(docs, self.listener_port, self.admin_port, self.workdir / "ecds",
                                    self.agent.fetch, self.edit)
        return yaml.safe_dump(boot, sort_keys=False)
