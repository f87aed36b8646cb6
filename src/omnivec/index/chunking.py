"""Cut text, markdown and source code into token-bounded chunks that follow the document's shape.

Why structure first: a chunk that is one section, one paragraph run or one function embeds
into a vector that means one thing, and its line span lets search point at the exact place.
Sizes are measured with the caller's ``count_tokens`` (the model's tokenizer), which may be
slow, so every unit is counted once and the only other calls are one check per emitted chunk.

Every chunk body is a verbatim slice of the (newline-normalised) input; a markdown chunk is
that slice preceded by its heading path, e.g. ``"# Refunds > ## Timing\\n"``.
"""
from __future__ import annotations

import ast
import bisect
import math
import re
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["Chunk", "chunk_text", "chunk_code"]

CountTokens = Callable[[str], int]


@dataclass(frozen=True)
class Chunk:
    """A piece of a file: its text and the 1-based inclusive lines it came from."""

    text: str
    line_start: int
    line_end: int


# A unit is a stripped span of the document: (start offset, end offset, token cost).
_Unit = tuple[int, int, int]

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*\s+|[\u3002\uff01\uff1f]\s*")
_WORD = re.compile(r"\S+")
_CLOSER = re.compile(r"^[\s]*[}\])]|^end\b")


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


class _Doc:
    """The text, its line offsets and a caching token counter shared by both chunkers."""

    def __init__(self, text: str, count_tokens: CountTokens, max_tokens: int) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        self.text = text
        self.lines = text.split("\n")
        self.line_starts = [0]
        for line in self.lines[:-1]:
            self.line_starts.append(self.line_starts[-1] + len(line) + 1)
        self._count = count_tokens
        self._cache: dict[str, int] = {}
        self.max_tokens = max_tokens
        # Tokenizers often add special tokens to every call; measure them once so unit costs
        # add up to (about) the cost of their concatenation.
        self.base = max(0, count_tokens(""))
        self.budget = max(1, max_tokens - self.base)

    # ---- positions -------------------------------------------------------------------------

    def line_of(self, offset: int) -> int:
        """1-based line of a character offset."""
        return bisect.bisect_right(self.line_starts, offset)

    def line_span(self, first: int, last: int) -> tuple[int, int]:
        """Offsets covering 0-based lines ``first..last`` (inclusive)."""
        return self.line_starts[first], self.line_starts[last] + len(self.lines[last])

    def strip(self, s: int, e: int) -> tuple[int, int]:
        seg = self.text[s:e]
        lead = len(seg) - len(seg.lstrip())
        trail = len(seg) - len(seg.rstrip())
        return s + lead, e - trail

    # ---- counting --------------------------------------------------------------------------

    def cost(self, s: str) -> int:
        c = self._cache.get(s)
        if c is None:
            c = max(0, self._count(s) - self.base)
            self._cache[s] = c
        return c

    def count(self, s: str) -> int:
        """Exact size of a finished chunk, special tokens included (not cached)."""
        return self._count(s)

    def fits(self, s: str) -> bool:
        return self._count(s) <= self.max_tokens

    # ---- splitting ever finer until every piece fits ----------------------------------------

    def _pieces(self, s: int, e: int, level: int) -> list[tuple[int, int]]:
        """Split span [s, e) at level 0 lines, 1 sentences, 2 words; stripped, non-empty."""
        text = self.text
        out: list[tuple[int, int]] = []
        if level == 0:
            pos = s
            while pos < e:
                nl = text.find("\n", pos, e)
                end = e if nl < 0 else nl
                out.append((pos, end))
                pos = end + 1
        elif level == 1:
            pos = s
            for m in _SENTENCE_END.finditer(text, s, e):
                out.append((pos, m.end()))
                pos = m.end()
            out.append((pos, e))
        else:
            out = [(m.start(), m.end()) for m in _WORD.finditer(text, s, e)]
        stripped = (self.strip(a, b) for a, b in out)
        return [(a, b) for a, b in stripped if b > a]

    def fit(self, s: int, e: int, limit: int, level: int = 0) -> list[_Unit]:
        """Units covering span [s, e), each costing at most ``limit`` (lines, sentences, words, chars)."""
        s, e = self.strip(s, e)
        if e <= s:
            return []
        c = self.cost(self.text[s:e])
        if c <= limit:
            return [(s, e, c)]
        while level < 3:
            pieces = self._pieces(s, e, level)
            level += 1
            if len(pieces) > 1:
                out: list[_Unit] = []
                for a, b in pieces:
                    out.extend(self.fit(a, b, limit, level))
                return out
        return self._char_windows(s, e, c, limit)

    def _char_windows(self, s: int, e: int, c: int, limit: int) -> list[_Unit]:
        """Last resort for one huge token-dense word (a hash, base64, minified code)."""
        out: list[_Unit] = []
        step = max(1, (e - s) * limit // max(c, 1))
        pos = s
        while pos < e:
            n = min(step, e - pos)
            while True:
                piece_cost = self.cost(self.text[pos:pos + n])
                if piece_cost <= limit or n == 1:
                    break
                n = max(1, n * 4 // 5)
            out.append((pos, pos + n, piece_cost))
            pos += n
        return out

    # ---- packing -----------------------------------------------------------------------------

    def tail(self, units: list[_Unit], overlap: int) -> list[_Unit]:
        """Trailing units worth at most ``overlap`` tokens, refined when the last one is too big."""
        out: list[_Unit] = []
        total = 0
        for u in reversed(units):
            if total + u[2] > overlap:
                if not out:  # whole units impossible: take the end of the last one
                    for p in reversed(self.fit(u[0], u[1], overlap)):
                        if total + p[2] > overlap:
                            break
                        out.append(p)
                        total += p[2]
                break
            out.append(u)
            total += u[2]
        out.reverse()
        return out

    def pack(self, units: list[_Unit], prefix: str, overlap: int) -> list[Chunk]:
        """Greedily pack consecutive units up to the budget, repeating ``overlap`` tokens."""
        limit = self.budget - self.cost(prefix) if prefix else self.budget
        overlap = min(overlap, limit // 2)
        chunks: list[Chunk] = []
        prev: list[_Unit] = []
        i = 0
        while i < len(units):
            head = self.tail(prev, overlap) if prev and overlap > 0 else []
            while head and sum(u[2] for u in head) + units[i][2] > limit:
                head.pop(0)
            total = sum(u[2] for u in head)
            j = i
            while j < len(units) and (j == i or total + units[j][2] <= limit):
                total += units[j][2]
                j += 1
            # Unit costs are an estimate of the joined text's cost: check once, shrink if needed.
            while True:
                start = (head or units[i:])[0][0]
                text = prefix + self.text[start:units[j - 1][1]]
                if (j - i == 1 and not head) or self.fits(text):
                    break
                if j - i > 1:
                    j -= 1
                else:
                    head = []
            chunks.append(Chunk(text, self.line_of(start), self.line_of(units[j - 1][1] - 1)))
            prev = head + units[i:j]
            i = j
        return chunks


# ============================================================================================
# text and markdown
# ============================================================================================


@dataclass
class _Section:
    level: int               # 0 for the preamble before the first heading
    title: str               # "## Timing"
    head: tuple[int, int]    # 0-based first/last line of the heading (setext: two lines)
    end: int = 0             # 0-based last line of the whole subtree
    children: list[_Section] = field(default_factory=list)


def _headings(lines: list[str]) -> dict[int, tuple[int, str, int]]:
    """Heading start line -> (level, title, last line); fenced code is never a heading."""
    found: dict[int, tuple[int, str, int]] = {}
    fence: str | None = None
    prev_blank = True
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _FENCE.match(line)
        if fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
        elif m:
            fence = m.group(1)
        else:
            atx = _ATX.match(line)
            if atx:
                found[i] = (len(atx.group(1)), (atx.group(2) or "").strip(), i)
            elif (prev_blank and line.strip() and i + 1 < len(lines)
                  and _SETEXT.match(lines[i + 1]) and not line.lstrip().startswith(("-", "*", "+", ">"))):
                level = 1 if lines[i + 1].strip()[0] == "=" else 2
                found[i] = (level, line.strip(), i + 1)
                i += 2
                prev_blank = False
                continue
        prev_blank = not line.strip()
        i += 1
    return found


def _blocks(doc: _Doc, first: int, last: int, markdown: bool) -> list[tuple[int, int]]:
    """Paragraph line ranges in lines ``first..last``: blank lines split, fenced code does not."""
    out: list[tuple[int, int]] = []
    start: int | None = None
    fence: str | None = None
    for i in range(first, last + 1):
        line = doc.lines[i]
        if markdown:
            m = _FENCE.match(line)
            if fence is not None:
                if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                    fence = None
                continue
            if m:
                fence = m.group(1)
                start = i if start is None else start
                continue
        if line.strip():
            start = i if start is None else start
        elif start is not None:
            out.append((start, i - 1))
            start = None
    if start is not None:
        out.append((start, last))
    return out


def chunk_text(
    text: str,
    *,
    count_tokens: CountTokens,
    max_tokens: int = 256,
    overlap: int = 32,
    markdown: bool = False,
) -> list[Chunk]:
    """Split prose (or markdown, by heading sections) into chunks of at most ``max_tokens``.

    Order of cuts: sections (markdown), paragraphs, lines, sentences, words. A markdown
    section whose whole subtree fits is one chunk; top-level sections are never merged.
    ``overlap`` tokens of trailing units repeat at the start of the next chunk of a section.
    """
    text = _normalise(text)
    if not text.strip():
        return []
    doc = _Doc(text, count_tokens, max_tokens)
    n = len(doc.lines)
    if not markdown:
        return doc.pack(_units(doc, 0, n - 1, doc.budget, False), "", overlap)

    heads = _headings(doc.lines)
    root = _Section(0, "", (-1, -1), n - 1)
    stack = [root]
    for line, (level, title, last) in sorted(heads.items()):
        while stack[-1].level >= level:
            stack.pop()
        sec = _Section(level, f"{'#' * level} {title}".rstrip(), (line, last), n - 1)
        stack[-1].children.append(sec)
        stack.append(sec)
    _close_ends(root)

    chunks = doc.pack(_units(doc, 0, _body_end(root), doc.budget, True), "", overlap)
    for top in root.children:
        chunks.extend(_chunk_section(doc, top, [], overlap))
    return chunks


def _close_ends(sec: _Section) -> None:
    """Each subtree ends where the next sibling starts (or where its parent ends)."""
    kids = sec.children
    for k, child in enumerate(kids):
        child.end = kids[k + 1].head[0] - 1 if k + 1 < len(kids) else sec.end
        _close_ends(child)


def _body_end(sec: _Section) -> int:
    kids = sec.children
    return kids[0].head[0] - 1 if kids else sec.end


def _units(doc: _Doc, first: int, last: int, limit: int, markdown: bool) -> list[_Unit]:
    out: list[_Unit] = []
    for a, b in _blocks(doc, first, last, markdown) if last >= first else []:
        out.extend(doc.fit(*doc.line_span(a, b), limit))
    return out


def _prefix(doc: _Doc, path: list[str]) -> str:
    """Heading path for the chunks of a section; shortened when it would eat the budget."""
    for candidate in (path, path[-1:]):
        p = " > ".join(candidate) + "\n"
        if doc.cost(p) <= doc.budget // 2:
            return p
    return ""


def _chunk_section(doc: _Doc, sec: _Section, parents: list[str], overlap: int) -> list[Chunk]:
    path = parents + [sec.title]
    prefix = _prefix(doc, path)
    limit = doc.budget - doc.cost(prefix)
    first = sec.head[1] + 1
    if sec.children:
        # The whole subtree (child headings included verbatim) may fit in one chunk.
        units = _units(doc, first, sec.end, limit, True)
        if units and sum(u[2] for u in units) <= limit:
            packed = doc.pack(units, prefix, overlap)
            if len(packed) == 1:
                return packed
    units = _units(doc, first, _body_end(sec), limit, True)
    chunks = doc.pack(units, prefix, overlap)
    if not units and not sec.children:  # a heading with nothing under it still says something
        chunks = [Chunk(prefix.rstrip("\n") or sec.title, sec.head[0] + 1, sec.head[1] + 1)]
    for child in sec.children:
        chunks.extend(_chunk_section(doc, child, path, overlap))
    return chunks


# ============================================================================================
# code
# ============================================================================================


def chunk_code(
    source: str,
    *,
    language: str,
    count_tokens: CountTokens,
    max_tokens: int = 256,
    overlap_lines: int = 2,
) -> list[Chunk]:
    """Split source code into chunks of at most ``max_tokens`` along its definitions.

    Python: one chunk per top-level function/class (decorators and leading comments included),
    big classes split by method, module-level code between definitions grouped. Other
    languages, and Python that does not parse: by lines, cutting preferably at blank lines or
    lines starting at column 0; ``overlap_lines`` lines are repeated after a cut inside a block
    (not after a cut at a top-level boundary, where there is no context to carry over).
    """
    source = _normalise(source)
    if not source.strip():
        return []
    doc = _Doc(source, count_tokens, max_tokens)
    costs = _LineCosts(doc)
    n = len(doc.lines)
    if language.lower() in ("python", "py", "python3"):
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            tree = None
        if tree is not None:
            chunks: list[Chunk] = []
            for a, b, node in _segments(doc, tree.body, 0, n - 1):
                chunks.extend(_chunk_python(doc, costs, a, b, node, overlap_lines))
            return chunks
    return _pack_lines(doc, costs, 0, n - 1, overlap_lines)


class _LineCosts:
    """Token cost of each line, counted on first use."""

    def __init__(self, doc: _Doc) -> None:
        self.doc = doc
        self._c: list[int | None] = [None] * len(doc.lines)

    def __getitem__(self, i: int) -> int:
        c = self._c[i]
        if c is None:
            line = self.doc.lines[i]
            # indentation and the line break cost tokens too
            c = self.doc.cost(line.rstrip() + "\n") if line.strip() else 0
            self._c[i] = c
        return c

    def total(self, a: int, b: int) -> int:
        return sum(self[i] for i in range(a, b + 1))


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _segments(doc: _Doc, body: list[ast.stmt], lo: int, hi: int) -> list[tuple[int, int, ast.stmt | None]]:
    """Partition lines ``lo..hi`` into definitions and the code between them (0-based, inclusive).

    A definition starts at its first decorator or at the comment block right above it, and
    keeps the indented lines (trailing comments) after its last statement.
    """
    lines = doc.lines
    spans: list[tuple[int, int, ast.stmt]] = []
    floor = lo
    for k, node in enumerate(body):
        if not isinstance(node, _DEFS):
            floor = node.end_lineno or node.lineno  # 0-based: the line after this statement
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
        while start - 1 >= max(floor, lo) and lines[start - 1].lstrip().startswith("#"):
            start -= 1
        end = (node.end_lineno or node.lineno) - 1
        nxt = body[k + 1].lineno - 1 if k + 1 < len(body) else hi + 1
        if k + 1 < len(body) and isinstance(body[k + 1], _DEFS) and body[k + 1].decorator_list:
            nxt = min(d.lineno for d in body[k + 1].decorator_list) - 1
        indent = len(lines[node.lineno - 1]) - len(lines[node.lineno - 1].lstrip())
        j = end + 1
        while j < nxt and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
            j += 1
        end = j - 1
        while end > start and not lines[end].strip():
            end -= 1
        spans.append((start, end, node))
        floor = end + 1
    out: list[tuple[int, int, ast.stmt | None]] = []
    pos = lo
    for a, b, node in spans:
        if a > pos:
            out.append((pos, a - 1, None))
        out.append((a, b, node))
        pos = b + 1
    if pos <= hi:
        out.append((pos, hi, None))
    return [(a, b, node) for a, b, node in out if any(lines[i].strip() for i in range(a, b + 1))]


def _chunk_python(doc: _Doc, costs: _LineCosts, a: int, b: int, node: ast.stmt | None,
                  overlap_lines: int) -> list[Chunk]:
    if node is not None and costs.total(a, b) <= doc.budget:
        chunk = _line_chunk(doc, a, b)
        if chunk is not None and doc.fits(chunk.text):
            return [chunk]
    if isinstance(node, ast.ClassDef) and any(isinstance(s, _DEFS) for s in node.body):
        # Header (decorators, class line, docstring, attributes) and each method on its own.
        parts = _segments(doc, node.body, node.lineno, b)  # from the line after `class ...:`
        if parts and parts[0][2] is None:
            parts[0] = (a, parts[0][1], None)
        else:
            parts.insert(0, (a, (parts[0][0] if parts else b + 1) - 1, None))
        chunks: list[Chunk] = []
        for pa, pb, sub in parts:
            chunks.extend(_chunk_python(doc, costs, pa, pb, sub, overlap_lines))
        return chunks
    return _pack_lines(doc, costs, a, b, overlap_lines)


def _line_chunk(doc: _Doc, a: int, b: int) -> Chunk | None:
    """Lines ``a..b`` verbatim, blank edge lines dropped."""
    while a <= b and not doc.lines[a].strip():
        a += 1
    while b >= a and not doc.lines[b].strip():
        b -= 1
    if a > b:
        return None
    return Chunk("\n".join(doc.lines[a:b + 1]), a + 1, b + 1)


def _cut_score(lines: list[str], k: int) -> int:
    """How good it is to start a new chunk at line ``k`` (0 = no better than anywhere)."""
    line = lines[k]
    if not line.strip():
        nxt = next((x for x in lines[k + 1:k + 4] if x.strip()), "")
        return 3 if nxt and not nxt[0].isspace() and not _CLOSER.match(nxt) else 1
    if not line[0].isspace() and not _CLOSER.match(line):
        return 2
    return 0


def _pack_lines(doc: _Doc, costs: _LineCosts, a: int, b: int, overlap_lines: int) -> list[Chunk]:
    """Pack lines ``a..b`` into chunks of about equal size, each cut at the best nearby boundary."""
    lines = doc.lines
    after = [0] * (b - a + 2)  # after[i - a]: cost of lines i..b
    for i in range(b, a - 1, -1):
        after[i - a] = after[i - a + 1] + costs[i]

    def plan(start: int, first_new: int, limit: int) -> tuple[int, bool]:
        """Last line of the chunk starting at ``start``, and whether it ends at a clean boundary."""
        total, j = 0, start
        while j <= b and (j == start or costs[j] <= limit - total):
            total += costs[j]
            j += 1
        if j > b:
            return b, True
        # Aim at equal chunks for what is left; prefer the best boundary near that size.
        rest = after[start - a]
        target = math.ceil(rest / math.ceil(rest / limit))
        best, best_key, run = -1, (0, 0), 0
        for k in range(start + 1, j + 1):
            run += costs[k - 1]
            if run * 2 < target or k - 1 < first_new:  # keep >= 1 new line
                continue
            key = (_cut_score(lines, k), -abs(run - target))
            if best < 0 or key >= best_key:
                best, best_key = k, key
        return (best - 1, best_key[0] >= 2) if best > start else (j - 1, False)

    chunks: list[Chunk] = []
    covered = a - 1  # last line (0-based) already in a chunk
    start = a
    while start <= b:
        while start <= b and not lines[start].strip():
            start += 1
        if start > b:
            break
        if costs[start] > doc.budget:  # one line over the budget: words, then characters
            chunks.extend(doc.pack(doc.fit(*doc.line_span(start, start), doc.budget, level=2), "", 0))
            covered = start
            start += 1
            continue
        first_new = covered + 1
        while first_new <= b and not lines[first_new].strip():
            first_new += 1
        # Line costs are an estimate of the joined text's: re-plan smaller when it is over.
        limit = doc.budget
        for _ in range(3):
            end, clean = plan(start, first_new, limit)
            chunk = _line_chunk(doc, start, end)
            n = doc.count(chunk.text) if chunk is not None else 0
            if n <= doc.max_tokens:
                break
            limit = min(limit - 1, limit * doc.budget // max(1, n - doc.base))
            if limit < costs[start]:
                break
        while chunk is not None and not doc.fits(chunk.text):  # last resort: drop lines
            if end > max(start, first_new):
                end -= 1
            elif start < first_new:
                start = first_new  # drop the overlap before giving up
            else:
                break
            chunk = _line_chunk(doc, start, end)
        if chunk is None or chunk.line_end - 1 < first_new:  # only overlap: drop it, go on
            start = max(first_new, start + 1)
            covered = start - 1
            continue
        chunks.append(chunk)
        covered = end = chunk.line_end - 1
        # Overlap repairs a cut through a block; a cut at a top-level boundary needs none.
        ov = 0 if clean else overlap_lines
        nxt = end + 1 - ov if ov > 0 and end + 1 - ov > start else end + 1
        if nxt <= end and costs.total(nxt, min(end + 1, b)) > doc.budget:
            nxt = end + 1  # the overlap would leave no room for new lines
        start = nxt
    return chunks
