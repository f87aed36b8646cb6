"""HTTP throughput of ``omnivec serve`` against the servers users would pick instead (Infinity).

Every server runs the SAME weights: omnivec's materialised multilingual-e5-small (fp32, the
bare backbone, which is what omnivec runs for ``task="retrieval.passage"``: the adapter file
lists ``retrieval`` under ``bare_tasks``). omnivec receives the raw texts with
``"task": "retrieval.passage"`` and adds its ``"passage: "`` prompt itself; the peers receive the
same texts with ``"passage: "`` already prefixed, so every server embeds identical token ids.

Peers (each optional: a peer whose executable is not given or not there is skipped, with a note):

* ``infinity-optimum``: Infinity's ONNX Runtime engine (``--engine optimum``) on a plain ONNX
  export of the weights, which Infinity optimises itself on its first start (ORTOptimizer,
  level 99: ORT's transformer fusions) and caches;
* ``infinity-torch``: Infinity's PyTorch / sentence-transformers engine on the safetensors.

Peer venvs (this script installs nothing). Infinity 0.0.78 is the newest on PyPI (at the time of
writing) and installs in two ways that behave differently:

* as pip resolves it today, optimum 2.1.0 + optimum-onnx 0.1.0 (with onnxruntime 1.32.0,
  transformers 4.57.6, sentence-transformers 3.4.1). Its optimum engine runs, but Infinity's
  own optimisation step fails (``OptimizationConfig.__init__() got an unexpected keyword
  argument 'optimize_with_onnxruntime_only'``, logged as a warning) and it serves the plain
  export (ORT still applies its session-level ORT_ENABLE_ALL passes)::

    python3.11 -m venv /opt/peers/infinity
    /opt/peers/infinity/bin/pip install <a CPU torch wheel, e.g. torch==2.13.0+cpu>   # else pip pulls CUDA
    /opt/peers/infinity/bin/pip install "infinity-emb[server,optimum,torch]==0.0.78"

* with the optimum 1.x it was written against, where its optimisation works (optimum 1.27 needs
  a torch without the moved ``torch.onnx.symbolic_opset14._attention_scale``, and
  ``optimum.bettertransformer`` refuses transformers >= 4.49; PyPI's torch 2.7.1 is the CUDA
  build, which runs on the CPU as well)::

    python3.11 -m venv /opt/peers/infinity-o1
    /opt/peers/infinity-o1/bin/pip install "torch==2.7.1" "infinity-emb[server,optimum,torch]==0.0.78" \
        "optimum[onnxruntime]==1.27.0" "transformers==4.48.3" "numpy<2" "pyarrow<21" "datasets<4"

  Use this one for "Infinity's best engine"; give both (``--infinity`` twice) to see the gap.

The peer model folder (HF layout: ``config.json``, tokenizer files, ``model.safetensors`` linked
from omnivec's cache, and ``model.onnx``, a plain ``torch.onnx.export`` of ``BertModel``
with eager attention, inputs ``input_ids``/``attention_mask``/``token_type_ids``, output
``last_hidden_state``, made with this (omnivec) venv's torch and checked against it) is built
once under ``--peer-dir`` (default ``~/.cache/omnivec-bench/peers``); ``benchmarks/cpu_encode.py``
gives the same export to fastembed. Infinity is started from inside that folder with
``--model-id .`` (its optimum engine globs ``**/*.onnx`` relative to the model id and hands the
relative path to optimum), ``--pooling-method mean`` (e5 is mean-pooled), ``--device cpu``,
telemetry off, and its caches (``HF_HOME``, ``HUGGINGFACE_HUB_CACHE``, ``INFINITY_HOME``) in a
folder beside the model, one per venv (the optimised graph is cached there under the model id
"."; inside the model folder it would be found as a second ``*.onnx``).

What runs: the servers are started one after another on free loopback ports, each waited for
(bounded by ``--start-timeout``), warmed up and checked for vector agreement (the minimum cosine
between omnivec's vectors and the server's on 48 fixed texts; >= 0.9999 is the bar). Then, per
round and scenario, each server gets the load in turn, ``A B C`` in odd rounds and ``C B A`` in
even ones, while the others sit idle (their CPU use meanwhile is printed: idle must mean idle).
Interleaving within a scenario puts the drift of a shared machine on every server alike; with
``--one-at-a-time`` only one server is in memory (each runs every scenario, then the next).
Each load is closed-loop for ``--seconds`` (every client sends one request, waits for the answer,
sends the next; the last requests are waited for and counted, so a run lasts at least one
request's latency); the clients are threads of this process on keep-alive connections, with
base64 vectors and the same request sequence for every server:

* ``short 4x8`` / ``short 8x16``: 4 clients x 8 texts, 8 clients x 16 texts; first lines of
  stdlib function docstrings (2,000, median ~60 characters);
* ``long 4x8`` / ``long 8x16``: the same on 300-500-token passages (consecutive stdlib docstring
  paragraphs packed to 300-500 e5 tokens, prefix and special tokens included);
* ``mixed``: 2 clients sending one short text per request beside 1 client sending 256 short
  texts per request: the one-text requests' p50/p99 and the big requests' items/s.

Per run: requests, items/s, tokens/s (e5 tokens, as the server sees them), p50/p99 latency,
errors, the server's RSS (its process tree, from /proc: at rest after warm-up and the peak
sampled during the loads) and the load average. The summary pools the rounds (items/s: mean
of the rounds; p50/p99 over all the rounds' requests) and gives omnivec / best Infinity engine.
No timed assertions: the machine may be shared, so read the load averages printed with it.
Runtime: the server starts (Infinity's torch engine takes 1-2 min on 2 cores) plus
rounds x scenarios x servers x (``--seconds`` + the drain); the long 8x16 load keeps 128
passages (~54k tokens) in flight, so its drain is that many tokens at the server's rate.

    .venv/bin/python benchmarks/peer_servers.py --infinity /opt/peers/infinity-o1/bin/infinity_emb
        [--infinity /opt/peers/infinity/bin/infinity_emb:optimum] [--seconds 10] [--rounds 2]
        [--engines optimum,torch] [--scenarios short4x8,short8x16,long4x8,long8x16,mixed]
        [--one-at-a-time] [--omnivec-int8] [--json out.json]

``--omnivec-int8`` adds ``omnivec serve --quantize`` (the int8 graphs) as a fifth server; it is
compared with the peers' float32 like omnivec, and its vectors with omnivec's float32 ones
(the quantised path's bar is cosine >= 0.99).
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CORPUS_VERSION = 3
EXPORT_VERSION = 2
PREFIX = "passage: "
# At the folder's top level: optimum 2.x matches ``file_name`` against bare file names, so the
# ``onnx/model.onnx`` that Infinity 0.0.78 would pass for a subfolder export is not found.
ONNX_FILE = "model.onnx"
DIM = 384
SCENARIOS = {   # name -> (corpus, [(clients, texts per request), ...])
    "short4x8": ("short", [(4, 8)]),
    "short8x16": ("short", [(8, 16)]),
    "long4x8": ("long", [(4, 8)]),
    "long8x16": ("long", [(8, 16)]),
    "mixed": ("short", [(2, 1), (1, 256)]),
}


def cache_root() -> Path:
    return Path(os.environ.get("OMNIVEC_BENCH_CACHE", "~/.cache/omnivec-bench")).expanduser()


def omnivec_model_dir() -> Path:
    """omnivec's default model (materialised multilingual-e5-small) as a local directory."""
    from omnivec.models.registry import resolve_model_path
    return Path(resolve_model_path(None))


