"""Multi-task LoRA: several task adapters on one frozen Linear, routed per row in one pass.

The reference (jina-embeddings-v4) keeps, per wrapped Linear, ``lora_A[task]`` (r x in) and
``lora_B[task]`` (out x r) and adds ``B(A(x)) * alpha / r``; a batch may mix tasks. Here the
routing is a tensor of task indices per row (or per token) held by a shared :class:`LoRARouter`
that every wrapped layer reads, so the backbone's own forward needs no extra arguments.
Nothing here is Qwen specific: the same layer serves trained adapters on BERT encoders.

Saved layout (peft style, as the reference's ``adapters/`` folder)::

    adapter_config.json        {"r", "lora_alpha", "target_modules", "task_names", ...}
    adapter_model.safetensors  base_model.model.<module path>.lora_A.<task>.weight  (r, in)
                               base_model.model.<module path>.lora_B.<task>.weight  (out, r)

Module paths differ between transformers versions, so saved keys are matched to modules by the
longest common dotted suffix (``layers.3.self_attn.q_proj``).
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

PEFT_PREFIX = "base_model.model."
# omnivec's record beside an adapter folder: how each task was trained, and ``bare_tasks``
# (tasks that deliberately run the bare backbone, e.g. e5's own retrieval training).
ADAPTERS_META_FILE = "omnivec-adapters.json"
_KEY_RE = re.compile(r"^(?P<path>.+?)\.lora_(?P<ab>[AB])\.(?:default\.)?(?P<task>[^.]+)\.weight$")


class LoRARouter:
    """Which task each row (or token) of the next forward uses; shared by all wrapped layers.

    ``task_ids`` is a LongTensor of indices into ``task_names`` (-1: no adapter) whose length
    equals the leading dimension of the tensors the wrapped layers see (batch rows, or tokens
    of a packed sequence). The per-task row groups are computed once here, not in every layer.
    """

    def __init__(self, task_names: Sequence[str]) -> None:
        self.task_names = tuple(task_names)
        self.task_ids: torch.Tensor | None = None
        self.single: int | None = None                       # whole batch uses this task
        self.groups: list[tuple[int, torch.Tensor]] = []     # mixed: (task, row indices)

    def set(self, task_ids: torch.Tensor | Sequence[int] | None,
            device: torch.device | str | None = None) -> None:
        """Route the next forward passes; ``None`` disables every adapter."""
        if task_ids is None:
            self.task_ids, self.single, self.groups = None, -1, []
            return
        ids = torch.as_tensor(task_ids, dtype=torch.long).flatten().cpu()
        if ids.numel() and (int(ids.max()) >= len(self.task_names) or int(ids.min()) < -1):
            raise ValueError(f"task index out of range for tasks {self.task_names}: {ids.tolist()}")
        self.task_ids = ids
        uniq = torch.unique(ids).tolist()
        if len(uniq) <= 1:
            self.single = int(uniq[0]) if uniq else -1
            self.groups = []
        else:
            self.single = None
            self.groups = [(int(t), torch.nonzero(ids == t).flatten().to(device or "cpu"))
                           for t in uniq if t >= 0]

    def clear(self) -> None:
        self.task_ids, self.single, self.groups = None, -1, []


class MultiTaskLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus one LoRA (A, B) pair per task, routed per row.

    ``forward(x)`` = ``base(x) + B_t(A_t(x)) * alpha / r`` where ``t`` is the task of x's row
    (its index along dim 0) as set on the shared router. One task for the whole batch is
    computed directly; mixed tasks gather each task's rows, run its adapter and scatter back.
    """

    def __init__(self, base: nn.Linear, task_names: Sequence[str], r: int, alpha: float,
                 router: LoRARouter | None = None) -> None:
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank must be positive, got {r}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.task_names = tuple(task_names)
        self.r = int(r)
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.r
        w = base.weight
        self.lora_A = nn.ModuleDict({t: nn.Linear(base.in_features, r, bias=False, device=w.device, dtype=w.dtype)
                                     for t in self.task_names})
        self.lora_B = nn.ModuleDict({t: nn.Linear(r, base.out_features, bias=False, device=w.device, dtype=w.dtype)
                                     for t in self.task_names})
        for t in self.task_names:       # standard LoRA init: B = 0, so a fresh adapter is a no-op
            nn.init.kaiming_uniform_(self.lora_A[t].weight, a=5 ** 0.5)
            nn.init.zeros_(self.lora_B[t].weight)
        # Plain attribute (not a submodule): the router is shared state, not a parameter holder.
        object.__setattr__(self, "router", router or LoRARouter(self.task_names))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:   # code that inspects ``.weight`` (dtype, device) keeps working
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def _delta(self, x: torch.Tensor, task: int) -> torch.Tensor:
        name = self.task_names[task]
        a, b = self.lora_A[name], self.lora_B[name]
        return b(a(x.to(a.weight.dtype))) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        router = self.router
        if router.task_ids is None:
            return out
        n = router.task_ids.numel()
        if router.single is not None:
            if x.shape[0] != n and x.shape[:-1].numel() != n:
                raise RuntimeError(f"LoRA routing has {n} entries but the input is {tuple(x.shape)}")
            if router.single < 0:
                return out
            # out + B(A(x)) * scaling with the add fused into the B GEMM (no extra elementwise passes)
            name = self.task_names[router.single]
            a, b = self.lora_A[name].weight, self.lora_B[name].weight
            h = F.linear(x.to(a.dtype), a)
            flat_out = out.reshape(-1, out.shape[-1])
            return torch.addmm(flat_out, h.reshape(-1, h.shape[-1]).to(out.dtype), b.to(out.dtype).t(),
                               alpha=self.scaling).view(out.shape)
        if x.shape[0] == n:
            flat_x, flat_out = x, out
        elif x.shape[:-1].numel() == n:   # per-token routing of a packed (1, N, H) sequence
            flat_x, flat_out = x.reshape(n, x.shape[-1]), out.reshape(n, out.shape[-1])
        else:
            raise RuntimeError(f"LoRA routing has {n} entries but the input is {tuple(x.shape)}")
        for task, idx in router.groups:
            if idx.device != x.device:
                idx = idx.to(x.device)
            flat_out = flat_out.index_add(0, idx, self._delta(flat_x.index_select(0, idx), task).to(out.dtype))
        return flat_out.reshape(out.shape)

    def merged_weight(self, task: str) -> torch.Tensor:
        """``W + B @ A * scaling``: the dense weight one task is equivalent to (for checks/export)."""
        return self.base.weight + (self.lora_B[task].weight @ self.lora_A[task].weight) * self.scaling

    def extra_repr(self) -> str:
        return f"tasks={list(self.task_names)}, r={self.r}, alpha={self.alpha}"


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _selector(targets: str | Sequence[str] | Callable[[str], bool]) -> Callable[[str], bool]:
    """peft semantics: a string is a full-match regex; a list matches names ending in an entry."""
    if callable(targets):
        return targets
    if isinstance(targets, str):
        pattern = re.compile(targets)
        return lambda name: pattern.fullmatch(name) is not None
    suffixes = tuple(targets)
    return lambda name: any(name == s or name.endswith("." + s) for s in suffixes)


