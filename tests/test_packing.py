"""Packed varlen forward == padded standard forward, on a tiny random Qwen2.5-VL (CPU, fp32)."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from omnivec.models import packing  # noqa: E402

IMG, VID, VS, VE = 990, 991, 992, 993


def _tiny_model() -> torch.nn.Module:
    """A 2-layer, 64-wide Qwen2.5-VL with a 2-block vision tower (one windowed, one full)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

    mrope = [2, 3, 3]  # head_dim 16 -> 8 rotary frequencies
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1000, rms_norm_eps=1e-6, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "mrope_section": mrope, "rope_theta": 1e6},
            rope_scaling={"type": "mrope", "mrope_section": mrope}, rope_theta=1e6,
            bos_token_id=1, eos_token_id=2, pad_token_id=0),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
            fullatt_block_indexes=[1], window_size=112, patch_size=14, temporal_patch_size=2,
            spatial_merge_size=2, in_channels=3),
        image_token_id=IMG, video_token_id=VID, vision_start_token_id=VS, vision_end_token_id=VE,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    cfg.text_config._attn_implementation = "sdpa"
    cfg.vision_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Qwen2_5_VLModel(cfg).eval()
    model.float()
    return model


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return _tiny_model()


def _padded_forward(model: torch.nn.Module, rows: list[torch.Tensor], **extra) -> torch.Tensor:
    """Reference: right-padded batch through the standard sdpa forward."""
    L = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    import inspect

    if "image_grid_thw" in extra and "mm_token_type_ids" in inspect.signature(model.forward).parameters:
        tt = torch.zeros_like(ids, dtype=torch.int)
        tt[ids == IMG] = 1
        extra["mm_token_type_ids"] = tt
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, use_cache=False, **extra).last_hidden_state


def test_cu_seqlens_and_positions() -> None:
    cu, mx = packing.cu_seqlens_from_lengths([3, 1, 4])
    assert cu.tolist() == [0, 3, 4, 8] and cu.dtype == torch.int32 and mx == 4
    pos = packing.packed_text_position_ids([3, 1, 4])
    assert pos.shape == (3, 1, 8) and pos[0, 0].tolist() == [0, 1, 2, 0, 0, 1, 2, 3]
    assert packing.token_task_ids([2, 0, 1], [3, 1, 4]).tolist() == [2, 2, 2, 0, 1, 1, 1, 1]
    assert packing.token_row_ids([2, 1]).tolist() == [0, 0, 1]


