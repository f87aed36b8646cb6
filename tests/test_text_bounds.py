"""Token limits applied on characters first (issue 15): the tokenizer never sees megabytes.

Every processor (e5, jina-v4's Qwen tokenizer, the fake) and late chunking tokenise only a
prefix bounded by the limit; the ids must be the ones tokenising the whole text gave.
"""
from __future__ import annotations

import json
import random
import resource
import time
import tracemalloc
import unicodedata
from types import SimpleNamespace

import pytest

from omnivec import late_chunking
from omnivec.inputs import InputError
from omnivec.models.base import PrepareOptions
from omnivec.models.qwen_vl_processing import JinaV4Processor
from omnivec.models.text_bounds import CHARS_PER_TOKEN_BOUND, PREFIX_MARGIN_TOKENS, bounded_ids, last_boundary
from omnivec.tasks import TaskSpec
from omnivec.testing import FakeProcessor, build_qwen_tokenizer_json

PASSAGE = TaskSpec("retrieval", "passage")
QUERY = TaskSpec("retrieval", "query")
TEXTS = [
    "", "short", "The quick brown fox jumps over the lazy dog.", "  leading and trailing  ",
    "Berlin ist die Hauptstadt Deutschlands. Donaudampfschifffahrtsgesellschaft!",
    "Москва — столица России.", "東京都は日本の首都です。", "我们的人民是伟大的人民，中国文化源远流长。",
    "한국어 텍스트", "naïve café e\u0301 ﬃ ½", "def f(x):\n\treturn x ** 2  # code\n", "😀 emoji 🎉",
    "a\u200bb\x01c\u3000d\u00a0e", "<|im_start|>user\nhello<|im_end|>", "1234567890 3.14159 1e-9",
]