# ----------------------------------------------------------------------------- the peer model folder

def _export_onnx(src: Path, out: Path) -> None:
    """A plain (unfused) ONNX export of the BertModel in ``src``, checked against torch."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(src), attn_implementation="eager").eval()

    class Hidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    ids = torch.tensor([[0, 1000, 2000, 3000, 2], [0, 1500, 2, 1, 1]], dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.long)
    types = torch.zeros_like(ids)
    axes = {0: "batch_size", 1: "sequence_length"}
    wrapper = Hidden(model).eval()   # eval: the exporter restores the wrapper's mode on the model
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")    # TracerWarnings from transformers' masking code
        torch.onnx.export(wrapper, (ids, mask, types), str(out),
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                                        "last_hidden_state": axes},
                          opset_version=17, do_constant_folding=True, dynamo=False)
        want = wrapper(ids, mask, types).numpy()
    import onnxruntime as ort
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                          "token_type_ids": types.numpy()})[0]
    err = float(np.max(np.abs(got - want)[mask.numpy().astype(bool)]))
    if err > 1e-3:
        raise RuntimeError(f"ONNX export differs from torch by {err}")


def prepare_peer_model(peer_dir: Path | None = None, src: Path | None = None) -> Path:
    """``<peer_dir>/<model>/model``: HF layout + ``model.onnx`` for the peers (built once)."""
    src = (src or omnivec_model_dir()).resolve()
    root = (peer_dir or cache_root() / "peers").expanduser() / f"{src.name}-export{EXPORT_VERSION}"
    folder = root / "model"
    marker = folder / "omnivec-bench-export.json"
    if marker.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "model.safetensors"):
        if not (src / name).is_file():
            continue
        link = folder / name
        if link.is_symlink() or link.exists():
            link.unlink()
        if name == "model.safetensors":
            link.symlink_to(src / name)        # 470 MB: linked, not copied
        else:
            shutil.copy2(src / name, link)
    print(f"exporting plain ONNX for the peers to {folder / ONNX_FILE} ...", flush=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        _export_onnx(src, Path(tmp) / ONNX_FILE)
        os.replace(Path(tmp) / ONNX_FILE, folder / ONNX_FILE)
    marker.write_text(json.dumps({"source": str(src), "export": EXPORT_VERSION}))
    return folder


# ----------------------------------------------------------------------------- texts

def _tokenizer(model_dir: Path):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(model_dir / "tokenizer.json"))


def token_counts(tok, texts: list[str]) -> list[int]:
    """e5 tokens of each text as the servers see it: prompt and special tokens included."""
    return [len(e.ids) for e in tok.encode_batch([PREFIX + t for t in texts])]


def build_corpus(model_dir: Path, n_short: int = 2000, n_long: int = 400) -> dict[str, list[str]]:
    """Short texts (first docstring lines) and long passages (300-500 tokens), stdlib-mined, cached."""
    cache = cache_root() / f"peer-corpus-v{CORPUS_VERSION}-py{sys.version_info[0]}{sys.version_info[1]}" \
                           f"-{n_short}-{n_long}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from omnivec.data.stdlib import iter_code_pairs

    tok = _tokenizer(model_dir)
    short: list[str] = []
    long: list[str] = []
    seen: set[str] = set()
    current: list[str] = []
    for pair in iter_code_pairs():
        if len(short) >= n_short and len(long) >= n_long:
            break
        first = " ".join(pair.docstring.split("\n")[0].split())
        if len(short) < n_short and len(first) >= 40 and first not in seen:
            seen.add(first)
            short.append(first)
        if len(long) >= n_long:
            continue
        for para in pair.docstring.split("\n\n"):
            para = " ".join(para.split())
            if len(para) < 40:
                continue
            trial = current + [para]
            n = len(tok.encode(PREFIX + "\n\n".join(trial)).ids)
            if n <= 500:
                current = trial
                if n >= 300 + (len(long) * 37) % 180:   # targets spread over 300..479 tokens
                    long.append("\n\n".join(current))
                    current = []
            else:   # the paragraph does not fit: start again from it (alone if it fits)
                current = [para] if len(tok.encode(PREFIX + para).ids) <= 500 else []
            if len(long) >= n_long:
                break
    corpus = {"short": short, "long": long}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(corpus))
    return corpus


# ----------------------------------------------------------------------------- servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its descendants."""
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def tree_rss_mb(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


@dataclass
class Server:
    name: str
    argv: list[str]
    cwd: str | None
    env: dict[str, str]
    ready_path: str
    embed_path: str
    body: callable        # texts -> request dict
    proc: subprocess.Popen | None = None
    port: int = 0
    log: Path | None = None

    def start(self, timeout: float) -> float:
        self.port = free_port()
        argv = [a.replace("{port}", str(self.port)) for a in self.argv]
        self.log = Path(tempfile.mkstemp(prefix=f"peer-{self.name}-", suffix=".log")[1])
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(argv, cwd=self.cwd, env=self.env, stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log {self.log}:\n"
                                   + self.log.read_text()[-3000:])
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", self.ready_path)
                if c.getresponse().status == 200:
                    c.close()
                    return time.perf_counter() - t0
                c.close()
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} not ready within {timeout:.0f}s; log {self.log}:\n"
                           + self.log.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)   # its own session: the whole tree
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.proc = None

    def embed(self, texts: list[str], conn: http.client.HTTPConnection | None = None) -> np.ndarray:
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            status, vecs = post(conn, self.embed_path, self.body(texts))
        finally:
            if own:
                conn.close()
        if status != 200 or vecs is None or len(vecs) != len(texts):
            raise RuntimeError(f"{self.name}: HTTP {status} for {len(texts)} texts")
        return vecs


