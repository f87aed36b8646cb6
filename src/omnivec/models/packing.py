"""Packed (padding-free) forward of the Qwen2.5-VL language model.

Why: padded batches waste compute on pad tokens and make transformers build a dense
(B, 1, L, L) mask. Here every row of a batch is concatenated into one (1, N, H) sequence,
M-RoPE positions restart per row, and attention is restricted to each row (causal) by a custom
attention function registered with transformers' ``AttentionInterface``. On CUDA the function
calls ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention varlen kernel shipped in torch);
elsewhere it loops ``F.scaled_dot_product_attention`` over the segments (exact, used by tests).
A matching ``AttentionMaskInterface`` entry returns ``None`` so no N x N mask is ever built.

Selection is scoped: :func:`varlen_attention` switches ``config._attn_implementation`` of the
text model (and optionally the vision tower) for the duration of a ``with`` block, so the padded
path of the same model keeps using sdpa.

Only public transformers hooks are used; signatures that changed between transformers
5.17 and 5.23 / torch 2.11 and 2.13 are inspected at run time.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

ATTN_NAME = "omnivec_varlen"
# The Qwen2.5-VL vision tower hands ``cu_seq_lens_*`` to the attention function only when the
# implementation name contains "flash" (``is_flash_attention_requested``); otherwise it loops
# over windows in Python. This alias lets the same function serve the vision tower packed.
VISION_ATTN_NAME = "omnivec_flash_varlen"

# Whether the varlen kernel accepted strided (N, H, D) views (set False on its first refusal).
_STRIDED_OK = [True]

#: Counters the tests read (calls per backend; a dense mask would raise instead).
STATS: dict[str, int] = {"varlen": 0, "sdpa_segments": 0, "unpacked": 0}


# --------------------------------------------------------------------------------------------
# cu_seqlens / positions / packing helpers
# --------------------------------------------------------------------------------------------
def cu_seqlens_from_lengths(lengths: Sequence[int] | torch.Tensor,
                            device: torch.device | str | None = None) -> tuple[torch.Tensor, int]:
    """(R+1,) int32 cumulative offsets and the max length: the varlen kernels' row description."""
    lens = torch.as_tensor(lengths, dtype=torch.int32)
    cu = torch.zeros(lens.numel() + 1, dtype=torch.int32)
    if lens.numel():
        torch.cumsum(lens, 0, out=cu[1:])
    max_len = int(lens.max()) if lens.numel() else 0
    return (cu.to(device) if device is not None else cu), max_len


