"""The ``encoder`` family: BERT / XLM-R style text encoders (multilingual-e5-small, MiniLM ...).

Why a family of its own: these are small CPU-friendly models with the same interface as jina-v4
(prompts per task, dense mean pooling, per-token multi-vectors through a projector, Matryoshka
truncation), which makes the embedded default a small v4 look-alike. Images are read with OCR
(:mod:`omnivec.ocr`) and embedded as text. On the CPU the backbone runs in ONNX Runtime by
default (:mod:`omnivec.models.encoder_onnx`, fused kernels, optional int8); tokenising, pooling
and the projector are the same code on both backends.

Example::

    m = EncoderModel.from_directory(materialize_e5())
    p = m.processor.prepare("hello", TaskSpec("retrieval", "query"), PrepareOptions())
    out = omnivec.execution.run_batch(m, [p], dense=True, multivector=True)
"""
from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path
from typing import Any, Literal, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..adapters import ADAPTERS_META_FILE
from .base import Capabilities, CheckpointMismatch, EmbeddingModel, Prepared, TaskTable, TokenStates, pick_device
from .encoder_processing import EncoderProcessor

PROJECTOR_FILE = "multivector_projector.safetensors"
Backend = Literal["torch", "onnx"]
_PROMPT_ALIASES = {"query": ("query",), "passage": ("passage", "document", "doc")}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def load_prompts(path: Path) -> dict[str, str]:
    """Prompts from ``omnivec.json``, else sentence-transformers' config, else none."""
    prompts = _read_json(path / "omnivec.json").get("prompts")
    if prompts is None:
        prompts = _read_json(path / "config_sentence_transformers.json").get("prompts") or {}
    out = {}
    for name, aliases in _PROMPT_ALIASES.items():
        out[name] = next((prompts[a] for a in aliases if prompts.get(a)), "")
    return out


def _max_tokens(path: Path, config: Any, meta: dict[str, Any]) -> int:
    """The longest input the model takes, special tokens included."""
    positions = int(getattr(config, "max_position_embeddings", 512) or 512)
    if getattr(config, "model_type", "") in ("xlm-roberta", "roberta", "camembert"):
        pad = getattr(config, "pad_token_id", None)
        positions -= (1 if pad is None else int(pad)) + 1    # XLM-R positions start at pad + 1
    for value in (meta.get("max_tokens"),
                  _read_json(path / "sentence_bert_config.json").get("max_seq_length")):
        if value:
            return min(int(value), positions)
    return positions


def _has_pooler(path: Path) -> bool:
    """Whether the checkpoint stores pooler weights (then loading it without one would warn)."""
    file = path / "model.safetensors"
    if not file.is_file():
        return True
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        return any(k.startswith("pooler.") or ".pooler." in k for k in f.keys())


def _load_backbone(path: Path, dtype: torch.dtype) -> nn.Module:
    """``AutoModel`` with SDPA attention where supported; the unused pooler is dropped."""
    from transformers import AutoModel

    no_pooler = {} if _has_pooler(path) else {"add_pooling_layer": False}
    attempts = [dict(attn_implementation="sdpa", **no_pooler), dict(no_pooler), {}]
    last: Exception | None = None
    for extra in attempts:
        try:
            model, info = AutoModel.from_pretrained(str(path), dtype=dtype, output_loading_info=True, **extra)
            break
        except (TypeError, ValueError) as e:   # option unknown to this architecture
            last = e
    else:
        raise ValueError(f"{path}: could not load the encoder ({last})") from last
    check_loading_info(path, info, own_modules={name for name, _ in model.named_children()})
    if getattr(model, "pooler", None) is not None:
        model.pooler = None    # mean pooling never uses it: skip its matmul
    return model


