"""The jina-v4 family's processor: prompts, the Qwen tokenizer, image resize + patchify.

Exact against the reference (``reference/jina-v4.md``): ``Query: `` / ``Passage: `` prompts
(text-matching always ``Query: ``), no special tokens around a text, images in a fixed chat
template, pooled from ``<|vision_start|>`` to ``<|vision_end|>``. Alpha is dropped the way the
reference's image processor does it: a plain ``convert("RGB")`` (transparent pixels keep their
stored colour, usually black; they are *not* composited onto white).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image as PILImage

from ..tasks import TaskSpec
from .base import FastTokenizerProcessor, Prepared, PrepareOptions, TaskTable

PROMPT_PREFIX = {"query": "Query: ", "passage": "Passage: "}
IMAGE_TEMPLATE_PRE = "<|im_start|>user\n<|vision_start|>"
IMAGE_TEMPLATE_POST = "<|vision_end|>Describe the image.<|im_end|>\n"
MAX_TOKENS = 32768


def load_tokenizer(path: Path) -> Any:
    """The fast (``tokenizers.Tokenizer``) tokenizer of a checkpoint directory, truncation and padding off."""
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        tok.no_truncation()
        tok.no_padding()
        return tok
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(path)).backend_tokenizer
    tok.no_truncation()
    tok.no_padding()
    return tok


def load_image_processor(path: Path) -> tuple[Any, int, int]:
    """The Qwen2-VL image processor from ``preprocessor_config.json``, and its (min, max) pixels."""
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
    min_px = int(cfg.get("min_pixels", size.get("shortest_edge", 56 * 56)))
    max_px = int(cfg.get("max_pixels", size.get("longest_edge", 28 * 28 * 1280)))
    return Proc(min_pixels=min_px, max_pixels=max_px, **kwargs), min_px, max_px


class JinaV4Processor(FastTokenizerProcessor):
    """Texts -> prompt + Qwen ids; images -> template ids + pixels + grid (+ M-RoPE positions)."""

    max_tokens = MAX_TOKENS

    def __init__(self, tokenizer: Any, image_processor: Any, *, config: Any, min_pixels: int,
                 max_pixels: int, tasks: TaskTable = TaskTable(), pixel_dtype: torch.dtype = torch.float32,
                 pin_memory: bool = False,
                 image_positions: Callable[[list[int], torch.Tensor], torch.Tensor] | None = None) -> None:
        """``image_positions``: computes an image row's M-RoPE positions at prepare time
        (packed execution), or None. ``pixel_dtype``/``pin_memory``: what the GPU path wants."""
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.min_pixels, self.max_pixels = int(min_pixels), int(max_pixels)
        self.tasks = tasks
        self.pixel_dtype, self.pin_memory = pixel_dtype, pin_memory
        self.image_positions = image_positions
        self.image_token_id = int(config.image_token_id)
        self.video_token_id = int(config.video_token_id)
        self.vision_start_id = int(config.vision_start_token_id)
        self.vision_end_id = int(config.vision_end_token_id)
        self.spatial_merge = int(config.vision_config.spatial_merge_size)
        self.pre_ids = self.text_ids(IMAGE_TEMPLATE_PRE)
        self.post_ids = self.text_ids(IMAGE_TEMPLATE_POST)
        if self.pre_ids[-1] != self.vision_start_id or self.post_ids[0] != self.vision_end_id:
            raise ValueError("the tokenizer does not map <|vision_start|>/<|vision_end|> to the config's ids")

    # ------------------------------------------------------------------ tokenizer facts
    def prompted_ids(self, text: str, task: TaskSpec) -> list[int]:
        return self.text_ids(PROMPT_PREFIX[self._prompt(task)] + text)

    def special_ids(self) -> tuple[list[int], list[int]]:
        return [], []                       # the reference adds no special tokens to a text

    @staticmethod
    def _prompt(task: TaskSpec) -> str:
        prompt = "query" if task.adapter == "text-matching" else task.prompt
        if prompt not in PROMPT_PREFIX:
            raise ValueError(f"unknown prompt {prompt!r}; allowed: {list(PROMPT_PREFIX)}")
        return prompt

    # ------------------------------------------------------------------ prepare
    def prepare(self, item: Any, task: TaskSpec, options: PrepareOptions) -> Prepared:
        """Tokenise a text with its prompt, or resize + patchify an image into its template."""
        self.tasks.adapter_for(task)            # an unknown task fails here, naming what exists
        if isinstance(item, str):
            return self._prepare_text(item, task, options)
        if isinstance(item, PILImage.Image):
            return self._prepare_image(item, task, options)
        raise TypeError(f"jina-v4 takes str or PIL.Image inputs, got {type(item).__name__}")

    def _prepare_text(self, text: str, task: TaskSpec, options: PrepareOptions) -> Prepared:
        limit = min(options.max_tokens or self.max_tokens, self.max_tokens)
        got = self.bounded_ids(text, limit, task)    # never tokenises more than the limit needs
        ids = got.ids
        if self.image_token_id in ids or self.video_token_id in ids:
            raise ValueError("text contains <|image_pad|> or <|video_pad|>, which only image inputs may use")
        if got.over and not options.truncate:
            raise ValueError(f"text is {got.count()} tokens (prompt included), over the limit of {limit}; "
                             "pass truncate=True to cut the end")
        return Prepared(kind="text", task=task, input_ids=ids[:limit], truncated=got.over)

    def _prepare_image(self, img: PILImage.Image, task: TaskSpec, options: PrepareOptions) -> Prepared:
        img = img.convert("RGB") if img.mode != "RGB" else img    # the reference: alpha dropped, not composited
        min_px, max_px = self.min_pixels, self.max_pixels
        if options.max_pixels is not None:
            max_px = int(options.max_pixels)
            min_px = min(min_px, max_px)
        out = self.image_processor(images=[img], size={"shortest_edge": min_px, "longest_edge": max_px},
                                   return_tensors="pt")
        pixels = out["pixel_values"].to(self.pixel_dtype)
        if self.pin_memory:
            # Converting and pinning here (on a prepare thread) halves the bytes and makes the
            # host->device copy asynchronous.
            pixels = pixels.pin_memory()
        grid = out["image_grid_thw"].to(torch.long).reshape(1, 3)
        n_tokens = int(grid.prod()) // (self.spatial_merge ** 2)
        ids = self.pre_ids + [self.image_token_id] * n_tokens + self.post_ids
        # dense pooling of an image row: <|vision_start|> .. <|vision_end|> inclusive
        start = len(self.pre_ids) - 1
        end = len(self.pre_ids) + n_tokens + 1
        positions = self.image_positions(ids, grid) if self.image_positions is not None else None
        return Prepared(kind="image", task=task, input_ids=ids, pool_start=start, pool_end=end,
                        pixels=pixels, grid=grid, positions=positions)