def text_position_ids(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(3, n) M-RoPE positions of a text-only row: the same arange on all three axes."""
    return torch.arange(n, device=device, dtype=torch.long).unsqueeze(0).expand(3, n)


def packed_text_position_ids(lengths: Sequence[int], device: torch.device | str | None = None
                             ) -> torch.Tensor:
    """(3, 1, N) positions for a pack of text rows (restarting at 0 per row), built vectorised."""
    lens = torch.as_tensor(list(lengths), dtype=torch.long)
    total = int(lens.sum())
    starts = torch.cumsum(lens, 0) - lens
    pos = torch.arange(total, dtype=torch.long) - torch.repeat_interleave(starts, lens)
    return pos.view(1, 1, total).expand(3, 1, total).to(device)


def token_row_ids(lengths: Sequence[int] | torch.Tensor,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """(N,) row index of every packed token: for pooling (index_add) and routing."""
    lens = torch.as_tensor(lengths, dtype=torch.long)
    return torch.repeat_interleave(torch.arange(lens.numel()), lens).to(device)


def token_task_ids(row_task_ids: Sequence[int] | torch.Tensor, lengths: Sequence[int] | torch.Tensor,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """(N,) task id per packed token, what a per-token LoRA router needs."""
    tasks = torch.as_tensor(row_task_ids, dtype=torch.long)
    lens = torch.as_tensor(lengths, dtype=torch.long)
    return torch.repeat_interleave(tasks, lens).to(device)


def _call_with_supported(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` dropping keyword arguments its signature lacks (API drift across versions)."""
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return fn(*args, **kwargs)


def rope_index_for_row(backbone: Any, input_ids: torch.Tensor,
                       image_grid_thw: torch.Tensor | None) -> torch.Tensor:
    """(3, n) M-RoPE positions of one (unpadded) row via the backbone's own ``get_rope_index``.

    transformers >= 5.2x wants ``mm_token_type_ids`` (0 text, 1 image, 2 video); older versions
    find image tokens from ``input_ids`` themselves. Both are handled by signature inspection.
    """
    ids = input_ids.reshape(1, -1)
    cfg = backbone.config
    params = inspect.signature(backbone.get_rope_index).parameters
    kwargs: dict[str, Any] = {"image_grid_thw": image_grid_thw, "attention_mask": None}
    if "mm_token_type_ids" in params:
        tt = torch.zeros_like(ids, dtype=torch.int)
        tt[ids == cfg.image_token_id] = 1
        tt[ids == cfg.video_token_id] = 2
        kwargs["mm_token_type_ids"] = tt
    kwargs = {k: v for k, v in kwargs.items() if k in params}
    pos, _ = backbone.get_rope_index(ids, **kwargs)
    return pos[:, 0, :]


@dataclass
class PackedBatch:
    """One packed batch: tensors ready for :func:`packed_forward` plus the row layout."""

    inputs_embeds: torch.Tensor  # (1, N, H)
    position_ids: torch.Tensor  # (3, 1, N)
    cu_seqlens: torch.Tensor  # (R+1,) int32
    max_len: int
    row_lengths: list[int]


def pack_rows(inputs_embeds_rows: Sequence[torch.Tensor],
              position_ids_rows: Sequence[torch.Tensor]) -> PackedBatch:
    """Concatenate per-row embeddings (n_i, H) and positions (3, n_i) into one packed batch."""
    if len(inputs_embeds_rows) != len(position_ids_rows):
        raise ValueError("inputs_embeds_rows and position_ids_rows differ in length")
    lengths = [int(e.shape[0]) for e in inputs_embeds_rows]
    for e, p in zip(inputs_embeds_rows, position_ids_rows):
        if p.shape != (3, e.shape[0]):
            raise ValueError(f"position ids {tuple(p.shape)} do not match row of {e.shape[0]} tokens")
    device = inputs_embeds_rows[0].device
    emb = torch.cat(list(inputs_embeds_rows), 0).unsqueeze(0)
    pos = torch.cat([p.to(device) for p in position_ids_rows], 1).unsqueeze(1)
    cu, max_len = cu_seqlens_from_lengths(lengths, device)
    return PackedBatch(emb, pos, cu, max_len, lengths)


# --------------------------------------------------------------------------------------------
# The attention function
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _varlen_fn() -> tuple[Any, frozenset[str]] | None:
    """torch's varlen_attn and its keyword names, or None when this torch lacks it."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except Exception:  # torch < 2.10
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def _backend_for(query: torch.Tensor) -> str:
    """'varlen' on CUDA with a half dtype (FlashAttention's domain), else 'sdpa' segment loop."""
    forced = os.environ.get("OMNIVEC_VARLEN_BACKEND", "auto")
    if forced in ("varlen", "sdpa"):
        return forced
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and _varlen_fn() is not None:
        return "varlen"
    return "sdpa"


def _run_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor,
                cu_k: torch.Tensor, max_q: int, max_k: int, scale: float | None,
                causal: bool) -> torch.Tensor:
    """q (N, Hq, D), k/v (N, Hkv, D) -> (N, Hq, D) through torch's FlashAttention varlen op."""
    found = _varlen_fn()
    assert found is not None
    fn, names = found
    kw: dict[str, Any] = {}
    if "scale" in names:
        kw["scale"] = scale
    if causal:
        if "window_size" in names:  # torch >= 2.11
            kw["window_size"] = (-1, 0)
        elif "is_causal" in names:  # torch 2.10
            kw["is_causal"] = True
        else:
            raise RuntimeError("this torch's varlen_attn cannot do causal attention")
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in names:
            kw["enable_gqa"] = True
        else:  # older kernels: materialise the shared kv heads (cheap next to the matmuls)
            rep = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
    if cu_q.dtype != torch.int32:
        cu_q = cu_q.to(torch.int32)
    if cu_k.dtype != torch.int32:
        cu_k = cu_k.to(torch.int32)
    out = fn(q, k, v, cu_q, cu_k, int(max_q), int(max_k), **kw)
    return out[0] if isinstance(out, tuple) else out


def _run_segments(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor,
                  scale: float | None, causal: bool) -> torch.Tensor:
    """q (Hq, N, D), k/v (Hkv, N, D) -> (N, Hq, D): exact per-row sdpa, the CPU reference path."""
    if q.shape[0] != k.shape[0]:
        rep = q.shape[0] // k.shape[0]
        k = k.repeat_interleave(rep, dim=0)
        v = v.repeat_interleave(rep, dim=0)
    bounds = cu.tolist()
    outs = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e > s:
            outs.append(F.scaled_dot_product_attention(
                q[:, s:e], k[:, s:e], v[:, s:e], is_causal=causal, scale=scale))
    STATS["sdpa_segments"] += len(outs)
    return torch.cat(outs, dim=1).transpose(0, 1)


def varlen_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                             value: torch.Tensor, attention_mask: torch.Tensor | None,
                             dropout: float = 0.0, scaling: float | None = None,
                             is_causal: bool | None = None, **kwargs: Any
                             ) -> tuple[torch.Tensor, None]:
    """transformers attention function over packed rows.

    Inputs follow the AttentionInterface convention: query (B, Hq, N, D), key/value
    (B, Hkv, N, D); returns (B, N, Hq, D). Row boundaries come from ``cu_seq_lens_q`` /
    ``cu_seq_lens_k`` and ``max_length_q`` / ``max_length_k`` (the flash-attention kwarg names).
    Without them (an unpacked call, e.g. the vision tower's per-window loop) plain sdpa runs.
    """
    if attention_mask is not None:
        raise ValueError(f"{ATTN_NAME}: a dense attention mask reached the packed attention; "
                         "pass rows via cu_seq_lens_q/k instead of attention_mask")
    if dropout:
        raise ValueError(f"{ATTN_NAME} is inference-only (dropout={dropout})")
    if kwargs.get("sliding_window") is not None:
        raise NotImplementedError(f"{ATTN_NAME}: sliding-window layers are not supported")
    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    cu_q = kwargs.get("cu_seq_lens_q")
    cu_k = kwargs.get("cu_seq_lens_k", cu_q)
    bsz, hq, n, d = query.shape
    if cu_q is None:
        STATS["unpacked"] += 1
        rep = hq // key.shape[1]
        if rep > 1:
            key = key.repeat_interleave(rep, dim=1)
            value = value.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(query, key, value, is_causal=causal, scale=scaling)
        return out.transpose(1, 2).contiguous(), None
    if bsz != 1:
        raise ValueError(f"{ATTN_NAME}: packed input must have batch size 1, got {bsz}")
    if cu_k is not cu_q and not torch.equal(cu_k, cu_q):
        raise NotImplementedError(f"{ATTN_NAME}: only self-attention (cu_q == cu_k) is supported")
    if _backend_for(query) == "varlen":
        STATS["varlen"] += 1
        # (N, H, D) views: FlashAttention takes any token/head stride with a unit last stride,
        # which saves three copies per layer; kernels that insist get contiguous copies.
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
        max_q = kwargs.get("max_length_q")
        max_k = kwargs.get("max_length_k", max_q)
        if max_q is None:
            max_q = max_k = int((cu_q[1:] - cu_q[:-1]).max())
        if _STRIDED_OK[0]:
            try:
                out = _run_varlen(q, k, v, cu_q, cu_q, int(max_q), int(max_k), scaling, causal)
            except RuntimeError:
                _STRIDED_OK[0] = False
        if not _STRIDED_OK[0]:
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
            out = _run_varlen(q, k, v, cu_q, cu_q, int(max_q), int(max_k), scaling, causal)
    else:
        out = _run_segments(query[0], key[0], value[0], cu_q, scaling, causal)
    return out.unsqueeze(0), None