def lora_layers(model: nn.Module) -> dict[str, MultiTaskLoRALinear]:
    """Every wrapped layer by module path."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MultiTaskLoRALinear)}


def get_router(model: nn.Module) -> LoRARouter | None:
    """The router shared by the model's LoRA layers (None when nothing is wrapped)."""
    router = getattr(model, "_omnivec_lora_router", None)
    if router is None:
        layers = lora_layers(model)
        router = next(iter(layers.values())).router if layers else None
    return router


def wrap_lora(model: nn.Module, targets: str | Sequence[str] | Callable[[str], bool],
              task_names: Sequence[str], r: int, alpha: float) -> int:
    """Replace every ``nn.Linear`` whose path matches ``targets`` by a MultiTaskLoRALinear.

    ``targets``: a regex (full match on the module path), a list of name suffixes
    (``["q_proj", "v_proj"]``) or a predicate. All layers share one router. Returns how many
    layers were wrapped; layers already wrapped are left as they are.
    """
    select = _selector(targets)
    router = get_router(model)
    if router is None:
        router = LoRARouter(task_names)
    elif tuple(router.task_names) != tuple(task_names):
        raise ValueError(f"model already has LoRA tasks {router.task_names}, not {tuple(task_names)}")
    wrapped_inside = {n + "." for n in lora_layers(model)}
    names = [n for n, m in model.named_modules()
             if type(m) is nn.Linear and select(n) and not any(n.startswith(w) for w in wrapped_inside)]
    for name in names:
        _replace_module(model, name, MultiTaskLoRALinear(model.get_submodule(name), task_names, r, alpha, router))
    if names or lora_layers(model):
        object.__setattr__(model, "_omnivec_lora_router", router)
    return len(names)


