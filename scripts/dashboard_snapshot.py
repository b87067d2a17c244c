#!/usr/bin/env python3
"""The README's dashboard picture: a bounded load run against the demo gateway, rendered locally.

No Grafana server can be installed on the machines this project runs on, so `scripts/dashboard-snapshot`
does what Grafana would do with envoy/grafana/switchyard.json, from real metrics:

  load    (.venv python) starts the demo providers and Envoy with envoy/demo.yaml plus demo virtual
          keys and prices (so cost, rate-limit, budget and auth rejections show), runs a mixed load for
          --seconds (stream / non-stream, both providers, an alias, an OpenAI outage in the middle
          that fails over to Anthropic, slow answers, provider errors, rejections), scrapes
          /stats/prometheus every --scrape seconds and writes the samples to a JSON file.
  render  (a python with matplotlib) evaluates each panel's PromQL of the dashboard JSON over those
          samples with a small PromQL subset (sum/avg/max/min by, rate, increase,
          histogram_quantile, or, + - * /, numbers), the way Prometheus would, and draws the panels
          at their gridPos into a PNG.

Only loopback addresses are used; the run stops by itself.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# ==================================================================================================
# load


DEMO_KEYS = {
    # key (what a client sends)  -> key config (the gateway stores only its SHA-256)
    "sk-demo-research": {"id": "research-app", "team": "research"},
    "sk-demo-product": {"id": "product-app", "team": "product"},
    # a batch job with a small request rate: its excess is rejected (rate_limit)
    "sk-demo-batch": {"id": "batch-job", "team": "product", "limits": {"rpm": 20}},
    # an intern's key with a tiny total budget: rejected (budget) once it is spent
    "sk-demo-intern": {"id": "intern", "team": "research",
                       "budget": {"amount_usd": 0.0006, "window": "total"}},
}


def demo_config() -> str:
    """envoy/demo.yaml with an `auth` section (keys, teams, built-in prices) in the gateway."""
    import yaml

    doc = yaml.safe_load((REPO / "envoy" / "demo.yaml").read_text(encoding="utf-8"))
    keys = [{"sha256": hashlib.sha256(k.encode()).hexdigest(), **cfg} for k, cfg in DEMO_KEYS.items()]
    # Budgets reserve the worst case at admission, priced by the configured (canonical) model name,
    # before Envoy picks the endpoint: price `claude-haiku` like the model its endpoint serves.
    auth = {"keys": keys, "teams": [{"id": "research"}, {"id": "product"}],
            "pricing": {"aliases": {"claude-haiku": "claude-3-5-haiku-latest"}},
            "unpriced_models": "free"}
    n = 0
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            value = (node.get("configuration") or {}).get("value") if isinstance(
                node.get("configuration"), dict) else None
            if isinstance(value, str) and json.loads(value).get("role") == "gateway":
                cfg = json.loads(value)
                cfg["auth"] = auth
                node["configuration"]["value"] = json.dumps(cfg)
                n += 1
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    assert n == 1, "expected one gateway plugin in envoy/demo.yaml"
    return yaml.safe_dump(doc, sort_keys=False)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list:
    out = []
    for line in text.splitlines():
        if not line.startswith(("gen_ai_", "switchyard_")):
            continue
        m = _SAMPLE.match(line)
        if m:
            name, body, value = m.groups()
            out.append([name, dict(_LABEL.findall(body or "")), float(value)])
    return out


def pick(rnd: random.Random, weighted):
    total = sum(w for w, _ in weighted)
    x = rnd.uniform(0, total)
    for w, v in weighted:
        x -= w
        if x <= 0:
            return v
    return weighted[-1][1]


def one_request(rnd: random.Random, elapsed: float, seconds: float):
    """(key, body, headers) of one request of the mix at this point of the run."""
    outage = 0.35 * seconds <= elapsed < 0.6 * seconds  # the OpenAI provider answers 503
    busy = elapsed >= 0.6 * seconds  # more traffic after the outage
    prompt = [{"role": "user", "content": "Hello!"}]
    kind = pick(rnd, [
        (24, "openai"), (18, "openai-stream"), (16, "anthropic"), (14, "anthropic-stream"),
        (5, "alias"), (3, "anthropic-500"), (3 if not busy else 6, "batch"), (2, "intern"),
        (2, "unknown-model"), (1.5, "invalid"), (1.5, "bad-key"),
    ])
    key = rnd.choice(["sk-demo-research", "sk-demo-product"])
    headers: dict = {}
    model = {"openai": "gpt-4o-mini", "openai-stream": "gpt-4o-mini", "alias": "fast",
             "batch": "gpt-4o-mini", "intern": "claude-haiku"}.get(kind, "claude-haiku")
    body = {"model": model, "messages": prompt}
    if kind.endswith("stream") or (kind == "batch" and rnd.random() < 0.5):
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if kind == "batch":
        key = "sk-demo-batch"
    elif kind == "intern":
        key = "sk-demo-intern"
        body["max_tokens"] = 16  # a small worst case to reserve against the budget
    elif kind == "bad-key":
        key = "sk-not-a-key"
    elif kind == "unknown-model":
        body["model"] = rnd.choice(["gpt-5-turbo", "llama-4", "claude-opus-99"])
    elif kind == "invalid":
        body = {"model": "gpt-4o-mini", "messages": "Hello!"}
    elif kind == "anthropic-500":
        headers["x-mock-anthropic"] = "500"
    if model in ("gpt-4o-mini", "fast") and outage:
        headers["x-mock-openai"] = "503"
    elif rnd.random() < 0.12:
        # a slow provider answer now and then (the latency percentiles need a tail)
        which = "x-mock-openai" if model in ("gpt-4o-mini", "fast") else "x-mock-anthropic"
        if which not in headers:
            headers[which] = "stall"
            headers["x-mock-stall-seconds"] = f"{rnd.uniform(0.2, 1.6):.2f}"
    return key, body, headers


def cmd_load(args) -> None:
    import requests

    sys.path.insert(0, str(REPO / "tests" / "e2e"))
    import harness

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for old in ("access.log", "envoy.log", "mocks.log"):
        (workdir / old).unlink(missing_ok=True)
    config = workdir / "dashboard-demo.yaml"
    config.write_text(demo_config(), encoding="utf-8")
    wasm = harness.build_wasm()
    mocks = harness.Mocks(workdir).start()
    gw = harness.Gateway(workdir, mocks, config_src=config)
    samples, counts, errors = [], {}, []
    lock = threading.Lock()
    try:
        gw.start(wasm)
        url = gw.base_url + "/chat/completions"
        stop = threading.Event()
        t0 = time.time()

        def scraper():
            while True:
                t = time.time()
                try:
                    text = harness.http("GET", gw.admin_url + "/stats/prometheus", timeout=5)[2]
                    samples.append([t, parse_prometheus(text.decode("utf-8", errors="replace"))])
                except OSError as e:
                    errors.append(repr(e))
                if stop.wait(max(0.0, args.scrape - (time.time() - t))):
                    return

        def worker(n: int):
            rnd = random.Random(args.seed * 1000 + n)
            session = requests.Session()
            sent = 0
            while not stop.is_set() and sent < args.max_requests_per_worker:
                elapsed = time.time() - t0
                if elapsed >= args.seconds:
                    return
                key, body, headers = one_request(rnd, elapsed, args.seconds)
                headers = {"authorization": f"Bearer {key}", **headers}
                try:
                    r = session.post(url, json=body, headers=headers, timeout=30,
                                     stream=bool(body.get("stream")) if isinstance(body, dict) else False)
                    _ = r.content
                    status = r.status_code
                except requests.RequestException as e:
                    status = type(e).__name__
                sent += 1
                with lock:
                    counts[str(status)] = counts.get(str(status), 0) + 1
                # pace: busier in the last part of the run
                busy = elapsed >= 0.6 * args.seconds
                time.sleep(rnd.uniform(0.05, 0.25 if busy else 0.45))

        threads = [threading.Thread(target=scraper, daemon=True)]
        threads += [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.workers)]
        for t in threads:
            t.start()
        for t in threads[1:]:
            t.join(args.seconds + 60)
        time.sleep(args.scrape + 1.5)  # one more stats flush for the histograms
        stop.set()
        threads[0].join(10)
        out = {"started": t0, "seconds": args.seconds, "scrape_interval": args.scrape,
               "statuses": counts, "scrape_errors": errors[:5], "samples": samples}
        Path(args.out).write_text(json.dumps(out), encoding="utf-8")
        total = sum(counts.values())
        print(f"load: {total} requests in {args.seconds:.0f} s, statuses {dict(sorted(counts.items()))}, "
              f"{len(samples)} scrapes -> {args.out}")
    finally:
        gw.stop()
        mocks.stop()


# ==================================================================================================
# a PromQL subset over the scraped samples


class Series:
    """All samples of one run: {(name, labels frozenset): [(t, value)]}."""

    def __init__(self, samples):
        self.times = [t for t, _ in samples]
        self.data: dict = {}
        for i, (t, rows) in enumerate(samples):
            for name, ls, v in rows:
                self.data.setdefault((name, frozenset(ls.items())), {})[i] = v

    def value_at(self, key, i: int) -> float | None:
        """Value at scrape i; a series that does not exist yet is 0 (a fresh Envoy defines each
        stat on its first update), none after i."""
        pts = self.data[key]
        if i in pts:
            return pts[i]
        earlier = [j for j in pts if j <= i]
        return pts[max(earlier)] if earlier else 0.0


TOKEN = re.compile(r'\s*(?:(?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)|(?P<str>"(?:[^"\\]|\\.)*")'
                   r'|(?P<dur>\[\d+[smh]\])|(?P<id>[a-zA-Z_:][a-zA-Z0-9_:]*)|(?P<op>=~|!~|!=|[-+*/(){},=]))')
AGGREGATIONS = {"sum": sum, "max": max, "min": min, "avg": lambda xs: sum(xs) / len(xs)}


def tokenize(expr: str) -> list:
    toks, pos = [], 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            if expr[pos:].strip() == "":
                break
            raise ValueError(f"cannot parse {expr[pos:]!r}")
        pos = m.end()
        kind = m.lastgroup
        toks.append((kind, m.group(kind)))
    return toks


class Parser:
    """expr := term (("+"|"-"|"or") term)* ; term := factor (("*"|"/") factor)* ;
    factor := number | "(" expr ")" | agg [by (...)] "(" expr ")" | func "(" args ")" | selector."""

    def __init__(self, expr: str):
        self.toks = tokenize(expr)
        self.i = 0

    def peek(self, k=0):
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else (None, None)

    def take(self, value=None):
        tok = self.peek()
        if value is not None and tok[1] != value:
            raise ValueError(f"expected {value!r}, got {tok[1]!r}")
        self.i += 1
        return tok

    def parse(self):
        node = self.expr()
        if self.i != len(self.toks):
            raise ValueError(f"trailing tokens {self.toks[self.i:]}")
        return node

    def expr(self):
        node = self.term()
        while self.peek()[1] in ("+", "-", "or"):
            op = self.take()[1]
            node = ("bin", op, node, self.term())
        return node

    def term(self):
        node = self.factor()
        while self.peek()[1] in ("*", "/"):
            op = self.take()[1]
            node = ("bin", op, node, self.factor())
        return node

    def labels_list(self):
        self.take("(")
        out = []
        while self.peek()[1] != ")":
            out.append(self.take()[1])
            if self.peek()[1] == ",":
                self.take(",")
        self.take(")")
        return out

    def factor(self):
        kind, val = self.peek()
        if kind == "num":
            self.take()
            return ("num", float(val))
        if val == "(":
            self.take("(")
            node = self.expr()
            self.take(")")
            return node
        if kind != "id":
            raise ValueError(f"unexpected {val!r}")
        if val in AGGREGATIONS:
            self.take()
            by = None
            if self.peek()[1] == "by":
                self.take()
                by = self.labels_list()
            self.take("(")
            inner = self.expr()
            self.take(")")
            return ("agg", val, by, inner)
        if val in ("rate", "increase"):
            self.take()
            self.take("(")
            sel = self.selector()
            dur = self.take()
            if dur[0] != "dur":
                raise ValueError(f"{val}() needs a range, got {dur[1]!r}")
            self.take(")")
            return (val, sel, parse_duration(dur[1][1:-1]))
        if val == "histogram_quantile":
            self.take()
            self.take("(")
            q = float(self.take()[1])
            self.take(",")
            inner = self.expr()
            self.take(")")
            return ("hq", q, inner)
        return ("sel", self.selector())

    def selector(self):
        name = self.take()[1]
        matchers = []
        if self.peek()[1] == "{":
            self.take("{")
            while self.peek()[1] != "}":
                label = self.take()[1]
                op = self.take()[1]
                value = json.loads(self.take()[1])
                matchers.append((label, op, value))
                if self.peek()[1] == ",":
                    self.take(",")
            self.take("}")
        return (name, matchers)


def parse_duration(s: str) -> float:
    return float(s[:-1]) * {"s": 1, "m": 60, "h": 3600}[s[-1]]


def matches(ls: frozenset, matchers) -> bool:
    d = dict(ls)
    for label, op, value in matchers:
        v = d.get(label, "")
        if op == "=" and v != value or op == "!=" and v == value:
            return False
        if op == "=~" and not re.fullmatch(value, v) or op == "!~" and re.fullmatch(value, v):
            return False
    return True


def evaluate(node, series: Series, i: int):
    """A node at scrape i -> float (scalar) or {labels frozenset: float} (instant vector)."""
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "sel":
        name, matchers = node[1]
        return {ls: series.value_at((n, ls), i) for (n, ls) in series.data
                if n == name and matches(ls, matchers)}
    if kind in ("rate", "increase"):
        (name, matchers), window = node[1], node[2]
        t = series.times[i]
        j = next((k for k in range(i + 1) if series.times[k] >= t - window - 1e-6), i)
        if j == i:
            return {}
        span = t - series.times[j]
        out = {}
        for (n, ls) in series.data:
            if n == name and matches(ls, matchers):
                d = series.value_at((n, ls), i) - series.value_at((n, ls), j)
                out[ls] = d / span if kind == "rate" else d * window / span
        return out
    if kind == "agg":
        _, fn, by, inner = node
        vec = evaluate(inner, series, i)
        groups: dict = {}
        for ls, v in vec.items():
            key = frozenset((k, x) for k, x in ls if by is not None and k in by)
            groups.setdefault(key, []).append(v)
        return {k: AGGREGATIONS[fn](vs) for k, vs in groups.items()}
    if kind == "hq":
        _, q, inner = node
        vec = evaluate(inner, series, i)
        groups: dict = {}
        for ls, v in vec.items():
            d = dict(ls)
            le = float("inf") if d["le"] == "+Inf" else float(d["le"])
            groups.setdefault(frozenset((k, x) for k, x in ls if k != "le"), []).append((le, v))
        return {k: bucket_quantile(q, sorted(b)) for k, b in groups.items()}
    if kind == "bin":
        _, op, a, b = node
        x, y = evaluate(a, series, i), evaluate(b, series, i)
        if op == "or":
            return {**y, **x}
        f = {"+": lambda p, r: p + r, "-": lambda p, r: p - r, "*": lambda p, r: p * r,
             "/": lambda p, r: p / r if r else math.nan}[op]
        if isinstance(x, dict) and isinstance(y, dict):
            return {ls: f(v, y[ls]) for ls, v in x.items() if ls in y}
        if isinstance(x, dict):
            return {ls: f(v, y) for ls, v in x.items()}
        if isinstance(y, dict):
            return {ls: f(x, v) for ls, v in y.items()}
        return f(x, y)
    raise ValueError(kind)


def bucket_quantile(q: float, buckets: list) -> float:
    """Prometheus' histogram_quantile over cumulative (le, count) buckets."""
    if not buckets or buckets[-1][0] != float("inf"):
        return math.nan
    total = buckets[-1][1]
    if total <= 0:
        return math.nan
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