def _long_texts() -> list[str]:
    rnd = random.Random(0)
    words = [w for t in TEXTS for w in t.split()] + ["\n\n", "    ", "—", "..."]
    mixed = " ".join(rnd.choice(words) for _ in range(20_000))
    cjk = "".join(rnd.choice("我们的人民是伟大的中国文化数据模型，。東京都は日本の首都です") for _ in range(60_000))
    b64 = "".join(rnd.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/") for _ in range(70_000))
    return [mixed, cjk, "word " * 30_000, b64]


@pytest.fixture(scope="module")
def qwen() -> JinaV4Processor:
    """jina-v4's processor around the real Qwen2.5 tokenizer (text only: no image processor)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(build_qwen_tokenizer_json())
    tok.no_truncation()
    tok.no_padding()
    cfg = SimpleNamespace(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                          vision_end_token_id=151653, vision_config=SimpleNamespace(spatial_merge_size=2))
    return JinaV4Processor(tok, None, config=cfg, min_pixels=3136, max_pixels=602112)


@pytest.fixture(scope="module", params=["e5", "qwen", "fake"])
def proc(request, default_model, qwen):
    return {"e5": lambda: default_model.model.processor, "qwen": lambda: qwen, "fake": FakeProcessor}[request.param]()


def _old_prepare(proc, text: str, task: TaskSpec, limit: int) -> tuple[list[int], bool]:
    """What prepare gave before: the whole text tokenised, then cut to the limit."""
    if isinstance(proc, JinaV4Processor):
        ids = proc.prompted_ids(text, task)
        return ids[:limit], len(ids) > limit
    if isinstance(proc, FakeProcessor):
        ids = [proc.CLS] + proc.prompted_ids(text, task) + [proc.SEP]
        return (ids[:limit - 1] + [proc.SEP], True) if len(ids) > limit else (ids, False)
    enc = proc.tokenizer.encode(proc.prompts.get(task.prompt, "") + text, add_special_tokens=False)
    over = len(enc.ids) + proc.n_special > limit
    if over:
        enc.truncate(limit - proc.n_special)
    return list(proc.tokenizer.post_process(enc).ids), over


def _same_as_before(proc, text: str, limit: int, task: TaskSpec = PASSAGE) -> None:
    p = proc.prepare(text, task, PrepareOptions(max_tokens=limit))
    ids, over = _old_prepare(proc, text, task, min(limit, proc.max_tokens))
    assert (p.input_ids, p.truncated) == (ids, over), (text[:40], limit)


def _around_limit(proc, limit: int) -> list[str]:
    """Texts whose old token count is limit - 2 .. limit + 2 (found by bisecting on words)."""
    words = _long_texts()[0].split(" ")
    out = []
    for target in range(limit - 2, limit + 3):
        lo, hi = 0, len(words)
        while lo < hi:          # the fewest words whose whole tokenisation reaches ``target``
            mid = (lo + hi) // 2
            n = len(_old_prepare(proc, " ".join(words[:mid]), PASSAGE, 10 ** 9)[0])
            lo, hi = (mid + 1, hi) if n < target else (lo, mid)
        out.append(" ".join(words[:lo]))
    return out


def test_prepare_ids_unchanged(proc):
    """Normal and long texts, texts just around the limit: the same ids and flags as before."""
    for text in TEXTS + _long_texts():
        if isinstance(proc, FakeProcessor) and max(map(len, text.split()), default=0) > CHARS_PER_TOKEN_BOUND:
            continue            # the fake's word is one token of any length: the bound does not hold
        for limit in (8, 40, proc.max_tokens):
            _same_as_before(proc, text, limit)
        _same_as_before(proc, text, 24, QUERY)
    for limit in (16, min(proc.max_tokens, 512)):
        for text in _around_limit(proc, limit):
            _same_as_before(proc, text, limit)


def test_multi_megabyte_text_prepared_in_bounded_time_and_memory(proc):
    """20 MB (e5 took ~230 MB and ~1 s per MB) -> milliseconds, the truncated short form's ids."""
    limit = min(proc.max_tokens, 2048)
    opts = PrepareOptions(max_tokens=limit)
    base = _long_texts()[0]
    for text in (base * (20_000_000 // len(base)), "我们的人民是伟大的人民，中国文化源远流长。" * 1_000_000,
                 "A" * 20_000_000, " " * 20_000_000):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        t = time.perf_counter()
        p = proc.prepare(text, PASSAGE, opts)
        elapsed = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
        assert elapsed < 1.0 and peak < 20e6 and grown < 100, (text[:10], elapsed, peak, grown)
        assert p.truncated and p.cost <= limit
        if text.startswith(("A", " ")) or (isinstance(proc, FakeProcessor) and text[0] == "我"):
            continue            # one 20 MB "word" (for the fake, CJK too): cut at the bound
        assert p.input_ids == proc.prepare(text[:300_000], PASSAGE, opts).input_ids
        assert p.cost == limit


def test_truncate_false_still_refuses(proc):
    with pytest.raises(ValueError, match=f"more than {proc.max_tokens} tokens"):
        proc.prepare("many words here " * 1_300_000, PASSAGE, PrepareOptions(truncate=False))
    text = _around_limit(proc, 20)[2]          # tokenised whole: the message keeps the exact count
    n = len(_old_prepare(proc, text, PASSAGE, 10 ** 9)[0])
    with pytest.raises(ValueError, match=rf"\b{n} tokens"):
        proc.prepare(text, PASSAGE, PrepareOptions(max_tokens=16, truncate=False))


def _old_plan_windows(processor, texts, task, room):
    """Late chunking's layout before: every input tokenised whole."""
    groups, used = [], room
    for text in texts:
        ids = processor.text_ids(text) if groups else []
        if not groups or used + len(ids) > room:
            ids = processor.prompted_ids(text, task)[:room]
            groups.append([])
            used = 0
        groups[-1].append(ids)
        used += len(ids)
    return groups


def test_late_chunking_plan_bounded(default_model):
    proc = default_model.model.processor
    head, tail = proc.special_ids()
    texts = TEXTS[1:] + _long_texts()[:1] + TEXTS[1:]
    for max_tokens in (24, 128, 512):
        layout = late_chunking.plan(proc, texts, PASSAGE, max_tokens=max_tokens)
        room = max_tokens - len(head) - len(tail)
        want = [head + [t for part in g for t in part] + tail for g in _old_plan_windows(proc, texts, PASSAGE, room)]
        assert [w.ids for w in layout.windows] == want
    huge = "many words here " * 1_300_000
    t = time.perf_counter()
    layout = late_chunking.plan(proc, ["short one", huge, "after"], PASSAGE)
    assert time.perf_counter() - t < 1.0
    assert [len(w.spans) for w in layout.windows] == [1, 1, 1]   # the huge one fills its own window
    assert layout.windows[1].ids == proc.prepare(huge[:100_000], PASSAGE, PrepareOptions()).input_ids
    with pytest.raises(InputError, match="input 1: input has more than 510 tokens"):
        late_chunking.plan(proc, ["short one", huge], PASSAGE, truncate=False)


def test_bound_covers_both_vocabularies(default_model, qwen):
    """The documented figure: no vocabulary entry stands for more than 128 characters."""
    # byte-level BPE: one vocabulary character per byte, and a character is at least one byte
    assert max(len(t) for t in qwen.tokenizer.get_vocab()) == CHARS_PER_TOKEN_BOUND
    # e5: pieces are NFKC text; a string normalising to a piece is at most its NFKD long
    pieces = [p for p, _ in json.loads(default_model.model.processor.tokenizer.to_str())["model"]["vocab"]]
    assert max(sum(len(unicodedata.normalize("NFKD", c)) for c in p) for p in pieces) <= 32
    assert PREFIX_MARGIN_TOKENS >= 5      # byte-level BPE: a raw cut changed at most 5 trailing tokens


def test_bounded_ids_cuts_at_word_boundaries():
    assert last_boundary("ab cd  ef", 8) == 5 and last_boundary("ab cd", 2) == 2 and last_boundary("...  ", 4) == 0
    seen: list[str] = []

    def encode(s: str) -> list[int]:
        seen.append(s)
        return [len(w) for w in s.split()]

    text = "word " * 1_000_000
    got = bounded_ids(encode, text, 100)
    assert got.cut and got.over and got.ids == [4] * 100 and got.count() == "more than 100"
    assert max(map(len, seen)) <= (100 + 1 + PREFIX_MARGIN_TOKENS) * CHARS_PER_TOKEN_BOUND
    assert all(s.endswith("d") for s in seen)                     # cut after a word, before a space
    small = bounded_ids(encode, "a bb ccc", 2)
    assert not small.cut and small.over and small.ids == [1, 2, 3] and small.count(2) == "5"
