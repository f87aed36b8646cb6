"""jina-embeddings-v4 on transformers' Qwen2.5-VL: backbone + per-task LoRA + multi-vector projector.

Reproduces the reference's vectors (see ``reference/jina-v4.md`` sections 1-4): prompts
``Query: `` / ``Passage: `` for text, a fixed chat template for images, the last hidden state
after the final norm, mean pooling (text: all tokens; image: ``<|vision_start|>`` ..
``<|vision_end|>``), and a 128-d projector for multi-vectors. Improvements over the reference:
pooling is decided per row (mixed text+image batches work), tasks are routed per row (mixed-task
batches work) and outputs are float32 CPU tensors whatever the compute dtype.
"""
from __future__ import annotations

import inspect
import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from torch import nn

from ..adapters import get_router, load_adapters, task_routing
from ..tasks import TaskSpec
from .base import EmbeddingModel, ForwardOutput, Prepared, PrepareOptions, pick_device
from .fused import fuse_rms_norms
from .packing import cu_seqlens_from_lengths, packed_forward, rope_index_for_row, varlen_attention

PROMPT_PREFIX = {"query": "Query: ", "passage": "Passage: "}
IMAGE_TEMPLATE_PRE = "<|im_start|>user\n<|vision_start|>"
IMAGE_TEMPLATE_POST = "<|vision_end|>Describe the image.<|im_end|>\n"
MAX_TOKENS = 32768
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


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """Device -> host copy that does not block on CUDA (pinned destination); see ForwardOutput.wait."""
    return t.to("cpu", non_blocking=True) if t.is_cuda else t