# ==================================================================================================
# drawing


BG, PANEL, TEXT, MUTED, GRID = "#111217", "#181b1f", "#ccccdc", "#8e8e9e", "#2c3235"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#fade2a",
           "#37872d", "#c4162a"]
STAT_COLORS = {"green": "#73bf69", "orange": "#ff9830", "red": "#f2495c", "blue": "#5794f2",
               "purple": "#b877d9", "yellow": "#fade2a"}


def legend(fmt: str, ls: frozenset) -> str:
    d = dict(ls)
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: d.get(m.group(1), ""), fmt) or "value"


def fmt_value(v: float, unit: str, decimals=None) -> str:
    if v is None or isinstance(v, float) and math.isnan(v):
        return "No data"
    if unit == "percentunit":
        return f"{v * 100:.{1 if decimals is None else decimals}f}%"
    if unit == "currencyUSD":
        return f"${v:,.{2 if decimals is None else decimals}f}"
    if unit == "ms":
        return f"{v / 1000:.2f} s" if v >= 1000 else f"{v:.0f} ms"
    if unit == "reqps":
        return f"{v:.{2 if decimals is None else decimals}f} req/s"
    if decimals is not None:
        return f"{v:,.{decimals}f}"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"


def axis_label(v: float, unit: str) -> str:
    if unit == "reqps":
        return f"{v:g}/s"
    if unit == "percentunit":
        return f"{v * 100:g}%"
    if unit == "currencyUSD":
        return f"${v:g}"
    if unit == "ms":
        return f"{v / 1000:g} s" if v >= 1000 else f"{v:g} ms"
    return f"{v:,.0f}" if abs(v) >= 10 else f"{v:g}"


