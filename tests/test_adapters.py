"""Multi-task LoRA: routing per row/token, load/save in the peft layout, suffix matching."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from omnivec.adapters import (MultiTaskLoRALinear, load_adapters, lora_layers, save_adapters,
                              task_routing, wrap_lora)

TASKS = ("retrieval", "text-matching", "code")


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(8, 8)
        self.down_proj = nn.Linear(8, 6, bias=False)
        self.other = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.other(self.down_proj(torch.tanh(self.q_proj(x))))


class Net(nn.Module):
    """Paths like ``<root>.layers.N.q_proj``; ``root`` varies to mimic transformers renames."""

    def __init__(self, root: str = "model") -> None:
        super().__init__()
        inner = nn.Module()
        inner.layers = nn.ModuleList([Block(), Block()])
        self.root = root
        self.add_module(root, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in getattr(self, self.root).layers:
            x = blk(x) if x.shape[-1] == 8 else x
        return x


def _randomise(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for t in layer.task_names:
                layer.lora_A[t].weight.copy_(torch.randn(layer.lora_A[t].weight.shape, generator=g))
                layer.lora_B[t].weight.copy_(torch.randn(layer.lora_B[t].weight.shape, generator=g))


def _layer(seed: int = 0) -> MultiTaskLoRALinear:
    torch.manual_seed(seed)
    layer = MultiTaskLoRALinear(nn.Linear(8, 5), TASKS, r=2, alpha=6)
    holder = nn.Module()
    holder.lin = layer
    _randomise(holder, seed)
    return layer


def test_single_task_equals_merged_weight():
    layer = _layer()
    x = torch.randn(4, 3, 8)
    for t, name in enumerate(TASKS):
        layer.router.set([t] * 4)
        expected = x @ layer.merged_weight(name).T + layer.base.bias
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    assert layer.scaling == 3.0


def test_mixed_rows_match_rows_alone_and_minus_one_is_base():
    layer = _layer(1)
    x = torch.randn(6, 3, 8)
    ids = [2, 0, -1, 0, 1, 2]
    layer.router.set(ids)
    mixed = layer(x)
    for i, t in enumerate(ids):
        layer.router.set([t])
        torch.testing.assert_close(mixed[i:i + 1], layer(x[i:i + 1]), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(mixed[2], layer.base(x[2]))
    layer.router.set(None)
    torch.testing.assert_close(layer(x), layer.base(x))


def test_per_token_routing_and_length_check():
    layer = _layer(2)
    tokens = torch.randn(7, 8)
    ids = torch.tensor([0, 0, 1, 1, 1, 2, -1])
    layer.router.set(ids)
    out = layer(tokens)
    for i in range(7):
        w = layer.base.weight if ids[i] < 0 else layer.merged_weight(TASKS[int(ids[i])])
        torch.testing.assert_close(out[i], tokens[i] @ w.T + layer.base.bias, atol=1e-5, rtol=1e-5)
    layer.router.set([0, 1])
    with pytest.raises(RuntimeError, match="LoRA routing has 2 entries"):
        layer(tokens)


def test_wrap_by_suffix_and_regex_and_routing_context():
    net = Net()
    assert wrap_lora(net, ["q_proj", "down_proj"], TASKS, r=2, alpha=4) == 4
    assert wrap_lora(net, ["q_proj"], TASKS, r=2, alpha=4) == 0          # already wrapped
    net2 = Net()
    assert wrap_lora(net2, r".*layers\.1\.(q_proj|other)", TASKS, r=2, alpha=4) == 2
    _randomise(net)
    x = torch.randn(3, 8)
    with torch.no_grad():
        plain = net(x)
        with task_routing(net, [0, 1, 2]) as router:
            routed = net(x)
            assert router.task_ids.tolist() == [0, 1, 2]
        assert not torch.allclose(plain, routed)
        torch.testing.assert_close(net(x), plain)                     # routing restored (off)


@pytest.mark.parametrize("prefix", ["base_model.model.", ""])
def test_save_load_roundtrip_across_renamed_paths(tmp_path, prefix):
    src = Net("model")
    wrap_lora(src, ["q_proj", "down_proj"], TASKS, r=2, alpha=4)
    _randomise(src, 3)
    save_adapters(src, tmp_path, prefix=prefix)
    keys = list(load_file(str(tmp_path / "adapter_model.safetensors")))
    assert f"{prefix}model.layers.0.q_proj.lora_A.retrieval.weight" in keys
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["r"] == 2 and cfg["lora_alpha"] == 4 and cfg["task_names"] == list(TASKS)

    torch.manual_seed(7)
    dst = Net("language_model")            # the module paths differ: matched by suffix
    torch.manual_seed(7)
    ref = Net("model")                     # same base weights as dst, gets src's adapters below
    for (_, p), (_, q) in zip(dst.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q)
    wrap_lora(ref, ["q_proj", "down_proj"], TASKS, r=2, alpha=4)
    ref.load_state_dict({k: v for k, v in src.state_dict().items() if "lora_" in k}, strict=False)
    assert load_adapters(dst, tmp_path) == TASKS
    x = torch.randn(5, 8)
    with torch.no_grad(), task_routing(ref, [0, 1, 2, 1, 0]), task_routing(dst, [0, 1, 2, 1, 0]):
        torch.testing.assert_close(dst(x), ref(x))
        routed = dst(x)
    with torch.no_grad(), task_routing(dst, None):
        assert not torch.allclose(dst(x), routed)                     # the adapters do something


def test_tasks_inferred_without_task_names(tmp_path):
    net = Net()
    wrap_lora(net, ["q_proj"], ("b", "a"), r=1, alpha=1)
    save_adapters(net, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    del cfg["task_names"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    assert load_adapters(Net(), tmp_path) == ("a", "b")


def test_unmatched_and_ambiguous_keys_are_clear_errors(tmp_path):
    net = Net()
    wrap_lora(net, ["q_proj"], TASKS, r=2, alpha=2)
    save_adapters(net, tmp_path)
    sd = load_file(str(tmp_path / "adapter_model.safetensors"))
    sd["base_model.model.model.layers.0.nonexistent_proj.lora_A.code.weight"] = torch.zeros(2, 8)
    save_file(sd, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="nonexistent_proj"):
        load_adapters(Net(), tmp_path)

    sd = {"q_proj.lora_A.code.weight": torch.zeros(2, 8), "q_proj.lora_B.code.weight": torch.zeros(8, 2)}
    save_file(sd, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="several modules"):
        load_adapters(Net(), tmp_path, task_names=["code"])

    sd = {"model.layers.0.q_proj.lora_A.code.weight": torch.zeros(3, 8),
          "model.layers.0.q_proj.lora_B.code.weight": torch.zeros(8, 3)}
    save_file(sd, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="shape"):
        load_adapters(Net(), tmp_path, task_names=["code"])
