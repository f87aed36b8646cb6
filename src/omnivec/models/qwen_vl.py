"""jina-embeddings-v4 on transformers' Qwen2.5-VL: backbone + per-task LoRA + multi-vector projector.

Reproduces the reference's vectors (see ``reference/jina-v4.md`` sections 1-4). This module is
the family's backbone (``token_states``: the last hidden state after the final norm, padded or
packed); prompts, the image template and the pooling spans are the processor's
(:mod:`omnivec.models.qwen_vl_processing`), pooling and the 128-d projector run in the shared
heads (:mod:`omnivec.heads`). Improvements over the reference: rows of one batch may mix text
and images and tasks (routed per row), and outputs are float32 whatever the compute dtype.
"""
from __future__ import annotations

import inspect
import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..adapters import get_router, load_adapters, task_routing
from .base import Capabilities, CheckpointMismatch, EmbeddingModel, Prepared, TaskTable, TokenStates, pick_device
from .fused import fuse_rms_norms
from .packing import cu_seqlens_from_lengths, packed_forward, rope_index_for_row, varlen_attention
from .qwen_vl_processing import JinaV4Processor, load_image_processor, load_tokenizer
# Vision-tower group size (patches, before the 2x2 merge): ~5 pages of 768 tokens.
VISION_CHUNK_PATCHES = 16384


def is_jina_v4_dir(path: str | Path) -> bool:
    """A local directory in the jina-embeddings-v4 layout (for the model registry)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False
    return (data.get("model_type") == "qwen2_5_vl"
            and ("JinaEmbeddingsV4Model" in (data.get("architectures") or [])
                 or "multi_vector_projector_dim" in data))


def _no_init_weights():
    """Skip random initialisation while building a model whose weights are loaded next."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:  # pragma: no cover
            return nullcontext()
    return no_init_weights()


def _backbone_key(key: str) -> str | None:
    """Map a checkpoint key (either transformers layout) to a ``Qwen2_5_VLModel`` key; None: ignore.

    Old layout: ``model.layers.*``, ``model.embed_tokens.*``, ``model.norm.*``, ``visual.*``;
    new layout: ``model.language_model.*``, ``model.visual.*``. ``lm_head`` is not used.
    """
    if key.startswith("lm_head.") or key.endswith(".inv_freq"):
        return None
    rest = key[len("model."):] if key.startswith("model.") else key
    if rest.startswith(("language_model.", "visual.")):
        return rest
    return "language_model." + rest


def _adapter_dir(path: Path, adapters: str | Path | None) -> Path | None:
    """Where a jina-v4 checkpoint's task adapters come from (see ``from_directory``)."""
    if adapters is None:
        return None
    if isinstance(adapters, str) and adapters in ("auto", "default"):
        adir = path / "adapters"
        return adir if (adir / "adapter_config.json").is_file() else None
    folder = Path(adapters).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"adapters={str(adapters)!r}: no adapter_config.json in that folder")
    return folder