def substitute(expr: str, rate_interval: str, range_s: float) -> str:
    return (expr.replace("$__rate_interval", rate_interval).replace("$__range", f"{int(range_s)}s")
            .replace("$provider", ".*").replace("$model", ".*"))


def cmd_render(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter
    from datetime import datetime

    run = json.loads(Path(args.samples).read_text(encoding="utf-8"))
    dash = json.loads(Path(args.dashboard).read_text(encoding="utf-8"))
    series = Series(run["samples"])
    times = series.times
    range_s = times[-1] - times[0]
    rows_total = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dash["panels"])
    row_ys = {p["gridPos"]["y"] for p in dash["panels"] if p["type"] == "row"}
    ratios = [2.4 if y in row_ys else 1.0 for y in range(rows_total)]  # room for a row's title
    unit_h, head = 0.42, 1.25
    height = sum(ratios) * unit_h + head
    fig = plt.figure(figsize=(24 * 0.82, height), facecolor=BG)
    gs = fig.add_gridspec(rows_total, 24, left=0.035, right=0.992, top=1 - head / height, bottom=0.012,
                          wspace=1.6, hspace=0.0, height_ratios=ratios)
    fig.text(0.012, 1 - 0.35 / height, dash["title"], color=TEXT, fontsize=19,
             fontweight="bold", va="top")
    when = datetime.fromtimestamp(times[0]).strftime("%Y-%m-%d %H:%M:%S")
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(run["statuses"].items()))
    fig.text(0.012, 1 - 0.85 / height,
             f"envoy/grafana/switchyard.json drawn by scripts/dashboard-snapshot from {len(times)} scrapes of "
             f"Envoy's /stats/prometheus during a {run['seconds']:.0f} s load run on the demo gateway ({when}), "
             f"PromQL evaluated locally. {sum(run['statuses'].values())} requests (HTTP status: {statuses}); the "
             f"OpenAI demo provider answers 503 from {0.35 * run['seconds']:.0f} s to {0.6 * run['seconds']:.0f} s "
             f"(failover to Anthropic).", color=MUTED, fontsize=10.5, va="top", wrap=True)
    dts = [datetime.fromtimestamp(t) for t in times]
    for p in dash["panels"]:
        g = p["gridPos"]
        if p["type"] == "row":
            ax = fig.add_subplot(gs[g["y"]:g["y"] + 1, :])
            ax.axis("off")
            ax.text(-0.02, 0.2, p["title"], color=TEXT, fontsize=13, fontweight="bold", transform=ax.transAxes,
                    va="bottom")
            continue
        ax = fig.add_subplot(gs[g["y"]:g["y"] + g["h"], g["x"]:g["x"] + g["w"]])
        ax.set_facecolor(PANEL)
        for s in ax.spines.values():
            s.set_color(GRID)
        ax.set_title(p["title"], color=TEXT, fontsize=11, loc="left", pad=6)
        defaults = p.get("fieldConfig", {}).get("defaults", {})
        unit = defaults.get("unit", "short")
        decimals = defaults.get("decimals")
        results = []
        for tgt in p["targets"]:
            node = Parser(substitute(tgt["expr"], args.rate_interval, range_s)).parse()
            per_series: dict = {}
            for i in range(len(times)):
                v = evaluate(node, series, i)
                if not isinstance(v, dict):
                    v = {frozenset(): v}
                for ls, x in v.items():
                    per_series.setdefault(ls, [math.nan] * len(times))[i] = x
            for ls, ys in sorted(per_series.items(), key=lambda kv: str(sorted(kv[0]))):
                results.append((legend(tgt.get("legendFormat") or "", ls), ys))
        if p["type"] == "stat":
            ax.set_xticks([])
            ax.set_yticks([])
            ys = results[0][1] if results else []
            last = next((y for y in reversed(ys) if not math.isnan(y)), None)
            steps = defaults.get("thresholds", {}).get("steps", [{"color": "green", "value": None}])
            color = steps[0]["color"]
            for st in steps[1:]:
                if last is not None and last >= st["value"]:
                    color = st["color"]
            color = STAT_COLORS.get(color, color)
            if ys:
                clean = [y if not math.isnan(y) else None for y in ys]
                xs = [d for d, y in zip(dts, clean) if y is not None]
                yv = [y for y in clean if y is not None]
                if len(yv) > 1:
                    ax2 = ax.inset_axes([0, 0, 1, 0.45])
                    ax2.fill_between(xs, yv, color=color, alpha=0.18, linewidth=0)
                    ax2.plot(xs, yv, color=color, alpha=0.6, linewidth=1)
                    ax2.axis("off")
                    ax2.set_ylim(bottom=0)
            ax.text(0.5, 0.55, fmt_value(last, unit, decimals), color=color, fontsize=24, fontweight="bold",
                    ha="center", va="center", transform=ax.transAxes)
            continue
        for k, (name, ys) in enumerate(results):
            c = PALETTE[k % len(PALETTE)]
            ax.plot(dts, ys, color=c, linewidth=1.8, label=name)
            ax.fill_between(dts, ys, color=c, alpha=0.06, linewidth=0)
        if not results or all(all(math.isnan(y) for y in ys) for _, ys in results):
            ax.text(0.5, 0.5, "No data", color=MUTED, ha="center", va="center", transform=ax.transAxes)
        ax.grid(True, color=GRID, linewidth=0.6)
        ax.tick_params(colors=MUTED, labelsize=8.5)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos, u=unit: axis_label(v, u)))
        if "min" in defaults:
            ax.set_ylim(bottom=defaults["min"])
        else:
            ax.set_ylim(bottom=0)
        finite = [y for _, ys in results for y in ys if not math.isnan(y)]
        ax.set_ylim(top=defaults.get("max", max(finite, default=1) * 1.08 or 1))
        if results:
            leg = ax.legend(loc="upper left", fontsize=8.5, frameon=False, ncol=2 if len(results) > 3 else 1,
                            labelcolor=TEXT)
            for line in leg.get_lines():
                line.set_linewidth(3)
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=args.dpi, facecolor=BG)
    print(f"render: {args.png}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    lo = sub.add_parser("load", help="run the demo gateway under load and keep the scrapes")
    lo.add_argument("--seconds", type=float, default=60)
    lo.add_argument("--workers", type=int, default=6)
    lo.add_argument("--scrape", type=float, default=2.0)
    lo.add_argument("--seed", type=int, default=7)
    lo.add_argument("--max-requests-per-worker", type=int, default=2000)
    lo.add_argument("--workdir", default=str(REPO / ".run" / "dashboard"))
    lo.add_argument("--out", default=str(REPO / ".run" / "dashboard" / "samples.json"))
    re_ = sub.add_parser("render", help="draw the dashboard's panels from the scrapes")
    re_.add_argument("--samples", default=str(REPO / ".run" / "dashboard" / "samples.json"))
    re_.add_argument("--dashboard", default=str(REPO / "envoy" / "grafana" / "switchyard.json"))
    re_.add_argument("--png", default=str(REPO / "docs" / "dashboard.png"))
    re_.add_argument("--rate-interval", default="10s")
    re_.add_argument("--dpi", type=int, default=72)
    args = ap.parse_args(argv)
    {"load": cmd_load, "render": cmd_render}[args.cmd](args)


if __name__ == "__main__":
    main()