def _no_mask(*args: Any, **kwargs: Any) -> None:
    """Mask builder for the packed implementations: rows are isolated by cu_seqlens, not a mask."""
    return None


@functools.lru_cache(maxsize=1)
def register_varlen_attention() -> tuple[str, str]:
    """Register the attention + mask functions once; returns (text name, vision name)."""
    from transformers import AttentionInterface

    try:
        from transformers import AttentionMaskInterface
    except ImportError:
        from transformers.masking_utils import AttentionMaskInterface
    for name in (ATTN_NAME, VISION_ATTN_NAME):
        AttentionInterface.register(name, varlen_attention_forward)
        AttentionMaskInterface.register(name, _no_mask)
    return ATTN_NAME, VISION_ATTN_NAME


def _set_attn_impl(config: Any, name: str | None) -> None:
    """Set a config's attention implementation on the internal slot when present.

    Why the internal slot: the public setter of some versions recurses into sub-configs or
    validates against installed kernels ("flash" in the vision alias would trigger that).
    """
    if hasattr(config, "_attn_implementation_internal"):
        config._attn_implementation_internal = name
    else:
        config._attn_implementation = name


@contextlib.contextmanager
def varlen_attention(text_model: torch.nn.Module, vision_model: torch.nn.Module | None = None
                     ) -> Iterator[None]:
    """Select the packed attention for ``text_model`` (and ``vision_model``) inside the block.

    Scoped so the padded/standard path of the same modules keeps its sdpa behaviour.
    """
    register_varlen_attention()
    saved: list[tuple[Any, Any]] = []
    targets = [(text_model.config, ATTN_NAME)]
    if vision_model is not None:
        targets.append((vision_model.config, VISION_ATTN_NAME))
    try:
        for cfg, name in targets:
            saved.append((cfg, cfg._attn_implementation))
            _set_attn_impl(cfg, name)
        yield
    finally:
        for cfg, old in reversed(saved):
            _set_attn_impl(cfg, old)


