"""scripts/check_paths.py: build-machine paths in a repository's files fail the check.

Runs the checker as CI does (a subprocess on a git repository) on throw-away repositories.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHECKER = Path(__file__).resolve().parents[1] / "scripts" / "check_paths.py"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")


def make_repo(root: Path, files: dict[str, str | bytes]) -> Path:
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    return root


def check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECKER), "--root", str(root)],
                          capture_output=True, text=True)


CLEAN = {
    "README.md": "Run `python benchmarks/x.py --workdir /tmp`; data under /path/to/data,\n"
                 "e.g. /home/user/data or /home/<user>/data; see https://example.com/work/abc.\n",
    "pkg/mod.py": 'HERE = Path(__file__).resolve().parent / "data"\n'
                  'CACHE = "~/.cache/x"\n'
                  'LITERAL = "/tmp/keep.py"  # path-ok\n',                      # path-ok
    "blob.bin": b"\x00\x01 /work/main/x\x00",                      # binary: skipped; path-ok
    "tests/data/jina-openapi.json": '{"x": "/root/.cache/y"}\n',  # third-party: skipped; path-ok
}


def test_clean_repository_passes(tmp_path) -> None:
    result = check(make_repo(tmp_path, CLEAN))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("name,line", [
    ("tests/test_x.py", 'SCHEMA = Path("/work/shared/reference/schema.json")'),   # path-ok
    ("benchmarks/RESULTS.md", "measured with `/tmp/sweep.py`-style runs"),          # path-ok
    ("docs/A.md", "weights in /root/.cache/huggingface/hub"),                       # path-ok
    ("src/m.py", 'OUT = "/home/alice/out"'),                                        # path-ok
])
def test_build_machine_path_fails(tmp_path, name, line) -> None:
    files = dict(CLEAN)
    files[name] = "first line\n" + line + "\n"
    result = check(make_repo(tmp_path, files))
    assert result.returncode == 1
    assert result.stdout.startswith(f"{name}:2: /"), result.stdout
    assert "path-ok" in result.stderr          # the message says how to allow a literal path


def test_ignored_files_are_not_checked(tmp_path) -> None:
    files = dict(CLEAN, **{".gitignore": "scratch/\n", "scratch/notes.md": "/work/main/x\n"})  # path-ok
    root = make_repo(tmp_path, files)
    assert check(root).returncode == 0
