"""The Embedder pipeline on the real embedded default model."""
import io

import numpy as np
import pytest
from PIL import Image as PILImage, ImageDraw, ImageFont

import omnivec
from omnivec import InputError

TEXTS = ["How do I reset my password?", "Paris is the capital of France.",
         "def add(a, b):\n    return a + b", "Wie spät ist es?", "短い文", "x " * 300]

pytestmark = pytest.mark.slow  # the embedded default model (session fixture), OCR and PDF pages


def test_shapes_dtype_and_norm(default_model):
    v = default_model.encode(TEXTS[:2], task="retrieval.query")
    assert v.shape == (2, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)


def test_results_do_not_depend_on_batching_or_order(default_model):
    together = default_model.encode(TEXTS, task="retrieval.passage")
    alone = np.stack([default_model.encode([t], task="retrieval.passage")[0] for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    small_batches = default_model.encode(TEXTS, task="retrieval.passage", batch_size=2)
    np.testing.assert_allclose(together, small_batches, atol=1e-5)
    reversed_ = default_model.encode(TEXTS[::-1], task="retrieval.passage")[::-1]
    np.testing.assert_allclose(together, reversed_, atol=1e-5)


def test_query_and_passage_prompts_differ_and_text_matching_uses_query(default_model):
    from omnivec.models.base import PrepareOptions
    from omnivec.tasks import resolve_task
    q = default_model.encode(["reset password"], task="retrieval.query")
    p = default_model.encode(["reset password"], task="retrieval.passage")
    assert not np.allclose(q, p)
    ids = {t: default_model.model.prepare("reset password", resolve_task(t), PrepareOptions()).input_ids
           for t in ("retrieval.query", "text-matching", "retrieval.passage")}
    assert ids["text-matching"] == ids["retrieval.query"] != ids["retrieval.passage"]
    # same prompt, but text-matching runs through its shipped adapter
    assert "text-matching" in default_model.model.adapters
    tm = default_model.encode(["reset password"], task="text-matching")
    assert not np.allclose(q, tm, atol=1e-3)


def test_mixed_tasks_per_item_equal_separate_calls(default_model):
    mixed = default_model.encode(["a", "b"], task=["retrieval.query", "retrieval.passage"])
    np.testing.assert_allclose(mixed[0], default_model.encode(["a"], task="retrieval.query")[0], atol=1e-5)
    np.testing.assert_allclose(mixed[1], default_model.encode(["b"], task="retrieval.passage")[0], atol=1e-5)


def test_matryoshka_is_slice_then_renormalise(default_model):
    full = default_model.encode(TEXTS[:3])
    small = default_model.encode(TEXTS[:3], dimensions=128)
    expected = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    np.testing.assert_allclose(small, expected, atol=1e-5)


def test_retrieval_ranks_the_right_passage(default_model):
    q = default_model.encode(["How do I reset my password?"], task="retrieval.query")
    d = default_model.encode(["To reset your password open Settings and choose Security.",
                              "Our office is closed on public holidays."], task="retrieval.passage")
    s = default_model.score(q, d)
    assert s.shape == (1, 2) and s[0, 0] > s[0, 1]


def test_multivector_maxsim(default_model):
    mq = default_model.encode(["reset password"], task="retrieval.query", multivector=True)
    md = default_model.encode(["how to reset a password", "bananas are yellow"], task="retrieval.passage",
                              multivector=True)
    assert mq[0].shape[1] == default_model.multivector_dim
    np.testing.assert_allclose(np.linalg.norm(mq[0], axis=1), 1.0, rtol=1e-5)
    s = default_model.score(mq, md)
    assert s[0, 0] > s[0, 1]


def test_dense_and_multivector_from_one_call(default_model):
    r = default_model.embed(TEXTS[:2], "retrieval.passage", dense=True, multivector=True)
    np.testing.assert_allclose(r.dense, default_model.encode(TEXTS[:2], "retrieval.passage"), atol=1e-6)
    assert len(r.multivector) == 2 and r.tokens[0] == r.multivector[0].shape[0]


@pytest.mark.parametrize("precision,dtype,width", [("float16", np.float16, 384), ("int8", np.int8, 384),
                                                   ("uint8", np.uint8, 384), ("binary", np.int8, 48),
                                                   ("ubinary", np.uint8, 48)])
def test_precisions(default_model, precision, dtype, width):
    out = default_model.encode(TEXTS[:2], precision=precision)
    assert out.dtype == dtype and out.shape == (2, width)


def test_errors_are_value_errors_naming_the_problem(default_model):
    with pytest.raises(ValueError, match="unknown task 'search'"):
        default_model.encode(["x"], task="search")
    with pytest.raises(ValueError, match="dimensions=1000"):
        default_model.encode(["x"], dimensions=1000)
    with pytest.raises(ValueError, match="multi-vectors"):
        default_model.encode(["x"], multivector=True, dimensions=64)
    with pytest.raises(ValueError, match="precision"):
        default_model.encode(["x"], precision="int4")
    with pytest.raises(InputError, match="input 1"):
        default_model.encode(["fine", 42])
    with pytest.raises(InputError, match="input 0"):
        default_model.encode([omnivec.Image(b"not an image")])


def test_truncation_limit(default_model):
    long = "word " * 2000
    r = default_model.embed([long, "short"], max_tokens=16)
    assert r.truncated == [True, False] and r.tokens[0] == 16
    with pytest.raises(InputError, match="input 0"):
        default_model.encode([long], max_tokens=16, truncate=False)


def _text_image(text: str) -> PILImage.Image:
    img = PILImage.new("RGB", (900, 160), "white")
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=48)
    except TypeError:  # old Pillow
        font = ImageFont.load_default()
    draw.text((20, 50), text, fill="black", font=font)
    return img


def test_images_go_through_ocr_and_pdfs_expand_per_page(default_model):
    page1, page2 = _text_image("invoice total due"), _text_image("holiday schedule")
    buf = io.BytesIO()
    page1.save(buf, "PDF", save_all=True, append_images=[page2])
    r = default_model.embed(["before", omnivec.PDF(buf.getvalue()), omnivec.Image(page1)], "retrieval.passage")
    assert r.origins == [0, 1, 1, 2] and r.kinds == ["text", "image", "image", "image"]
    q = default_model.encode(["holiday schedule"], task="retrieval.query")
    scores = default_model.score(q, r.dense)[0]
    assert int(np.argmax(scores)) == 2
    np.testing.assert_allclose(r.dense[1], r.dense[3], atol=1e-3)   # same page, same OCR text


def test_reference_signatures(default_model):
    t = default_model.encode_text(["hello"], task="retrieval", prompt_name="passage", truncate_dim=64)
    assert isinstance(t, list) and tuple(t[0].shape) == (64,)
    n = default_model.encode_text(["hello"], task="retrieval", prompt_name="passage", return_numpy=True)
    np.testing.assert_allclose(n, default_model.encode(["hello"], task="retrieval.passage"), atol=1e-6)
    mv = default_model.encode_text(["hello"], task="code", return_multivector=True)
    assert mv[0].ndim == 2
    img = default_model.encode_image([_text_image("hello")], task="retrieval", return_numpy=True)
    assert img.shape == (1, 384)


def test_progress_bar_does_not_change_results(default_model):
    a = default_model.encode(TEXTS, progress=True)
    b = default_model.encode(TEXTS, progress=False)
    np.testing.assert_array_equal(a, b)


def test_chunked_pipeline_keeps_order_and_global_error_index(default_model, monkeypatch):
    from omnivec import embedder

    texts = [f"text {i} " * (i % 5 + 1) for i in range(11)]
    whole = default_model.encode(texts)
    monkeypatch.setattr(embedder, "PREPARE_CHUNK", 3)
    np.testing.assert_allclose(default_model.encode(texts), whole, atol=1e-5)
    with pytest.raises(InputError, match="input 7"):
        default_model.encode(texts[:7] + [5] + texts)
    with pytest.raises(InputError, match="input 4"):
        default_model.encode(texts[:4] + [omnivec.Image(b"broken")])


def test_embed_skipping_drops_bad_inputs_and_splits_calls_over_a_pixel_budget(default_model):
    from omnivec.inputs import InputLimits
    good = [omnivec.Image(_png_bytes(_text_image(f"hello {i}"))) for i in range(3)]
    inputs = ["a text", good[0], omnivec.Image(b"\x89PNG\r\n\x1a\nbroken"), good[1], "more text", good[2]]
    one = _text_image("x").size[0] * _text_image("x").size[1]
    limits = InputLimits(max_request_pixels=2 * one)       # all three images: over the call budget
    res, failed = default_model.embed_skipping(inputs, "retrieval.passage", limits=limits, progress=False)
    assert sorted(failed) == [2] and "image" in failed[2]
    assert res.origins == [0, 1, 3, 4, 5]
    want = default_model.encode([inputs[i] for i in res.origins], task="retrieval.passage")
    np.testing.assert_allclose(res.dense, want, atol=1e-5)


def _png_bytes(im: PILImage.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()