# --------------------------------------------------------------------------------------------
# Forward entry points
# --------------------------------------------------------------------------------------------
def packed_forward(text_model: torch.nn.Module, inputs_embeds: torch.Tensor,
                   position_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int,
                   **model_kwargs: Any) -> torch.Tensor:
    """Run ``Qwen2_5_VLTextModel`` on one packed sequence; returns (N, H) final-norm states.

    ``inputs_embeds`` (1, N, H), ``position_ids`` (3, 1, N), ``cu_seqlens`` (R+1,) int32 on the
    model's device. Extra ``model_kwargs`` go to the text model's forward (and from there to
    every decoder layer / attention call).
    """
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[0] != 1:
        raise ValueError("inputs_embeds must be (1, N, H)")
    if position_ids.shape != (3, 1, inputs_embeds.shape[1]):
        raise ValueError(f"position_ids must be (3, 1, N), got {tuple(position_ids.shape)}")
    with varlen_attention(text_model):
        out = text_model(
            input_ids=None, inputs_embeds=inputs_embeds, position_ids=position_ids,
            attention_mask=None, use_cache=False,
            cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens,
            max_length_q=int(max_len), max_length_k=int(max_len), **model_kwargs)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden[0]


def packed_last_hidden(text_model: torch.nn.Module, inputs_embeds_rows: Sequence[torch.Tensor],
                       position_ids_rows: Sequence[torch.Tensor], **model_kwargs: Any
                       ) -> list[torch.Tensor]:
    """Per-row (n_i, H) last-layer states (after the final norm) of a packed forward."""
    batch = pack_rows(inputs_embeds_rows, position_ids_rows)
    hidden = packed_forward(text_model, batch.inputs_embeds, batch.position_ids,
                            batch.cu_seqlens, batch.max_len, **model_kwargs)
    return list(torch.split(hidden, batch.row_lengths, dim=0))


__all__ = [
    "ATTN_NAME", "VISION_ATTN_NAME", "PackedBatch", "STATS", "cu_seqlens_from_lengths",
    "pack_rows", "packed_forward", "packed_last_hidden", "packed_text_position_ids",
    "register_varlen_attention", "rope_index_for_row", "text_position_ids", "token_row_ids",
    "token_task_ids", "varlen_attention", "varlen_attention_forward",
]
