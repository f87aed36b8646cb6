import torch
from transformers import Qwen2_5_VLConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

from omnivec.models.fused import FusedRMSNorm, fuse_rms_norms


def test_fused_rms_norm_matches_transformers_and_keeps_state_dict_keys():
    torch.manual_seed(0)
    cfg = Qwen2_5_VLConfig(text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, intermediate_size=64, vocab_size=128,
                                            rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
                           vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2,
                                              out_hidden_size=32, fullatt_block_indexes=[0]))
    model = Qwen2_5_VLModel(cfg).eval()
    for m in model.modules():
        if type(m).__name__.endswith("RMSNorm"):
            m.weight.data.normal_(1.0, 0.2)
    ids = torch.randint(0, 128, (2, 9))
    keys = set(model.state_dict())
    with torch.no_grad():
        before = model(input_ids=ids).last_hidden_state
        n = fuse_rms_norms(model)
        after = model(input_ids=ids).last_hidden_state
    assert n == 2 * 2 + 1 + 2 * 1 + 1          # LM layers, final norm, vision blocks, merger
    assert any(isinstance(m, FusedRMSNorm) for m in model.modules())
    assert set(model.state_dict()) == keys
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
