"""Token limits enforced on characters first: the tokenizer never sees more than a bounded prefix.

Why: tokenising costs memory per character (~230 bytes per character with the e5 tokenizer:
a 50 MB text took a server past 12 GB) even when only the first ``limit`` tokens are kept.
Since one token covers at most :data:`CHARS_PER_TOKEN_BOUND` characters of ordinary text, a
text of more characters than ``(limit + 1 + PREFIX_MARGIN_TOKENS) * CHARS_PER_TOKEN_BOUND``
is over the limit, and its first ``limit`` tokens are those of a prefix cut at a word boundary.

The figures (measured on runs of 20,000 characters each of spaces, tabs, newlines, control
and zero-width characters, punctuation, digits, repeated letters, words, CJK, Hangul,
combining marks, emoji, code and random text, and by scanning both vocabularies):

* Qwen2.5 (jina-v4, byte-level BPE): the longest vocabulary entry is 128 bytes (128 spaces),
  so 128 characters per token at most (NFC cannot shrink any entry: its NFD is no longer);
  measured maximum 127.4 characters per token (a run of spaces), 64 for runs of ``-=_.*#``.
* e5 (XLM-R Unigram): the longest piece is 16 characters (22 once NFKC compatibility forms
  are expanded); measured maximum 16 (runs of ``.-=_``). Its normaliser collapses a run of
  whitespace into one space and deletes control characters, and a run of unknown characters
  is one ``<unk>``: only such runs make a token cover more characters.

The cut is made where the tokenisation of a prefix is provably the start of the whole text's
(after an alphanumeric character, before a space, tab or newline: every pre-tokenizer here
ends a word there and no normaliser joins across it). A cut inside a word is not exact:
byte-level BPE changed up to 5 trailing tokens of the prefix (11,400 random cuts), Unigram
up to 3 in Chinese, Japanese and Thai text without spaces, but up to 1,386 in a run of one
repeated character (it segments a word as a whole). So a prefix with no word boundary near
its end (a long "word", e.g. CJK text without spaces) is cut raw and trusted only when it
has ``PREFIX_MARGIN_TOKENS`` tokens more than the limit; past the bound (a run of one
character, or a flood of whitespace, control or unknown characters, which e5 folds into one
token) the text is cut at the bound and counts as over the limit.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

CHARS_PER_TOKEN_BOUND = 128      # most characters one token covers (Qwen: 128 spaces)
PREFIX_MARGIN_TOKENS = 16        # slack for stepping back to a word boundary; raw cuts differ in <= 5
FIRST_PREFIX_CHARS = 16_384      # first prefix tried: about 30 ms of tokenising, exact counts below
FIRST_CHARS_PER_TOKEN = 8        # ... or 8 characters per token (ordinary text: 3-5)
_BOUNDARY = re.compile(r"[^\W_][ \t\n]")   # an alphanumeric character, then a space/tab/newline


@dataclass(frozen=True)
class TextIds:
    """Ids of a text tokenised under a limit: all of them, or (``cut``) its first ``limit``."""

    ids: list[int]
    cut: bool            # only a prefix was tokenised: the text has more than ``limit`` tokens
    limit: int

    @property
    def over(self) -> bool:
        """More tokens than ``limit``."""
        return self.cut or len(self.ids) > self.limit

    def count(self, extra: int = 0) -> str:
        """The token count for messages (``extra``: tokens added around the text)."""
        return f"more than {self.limit + extra}" if self.cut else str(len(self.ids) + extra)


def _prefix_sizes(limit: int) -> Iterator[int]:
    """Prefix lengths to try, growing 4x: cheap for ordinary text, bounded for any text."""
    bound = (limit + 1 + PREFIX_MARGIN_TOKENS) * CHARS_PER_TOKEN_BOUND
    size = min(bound, max(FIRST_PREFIX_CHARS, (limit + 1 + PREFIX_MARGIN_TOKENS) * FIRST_CHARS_PER_TOKEN))
    while size < bound:
        yield size
        size *= 4
    yield bound


def last_boundary(text: str, end: int) -> int:
    """The largest ``p <= end`` where ``text[:p]`` ends a word (see the module doc), or 0."""
    hi, step = end + 1, 4096
    while hi > 1:
        lo = max(0, hi - step)
        last = None
        for last in _BOUNDARY.finditer(text, lo, hi):
            pass
        if last is not None:
            return last.start() + 1
        hi, step = lo + 1, step * 4
    return 0


def bounded_ids(encode: Callable[[str], Sequence[int]], text: str, limit: int) -> TextIds:
    """``encode(text)`` when it fits the character bound, else the first ``limit`` ids of a prefix.

    ``encode`` must tokenise the start of a text the same way whatever follows a word boundary
    (true of the e5, Qwen and fake tokenizers; ``encode`` may add a prompt in front).
    """
    limit = max(0, limit)
    slack = PREFIX_MARGIN_TOKENS * CHARS_PER_TOKEN_BOUND
    sizes = list(_prefix_sizes(limit))
    for size in sizes:
        if len(text) <= size:
            return TextIds(list(encode(text)), False, limit)
        p = last_boundary(text, size)
        ids = list(encode(text[:p])) if p else []
        if len(ids) > limit:                       # exact: a word boundary, enough tokens before it
            return TextIds(ids[:limit], True, limit)
        if size - p > slack or size == sizes[-1]:  # a long "word" (e.g. CJK without spaces) at the end
            ids = list(encode(text[:size]))
            if len(ids) >= limit + PREFIX_MARGIN_TOKENS or size == sizes[-1]:
                return TextIds(ids[:limit], True, limit)
    raise AssertionError("unreachable: the last prefix size always returns")
