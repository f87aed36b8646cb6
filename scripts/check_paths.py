#!/usr/bin/env python3
"""Fail when a file of the repository names an absolute path of a build machine.

A path such as ``/work/<checkout>/...``, ``/tmp/<name>.py``, ``/root/<dir>/...``,
``/home/<user>/...`` or ``/Users/<user>/...`` in code, tests or docs only exists on the
machine that wrote it: a test that reads it skips or fails elsewhere, and a number that cites
it cannot be reproduced from the repository. Paths inside the repository are written relative
to it (or to ``__file__``); scratch files go through ``tempfile`` / pytest's ``tmp_path``.

Checked: the files git tracks, plus untracked files that are not ignored (what the next commit
could add), read as UTF-8 text. Skipped: binary files (a NUL byte, or not UTF-8) and the
third-party files in ``SKIP_FILES``.

Allowed:
- a line that ends with the marker ``path-ok`` (in any comment syntax: ``# path-ok``,
  ``<!-- path-ok -->``), for a path that is meant literally;
- placeholders, which the patterns do not match: ``/path/to/...``, ``/home/<user>/``,
  ``/tmp/<name>.py``, ``/work/...``, and the bare directories ``/tmp`` or ``/root``;
- the illustrative names in ``ALLOWED`` (``/home/user/``, ``/Users/me/``, ...).

    python scripts/check_paths.py [--root DIR] [FILE ...]

Exit status 0 when clean, 1 with one ``file:line: path`` per finding, 2 when git cannot list files.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

MARKER = "path-ok"
# Third-party files copied verbatim (not ours to edit); paths relative to the repository root.
SKIP_FILES = {"tests/data/jina-openapi.json"}

# An absolute path starts a token: right after file://, or not after a word character, '.',
# '/', '~', '$' or '-' (so URLs, relative paths, ~/x and $HOME/x do not match). After the
# machine-specific prefix comes a real name (a word character, optionally after one dot, as in
# a dot-folder), not a placeholder such as <user> or "...".
_START = r"(?:(?<=file://)|(?<![\w.\-/~$]))"
_NAME = r"\.?[A-Za-z0-9_]"
PATTERNS = [
    re.compile(_START + r"/(?:work|workspace|root|mnt|scratch)/" + _NAME + r"[^\s`'\")\]>,;]*"),
    re.compile(_START + r"/(?:home|Users)/" + _NAME + r"[^\s`'\")\]>,;]*"),
    re.compile(_START + r"/(?:tmp|var/tmp|private/tmp)/" + _NAME + r"[^\s`'\")\]>,;]*"),
    re.compile(r"\b[A-Za-z]:\\(?:Users|Documents and Settings)\\[^\s`'\"]+"),
]
# Illustrative names that may appear in docs and examples.
ALLOWED = [
    re.compile(r"^/(?:home|Users)/(?:user|username|you|me|name|example|USER)(?:/|$)"),
    re.compile(r"^[A-Za-z]:\\Users\\(?:user|username|you|me|name|example)(?:\\|$)"),
]


def repo_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=root, check=True, capture_output=True).stdout
    return sorted({name for name in out.decode("utf-8", "surrogateescape").split("\0") if name})


def read_text(path: Path) -> str | None:
    """The file as text, or None for binary files (NUL byte or not UTF-8) and missing ones."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):     # deleted in the work tree, or a submodule
        return None
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def findings(text: str) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.rstrip().rstrip("->*/ ").endswith(MARKER):
            continue
        for pattern in PATTERNS:
            for m in pattern.finditer(line):
                path = m.group(0).rstrip(".:")
                if not any(a.search(path) for a in ALLOWED):
                    found.append((lineno, path))
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                    help="repository root (default: this script's repository)")
    ap.add_argument("files", nargs="*", help="files relative to --root (default: all of git's)")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    try:
        names = args.files or repo_files(root)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"check_paths: cannot list the files of {root} with git: {e}", file=sys.stderr)
        return 2
    bad = 0
    for name in names:
        if name in SKIP_FILES:
            continue
        text = read_text(root / name)
        if text is None:
            continue
        for lineno, path in findings(text):
            print(f"{name}:{lineno}: {path}")
            bad += 1
    if bad:
        print(f"check_paths: {bad} absolute path(s) of a build machine; write them relative to the "
              f"repository, use a placeholder (/path/to/...), or end the line with '# {MARKER}' "
              f"if the path is meant literally", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
