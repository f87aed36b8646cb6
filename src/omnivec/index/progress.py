"""The indexing progress bar: files done / to do, files per second, ETA, items embedded.

Why its own class: ``Index.add_path`` reports per committed file while the Embedder works in
batches that span files, so the Embedder's own bar (items of one call) is switched off and this
one counts what matters to a person waiting: files committed.
"""
from __future__ import annotations

import sys
from typing import Any


class IndexProgress:
    """A rich bar on stderr; every method is a no-op when disabled.

    ``enabled=None`` means: only when stderr is a terminal (never in logs or CI output).
    """

    def __init__(self, total_files: int, enabled: bool | None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else bool(enabled)
        self.total = total_files
        self.items = 0
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> "IndexProgress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self._bar = Progress(TextColumn("indexing"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("files"),
                                 TextColumn("{task.fields[rate]}"),
                                 TextColumn("{task.fields[items]} items"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task("index", total=self.total, rate="", items=0)
        return self

    def files_done(self, n: int = 1) -> None:
        """``n`` more files committed (or given up on)."""
        if self._bar is None:
            return
        self._bar.advance(self._task, n)
        task = self._bar.tasks[0]
        elapsed = task.elapsed or 0.0
        rate = f"{task.completed / elapsed:.1f} files/s" if elapsed > 0 else ""
        self._bar.update(self._task, rate=rate)

    def items_embedded(self, n: int) -> None:
        self.items += n
        if self._bar is not None:
            self._bar.update(self._task, items=self.items)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