def test_text_rows_match_padded(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    lengths = [7, 1, 23, 12, 40]
    rows = [torch.randint(3, 900, (n,), generator=g) for n in lengths]
    ref = _padded_forward(model, rows)
    lm = model.language_model
    before = dict(packing.STATS)
    with torch.no_grad():
        outs = packing.packed_last_hidden(
            lm, [lm.embed_tokens(r) for r in rows], [packing.text_position_ids(len(r)) for r in rows])
    # the packed attention ran once per layer with cu_seqlens (a dense mask would have raised)
    assert packing.STATS["sdpa_segments"] - before["sdpa_segments"] == len(rows) * len(lm.layers)
    assert packing.STATS["unpacked"] == before["unpacked"]
    assert lm.config._attn_implementation == "sdpa"  # selection was scoped
    for i, (o, n) in enumerate(zip(outs, lengths)):
        assert o.shape == (n, 64)
        assert (o - ref[i, :n]).abs().max().item() < 1e-5


def test_mask_never_built(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mask function registered for the packed implementation returns None -> fn sees None."""
    seen: list[object] = []
    orig = packing.varlen_attention_forward

    def spy(module, q, k, v, attention_mask, **kw):
        seen.append(attention_mask)
        return orig(module, q, k, v, attention_mask, **kw)

    packing.register_varlen_attention()
    from transformers import AttentionInterface

    AttentionInterface.register(packing.ATTN_NAME, spy)
    try:
        lm = model.language_model
        rows = [torch.arange(5, 15), torch.arange(20, 23)]
        with torch.no_grad():
            packing.packed_last_hidden(lm, [lm.embed_tokens(r) for r in rows],
                                       [packing.text_position_ids(len(r)) for r in rows])
    finally:
        AttentionInterface.register(packing.ATTN_NAME, orig)
    assert len(seen) == len(model.language_model.layers) and all(m is None for m in seen)


def _image_row(grid: tuple[int, int, int], prefix: list[int], suffix: list[int]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t, h, w = grid
    n_img = t * h * w // 4
    ids = torch.tensor(prefix + [VS] + [IMG] * n_img + [VE] + suffix)
    g = torch.Generator().manual_seed(h * 100 + w)
    pixels = torch.randn(t * h * w, 3 * 2 * 14 * 14, generator=g)
    return ids, pixels, torch.tensor([grid])


def test_image_and_text_rows_match_padded(model: torch.nn.Module) -> None:
    """An image row (M-RoPE from get_rope_index) packed with text rows == padded forward."""
    img_ids, pixels, grid = _image_row((1, 16, 12), [5, 6, 7], [8, 9, 10, 11])
    text_rows = [torch.randint(3, 900, (n,), generator=torch.Generator().manual_seed(n))
                 for n in (9, 30)]
    ref_img = _padded_forward(model, [img_ids], pixel_values=pixels, image_grid_thw=grid)[0]
    ref_txt = _padded_forward(model, text_rows)
    lm = model.language_model
    with torch.no_grad():
        # vision tower under the packed implementation too (cu_seqlens windows, no Python loop)
        before = dict(packing.STATS)
        with packing.varlen_attention(lm, model.visual):
            feats = model.visual(pixels, grid_thw=grid)
        # both vision blocks went through cu_seqlens (no per-window Python loop)
        assert packing.STATS["unpacked"] == before["unpacked"]
        assert packing.STATS["sdpa_segments"] > before["sdpa_segments"]
        assert model.visual.config._attn_implementation == "sdpa"
        feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        ref_feats = model.visual(pixels, grid_thw=grid)
        ref_feats = ref_feats.pooler_output if hasattr(ref_feats, "pooler_output") else ref_feats
        assert (feats - ref_feats).abs().max().item() < 1e-5
        emb = lm.embed_tokens(img_ids).clone()
        emb[img_ids == IMG] = feats
        pos_img = packing.rope_index_for_row(model, img_ids, grid)
        assert pos_img.shape == (3, len(img_ids)) and not torch.equal(pos_img[1], pos_img[2])
        outs = packing.packed_last_hidden(
            lm, [lm.embed_tokens(text_rows[0]), emb, lm.embed_tokens(text_rows[1])],
            [packing.text_position_ids(9), pos_img, packing.text_position_ids(30)])
    assert (outs[1] - ref_img[: len(img_ids)]).abs().max().item() < 1e-5
    assert (outs[0] - ref_txt[0, :9]).abs().max().item() < 1e-5
    assert (outs[2] - ref_txt[1, :30]).abs().max().item() < 1e-5


def test_varlen_kernel_dispatch_kwargs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA branch maps causal/GQA onto whichever varlen_attn signature this torch has."""
    calls: list[dict] = []

    def fake_new(q, k, v, cu_q, cu_k, mq, mk, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        calls.append(dict(window_size=window_size, enable_gqa=enable_gqa, kv_heads=k.shape[1]))
        return torch.zeros_like(q)

    def fake_old(q, k, v, cu_q, cu_k, mq, mk, *, is_causal=False, scale=None):
        calls.append(dict(is_causal=is_causal, kv_heads=k.shape[1]))
        return torch.zeros_like(q)

    q, k = torch.randn(10, 4, 8), torch.randn(10, 2, 8)
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    for fake in (fake_new, fake_old):
        monkeypatch.setattr(packing, "_varlen_fn",
                            lambda f=fake: (f, frozenset(__import__("inspect").signature(f).parameters)))
        packing._run_varlen(q, k, k, cu, cu, 6, 6, 0.3, True)
    assert calls[0] == dict(window_size=(-1, 0), enable_gqa=True, kv_heads=2)
    assert calls[1] == dict(is_causal=True, kv_heads=4)
