"""Cut a job's input into work units and read them back (the driver plans, actors read).

Why units and not Ray's own readers: resuming needs stable names. Every unit is one piece of
the input that is embedded and committed as a whole, named by where it comes from, so a rerun
knows exactly which pieces are already in the output:

* a Parquet file: one unit per row group, committed in chunks of ``rows_per_unit`` rows
  (``"<file>#rg<i>@<j>"``), so a huge row group never sits in memory as vectors;
* a JSONL file: one unit per ``rows_per_unit`` lines (``"<file>#L<first line>@0"``);
* a folder of documents: one unit per file (its relative path), read by the same ingestion
  as ``omnivec index`` (text/markdown/code chunks, images, PDF pages).

A unit's ``version`` says which content it was made from: the sha256 of a document, the size
and modification time of a table file (hashing terabytes of Parquet on the driver would cost
more than it saves). A unit whose version changed is embedded again.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import pyarrow as pa

UnitKind = Literal["parquet", "jsonl", "document"]
TABLE_SUFFIXES = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
INPUT_FORMATS = ("auto", "parquet", "jsonl", "documents")


@dataclass(frozen=True)
class Unit:
    """One piece of the input; plain data, so it travels to actors as a dataset row."""

    kind: UnitKind
    key: str                  # stable name (see the module docstring)
    version: str              # content version: sha256 (documents), size:mtime (tables)
    path: str                 # absolute path of the source file
    rel: str                  # path relative to the input root, '/'-separated
    start: int = 0            # parquet: row group index; jsonl: byte offset of the first line
    stop: int = 0             # jsonl: byte offset after the last line
    first_row: int = 0        # parquet: row number of the group's first row; jsonl: first line number (1-based)
    rows: int = 0             # rows in the unit (tables); 0 for documents (unknown before reading)
    chunks: int = 1           # commits of the unit (parquet row groups: ceil(rows / rows_per_unit))
    skip: tuple[int, ...] = ()   # chunks already committed (set by the driver on a rerun)
    file_kind: str = ""       # documents: text | markdown | code | image | pdf
    language: str = ""        # documents: the code language
    size: int = 0

    def chunk_key(self, j: int) -> str:
        """Name of the unit's ``j``-th commit (a document commits once, under its path)."""
        return self.key if self.kind == "document" else f"{self.key}@{j}"

    def chunk_keys(self) -> list[str]:
        return [self.chunk_key(j) for j in range(self.chunks)]

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["skip"] = json.dumps(list(self.skip))
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Unit":
        data = dict(row)
        data["skip"] = tuple(json.loads(data.get("skip") or "[]"))
        return cls(**data)


@dataclass
class Plan:
    """Every unit of an input, plus the files looked at and refused."""

    fmt: str                                  # parquet | jsonl | documents
    root: str
    units: list[Unit] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(u.rows for u in self.units)


def detect_format(path: Path) -> str:
    """``parquet``/``jsonl`` for a table file or a folder holding only such files, else ``documents``."""
    if path.is_file():
        return TABLE_SUFFIXES.get(path.suffix.lower(), "documents")
    kinds = {TABLE_SUFFIXES.get(p.suffix.lower()) for p in _visible_files(path)}
    if len(kinds) == 1 and None not in kinds:
        return kinds.pop()
    return "documents"


def _visible_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and not name.startswith("_"):
                yield Path(dirpath) / name


def _rel(path: Path, root: Path) -> str:
    return path.name if root.is_file() else path.relative_to(root).as_posix()


def plan(input_path: str | Path, *, fmt: str = "auto", rows_per_unit: int = 1024,
         exclude: str | Path | None = None) -> Plan:
    """Every unit of ``input_path`` (a table file, a folder of them, or a folder of documents).

    ``exclude``: a folder left out (the job's own output, when it lies inside the input)."""
    out = _plan(input_path, fmt, rows_per_unit)
    if exclude is not None:
        ex = Path(exclude).expanduser().resolve()
        out.units = [u for u in out.units if not Path(u.path).is_relative_to(ex)]
    return out


def _plan(input_path: str | Path, fmt: str, rows_per_unit: int) -> Plan:
    root = Path(input_path).expanduser().resolve()
    if not root.exists():
        raise FileNotFoundError(f"no such file or folder: {input_path}")
    if fmt not in INPUT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(INPUT_FORMATS)}, got {fmt!r}")
    if rows_per_unit < 1:
        raise ValueError(f"rows_per_unit must be >= 1, got {rows_per_unit}")
    fmt = detect_format(root) if fmt == "auto" else fmt
    out = Plan(fmt=fmt, root=str(root))
    if fmt == "documents":
        _plan_documents(root, out)
        return out
    files = [root] if root.is_file() else [p for p in _visible_files(root) if TABLE_SUFFIXES.get(p.suffix.lower()) == fmt]
    for path in files:
        try:
            if fmt == "parquet":
                out.units.extend(_parquet_units(path, _rel(path, root), rows_per_unit))
            else:
                out.units.extend(_jsonl_units(path, _rel(path, root), rows_per_unit))
        except (OSError, pa.ArrowException) as e:
            out.skipped.append((_rel(path, root), f"cannot read: {e}"))
    return out


