"""An independent, deliberately plain computation of jina-embeddings-v4 vectors for the tests.

It shares no code with ``omnivec.models.qwen_vl`` or ``omnivec.adapters``: plain transformers
``Qwen2_5_VLForConditionalGeneration`` loaded with ``from_pretrained`` (eager attention, float32),
each task's LoRA merged by hand into a copy of the weights (``W + B @ A * alpha / r``), one input
at a time through the standard tokenizer / ``Qwen2_5_VLProcessor`` path, position ids computed by
the model itself, ``output_hidden_states=True`` and the last entry taken.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

IMAGE_TEXT = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n"


def _drop_alpha(img: Image.Image) -> Image.Image:
    """What the reference's image processor does to a transparent image: transformers 4.56's
    ``convert_to_rgb`` is a plain ``convert("RGB")`` (alpha dropped; transparent pixels keep their
    stored colour). Newer transformers composite onto white, so it is applied here explicitly."""
    return img.convert("RGB")


class JinaReference:
    """Merged-LoRA reference model: ``embed(item, task, prompt)`` -> (dense, multivector)."""

    def __init__(self, path: str | Path) -> None:
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
        from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

        self.path = Path(path)
        self.cfg = json.loads((self.path / "config.json").read_text())
        self.base = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(self.path), dtype=torch.float32, attn_implementation="eager").eval()
        weights = load_file(str(self.path / "model.safetensors"))
        self.proj_w = weights["multi_vector_projector.weight"].float()
        self.proj_b = weights["multi_vector_projector.bias"].float()
        acfg = json.loads((self.path / "adapters" / "adapter_config.json").read_text())
        self.scaling = acfg["lora_alpha"] / acfg["r"]
        self.lora = load_file(str(self.path / "adapters" / "adapter_model.safetensors"))
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        pp = json.loads((self.path / "preprocessor_config.json").read_text())
        self.min_pixels, self.max_pixels = pp["min_pixels"], pp["max_pixels"]
        self.image_processor = Qwen2VLImageProcessorPil(
            min_pixels=pp["min_pixels"], max_pixels=pp["max_pixels"], patch_size=pp["patch_size"],
            merge_size=pp["merge_size"], temporal_patch_size=pp["temporal_patch_size"],
            image_mean=pp["image_mean"], image_std=pp["image_std"])
        self._merged: dict[str, tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = {}

    def _task_model(self, task: str):
        """A deep copy of the backbone with the task's LoRA merged into every target weight."""
        if task in self._merged:
            return self._merged[task]
        model = copy.deepcopy(self.base)
        modules = dict(model.named_modules())
        pw, pb = self.proj_w.clone(), self.proj_b.clone()
        pat = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_A\." + re.escape(task) + r"\.weight$")
        with torch.no_grad():
            for key, a in self.lora.items():
                m = pat.match(key)
                if not m:
                    continue
                b = self.lora[key.replace(".lora_A.", ".lora_B.")]
                delta = (b.double() @ a.double() * self.scaling).float()
                path = m.group(1)
                if path == "multi_vector_projector":
                    pw = pw + delta
                    continue
                layer = re.search(r"layers\.(\d+)\.(.+)$", path)
                target = modules[f"model.language_model.layers.{layer.group(1)}.{layer.group(2)}"]
                target.weight += delta
        self._merged[task] = (model, pw, pb)
        return self._merged[task]

    def inputs_for_text(self, text: str, prompt: str, max_length: int = 32768) -> dict:
        prefix = "Query" if prompt == "query" else "Passage"
        return dict(self.tokenizer(f"{prefix}: {text}", return_tensors="pt", truncation=True,
                                   max_length=max_length, add_special_tokens=False))

    def inputs_for_image(self, img: Image.Image, max_pixels: int | None = None) -> dict:
        """What Qwen2_5_VLProcessor does: image features, then <|image_pad|> repeated per merged patch."""
        img = _drop_alpha(img)
        kw = {}
        if max_pixels is not None:
            kw["size"] = {"shortest_edge": min(self.min_pixels, max_pixels), "longest_edge": max_pixels}
        feats = self.image_processor(images=[img], return_tensors="pt", **kw)
        n = int(feats["image_grid_thw"][0].prod()) // 4
        text = IMAGE_TEXT.replace("<|image_pad|>", "<|image_pad|>" * n)
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        batch = dict(enc)
        batch.update(pixel_values=feats["pixel_values"], image_grid_thw=feats["image_grid_thw"])
        batch["mm_token_type_ids"] = (enc["input_ids"] == self.cfg["image_token_id"]).int()
        return batch

    @torch.no_grad()
    def embed(self, item: str | Image.Image, task: str, prompt: str = "query",
              max_pixels: int | None = None, max_length: int = 32768) -> tuple[np.ndarray, np.ndarray]:
        """Normalised dense vector (dim,) and per-token normalised multi-vectors (n, mv_dim)."""
        if task == "text-matching":
            prompt = "query"
        model, pw, pb = self._task_model(task)
        is_image = isinstance(item, Image.Image)
        batch = (self.inputs_for_image(item, max_pixels) if is_image
                 else self.inputs_for_text(item, prompt, max_length))
        out = model(**batch, output_hidden_states=True, use_cache=False)
        h = out.hidden_states[-1][0].float()
        ids = batch["input_ids"][0]
        if is_image:
            start = int((ids == self.cfg["vision_start_token_id"]).nonzero()[0])
            end = int((ids == self.cfg["vision_end_token_id"]).nonzero()[0])
            pooled = h[start:end + 1].mean(0)
        else:
            pooled = h.mean(0)
        dense = torch.nn.functional.normalize(pooled, dim=-1)
        mv = torch.nn.functional.normalize(h @ pw.T + pb, dim=-1)
        return dense.numpy(), mv.numpy()

    def token_ids(self, item: str | Image.Image, prompt: str = "query", max_pixels: int | None = None,
                  max_length: int = 32768) -> list[int]:
        batch = (self.inputs_for_image(item, max_pixels) if isinstance(item, Image.Image)
                 else self.inputs_for_text(item, prompt, max_length))
        return batch["input_ids"][0].tolist()
