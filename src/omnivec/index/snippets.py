"""Hit snippets: a short window of an item's text around the words the query shares with it.

Why not the first characters: a 256-token chunk is ~1,000 characters, and the line that made it
match is often in the middle. Why this simple: it only has to show a person where to look, so a
window covering the most distinct query words is enough (no stemming, no highlighting markup).
"""
from __future__ import annotations

import re

from ..eval.bm25 import tokenize

SNIPPET_CHARS = 200
# Words this short ("a", "of", "is") would anchor windows on noise; CJK characters are exempt.
_MIN_WORD = 3
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_SPACE = re.compile(r"\s+")


def _query_words(query: str) -> set[str]:
    return {w for w in tokenize(query) if len(w) >= _MIN_WORD or _CJK.match(w)}


def make_snippet(text: str, query: str, width: int = SNIPPET_CHARS) -> str:
    """About ``width`` characters of ``text`` (whitespace collapsed) around the query's words.

    The window starts shortly before a query word and is the one holding the most distinct
    query words (earliest on ties); without any match it is the start of the text. Cut ends
    are marked with an ellipsis.
    """
    flat = _SPACE.sub(" ", text or "").strip()
    if len(flat) <= width:
        return flat
    lower = flat.lower()
    words = _query_words(query)
    hits: list[tuple[int, str]] = []
    for w in words:
        hits.extend((m.start(), w) for m in re.finditer(re.escape(w), lower))
    hits.sort()
    start = 0
    if hits:
        lead = width // 5           # a little context before the first matched word
        best = (-1, 0)
        for pos, _ in hits:
            begin = max(0, pos - lead)
            covered = {w for p, w in hits if begin <= p and p + len(w) <= begin + width}
            if len(covered) > best[0]:
                best = (len(covered), begin)
        start = best[1]
    start = min(start, max(0, len(flat) - width))
    if start > 0:                   # do not begin mid-word
        space = flat.find(" ", start, start + 30)
        if space != -1:
            start = space + 1
    end = start + width
    if end < len(flat):
        space = flat.rfind(" ", end - 30, end)
        if space > start:
            end = space
    piece = flat[start:end].strip()
    return ("…" if start > 0 else "") + piece + ("…" if end < len(flat) else "")