def post(conn: http.client.HTTPConnection, path: str, body: dict) -> tuple[int, np.ndarray | None]:
    data = json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read()
    if resp.status != 200:
        return resp.status, None
    items = sorted(json.loads(raw)["data"], key=lambda d: d["index"])
    vecs = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in items])
    if vecs.shape[1] != DIM:
        raise RuntimeError(f"unexpected vector size {vecs.shape}")
    return resp.status, vecs


def make_servers(args, model_folder: Path) -> tuple[list[Server], list[str]]:
    notes: list[str] = []
    base_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    omnivec_exe = args.omnivec or str(Path(sys.executable).parent / "omnivec")
    servers = [Server(
        "omnivec", [omnivec_exe, "serve", "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning"],
        None, base_env, "/ready", "/v1/embeddings",
        lambda texts: {"model": "default", "input": texts, "task": "retrieval.passage",
                       "encoding_format": "base64"})]
    if args.omnivec_int8:   # the quantised path (its own bar: cosine >= 0.99 to float32)
        servers.append(Server(
            "omnivec-int8", [omnivec_exe, "serve", "--quantize", "--host", "127.0.0.1", "--port", "{port}",
                             "--log-level", "warning"],
            None, base_env, "/ready", "/v1/embeddings", servers[0].body))
    specs = args.infinity or []
    if not specs:
        notes.append("Infinity skipped: no --infinity /path/to/venv/bin/infinity_emb given")
    for spec in specs:
        exe, _, engines = spec.partition(":")
        engines = [e for e in (engines or args.engines).split(",") if e]
        if not (Path(exe).is_file() and os.access(exe, os.X_OK)):
            notes.append(f"Infinity skipped: {exe} is not an executable file (see the docstring for its venv)")
            continue
        venv = Path(exe).resolve().parent.parent.name        # /opt/peers/<venv>/bin/infinity_emb
        tag = "infinity" if len(specs) == 1 else venv if venv.startswith("infinity") else f"infinity-{venv}"
        # Infinity's caches, per venv (optimum / onnxruntime versions differ), beside the model
        # folder: the optimised graph goes to $HUGGINGFACE_HUB_CACHE/infinity_onnx/<provider>/<model
        # id>, i.e. keyed by "." (the legacy variable: HF_HUB_CACHE alone is not read there), and
        # .infinity_cache to $INFINITY_HOME (else into the model folder, the working directory).
        home = model_folder.parent / f"home-{venv}"
        env = {**base_env, "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "HF_HOME": str(home),
               "HF_HUB_CACHE": str(home / "hub"), "HUGGINGFACE_HUB_CACHE": str(home / "hub"),
               "INFINITY_HOME": str(home)}
        for engine in engines:
            argv = [exe, "v2", "--model-id", ".", "--served-model-name", "e5", "--engine", engine,
                    "--device", "cpu", "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning"]
            if engine == "optimum":
                argv += ["--pooling-method", "mean"]
            servers.append(Server(
                f"{tag}-{engine}", argv, str(model_folder), env, "/health", "/embeddings",
                lambda texts: {"model": "e5", "input": [PREFIX + t for t in texts],
                               "encoding_format": "base64"}))
    return servers, notes