def check_loading_info(path: Path, info: dict[str, Any], own_modules: set[str] | None = None) -> None:
    """Refuse a load that left weights at random (missing) or ignored some of the encoder's own.

    transformers only logs these; a model with randomly initialised layers still returns
    vectors, just wrong ones. Exceptions: the pooler (mean pooling never runs it; it is dropped
    after loading), and unused weights outside the encoder's own modules (``own_modules``:
    ``embeddings``, ``encoder``...), i.e. a pre-training or task head saved with it
    (``cls.predictions`` of ``bert-base-uncased``, ``lm_head`` of ``xlm-roberta-base``).
    """
    def relevant(keys: Any) -> list[str]:
        return sorted(k for k in keys if not (k.startswith("pooler.") or ".pooler." in k))

    unexpected = relevant(info.get("unexpected_keys", ()))
    if own_modules is not None:
        unexpected = [k for k in unexpected if k.split(".", 1)[0] in own_modules]
    missing = relevant(info.get("missing_keys", ()))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
    if missing or unexpected or mismatched:
        raise CheckpointMismatch.listing(f"{path}: the weights do not fit the model its config.json describes",
                                         missing=missing, unused=unexpected, wrong=mismatched)


def quantize_int8(backbone: nn.Module) -> nn.Module:
    """Dynamic int8 (per-channel weights) for every linear layer except the FFN down-projections.

    Why skip those: their GELU inputs have outliers that per-tensor int8 activations clip; keeping
    them in float lifts cosine to the float model from 0.96 to 0.987 (MiniLM) / 0.996 (e5-small).
    """
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    names = [n for n, mod in backbone.named_modules() if isinstance(mod, nn.Linear)
             and not (n.endswith("output.dense") and "attention" not in n)]
    with warnings.catch_warnings():   # torch.ao is deprecated in favour of torchao, still works
        warnings.simplefilter("ignore")
        return quantize_dynamic(backbone.eval(), {n: per_channel_dynamic_qconfig for n in names},
                                dtype=torch.qint8)


def load_tokenizer(path: Path) -> Any:
    """The fast (Rust) tokenizer from ``tokenizer.json``, with truncation and padding off."""
    from tokenizers import Tokenizer

    file = path / "tokenizer.json"
    if file.is_file():
        tok = Tokenizer.from_file(str(file))
    else:  # only slow-tokenizer files: let transformers convert them once
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(path)).backend_tokenizer
    tok.no_truncation()
    tok.no_padding()
    return tok


