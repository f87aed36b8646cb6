"""Docstrings and function sources mined from the installed Python standard library with ``ast``.

Real, varied, deterministic text that every machine with Python has: benchmark passages now,
code-adapter training pairs later.
"""
from __future__ import annotations

import ast
import textwrap
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass(frozen=True)
class CodePair:
    path: str
    name: str
    docstring: str
    source: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def iter_code_pairs(root: Path | None = None, min_doc_chars: int = 20) -> Iterator[CodePair]:
    """(docstring, source) of every documented function/method, in sorted file order."""
    root = root or stdlib_root()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("test/", "idlelib/idle_test", "lib2to3/tests", "site-packages/")) or "/test" in rel:
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
            lines = source.split("\n")   # ast numbers lines by \n only (not \f, \x1c ...)
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_doc_chars:
                    # whole lines, sliced (ast.get_source_segment re-splits the file per call)
                    seg = "\n".join(lines[node.lineno - 1:node.end_lineno]) + "\n"
                    if seg.strip():
                        yield CodePair(rel, node.name, doc.strip(), textwrap.dedent(seg))


def stdlib_passages(n: int, min_chars: int = 40) -> list[str]:
    """The first ``n`` distinct stdlib docstrings of at least ``min_chars`` characters."""
    seen: set[str] = set()
    out: list[str] = []
    for pair in iter_code_pairs():
        if len(pair.docstring) >= min_chars and pair.docstring not in seen:
            seen.add(pair.docstring)
            out.append(pair.docstring)
            if len(out) == n:
                break
    return out