# ----------------------------------------------------------------------------- load

@dataclass
class Load:
    lat: dict[int, list[float]] = field(default_factory=dict)     # group -> latencies (s), ok requests
    items: dict[int, int] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    wall: float = 0.0
    rss_peak: float = 0.0
    client_cpu_s: float = 0.0


def run_load(server: Server, texts: list[str], counts: list[int], groups: list[tuple[int, int]],
             seconds: float, seed: int) -> Load:
    """Closed loop: each client thread sends one request, waits for it, sends the next."""
    load = Load()
    lock = threading.Lock()
    until = time.perf_counter() + seconds
    prefix_tokens = np.concatenate([[0], np.cumsum(counts)])

    def client(group: int, batch: int, cid: int) -> None:
        rng = random.Random(seed * 1000 + cid)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
        lat, items, tokens = [], 0, 0
        try:
            while time.perf_counter() < until:
                s = rng.randrange(0, len(texts) - batch + 1)
                t0 = time.perf_counter()
                try:
                    status, vecs = post(conn, server.embed_path, server.body(texts[s:s + batch]))
                    ok = status == 200 and vecs is not None and len(vecs) == batch
                    kind = f"HTTP {status}"
                except Exception as e:  # noqa: BLE001 - counted, never fatal
                    ok, kind = False, type(e).__name__
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
                dt = time.perf_counter() - t0
                if ok:
                    lat.append(dt)
                    items += batch
                    tokens += int(prefix_tokens[s + batch] - prefix_tokens[s])
                else:
                    with lock:
                        load.errors += 1
                        load.error_kinds[kind] = load.error_kinds.get(kind, 0) + 1
        finally:
            conn.close()
        with lock:
            load.lat.setdefault(group, []).extend(lat)
            load.items[group] = load.items.get(group, 0) + items
            load.tokens[group] = load.tokens.get(group, 0) + tokens

    threads = []
    cid = 0
    for g, (clients, batch) in enumerate(groups):
        for _ in range(clients):
            threads.append(threading.Thread(target=client, args=(g, batch, cid), daemon=True))
            cid += 1
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            load.rss_peak = max(load.rss_peak, tree_rss_mb(server.proc.pid))
            stop.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    sampler.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    load.wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    load.client_cpu_s = time.process_time() - cpu0
    return load


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) * 1e3 if xs else float("nan")