def pad_ids(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded int64 ``(ids, attention mask)`` arrays for a list of token-id lists."""
    longest = max(len(r) for r in rows)
    ids = np.full((len(rows), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for k, r in enumerate(rows):
        ids[k, :len(r)] = r
        mask[k, :len(r)] = 1
    return ids, mask


def identity_projector(dim: int) -> nn.Linear:
    """A ``dim -> dim`` linear layer that starts as the identity (raw token states)."""
    proj = nn.Linear(dim, dim)
    with torch.no_grad():
        proj.weight.copy_(torch.eye(dim))
        proj.bias.zero_()
    return proj


def _load_projector(path: Path, dim: int) -> nn.Linear:
    file = path / PROJECTOR_FILE
    if not file.is_file():
        return identity_projector(dim)
    return load_projector_file(file, dim)


def load_projector_file(file: Path, dim: int) -> nn.Linear:
    """A trained ``hidden -> m`` multi-vector projector (safetensors: weight, bias)."""
    from safetensors.torch import load_file

    sd = load_file(str(file))
    out_dim, in_dim = sd["weight"].shape
    if in_dim != dim:
        raise ValueError(f"{file}: projector takes {in_dim} inputs but the model's hidden size is {dim}")
    proj = nn.Linear(in_dim, out_dim, bias="bias" in sd)
    proj.load_state_dict(sd)
    return proj


AdapterSpec = Union[str, Path, None]


def resolve_adapter_dir(path: Path, adapters: AdapterSpec) -> Path | None:
    """Where the task adapters of an encoder live: ``"auto"`` looks in the model directory
    (``adapters/`` or the directory itself), ``None`` means the bare backbone, else a folder."""
    if adapters is None:
        return None
    if isinstance(adapters, str) and adapters == "auto":
        for cand in (path / "adapters", path):
            if (cand / "adapter_config.json").is_file():
                return cand
        return None
    folder = Path(adapters).expanduser()
    if not (folder / "adapter_config.json").is_file() and not (folder / PROJECTOR_FILE).is_file():
        raise FileNotFoundError(f"adapters={str(adapters)!r}: no adapter_config.json (nor {PROJECTOR_FILE}) "
                                "in that folder")
    return folder


def _onnx_unavailable_reason() -> str | None:
    """Why onnxruntime cannot serve (it does not import), or None when it can."""
    try:
        from .encoder_onnx import ort_version
        ort_version()
    except Exception as e:   # ImportError, or a broken install failing in its own init
        return f"onnxruntime does not import ({type(e).__name__}: {e})"
    return None


def choose_backend(path: Path, device: torch.device, dtype: torch.dtype | None,
                   backend: str | None) -> Backend:
    """``backend`` checked, or for ``None``: onnx for float32 CPU models, torch elsewhere.

    Task adapters work on both: torch routes rows through LoRA layers, ONNX runs one graph per
    task with that task's adapter merged into the weights (see :class:`_TaskGraphs`).
    """
    if backend not in (None, "torch", "onnx"):
        raise ValueError(f"backend must be 'torch', 'onnx' or None, got {backend!r}")
    if backend is not None:
        if backend == "onnx" and (device.type != "cpu" or dtype not in (None, torch.float32)):
            raise ValueError("backend='onnx' runs float32 (or quantize=True int8) on the CPU only")
        return backend
    if device.type != "cpu" or dtype not in (None, torch.float32):
        return "torch"
    return "onnx"


class EncoderModel(EmbeddingModel):
    """A BERT-style encoder: :class:`EncoderProcessor`, a torch or ONNX backbone, a projector.

    ``matryoshka_dims`` lists suggested sizes, but any ``1 <= d <= dim`` is accepted: the
    family has no trained Matryoshka levels, so every prefix is equally (un)supported.
    """

    family = "encoder"
    capabilities = Capabilities(native_images=False, late_chunking=True, token_ids=True, trainable=True)
    # BERT-style names: attention q/k/v, attention output, FFN in and out (every Linear of a
    # block), as the jina-v4 adapters cover every projection.
    lora_targets = ("query", "key", "value", "dense")

    def __init__(self, backbone: Any, processor: EncoderProcessor, *, name: str,
                 projector: nn.Linear | None = None, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32, quantized: bool = False) -> None:
        """``backbone``: a transformers ``nn.Module``, or an :class:`OnnxBackbone` (CPU)."""
        from .encoder_onnx import OnnxBackbone

        self.backend: Backend = "onnx" if isinstance(backbone, OnnxBackbone) else "torch"
        self.backbone = backbone.eval() if self.backend == "torch" else backbone
        if self.backend == "onnx":
            # ONNX Runtime on a CPU is fastest on small, cache-resident batches: measured on 667
            # stdlib docstrings, 2 cores: 1024 tokens x 16 rows 45 passages/s, 8192 x 64 34/s.
            self.batch_tokens, self.max_batch_rows = 1024, 16
            # The fixed cost of one ORT call, in tokens, so the planner cuts batches at length
            # jumps instead of padding short rows (see omnivec.batching). Fit over 1-16 rows x
            # 8-128 tokens, e5-small, 2 cores: 6.0 ms + 0.17 ms/token on two threads (~36
            # tokens; the threads synchronise at every operator). benchmarks/onnx_call_overhead.py
            # repeats the fit.
            self.batch_overhead_tokens = 36
        self.processor = processor
        self.name = name
        self.device = device or torch.device("cpu")
        self.dtype = dtype
        self.quantized = quantized
        self.dim = int(backbone.config.hidden_size)
        proj = projector if projector is not None else identity_projector(self.dim)
        self.multivector_projector = proj.to(self.device).eval()
        self.multivector_dim = int(proj.out_features)
        self.matryoshka_dims = tuple(d for d in (32, 64, 128, 256, 512) if d < self.dim) + (self.dim,)
        self.adapter_dir: Path | None = None
        self.task_graphs: TaskGraphs | None = None

    @property
    def projector(self) -> nn.Module:
        return self.multivector_projector

    def trainable_module(self) -> nn.Module:
        if self.backend != "torch":
            raise ValueError("training needs the torch backend of the encoder (backend='torch')")
        return self.backbone

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def pad_id(self) -> int:
        return self.processor.pad_id

    @classmethod
    def from_directory(cls, path: str | Path, device: str | torch.device | None = None,
                       dtype: torch.dtype | None = None, *, quantize: bool = False,
                       backend: Backend | None = None, adapters: AdapterSpec = "auto",
                       projector: bool = True) -> "EncoderModel":
        """Load any BERT/XLM-R encoder directory (transformers weights + ``tokenizer.json``).

        ``backend``: ``"onnx"`` (ONNX Runtime, exported and cached on first use, see
        :mod:`omnivec.models.encoder_onnx`), ``"torch"``, or ``None``: onnx for float32 CPU
        models, else torch; when the onnx path fails (no onnxruntime,
        export error) ``None`` falls back to torch with a warning, ``"onnx"`` raises.
        ``quantize=True`` is the CPU int8 path: ORT dynamic int8 on the onnx backend, torch
        dynamic int8 (:func:`quantize_int8`) on the torch one; e5-small stays at cosine >= 0.99.
        ``adapters``: a folder of trained task adapters (``omnivec train`` output: LoRA per task
        plus, optionally, a multi-vector projector), ``"auto"`` (the model directory's own), or
        ``None`` for the bare backbone. Tasks follow :class:`~omnivec.models.base.TaskTable`:
        a task without an adapter runs the bare backbone only when the folder declares it
        (``bare_tasks`` in ``omnivec-adapters.json``), else it is refused.
        ``projector=False`` ignores any multi-vector projector: multi-vectors are then the raw
        normalised token states (hidden size, e.g. 384), larger but a little more exact.
        """
        path = Path(path)
        dev = pick_device(device)
        if quantize and dev.type != "cpu":
            raise ValueError("quantize=True is a CPU option (dynamic int8); use dtype on GPUs")
        adapter_dir = resolve_adapter_dir(path, adapters)
        chosen = choose_backend(path, dev, dtype, backend)
        if dtype is None:
            dtype = torch.float16 if dev.type == "cuda" else torch.float32
        backbone: Any = None
        if chosen == "onnx":
            reason = _onnx_unavailable_reason()
            if reason is None:
                try:
                    from .encoder_onnx import build_in_child, load_onnx_backbone
                    backbone = load_onnx_backbone(
                        path, quantize=quantize, build=lambda: build_in_child(path, quantize=quantize))
                except Exception as e:
                    reason = f"ONNX export/load failed ({type(e).__name__}: {e})"
            if backbone is None:
                if backend == "onnx":
                    raise RuntimeError(f"{path}: backend='onnx' unavailable: {reason}")
                if quantize:   # torch's int8 is never checked against fp32: no silent swap to it
                    raise RuntimeError(f"{path}: the int8 path is unavailable: {reason}. Run it in fp32, or "
                                       "ask for torch's unchecked dynamic int8 with backend='torch'")
                warnings.warn(f"omnivec: {reason}; using the torch backend", RuntimeWarning, stacklevel=2)
        if backbone is None:
            backbone = _load_backbone(path, torch.float32 if quantize else dtype)
            if quantize:
                backbone = quantize_int8(backbone)
            backbone = backbone.to(dev).eval()
        meta = _read_json(path / "omnivec.json")
        config = backbone.config
        tokenizer = load_tokenizer(path)
        pad_id = config.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.token_to_id("[PAD]") or tokenizer.token_to_id("<pad>") or 0
        hidden_size = int(config.hidden_size)
        mv_projector = _load_projector(path, hidden_size)
        tasks: tuple[str, ...] = ()
        bare: tuple[str, ...] = ()
        if adapter_dir is not None:
            from ..adapters import load_adapters, read_adapter_config
            if (adapter_dir / PROJECTOR_FILE).is_file():
                mv_projector = load_projector_file(adapter_dir / PROJECTOR_FILE, hidden_size)
            has_lora = (adapter_dir / "adapter_config.json").is_file()   # else a projector alone
            if has_lora and isinstance(backbone, nn.Module):
                if quantize:
                    raise ValueError("task adapters with quantize=True need the onnx backend "
                                     "(or pass adapters=None for the bare backbone)")
                tasks = load_adapters(backbone, adapter_dir)
                backbone.to(dev)
            elif has_lora:    # ONNX: one graph per task with the adapter merged into the weights, built on first use
                cfg = read_adapter_config(adapter_dir)
                tasks = tuple(cfg.get("task_names") or ())
            bare = tuple(_read_json(adapter_dir / ADAPTERS_META_FILE).get("bare_tasks") or ())
        if not projector:
            mv_projector = identity_projector(hidden_size)
        name = meta.get("name") or path.name
        processor = EncoderProcessor(tokenizer, name=name, prompts=load_prompts(path),
                                     max_tokens=_max_tokens(path, config, meta), pad_id=int(pad_id),
                                     tasks=TaskTable(adapters=tasks, bare=bare))
        model = cls(backbone, processor, name=name, projector=mv_projector, device=dev,
                    dtype=torch.float32 if quantize else dtype, quantized=quantize)
        if tasks and not isinstance(backbone, nn.Module):
            model.task_graphs = TaskGraphs(path, adapter_dir, quantize, backbone.shared, tasks)
        model.adapter_dir = adapter_dir
        return model

    def load_all_tasks(self) -> None:
        """Every task graph built (in a child process, if missing) and opened now."""
        if self.task_graphs is not None:
            self.task_graphs.open_all()

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["backend"] = "onnxruntime" if self.backend == "onnx" else "torch"
        info["quantization"] = "int8-dynamic" if self.quantized else None
        if self.quantized and self.backend == "onnx":
            from .encoder_onnx import read_check
            info["int8_check"] = read_check(self.backbone.file)   # its fp32 comparison when built
            if self.task_graphs is not None:      # each task's graph is checked on its own (once opened)
                info["int8_task_checks"] = self.task_graphs.checks()
        info["adapter_dir"] = str(self.adapter_dir) if self.adapter_dir else None
        return info

    # ---------------------------------------------------------------- backbone
    def token_states(self, batch: Sequence[Prepared], *, grad: bool = False) -> TokenStates:
        """One padded pass (rows grouped by task on ONNX), returned packed (padding dropped)."""
        lengths = [p.cost for p in batch]
        ids, mask = pad_ids([p.input_ids for p in batch], self.pad_id)
        names = [self.processor.tasks.adapter_for(p.task) for p in batch]
        if grad and self.backend != "torch":
            raise ValueError("training needs the torch backend of the encoder (backend='torch')")
        with torch.enable_grad() if grad else torch.inference_mode():
            hidden, row_tasks = self._padded_states(ids, mask, names)
            states = hidden[torch.from_numpy(mask).to(hidden.device).bool()]
        return TokenStates(states=states, lengths=lengths, row_tasks=row_tasks)

    def _padded_states(self, ids: np.ndarray, mask: np.ndarray,
                       names: list[str | None]) -> tuple[torch.Tensor, list[int]]:
        """(B, L, hidden) states, each row through its task's adapter, and the router indices."""
        if self.backend == "torch":
            from ..adapters import get_router, task_routing
            router = get_router(self.backbone)
            known = router.task_names if router is not None else ()
            row_tasks = [known.index(n) if n in known else -1 for n in names]
            input_ids = torch.from_numpy(ids).to(self.device)
            attention = torch.from_numpy(mask).to(self.device)
            with task_routing(self.backbone, row_tasks if router is not None else None):
                return self.backbone(input_ids=input_ids, attention_mask=attention).last_hidden_state, row_tasks
        row_tasks = [-1] * len(names)       # the ONNX projector has no LoRA to route
        if all(n is None for n in names):
            return torch.from_numpy(self.backbone(ids, mask)), row_tasks
        hidden = np.zeros(ids.shape + (self.dim,), dtype=np.float32)
        for name in dict.fromkeys(names):      # rows grouped by task, one graph each
            rows = np.array([i for i, n in enumerate(names) if n == name])
            sub_ids, sub_mask = ids[rows], mask[rows]
            width = int(sub_mask.sum(1).max())  # the group's own longest row: no extra padding
            backbone = self.backbone if name is None else self.task_graphs.get(name)
            hidden[rows, :width] = backbone(np.ascontiguousarray(sub_ids[:, :width]),
                                            np.ascontiguousarray(sub_mask[:, :width]))
        return torch.from_numpy(hidden), row_tasks


def adapter_key(adapter_dir: Path) -> str:
    """Hash of a task-adapter folder's weights and config: task graphs are cached under it."""
    import hashlib
    digest = hashlib.sha256()
    for f in ("adapter_model.safetensors", "adapter_config.json"):
        digest.update((adapter_dir / f).read_bytes())
    return digest.hexdigest()[:16]


def task_variant(adapter_dir: Path, task: str) -> str:
    """The cache variant name of ``task``'s merged graph (retraining changes the key: re-export)."""
    return f"lora-{task}-{adapter_key(adapter_dir)}"


def build_graph(model_dir: Path, *, quantize: bool = False, adapter_dir: Path | None = None,
                task: str | None = None) -> Path:
    """Export the bare graph, or ``task``'s with its adapter merged in, in this process
    (what the child of :func:`~omnivec.models.encoder_onnx.build_in_child` runs)."""
    from .encoder_onnx import build_onnx
    if task is None:
        return build_onnx(model_dir, quantize=quantize, load_torch=lambda: _load_backbone(model_dir, torch.float32))
    assert adapter_dir is not None, "a task graph needs its adapter folder"
    from ..adapters import load_adapters, merge_task

    def merged() -> nn.Module:
        bb = _load_backbone(model_dir, torch.float32)
        load_adapters(bb, adapter_dir)
        return merge_task(bb, task).eval()

    return build_onnx(model_dir, quantize=quantize, load_torch=merged, variant=task_variant(adapter_dir, task))


class TaskGraphs:
    """ONNX graphs of one encoder with each task adapter merged in, exported once and cached.

    Why: ONNX Runtime knows nothing of LoRA, but a task's adapter is just ``W + BA`` on some
    Linear layers. Each task's graph is keyed by the adapter file's hash, so retraining
    re-exports. A missing graph is built in a child process (about 20-40 s on two cores, said
    on stderr) on the first use of its task, or ahead of time by :meth:`open_all`
    (``omnivec prepare``, and the server before ``/ready``); later loads read the cache.
    """

    def __init__(self, model_dir: Path, adapter_dir: Path, quantize: bool, shared: Any,
                 tasks: Sequence[str] = ()) -> None:
        """``shared``: the bare graph's initialisers every task graph reuses (word embeddings)."""
        self.model_dir, self.adapter_dir, self.quantize, self.shared = model_dir, adapter_dir, quantize, shared
        self.tasks = tuple(tasks)
        self.key = adapter_key(adapter_dir)
        self.graphs: dict[str, Any] = {}
        self._lock = threading.Lock()     # two threads may ask for a new task's graph at once

    def get(self, task: str) -> Any:
        with self._lock:
            if task not in self.graphs:
                from .encoder_onnx import build_in_child, load_onnx_backbone

                # The bare graph's word-embedding matrix (a task adapter never changes it): one
                # 384 MB copy on e5-small for every task instead of one each.
                self.graphs[task] = load_onnx_backbone(
                    self.model_dir, quantize=self.quantize, variant=task_variant(self.adapter_dir, task),
                    shared=self.shared,
                    build=lambda: build_in_child(self.model_dir, quantize=self.quantize,
                                                 adapter_dir=self.adapter_dir, task=task))
            return self.graphs[task]

    def checks(self) -> dict[str, Any]:
        """Each opened task graph's recorded fp32 comparison (int8 graphs; None for float ones)."""
        from .encoder_onnx import read_check
        with self._lock:
            return {task: read_check(graph.file) for task, graph in self.graphs.items()}

    def open_all(self) -> None:
        """Build (if missing) and open every task's graph now, so no request pays for it."""
        for task in self.tasks:
            self.get(task)
