"""Training examples: JSONL files and the offline builders (``stdlib-code``, ``django-parallel``).

JSONL rows are either pairs/triplets ``{"query", "positive", "negatives"?, "group"?}`` or graded
pairs ``{"text1", "text2", "score"}``. Pairs sharing a ``group`` (e.g. several translations of
one sentence) are never used as each other's in-batch negatives. A text field may instead be ``{"image": "<path or URL>"}``
(or ``{"text": ...}``) so VLM backbones can train on text-image pairs.

Why the builders hold data out: HumanEval and the Django strings are also evaluation data.
``stdlib-code`` drops every function that overlaps HumanEval; ``django-parallel`` keeps a
fixed slice of strings (by hash of the English msgid) and the non-training languages out, and
the ``django-xlang-heldout`` eval suite reads exactly that slice.
"""
from __future__ import annotations

import ast
import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

# Django languages the shipped text-matching adapter trains on; evaluation languages outside
# this set (ar, ko, es, zh_Hans) stay unseen.
DJANGO_TRAIN_LANGUAGES = ("de", "fr", "ja", "ru", "it", "nl", "pl", "pt_BR", "sv", "tr", "uk", "cs")
DJANGO_HELDOUT_FRACTION = 0.25


@dataclass
class PairExample:
    """A query, its positive and optional hard negatives (texts or ``omnivec.Image``)."""

    query: Any
    positive: Any
    negatives: list[Any] = field(default_factory=list)
    group: str | None = None    # pairs of one group are never each other's in-batch negatives


@dataclass
class GradedExample:
    """Two texts and a gold similarity (any scale; CoSENT only uses the order)."""

    text1: Any
    text2: Any
    score: float


Example = PairExample | GradedExample


def _field(value: Any, where: str) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if "image" in value:
            from ..inputs import Image
            return Image(value["image"])
        if isinstance(value.get("text"), str):
            return value["text"]
    raise ValueError(f"{where}: expected a string, {{\"text\": ...}} or {{\"image\": ...}}, got {type(value).__name__}")


def read_jsonl(path: str | Path) -> list[Example]:
    """Parse a training file; errors name the line."""
    out: list[Example] = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: each line must be a JSON object")
            if "query" in row and "positive" in row:
                negs = row.get("negatives") or []
                if not isinstance(negs, list):
                    raise ValueError(f"{where}: 'negatives' must be a list")
                group = row.get("group")
                out.append(PairExample(_field(row["query"], where), _field(row["positive"], where),
                                       [_field(x, where) for x in negs], None if group is None else str(group)))
            elif {"text1", "text2", "score"} <= row.keys():
                try:
                    score = float(row["score"])
                except (TypeError, ValueError):
                    raise ValueError(f"{where}: 'score' must be a number") from None
                out.append(GradedExample(_field(row["text1"], where), _field(row["text2"], where), score))
            else:
                raise ValueError(f"{where}: need {{query, positive[, negatives]}} or {{text1, text2, score}}")
    if not out:
        raise ValueError(f"{path}: no training examples")
    return out