def cos_min(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


# ----------------------------------------------------------------------------- main

def dump_json(path: Path, runs: list[dict], notes: list[str], failed: dict[str, str], load_start, load_end) -> None:
    rows = [{**r, "groups": [{k: v for k, v in g.items() if k != "lat"} for g in r["groups"]]} for r in runs]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"load_start": load_start, "load_end": load_end, "runs": rows, "notes": notes,
                               "failed": failed}, indent=1))
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--infinity", action="append", default=None, metavar="EXE[:ENGINES]",
                    help="Infinity's executable, e.g. /opt/peers/infinity/bin/infinity_emb; repeatable (one per "
                         "venv); ':optimum' / ':torch' / ':optimum,torch' after it picks that venv's engines")
    ap.add_argument("--engines", default="optimum,torch", help="Infinity engines run where EXE names none")
    ap.add_argument("--omnivec", default=None, help="omnivec's executable (default: beside this Python)")
    ap.add_argument("--omnivec-int8", action="store_true",
                    help="also run `omnivec serve --quantize` (int8 graphs; its bar is cosine >= 0.99)")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each load run")
    ap.add_argument("--rounds", type=int, default=2, help="rounds over all servers (A B C A B C ...)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"subset of {list(SCENARIOS)}")
    ap.add_argument("--one-at-a-time", action="store_true",
                    help="only one server in memory at a time (each runs every scenario, A B C C B A); default: "
                         "all started first, then alternated within each scenario (A B C, C B A), which puts "
                         "the drift of a shared machine on every server alike")
    ap.add_argument("--start-timeout", type=float, default=420.0, help="seconds a server may take to be ready")
    ap.add_argument("--peer-dir", type=Path, default=None, help="where the peer model folder is built")
    ap.add_argument("--json", type=Path, default=None, help="write every run's numbers here")
    args = ap.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    for s in scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}; known: {list(SCENARIOS)}")

    # SIGTERM ends the run through the finally below, which stops the servers (own sessions)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"terminated (SIGTERM); partial numbers in {args.json}"))
    started = time.time()
    load_start = os.getloadavg()
    from omnivec.cpu_features import detect
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, {platform.platform()}; CPU: {detect().summary()}; "
          f"load average at start: {' '.join(f'{x:.2f}' for x in load_start)}", flush=True)
    src = omnivec_model_dir()
    model_folder = prepare_peer_model(args.peer_dir, src)
    corpus = build_corpus(src)
    tok = _tokenizer(src)
    counts = {k: token_counts(tok, v) for k, v in corpus.items()}
    for k, v in corpus.items():
        print(f"corpus {k}: {len(v)} texts, median {statistics.median(len(t) for t in v):.0f} chars, "
              f"median {statistics.median(counts[k]):.0f} e5 tokens (min {min(counts[k])}, max {max(counts[k])})")
    agree_texts = corpus["short"][:32] + corpus["long"][:16]

    servers, notes = make_servers(args, model_folder)
    for n in notes:
        print("NOTE:", n)
    print(f"servers: {[s.name for s in servers]}; scenarios: {scenarios}; {args.seconds:.0f}s each; "
          f"{args.rounds} rounds; peer model folder {model_folder}", flush=True)

    runs: list[dict] = []
    ref: dict[str, np.ndarray] = {}
    failed: dict[str, str] = {}
    info: dict[str, dict] = {}

    def bring_up(server: Server, label: str) -> bool:
        """Start, warm up, check agreement with omnivec; False (and noted) when it fails."""
        la = os.getloadavg()[0]
        try:
            ready_s = server.start(args.start_timeout)
            server.embed(corpus["short"][:64])           # warm-up: short and long shapes
            server.embed(corpus["long"][:16])
            vecs = server.embed(agree_texts)
        except Exception as e:  # noqa: BLE001 - reported, the others go on
            failed[server.name] = str(e)
            print(f"!! {server.name} failed to start: {e}", flush=True)
            server.stop()
            return False
        if server.name == "omnivec" and "omnivec" not in ref:
            ref["omnivec"] = vecs
        agree = cos_min(vecs, ref["omnivec"]) if "omnivec" in ref else float("nan")
        time.sleep(1.0)
        rest = tree_rss_mb(server.proc.pid)
        old = info.get(server.name, {})
        info[server.name] = {"rss_rest_mb": max(rest, old.get("rss_rest_mb", 0)),
                             "min_cos": min(agree, old.get("min_cos", 1.0)) if agree == agree else float("nan"),
                             "ready_s": old.get("ready_s", []) + [round(ready_s, 1)]}
        print(f"{label}{server.name}: ready in {ready_s:.1f}s, rest RSS {rest:.0f} MB, "
              f"min cos vs omnivec {agree:.6f} on {len(agree_texts)} texts, load avg {la:.2f}", flush=True)
        return True

    def measure(server: Server, rnd: int, sc: str, idle: list[Server]) -> None:
        kind, groups = SCENARIOS[sc]
        la_run = os.getloadavg()[0]
        idle_cpu0 = {o.name: tree_cpu_s(o.proc.pid) for o in idle}
        load = run_load(server, corpus[kind], counts[kind], groups, args.seconds, seed=rnd)
        idle_share = {o.name: round((tree_cpu_s(o.proc.pid) - idle_cpu0[o.name]) / load.wall, 3) for o in idle}
        row = {"round": rnd + 1, "server": server.name, "scenario": sc, "wall_s": round(load.wall, 2),
               "load_avg_1m": round(la_run, 2), "errors": load.errors, "error_kinds": load.error_kinds,
               "rss_rest_mb": round(info[server.name]["rss_rest_mb"]), "rss_peak_mb": round(load.rss_peak),
               "client_cpu_share": round(load.client_cpu_s / (load.wall * (os.cpu_count() or 1)), 3),
               "idle_servers_cpu_cores": idle_share, "min_cos_vs_omnivec": info[server.name]["min_cos"],
               "groups": []}
        for g, (clients, batch) in enumerate(groups):
            lat = load.lat.get(g, [])
            row["groups"].append({
                "clients": clients, "batch": batch, "requests": len(lat),
                "items_per_s": round(load.items.get(g, 0) / load.wall, 1),
                "tokens_per_s": round(load.tokens.get(g, 0) / load.wall),
                "p50_ms": round(pct(lat, 50), 1), "p99_ms": round(pct(lat, 99), 1), "lat": lat})
        runs.append(row)
        if args.json:   # after every run: a killed benchmark still leaves its numbers
            dump_json(args.json, runs, notes, failed, load_start, None)
        desc = "; ".join(f"{x['clients']}x{x['batch']}: {x['requests']} req {x['items_per_s']:.1f} it/s "
                         f"{x['tokens_per_s']} tok/s p50 {x['p50_ms']:.0f} p99 {x['p99_ms']:.0f} ms"
                         for x in row["groups"])
        idle_note = f"; idle servers' CPU {sum(idle_share.values()):.2f} cores" if idle else ""
        print(f"  [round {rnd + 1}] {sc:10s} {server.name:20s} {desc}; {load.wall:.0f}s; errors {load.errors}; "
              f"peak RSS {load.rss_peak:.0f} MB; clients' CPU {row['client_cpu_share']:.0%}{idle_note}; "
              f"load {la_run:.2f}", flush=True)
        time.sleep(1.0)

    def order(rnd: int, names: list[Server]) -> list[Server]:
        return names if rnd % 2 == 0 else list(reversed(names))      # A B C, C B A, A B C ...

    try:
        if args.one_at_a_time:   # only one server in memory: each runs all scenarios, then the next
            for rnd in range(args.rounds):
                for server in order(rnd, [s for s in servers if s.name not in failed]):
                    if not bring_up(server, f"[round {rnd + 1}] "):
                        continue
                    try:
                        for sc in scenarios:
                            measure(server, rnd, sc, [])
                    except Exception as e:  # noqa: BLE001
                        failed[server.name] = str(e)
                        print(f"!! {server.name} failed: {e} (log {server.log})", flush=True)
                    finally:
                        server.stop()
        else:                    # all up (idle ones idle), alternated within each scenario
            up = [s for s in servers if bring_up(s, "")]
            for rnd in range(args.rounds):
                for sc in scenarios:
                    for server in order(rnd, [s for s in up if s.name not in failed]):
                        try:
                            measure(server, rnd, sc, [o for o in up if o is not server and o.proc])
                        except Exception as e:  # noqa: BLE001
                            failed[server.name] = str(e)
                            print(f"!! {server.name} failed: {e} (log {server.log})", flush=True)
    finally:
        for server in servers:
            server.stop()

    # ------------------------------------------------------------------ summary
    print()
    print("summary (items/s: mean of rounds; p50/p99: all rounds' requests pooled; RSS: max)")
    names = [s.name for s in servers if any(r["server"] == s.name for r in runs)]
    summary: dict[tuple[str, str], dict] = {}
    for sc in scenarios:
        for name in names:
            rows = [r for r in runs if r["server"] == name and r["scenario"] == sc]
            if not rows:
                continue
            groups = []
            for g in range(len(rows[0]["groups"])):
                lat = [x for r in rows for x in r["groups"][g]["lat"]]
                groups.append({"items_per_s": statistics.mean(r["groups"][g]["items_per_s"] for r in rows),
                               "tokens_per_s": statistics.mean(r["groups"][g]["tokens_per_s"] for r in rows),
                               "per_round": [r["groups"][g]["items_per_s"] for r in rows],
                               "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "requests": len(lat)})
            summary[(name, sc)] = {"groups": groups, "errors": sum(r["errors"] for r in rows),
                                   "rss_rest_mb": max(r["rss_rest_mb"] for r in rows),
                                   "rss_peak_mb": max(r["rss_peak_mb"] for r in rows),
                                   "min_cos": min(r["min_cos_vs_omnivec"] for r in rows),
                                   "load": [r["load_avg_1m"] for r in rows]}
    hdr = (f"{'scenario':10s} {'server':17s} {'items/s':>8s} {'(rounds)':>14s} {'tok/s':>7s} {'p50 ms':>8s} "
           f"{'p99 ms':>8s} {'req':>5s} {'err':>4s} {'RSS rest/peak MB':>17s} {'min cos':>9s}  load 1m")
    print(hdr)
    for sc in scenarios:
        for name in names:
            s = summary.get((name, sc))
            if not s:
                continue
            for g, x in enumerate(s["groups"]):
                clients, batch = SCENARIOS[sc][1][g]
                label = sc if len(s["groups"]) == 1 else f"{sc}:{clients}x{batch}"
                print(f"{label:10s} {name:17s} {x['items_per_s']:8.1f} "
                      f"{'/'.join(f'{v:.0f}' for v in x['per_round']):>14s} {x['tokens_per_s']:7.0f} "
                      f"{x['p50_ms']:8.1f} {x['p99_ms']:8.1f} {x['requests']:5d} {s['errors']:4d} "
                      f"{s['rss_rest_mb']:>8.0f}/{s['rss_peak_mb']:<8.0f} {s['min_cos']:9.6f}  "
                      f"{','.join(f'{v:.1f}' for v in s['load'])}")
    print()
    peers = [n for n in names if not n.startswith("omnivec")]
    for own in [n for n in names if n.startswith("omnivec")] if peers else []:
        print(f"{own} vs the best Infinity engine per scenario (target: >= 1.5x items/s with lower p99; "
              ">= 2x at 8x16 and on long passages; mixed: the 1-text requests' p99 and the 256-text items/s)")
        for sc in scenarios:
            ours = summary.get((own, sc))
            theirs = [(n, summary[(n, sc)]) for n in peers if (n, sc) in summary]
            if not ours or not theirs:
                continue
            if sc == "mixed":
                big = max(theirs, key=lambda t: t[1]["groups"][1]["items_per_s"])
                small_best = min(theirs, key=lambda t: t[1]["groups"][0]["p99_ms"])
                print(f"  {sc:10s} 256-text items/s {ours['groups'][1]['items_per_s']:.1f} vs {big[0]} "
                      f"{big[1]['groups'][1]['items_per_s']:.1f} ({ours['groups'][1]['items_per_s'] / big[1]['groups'][1]['items_per_s']:.2f}x); "
                      f"1-text p50/p99 {ours['groups'][0]['p50_ms']:.0f}/{ours['groups'][0]['p99_ms']:.0f} ms vs "
                      f"{small_best[0]} {small_best[1]['groups'][0]['p50_ms']:.0f}/{small_best[1]['groups'][0]['p99_ms']:.0f} ms")
            else:
                best = max(theirs, key=lambda t: t[1]["groups"][0]["items_per_s"])
                o, b = ours["groups"][0], best[1]["groups"][0]
                print(f"  {sc:10s} {o['items_per_s']:.1f} vs {best[0]} {b['items_per_s']:.1f} items/s = "
                      f"{o['items_per_s'] / b['items_per_s']:.2f}x; p99 {o['p99_ms']:.0f} vs {b['p99_ms']:.0f} ms")
    for n in notes:
        print("NOTE:", n)
    for name, why in failed.items():
        print(f"FAILED: {name}: {why.splitlines()[0] if why else ''}")
    load_end = os.getloadavg()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in load_end)}; total {time.time() - started:.0f}s")
    if args.json:
        dump_json(args.json, runs, notes, failed, load_start, load_end)

if __name__ == "__main__":
    main()