class JinaV4Net(nn.Module):
    """The trainable/servable module tree: ``model`` (Qwen2_5_VLModel) + ``multi_vector_projector``.

    Names mirror the reference (``model.language_model.layers.N...``, ``multi_vector_projector``)
    so adapters saved from here load into the reference layout and back.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Linear) -> None:
        super().__init__()
        self.model = backbone
        self.multi_vector_projector = projector


class JinaV4Model(EmbeddingModel):
    """jina-embeddings-v4 family: Qwen2.5-VL backbone, task LoRA, dense + multi-vector heads."""

    family = "jina-v4"
    capabilities = Capabilities(native_images=True, late_chunking=True, token_ids=True, trainable=True)

    def __init__(self, net: JinaV4Net, config: Any, jina_cfg: dict, tokenizer: Any, image_processor: Any,
                 *, min_pixels: int, max_pixels: int, name: str = "jina-embeddings-v4",
                 device: torch.device, dtype: torch.dtype, adapters: tuple[str, ...] = (),
                 packed: bool | None = None) -> None:
        self.net = net.eval()
        # Packed (padding-free, varlen attention) by default on GPUs; padded sdpa on the CPU,
        # where short padded batches are as fast and the padded path is the reference.
        self.packed = device.type == "cuda" if packed is None else bool(packed)
        self.padded = not self.packed
        if self.packed:
            self.batch_tokens, self.max_batch_rows = 16384, 512
        if device.type == "cuda":   # keep the GPU fed: image preprocessing on several CPU cores
            self.prepare_threads = max(1, min(8, (os.cpu_count() or 2) - 1))
            fuse_rms_norms(self.net)   # one kernel per norm instead of ~6 (same values)
        self._rope_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self.config = config
        self.name = name
        self.device = device
        self.dtype = dtype
        text_cfg = getattr(config, "text_config", config)
        self.dim = int(text_cfg.hidden_size)
        self.multivector_dim = int(net.multi_vector_projector.out_features)
        self.matryoshka_dims = tuple(int(d) for d in (jina_cfg.get("matryoshka_dims") or [self.dim]))
        self.pad_id = int(jina_cfg.get("pad_token_id") or getattr(text_cfg, "pad_token_id", None) or 151643)
        self.image_token_id = int(config.image_token_id)
        self.processor = JinaV4Processor(
            tokenizer, image_processor, config=config, min_pixels=min_pixels, max_pixels=max_pixels,
            tasks=TaskTable(adapters=tuple(adapters)),
            pixel_dtype=self.dtype if device.type == "cuda" else torch.float32,
            pin_memory=device.type == "cuda",
            # M-RoPE positions depend only on the ids and the grid: computed at prepare time,
            # on the CPU, so the packed GPU path does no per-row Python work.
            image_positions=self._image_positions if self.packed else None)
        rope_params = inspect.signature(net.model.get_rope_index).parameters
        self._rope_takes_mm_types = "mm_token_type_ids" in rope_params

    @property
    def projector(self) -> nn.Module:
        return self.net.multi_vector_projector

    def trainable_module(self) -> nn.Module:
        """The reference-named tree (``model.language_model...``, ``multi_vector_projector``)."""
        return self.net

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def from_directory(cls, path: str | Path, device: str | torch.device | None = None,
                       dtype: torch.dtype | None = None, packed: bool | None = None,
                       adapters: str | Path | None = "auto") -> "JinaV4Model":
        """Load a checkpoint directory in the official layout (either transformers key layout).

        ``adapters``: ``"auto"`` (the checkpoint's own ``adapters/`` folder), another folder in
        the same layout (``omnivec train --base <jina-v4 dir>`` output), or ``None`` (the bare
        backbone for every task).

        ``packed``: run batches as one padding-free sequence with varlen attention (default: on
        CUDA). Both paths compute the same vectors.
        """
        from safetensors.torch import load_file
        from transformers import Qwen2_5_VLConfig
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

        path = Path(path)
        cfg_dict = json.loads((path / "config.json").read_text())
        if cfg_dict.get("model_type") != "qwen2_5_vl":
            raise ValueError(f"{path} is not a Qwen2.5-VL checkpoint (model_type={cfg_dict.get('model_type')!r})")
        dev = pick_device(device)
        if dtype is None:
            dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        config = Qwen2_5_VLConfig(**{k: v for k, v in cfg_dict.items() if k not in ("architectures", "auto_map")})
        config._attn_implementation = "sdpa"
        for sub in ("text_config", "vision_config"):
            if getattr(config, sub, None) is not None:
                getattr(config, sub)._attn_implementation = "sdpa"

        with _no_init_weights(), dev:
            try:
                backbone = Qwen2_5_VLModel._from_config(config, dtype=dtype)
            except TypeError:  # transformers 4.x
                backbone = Qwen2_5_VLModel._from_config(config, torch_dtype=dtype)
            text_cfg = getattr(config, "text_config", config)
            proj_dim = int(cfg_dict.get("multi_vector_projector_dim", 128))
            projector = nn.Linear(int(text_cfg.hidden_size), proj_dim, bias=True, device=dev, dtype=dtype)
        backbone.to(dtype)

        files = sorted(p for p in path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors weights in {path}")
        backbone_sd: dict[str, torch.Tensor] = {}
        proj_sd: dict[str, torch.Tensor] = {}
        for f in files:
            for k, v in load_file(str(f)).items():
                if k.startswith("multi_vector_projector."):
                    proj_sd[k[len("multi_vector_projector."):]] = v
                    continue
                mapped = _backbone_key(k)
                if mapped is not None:
                    backbone_sd[mapped] = v
        expected = {k for k in backbone.state_dict() if not k.endswith("inv_freq")}
        missing = sorted(expected - set(backbone_sd))
        unexpected = sorted(set(backbone_sd) - expected)
        if missing or unexpected:
            raise CheckpointMismatch(f"checkpoint {path} does not fit Qwen2_5_VLModel: missing {missing[:10]}"
                             f" ({len(missing)}), unexpected {unexpected[:10]} ({len(unexpected)})")
        backbone.load_state_dict(backbone_sd, strict=False)
        del backbone_sd
        if set(proj_sd) != {"weight", "bias"}:
            raise ValueError(f"checkpoint {path} lacks multi_vector_projector.weight/bias")
        projector.load_state_dict(proj_sd)
        net = JinaV4Net(backbone, projector)
        for p in net.parameters():
            p.requires_grad_(False)

        tasks: tuple[str, ...] = ()
        adir = _adapter_dir(path, adapters)
        if adir is not None:
            from ..adapters import read_adapter_config
            task_names = read_adapter_config(adir).get("task_names") or cfg_dict.get("task_names")
            tasks = load_adapters(
                net, adir, task_names=task_names,
                # language model and projector only: the reference leaves the vision tower alone
                candidates=lambda n: n.startswith("model.language_model.") or n == "multi_vector_projector")
        net.to(device=dev)

        image_processor, min_px, max_px = load_image_processor(path)
        return cls(net, config, cfg_dict, load_tokenizer(path), image_processor, min_pixels=min_px,
                   max_pixels=max_px, name=path.name or "jina-embeddings-v4", device=dev, dtype=dtype,
                   adapters=tasks, packed=packed)

    # ------------------------------------------------------------------------------ backbone
    def _row_tasks(self, batch: Sequence[Prepared]) -> list[int]:
        """Each row's adapter index in the shared LoRA router (-1: bare backbone)."""
        router = get_router(self.net)
        known = router.task_names if router is not None else ()
        names = [self.processor.tasks.adapter_for(p.task) for p in batch]
        return [known.index(n) if n in known else -1 for n in names]

    def token_states(self, batch: Sequence[Prepared], *, grad: bool = False) -> TokenStates:
        """Packed last-layer states (after the final norm) of text and image rows, per-row LoRA."""
        row_tasks = self._row_tasks(batch)
        with torch.enable_grad() if grad else torch.inference_mode():
            if self.packed:
                states = self._states_packed(batch, row_tasks)
            else:
                states = self._states_padded(batch, row_tasks)
        return TokenStates(states=states, lengths=[p.cost for p in batch], row_tasks=row_tasks)

    def _position_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      grid: torch.Tensor | None) -> torch.Tensor:
        """M-RoPE positions from the backbone's own ``get_rope_index`` (text-only: 0..L-1)."""
        b, s = input_ids.shape
        if grid is None:
            return torch.arange(s, device=input_ids.device).view(1, 1, s).expand(3, b, s)
        kwargs: dict[str, Any] = {"image_grid_thw": grid, "attention_mask": attention_mask}
        if self._rope_takes_mm_types:   # transformers 5.x marks image tokens explicitly
            kwargs["mm_token_type_ids"] = ((input_ids == self.image_token_id) & attention_mask.bool()).int()
        position_ids, _ = self.net.model.get_rope_index(input_ids, **kwargs)
        return position_ids

    def _states_padded(self, batch: Sequence[Prepared], row_tasks: list[int]) -> torch.Tensor:
        """Right-padded rows through the standard transformers forward (sdpa, dense mask)."""
        dev = self.device
        lengths = torch.tensor([p.cost for p in batch])
        b, s = len(batch), int(lengths.max())
        input_ids = torch.full((b, s), self.pad_id, dtype=torch.long)
        for i, p in enumerate(batch):
            input_ids[i, : lengths[i]] = torch.as_tensor(p.input_ids, dtype=torch.long)
        attention_mask = (torch.arange(s).unsqueeze(0) < lengths.unsqueeze(1)).long()
        images = [p for p in batch if p.kind == "image"]
        pixel_values = grid = None
        if images:
            pixel_values = torch.cat([p.pixels for p in images]).to(dev, self.dtype)
            grid = torch.cat([p.grid for p in images]).to(dev)
        input_ids, attention_mask = input_ids.to(dev), attention_mask.to(dev)
        position_ids = self._position_ids(input_ids, attention_mask, grid)
        with task_routing(self.net, row_tasks if get_router(self.net) is not None else None):
            out = self.net.model(input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=position_ids, pixel_values=pixel_values,
                                 image_grid_thw=grid, use_cache=False, return_dict=True)
        return out.last_hidden_state[attention_mask.bool()]     # after the final norm, (N, H) row-major

    def _image_positions(self, ids: list[int], grid: torch.Tensor) -> torch.Tensor:
        """(3, n) M-RoPE positions of an image row; they depend only on the grid, so cached."""
        key = tuple(int(v) for v in grid.reshape(-1))
        cached = self._rope_cache.get(key)
        if cached is None or cached.shape[1] != len(ids):
            cached = rope_index_for_row(self.net.model, torch.tensor(ids), grid)
            self._rope_cache[key] = cached
        return cached

    def _image_features(self, images: list[Prepared]) -> torch.Tensor:
        """Merged vision-tower features of all image rows, (n_image_tokens, H), in row order.

        Pages go through the vision tower in groups of at most VISION_CHUNK_PATCHES patches:
        the same features, with activation memory bounded whatever the LM batch budget.
        """
        dev = self.device
        visual = self.net.model.visual
        # On CUDA the vision tower's window/full attention also runs as varlen segments.
        ctx = varlen_attention(self.net.model.language_model, visual) if dev.type == "cuda" else nullcontext()
        groups: list[list[Prepared]] = [[]]
        patches = 0
        for p in images:
            n = int(p.grid.prod())
            if groups[-1] and patches + n > VISION_CHUNK_PATCHES:
                groups.append([])
                patches = 0
            groups[-1].append(p)
            patches += n
        feats = []
        with ctx:
            for group in groups:
                pixel_values = torch.cat([p.pixels.to(dev, self.dtype, non_blocking=True)
                                          for p in group])
                grid = torch.cat([p.grid for p in group]).to(dev)
                out = visual(pixel_values, grid_thw=grid)
                feats.append(out.pooler_output if hasattr(out, "pooler_output") else out)
        return feats[0] if len(feats) == 1 else torch.cat(feats)

    def _states_packed(self, batch: Sequence[Prepared], row_tasks: list[int]) -> torch.Tensor:
        """All rows as one padding-free sequence; attention kept inside each row (varlen)."""
        dev = self.device
        lengths = [p.cost for p in batch]
        n = sum(lengths)
        ids_cpu = torch.cat([torch.as_tensor(p.input_ids, dtype=torch.long) for p in batch])
        ids = ids_cpu.to(dev, non_blocking=True)
        embeds = self.net.model.get_input_embeddings()(ids)
        images = [p for p in batch if p.kind == "image"]
        if images:
            feats = self._image_features(images)
            embeds = embeds.masked_scatter((ids == self.image_token_id).unsqueeze(-1), feats.to(embeds.dtype))
        # Positions restart per row; image rows carry their M-RoPE positions from prepare().
        offsets = torch.tensor([0] + lengths[:-1]).cumsum(0)
        row_of_token = torch.repeat_interleave(torch.arange(len(batch)), torch.tensor(lengths))
        positions = (torch.arange(n) - offsets[row_of_token]).view(1, n).repeat(3, 1)
        for i, p in enumerate(batch):
            if p.kind == "image":
                start = int(offsets[i])
                positions[:, start:start + lengths[i]] = p.positions
        cu, max_len = cu_seqlens_from_lengths(lengths, dev)
        token_tasks = torch.tensor(row_tasks, dtype=torch.long).repeat_interleave(torch.tensor(lengths))
        routing = token_tasks if get_router(self.net) is not None else None
        with task_routing(self.net, routing):
            return packed_forward(self.net.model.language_model, embeds.unsqueeze(0),
                                  positions.unsqueeze(1).to(dev, non_blocking=True), cu, max_len)