def split_validation(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A fixed random hold-out of the training data (for choosing checkpoints, never eval data)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = int(round(len(examples) * fraction))
    if fraction > 0 and len(examples) >= 20:
        n_val = max(n_val, 8)
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [examples[i] for i in train], [examples[i] for i in val]


# ------------------------------------------------------------------------------ stdlib-code

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+")


def _shingles(text: str, n: int = 8) -> set[tuple[str, ...]]:
    words = [w.lower() for w in _WORD.findall(text)]
    return {tuple(words[i:i + n]) for i in range(max(0, len(words) - n + 1))}


def strip_docstring(source: str) -> str | None:
    """A function's source without its docstring (the document side of a code pair)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    fn = tree.body[0] if tree.body else None
    if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or not fn.body:
        return None
    first = fn.body[0]
    if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        return None
    lines = source.splitlines(keepends=True)
    rest = lines[:first.lineno - 1] + lines[first.end_lineno:]
    body_left = "".join(lines[first.end_lineno:]).strip()
    if not body_left:
        return None          # nothing but a docstring: no code to retrieve
    return "".join(rest).rstrip() + "\n"


def _humaneval_guard() -> tuple[set[str], set[tuple[str, ...]]]:
    """HumanEval's entry-point names and 8-word shingles of its prompts and solutions."""
    from ..data.humaneval import humaneval_path
    import gzip
    names: set[str] = set()
    shingles: set[tuple[str, ...]] = set()
    with gzip.open(humaneval_path(), "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            names.add(row["entry_point"])
            shingles |= _shingles(row["prompt"]) | _shingles(row["canonical_solution"])
    return names, shingles


def stdlib_code_pairs(*, roots: Iterable[Path] | None = None, max_doc_chars: int = 1500,
                      max_code_chars: int = 4000) -> tuple[list[PairExample], dict[str, int]]:
    """Docstring -> code pairs from the installed standard library, HumanEval overlap removed.

    Negatives: another documented function of the same file (same vocabulary, different job):
    cheap hard negatives. Returns the pairs and counts of what was dropped and why.
    """
    from ..data.stdlib import iter_code_pairs, stdlib_root
    names, guard = _humaneval_guard()
    stats = {"seen": 0, "humaneval_overlap": 0, "duplicate": 0, "too_long": 0, "no_code": 0}
    by_file: dict[str, list[tuple[str, str]]] = {}
    seen_docs: set[str] = set()
    seen_code: set[str] = set()
    for root in roots or [stdlib_root()]:
        for pair in iter_code_pairs(root):
            stats["seen"] += 1
            code = strip_docstring(pair.source)   # sources come dedented
            if code is None:
                stats["no_code"] += 1
                continue
            if len(pair.docstring) > max_doc_chars or len(code) > max_code_chars:
                stats["too_long"] += 1
                continue
            if pair.name in names or (_shingles(pair.docstring) | _shingles(code)) & guard:
                stats["humaneval_overlap"] += 1
                continue
            if pair.docstring in seen_docs or code in seen_code:
                stats["duplicate"] += 1
                continue
            seen_docs.add(pair.docstring)
            seen_code.add(code)
            by_file.setdefault(pair.path, []).append((pair.docstring, code))
    out: list[PairExample] = []
    for items in by_file.values():
        for i, (doc, code) in enumerate(items):
            negs = [items[(i + 1) % len(items)][1]] if len(items) > 1 else []
            out.append(PairExample(doc, code, negs))
    stats["kept"] = len(out)
    return out, stats


# --------------------------------------------------------------------------- django-parallel

def is_heldout_string(msgid: str, fraction: float = DJANGO_HELDOUT_FRACTION) -> bool:
    """Whether an English msgid belongs to the evaluation slice (stable across runs and machines)."""
    h = int.from_bytes(hashlib.sha256(msgid.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < fraction


def django_parallel_pairs(languages: Sequence[str] = DJANGO_TRAIN_LANGUAGES) -> tuple[list[PairExample], dict[str, int]]:
    """English <-> translation pairs of the training languages, held-out strings excluded.

    Both directions are emitted (text-matching is symmetric). Translations shared by several
    English strings are kept once per language to avoid false in-batch negatives.
    """
    from ..data.django_strings import translations
    out: list[PairExample] = []
    stats: dict[str, int] = {}
    for lang in languages:
        table = translations(lang)
        used_targets: set[str] = set()
        kept = 0
        for en, tr in table.items():
            if is_heldout_string(en) or tr in used_targets or tr == en:
                continue
            used_targets.add(tr)
            out.append(PairExample(en, tr, group=en))
            out.append(PairExample(tr, en, group=en))
            kept += 1
        stats[lang] = kept
    return out, stats


BUILDERS = {"stdlib-code": stdlib_code_pairs, "django-parallel": django_parallel_pairs}


def load_examples(data: str | Path) -> tuple[list[Example], dict[str, Any]]:
    """A builder name (``stdlib-code``, ``django-parallel``) or a JSONL path -> examples + info."""
    if str(data) in BUILDERS:
        examples, stats = BUILDERS[str(data)]()
        return list(examples), {"source": str(data), **stats}
    path = Path(data)
    if not path.is_file():
        raise FileNotFoundError(f"training data {data!r}: not a file and not a builder ({', '.join(BUILDERS)})")
    return read_jsonl(path), {"source": str(path)}


def iter_batches(n: int, batch_size: int, seed: int, epoch: int) -> Iterator[list[int]]:
    """Shuffled index batches for one epoch (deterministic from seed and epoch; last partial dropped)."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    for start in range(0, n - batch_size + 1, batch_size):
        yield order[start:start + batch_size]