def _white_background(img: PILImage.Image) -> PILImage.Image:
    """Composite transparent images onto white (what the reference does) and return RGB."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PILImage.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


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
    supports_images = True
    max_tokens = MAX_TOKENS

    def __init__(self, net: JinaV4Net, config: Any, jina_cfg: dict, tokenizer: Any, image_processor: Any,
                 *, name: str = "jina-embeddings-v4", device: torch.device, dtype: torch.dtype,
                 adapters: tuple[str, ...] = (), packed: bool | None = None) -> None:
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
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.name = name
        self.device = device
        self.dtype = dtype
        text_cfg = getattr(config, "text_config", config)
        self.dim = int(text_cfg.hidden_size)
        self.multivector_dim = int(net.multi_vector_projector.out_features)
        self.matryoshka_dims = tuple(int(d) for d in (jina_cfg.get("matryoshka_dims") or [self.dim]))
        self.adapters = tuple(adapters)
        self.pad_id = int(jina_cfg.get("pad_token_id") or getattr(text_cfg, "pad_token_id", None) or 151643)
        self.image_token_id = int(config.image_token_id)
        self.video_token_id = int(config.video_token_id)
        self.vision_start_id = int(config.vision_start_token_id)
        self.vision_end_id = int(config.vision_end_token_id)
        self.spatial_merge = int(config.vision_config.spatial_merge_size)
        self._pre_ids = self._encode(IMAGE_TEMPLATE_PRE)
        self._post_ids = self._encode(IMAGE_TEMPLATE_POST)
        if self._pre_ids[-1] != self.vision_start_id or self._post_ids[0] != self.vision_end_id:
            raise ValueError("the tokenizer does not map <|vision_start|>/<|vision_end|> to the config's ids")
        rope_params = inspect.signature(net.model.get_rope_index).parameters
        self._rope_takes_mm_types = "mm_token_type_ids" in rope_params

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def from_directory(cls, path: str | Path, device: str | torch.device | None = None,
                       dtype: torch.dtype | None = None, packed: bool | None = None) -> "JinaV4Model":
        """Load a checkpoint directory in the official layout (either transformers key layout).

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
            raise ValueError(f"checkpoint {path} does not fit Qwen2_5_VLModel: missing {missing[:10]}"
                             f" ({len(missing)}), unexpected {unexpected[:10]} ({len(unexpected)})")
        backbone.load_state_dict(backbone_sd, strict=False)
        del backbone_sd
        if set(proj_sd) != {"weight", "bias"}:
            raise ValueError(f"checkpoint {path} lacks multi_vector_projector.weight/bias")
        projector.load_state_dict(proj_sd)
        net = JinaV4Net(backbone, projector)
        for p in net.parameters():
            p.requires_grad_(False)

        adapters: tuple[str, ...] = ()
        adir = path / "adapters"
        if (adir / "adapter_config.json").is_file():
            task_names = cfg_dict.get("task_names")
            adapters = load_adapters(
                net, adir, task_names=task_names,
                # language model and projector only: the reference leaves the vision tower alone
                candidates=lambda n: n.startswith("model.language_model.") or n == "multi_vector_projector")
        net.to(device=dev)

        tokenizer = cls._load_tokenizer(path)
        image_processor = cls._load_image_processor(path)
        return cls(net, config, cfg_dict, tokenizer, image_processor, name=path.name or "jina-embeddings-v4",
                   device=dev, dtype=dtype, adapters=adapters, packed=packed)

    @staticmethod
    def _load_tokenizer(path: Path) -> Any:
        if (path / "tokenizer.json").is_file():
            from tokenizers import Tokenizer
            tok = Tokenizer.from_file(str(path / "tokenizer.json"))
            tok.no_truncation()
            tok.no_padding()
            return tok
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(str(path))

    @staticmethod
    def _load_image_processor(path: Path) -> Any:
        try:
            from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil as Proc
        except ImportError:  # transformers 4.x: the slow processor is PIL based
            from transformers.models.qwen2_vl import Qwen2VLImageProcessor as Proc
        cfg: dict = {}
        pp = path / "preprocessor_config.json"
        if pp.is_file():
            cfg = json.loads(pp.read_text())
        keep = ("do_resize", "do_rescale", "rescale_factor", "do_normalize", "do_convert_rgb",
                "resample", "image_mean", "image_std", "patch_size", "merge_size", "temporal_patch_size")
        kwargs = {k: cfg[k] for k in keep if k in cfg}
        size = dict(cfg.get("size") or {})
        min_px = cfg.get("min_pixels", size.get("shortest_edge", 56 * 56))
        max_px = cfg.get("max_pixels", size.get("longest_edge", 28 * 28 * 1280))
        proc = Proc(min_pixels=int(min_px), max_pixels=int(max_px), **kwargs)
        proc._omnivec_pixels = (int(min_px), int(max_px))
        return proc

    # ------------------------------------------------------------------------------ prepare
    def _encode(self, text: str) -> list[int]:
        tok = self.tokenizer
        if hasattr(tok, "encode") and hasattr(tok, "token_to_id"):     # tokenizers.Tokenizer
            return list(tok.encode(text, add_special_tokens=False).ids)
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def _task_index(self, task: TaskSpec) -> int:
        if not self.adapters:
            return -1
        if task.adapter not in self.adapters:
            raise ValueError(f"adapter {task.adapter!r} is not in this model's adapters {list(self.adapters)}")
        return self.adapters.index(task.adapter)

    def prepare(self, item: Any, task: TaskSpec, options: PrepareOptions) -> Prepared:
        """Tokenise a text with its prompt, or resize + patchify an image into its template."""
        if isinstance(item, str):
            return self._prepare_text(item, task, options)
        if isinstance(item, PILImage.Image):
            return self._prepare_image(item, task, options)
        raise TypeError(f"jina-v4 takes str or PIL.Image inputs, got {type(item).__name__}")

    def _prepare_text(self, text: str, task: TaskSpec, options: PrepareOptions) -> Prepared:
        prompt = "query" if task.adapter == "text-matching" else task.prompt
        if prompt not in PROMPT_PREFIX:
            raise ValueError(f"unknown prompt {prompt!r}; allowed: {list(PROMPT_PREFIX)}")
        ids = self._encode(PROMPT_PREFIX[prompt] + text)
        if self.image_token_id in ids or self.video_token_id in ids:
            raise ValueError("text contains <|image_pad|> or <|video_pad|>, which only image inputs may use")
        limit = min(options.max_tokens or self.max_tokens, self.max_tokens)
        truncated = False
        if len(ids) > limit:
            if not options.truncate:
                raise ValueError(f"text is {len(ids)} tokens (prompt included), over the limit of {limit}; "
                                 "pass truncate=True to cut the end")
            ids, truncated = ids[:limit], True
        return Prepared(kind="text", task=task, cost=len(ids),
                        data={"input_ids": ids, "task_index": self._task_index(task)}, truncated=truncated)

    def _prepare_image(self, img: PILImage.Image, task: TaskSpec, options: PrepareOptions) -> Prepared:
        img = _white_background(img)
        min_px, max_px = self.image_processor._omnivec_pixels
        if options.max_pixels is not None:
            max_px = int(options.max_pixels)
            min_px = min(min_px, max_px)
        out = self.image_processor(images=[img], size={"shortest_edge": min_px, "longest_edge": max_px},
                                   return_tensors="pt")
        pixels = out["pixel_values"]
        if self.device.type == "cuda":
            # The vision tower runs in the model dtype anyway; converting and pinning here (on a
            # prepare thread) halves the bytes and makes the host->device copy asynchronous.
            pixels = pixels.to(self.dtype).pin_memory()
        else:
            pixels = pixels.to(torch.float32)
        grid = out["image_grid_thw"].to(torch.long).reshape(1, 3)
        n_tokens = int(grid.prod()) // (self.spatial_merge ** 2)
        ids = self._pre_ids + [self.image_token_id] * n_tokens + self._post_ids
        # M-RoPE positions depend only on the ids and the grid: computed here, on the CPU,
        # so the packed GPU path does no per-row Python work.
        positions = self._image_positions(ids, grid) if self.packed else None
        return Prepared(kind="image", task=task, cost=len(ids),
                        data={"input_ids": ids, "pixel_values": pixels, "image_grid_thw": grid,
                              "task_index": self._task_index(task), "position_ids": positions})

    # ------------------------------------------------------------------------------ forward
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

    @torch.inference_mode()
    def forward(self, batch: list[Prepared], *, dense: bool = True,
                multivector: bool = False) -> ForwardOutput:
        """One pass over text and image rows, each with its own task adapter."""
        if not batch:
            return ForwardOutput(dense=torch.zeros(0, self.dim) if dense else None,
                                 multivector=[] if multivector else None)
        if self.packed:
            return self._forward_packed(batch, dense=dense, multivector=multivector)
        return self._forward_padded(batch, dense=dense, multivector=multivector)

    def _forward_padded(self, batch: list[Prepared], *, dense: bool, multivector: bool) -> ForwardOutput:
        """Right-padded rows through the standard transformers forward (sdpa, dense mask)."""
        dev = self.device
        lengths = torch.tensor([len(p.data["input_ids"]) for p in batch])
        b, s = len(batch), int(lengths.max())
        input_ids = torch.full((b, s), self.pad_id, dtype=torch.long)
        for i, p in enumerate(batch):
            input_ids[i, : lengths[i]] = torch.as_tensor(p.data["input_ids"], dtype=torch.long)
        attention_mask = (torch.arange(s).unsqueeze(0) < lengths.unsqueeze(1)).long()
        images = [p for p in batch if p.kind == "image"]
        pixel_values = grid = None
        if images:
            pixel_values = torch.cat([p.data["pixel_values"] for p in images]).to(dev, self.dtype)
            grid = torch.cat([p.data["image_grid_thw"] for p in images]).to(dev)
        input_ids, attention_mask = input_ids.to(dev), attention_mask.to(dev)
        position_ids = self._position_ids(input_ids, attention_mask, grid)
        row_tasks = torch.tensor([p.data.get("task_index", -1) for p in batch], dtype=torch.long)

        with task_routing(self.net, row_tasks if get_router(self.net) is not None else None):
            out = self.net.model(input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=position_ids, pixel_values=pixel_values,
                                 image_grid_thw=grid, use_cache=False, return_dict=True)
        hidden = out.last_hidden_state              # after the final norm = hidden_states[-1]

        dense_out = None
        if dense:
            pool = attention_mask.bool()
            is_image = torch.tensor([p.kind == "image" for p in batch], device=dev)
            if bool(is_image.any()):
                pos = torch.arange(s, device=dev).unsqueeze(0)
                start = (input_ids == self.vision_start_id).int().argmax(dim=1, keepdim=True)
                end = (input_ids == self.vision_end_id).int().argmax(dim=1, keepdim=True)
                span = (pos >= start) & (pos <= end)
                pool = torch.where(is_image.unsqueeze(1), span, pool)
            weights = pool.to(torch.float32)
            summed = torch.bmm(weights.unsqueeze(1), hidden.to(torch.float32)).squeeze(1)
            dense_out = (summed / weights.sum(dim=1, keepdim=True)).cpu()

        mv_out = None
        if multivector:
            keep = attention_mask.bool()
            tokens = hidden[keep]                                   # (N, H), row-major
            token_tasks = row_tasks.repeat_interleave(lengths)
            with task_routing(self.net, token_tasks if get_router(self.net) is not None else None):
                proj = self.net.multi_vector_projector(tokens)
            proj = F.normalize(proj.to(torch.float32), dim=-1).cpu()
            mv_out = list(torch.split(proj, lengths.tolist()))
        return ForwardOutput(dense=dense_out, multivector=mv_out)

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
            n = int(p.data["image_grid_thw"].prod())
            if groups[-1] and patches + n > VISION_CHUNK_PATCHES:
                groups.append([])
                patches = 0
            groups[-1].append(p)
            patches += n
        feats = []
        with ctx:
            for group in groups:
                pixel_values = torch.cat([p.data["pixel_values"].to(dev, self.dtype, non_blocking=True)
                                          for p in group])
                grid = torch.cat([p.data["image_grid_thw"] for p in group]).to(dev)
                out = visual(pixel_values, grid_thw=grid)
                feats.append(out.pooler_output if hasattr(out, "pooler_output") else out)
        return feats[0] if len(feats) == 1 else torch.cat(feats)

    def _forward_packed(self, batch: list[Prepared], *, dense: bool, multivector: bool) -> ForwardOutput:
        """All rows as one padding-free sequence; attention kept inside each row (varlen)."""
        dev = self.device
        lengths = [len(p.data["input_ids"]) for p in batch]
        n = sum(lengths)
        ids_cpu = torch.cat([torch.as_tensor(p.data["input_ids"], dtype=torch.long) for p in batch])
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
        pool = torch.ones(n, dtype=torch.float32)
        for i, p in enumerate(batch):
            if p.kind == "image":
                start = int(offsets[i])
                positions[:, start:start + lengths[i]] = p.data["position_ids"]
                # dense pooling of an image row: <|vision_start|> .. <|vision_end|> inclusive
                row = ids_cpu[start:start + lengths[i]]
                vs = int((row == self.vision_start_id).nonzero()[0])
                ve = int((row == self.vision_end_id).nonzero()[0])
                pool[start:start + lengths[i]] = 0.0
                pool[start + vs:start + ve + 1] = 1.0
        cu, max_len = cu_seqlens_from_lengths(lengths, dev)
        row_tasks = torch.tensor([p.data.get("task_index", -1) for p in batch], dtype=torch.long)
        token_tasks = row_tasks.repeat_interleave(torch.tensor(lengths))
        routing = token_tasks if get_router(self.net) is not None else None
        with task_routing(self.net, routing):
            hidden = packed_forward(self.net.model.language_model, embeds.unsqueeze(0),
                                    positions.unsqueeze(1).to(dev, non_blocking=True), cu, max_len)
        dense_out = None
        if dense:
            w = pool.to(dev, non_blocking=True)
            rows = row_of_token.to(dev, non_blocking=True)
            summed = torch.zeros(len(batch), self.dim, device=dev, dtype=torch.float32)
            summed.index_add_(0, rows, hidden.to(torch.float32) * w.unsqueeze(1))
            counts = torch.zeros(len(batch), device=dev).index_add_(0, rows, w)
            dense_out = _to_host(summed / counts.unsqueeze(1))
        mv_out = None
        if multivector:
            with task_routing(self.net, routing):
                proj = self.net.multi_vector_projector(hidden)
            mv_out = list(torch.split(_to_host(F.normalize(proj.to(torch.float32), dim=-1)), lengths))
        ready = None
        if dev.type == "cuda":   # no sync here: the host copies finish while the next batch runs
            ready = torch.cuda.Event()
            ready.record()
        return ForwardOutput(dense=dense_out, multivector=mv_out, ready=ready)