def _version(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _parquet_units(path: Path, rel: str, rows_per_unit: int) -> list[Unit]:
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    version, units, first = _version(path), [], 0
    for i in range(meta.num_row_groups):
        n = meta.row_group(i).num_rows
        units.append(Unit("parquet", f"{rel}#rg{i}", version, str(path), rel, start=i, first_row=first, rows=n,
                          chunks=max(1, -(-n // rows_per_unit))))
        first += n
    return units


def _jsonl_units(path: Path, rel: str, rows_per_unit: int) -> list[Unit]:
    """Units of ``rows_per_unit`` lines each, found by one pass over the bytes (no parsing)."""
    version, units = _version(path), []
    offset, line, unit_start, unit_line, in_unit = 0, 1, 0, 1, 0
    with open(path, "rb") as f:
        for raw in f:
            offset += len(raw)
            line += 1
            in_unit += 1
            if in_unit == rows_per_unit:
                units.append(Unit("jsonl", f"{rel}#L{unit_line}", version, str(path), rel, start=unit_start,
                                  stop=offset, first_row=unit_line, rows=in_unit))
                unit_start, unit_line, in_unit = offset, line, 0
    if in_unit:
        units.append(Unit("jsonl", f"{rel}#L{unit_line}", version, str(path), rel, start=unit_start,
                          stop=offset, first_row=unit_line, rows=in_unit))
    return units


def _plan_documents(root: Path, out: Plan) -> None:
    from ..index.ingest import file_hash, scan

    files, skipped = scan(root)
    out.skipped.extend((str(p), str(r)) for p, r in skipped)
    for source in files:
        try:
            digest = file_hash(source.abs_path)
        except OSError as e:
            out.skipped.append((source.rel_path, f"unreadable: {e.strerror or e}"))
            continue
        out.units.append(Unit("document", source.rel_path, digest, str(source.abs_path), source.rel_path,
                              file_kind=source.kind, language=source.language or "", size=source.size))


# --------------------------------------------------------------------------------------------
# reading (on the actors)
# --------------------------------------------------------------------------------------------


def read_chunk(unit: Unit, j: int, rows_per_unit: int, id_field: str | None) -> tuple[pa.Table, list[str], list[str | None]]:
    """Rows of a table unit's ``j``-th chunk: ``(table, row ids, per-row parse error or None)``.

    Row ids are the ``id_field`` values when given, else ``"<file>:<row>"`` (the Parquet row
    number, 0-based, or the JSONL line number, 1-based): stable across reruns of the same file.
    """
    if unit.kind == "parquet":
        import pyarrow.parquet as pq

        group = pq.ParquetFile(unit.path).read_row_group(unit.start)
        table = group.slice(j * rows_per_unit, rows_per_unit)
        numbers = range(unit.first_row + j * rows_per_unit, unit.first_row + j * rows_per_unit + table.num_rows)
        errors: list[str | None] = [None] * table.num_rows
    else:
        table, numbers, errors = _read_jsonl(unit)
    if id_field is not None:
        if id_field not in table.column_names:
            raise KeyError(f"id field {id_field!r} is not a column of {unit.rel} (columns: {table.column_names})")
        ids = [str(v) if v is not None else f"{unit.rel}:{n}" for v, n in zip(table.column(id_field).to_pylist(), numbers)]
    else:
        ids = [f"{unit.rel}:{n}" for n in numbers]
    return table, ids, errors


def _read_jsonl(unit: Unit) -> tuple[pa.Table, list[int], list[str | None]]:
    """One JSONL unit as a table; a line that is not a JSON object becomes an all-null row with an error."""
    with open(unit.path, "rb") as f:
        f.seek(unit.start)
        data = f.read(unit.stop - unit.start)
    rows: list[dict[str, Any]] = []
    numbers: list[int] = []
    errors: list[str | None] = []
    for k, raw in enumerate(data.splitlines()):
        if not raw.strip():
            continue
        numbers.append(unit.first_row + k)
        try:
            row = json.loads(raw)
            if not isinstance(row, dict):
                raise ValueError(f"a JSON {type(row).__name__}, not an object")
            rows.append(row)
            errors.append(None)
        except ValueError as e:
            rows.append({})
            errors.append(f"line {unit.first_row + k} is not a JSON object: {e}")
    return _rows_table(rows), numbers, errors


def _rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    """JSON objects as a table; keys missing from a row are nulls. A field whose values mix
    types (a number here, a string there) is kept as JSON text rather than failing the unit."""
    if not rows:
        return pa.table({})
    try:
        return pa.Table.from_struct_array(pa.array(rows))
    except pa.ArrowException:
        texts = [{k: v if v is None or isinstance(v, str) else json.dumps(v) for k, v in r.items()} for r in rows]
        return pa.Table.from_struct_array(pa.array(texts))
