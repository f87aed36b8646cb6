import numpy as np
import pytest

from omnivec import heads, outputs


def _unit(n, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_matryoshka_slices_then_renormalises():
    x = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    out = heads.matryoshka(x, 4)
    expected = x[:, :4] / np.linalg.norm(x[:, :4], axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)


def test_normalize_false_keeps_raw_values():
    x = np.array([[3.0, 4.0, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(heads.matryoshka(x, 2, normalize=False), [[3.0, 4.0]])


@pytest.mark.parametrize("bad", [0, -1, 385, 2.5, "128", True])
def test_bad_dimensions_name_value_and_range(bad):
    with pytest.raises(ValueError, match="dimensions"):
        outputs.check_dimensions(bad, 384)


def test_binary_packs_sign_bits_like_numpy_packbits():
    x = np.array([[1, -1, 1, 1, -1, -1, -1, 1, 0.5, -0.5]], dtype=np.float32)
    ub = outputs.quantize(x, "ubinary")
    b = outputs.quantize(x, "binary")
    assert ub.dtype == np.uint8 and ub.shape == (1, 2)
    assert ub[0, 0] == 0b10110001 and ub[0, 1] == 0b10000000
    assert b.dtype == np.int8
    np.testing.assert_array_equal(b.astype(np.int16) + 128, ub)


def test_int8_keeps_rankings_and_uint8_is_offset():
    x = _unit(200, 384)
    q = outputs.quantize(x, "int8")
    u = outputs.quantize(x, "uint8")
    assert q.dtype == np.int8 and u.dtype == np.uint8
    np.testing.assert_array_equal(u.astype(np.int16) - 128, q.astype(np.int16))
    exact = x @ x[0]
    approx = q.astype(np.float32) @ q[0].astype(np.float32)
    assert np.corrcoef(exact, approx)[0, 1] > 0.99
    assert np.argmax(approx) == 0


def test_float16_and_unknown_precision():
    x = _unit(2, 16)
    assert outputs.quantize(x, "float16").dtype == np.float16
    with pytest.raises(ValueError, match="allowed"):
        outputs.quantize(x, "int4")


def test_base64_roundtrip_is_little_endian_float32():
    v = np.array([1.0, -2.5, 3.25], dtype=np.float32)
    s = outputs.to_base64(v)
    assert s == "AACAPwAAIMAAAFBA"
    np.testing.assert_array_equal(outputs.from_base64(s), v)
    big = v.astype(">f4")
    assert outputs.to_base64(big) == s