@contextmanager
def task_routing(model: nn.Module, task_ids: torch.Tensor | Sequence[int] | None) -> Iterator[LoRARouter | None]:
    """Route the model's LoRA layers per row (or per token) for the duration of the block."""
    router = get_router(model)
    if router is None:
        yield None
        return
    device = None
    for p in model.parameters():
        device = p.device
        break
    prev = (router.task_ids, router.single, router.groups)
    router.set(task_ids, device)
    try:
        yield router
    finally:
        router.task_ids, router.single, router.groups = prev


def task_index(model: nn.Module, names: Iterable[str | None]) -> torch.Tensor:
    """Task names (None: no adapter) to router indices."""
    router = get_router(model)
    known = router.task_names if router is not None else ()
    out = []
    for n in names:
        if n is None:
            out.append(-1)
        elif n in known:
            out.append(known.index(n))
        else:
            raise ValueError(f"unknown adapter {n!r}; this model has {list(known)}")
    return torch.tensor(out, dtype=torch.long)


# ---------------------------------------------------------------------------------- load / save

def _parse_key(key: str) -> tuple[str, str, str] | None:
    k = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
    m = _KEY_RE.match(k)
    if m is None:
        return None
    return m["path"], m["ab"], m["task"]


class _SuffixIndex:
    """Find a module by the longest common dotted-path suffix (tolerates version renames)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.by_suffix: dict[tuple[str, ...], list[str]] = {}
        for name in names:
            parts = tuple(name.split("."))
            for i in range(len(parts)):
                self.by_suffix.setdefault(parts[i:], []).append(name)

    def match(self, path: str) -> tuple[str | None, list[str]]:
        parts = tuple(path.split("."))
        for i in range(len(parts)):
            hits = self.by_suffix.get(parts[i:])
            if hits:
                return (hits[0], []) if len(hits) == 1 else (None, hits)
        return None, []


def read_adapter_config(adapter_dir: str | Path) -> dict:
    """adapter_config.json as a dict (clear error when missing)."""
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no adapter_config.json in {adapter_dir}")
    return json.loads(path.read_text())


def load_adapters(model: nn.Module, adapter_dir: str | Path, *,
                  candidates: Callable[[str], bool] | None = None,
                  task_names: Sequence[str] | None = None,
                  require_all_tasks: bool = True) -> tuple[str, ...]:
    """Attach the task adapters saved in ``adapter_dir`` (peft layout) and return the task names.

    Each saved key is matched to a Linear of ``model`` (restricted to paths accepted by
    ``candidates``) by the longest common path suffix; matched layers are wrapped when they are
    not yet. Unmatched, ambiguous or mis-shaped keys raise ``ValueError`` listing them.
    ``require_all_tasks=False`` lets ``task_names`` name tasks the file lacks (they keep their
    fresh, no-op initialisation): how training adds a task to an existing adapter folder.
    """
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    cfg = read_adapter_config(adapter_dir)
    r = int(cfg.get("r", 8))
    alpha = float(cfg.get("lora_alpha", r))
    if cfg.get("use_rslora"):
        raise ValueError("rsLoRA adapters are not supported")
    weights_path = adapter_dir / "adapter_model.safetensors"
    if not weights_path.is_file():
        raise FileNotFoundError(f"no adapter_model.safetensors in {adapter_dir}")
    state = load_file(str(weights_path))

    parsed: dict[str, tuple[str, str, str]] = {}
    bad = []
    for key in state:
        p = _parse_key(key)
        if p is None:
            bad.append(key)
        else:
            parsed[key] = p
    if bad:
        raise ValueError(f"adapter keys not in the <path>.lora_A|lora_B.<task>.weight layout: {sorted(bad)[:20]}"
                         + (f" (+{len(bad) - 20} more)" if len(bad) > 20 else ""))
    tasks = tuple(task_names or cfg.get("task_names") or sorted({t for _, _, t in parsed.values()}))
    if not tasks:
        raise ValueError(f"{weights_path} holds no adapter weights")

    existing = lora_layers(model)
    linears = {n for n, m in model.named_modules()
               if (type(m) is nn.Linear and not any(n.startswith(e + ".") for e in existing)) or n in existing}
    if candidates is not None:
        linears = {n for n in linears if candidates(n)}
    index = _SuffixIndex(linears)

    assignments: dict[str, tuple[str, str, str]] = {}
    unmatched, ambiguous = [], []
    for key, (path, ab, task) in parsed.items():
        if task not in tasks:
            unmatched.append(f"{key} (task {task!r} not in {list(tasks)})")
            continue
        name, hits = index.match(path)
        if name is None:
            (ambiguous if hits else unmatched).append(key + (f" (matches {hits[:3]}...)" if hits else ""))
            continue
        assignments[key] = (name, ab, task)
    if unmatched or ambiguous:
        msg = []
        if unmatched:
            msg.append(f"{len(unmatched)} adapter keys match no module: {sorted(unmatched)[:20]}")
        if ambiguous:
            msg.append(f"{len(ambiguous)} adapter keys match several modules: {sorted(ambiguous)[:20]}")
        raise ValueError("; ".join(msg))

    targets = {name for name, _, _ in assignments.values()} - set(existing)
    if targets:
        wrap_lora(model, targets.__contains__, tasks, r, alpha)
    layers = lora_layers(model)
    problems = []
    seen: set[tuple[str, str, str]] = set()
    with torch.no_grad():
        for key, (name, ab, task) in assignments.items():
            layer = layers[name]
            if tuple(layer.task_names) != tasks:
                problems.append(f"{name} has tasks {layer.task_names}, file has {tasks}")
                continue
            dst = (layer.lora_A if ab == "A" else layer.lora_B)[task].weight
            src = state[key]
            if tuple(src.shape) != tuple(dst.shape):
                problems.append(f"{key}: shape {tuple(src.shape)} != {tuple(dst.shape)}")
                continue
            if (name, ab, task) in seen:
                problems.append(f"{key}: a second key for {name}.lora_{ab}.{task}")
                continue
            seen.add((name, ab, task))
            dst.copy_(src.to(dst.dtype))
    if problems:
        raise ValueError("adapter weights do not fit the model: " + "; ".join(problems[:20]))
    in_file = {t for _, _, t in parsed.values()}
    missing = [f"{n}.lora_{ab}.{t}" for n in {a[0] for a in assignments.values()}
               for ab in "AB" for t in tasks if (n, ab, t) not in seen
               and (require_all_tasks or t in in_file)]
    if missing:
        raise ValueError(f"adapter file lacks {len(missing)} weights: {sorted(missing)[:20]}")
    return tasks


def save_adapters(model: nn.Module, adapter_dir: str | Path, task_names: Sequence[str] | None = None,
                  *, prefix: str = PEFT_PREFIX, extra_config: dict | None = None) -> Path:
    """Write the model's LoRA weights in the layout :func:`load_adapters` reads (and the reference uses)."""
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to save")
    first = next(iter(layers.values()))
    tasks = tuple(task_names or first.task_names)
    state: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        if (layer.r, layer.alpha) != (first.r, first.alpha):
            raise ValueError("save_adapters needs one r/alpha for all layers")
        for t in tasks:
            state[f"{prefix}{name}.lora_A.{t}.weight"] = layer.lora_A[t].weight.detach().cpu().contiguous()
            state[f"{prefix}{name}.lora_B.{t}.weight"] = layer.lora_B[t].weight.detach().cpu().contiguous()
    out = Path(adapter_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    leaf_names = sorted({n.rsplit(".", 1)[-1] for n in layers})
    config = {"peft_type": "LORA", "r": first.r, "lora_alpha": first.alpha, "lora_dropout": 0.0,
              "bias": "none", "target_modules": leaf_names, "task_names": list(tasks),
              "use_rslora": False, "use_dora": False, "inference_mode": True}
    config.update(extra_config or {})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out


def merge_task(model: nn.Module, task: str | None) -> nn.Module:
    """Replace every LoRA layer by a plain ``nn.Linear`` holding ``W + B A * scaling`` of ``task``.

    Why: a model that serves one task can then run through graph compilers (ONNX) that know
    nothing of LoRA; ``task=None`` (or a task without an adapter) keeps the bare weights.
    """
    for name, layer in list(lora_layers(model).items()):
        base = layer.base
        merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            merged.weight.copy_(layer.merged_weight(task) if task in layer.task_names else base.weight)
            if base.bias is not None:
                merged.bias.copy_(base.bias)
        _replace_module(model, name, merged)
    if hasattr(model, "_omnivec_lora_router"):
        object.__delattr__(model, "_omnivec_lora_router")
    return model

