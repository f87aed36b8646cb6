"""Table rows -> omnivec inputs, and embedded items -> Arrow columns (no Ray in here).

Why a module of its own: the library entry point (:func:`omnivec.distributed.embed_dataset`)
and the CLI job read rows the same way and write the same columns; keeping the rules here
makes them testable without a cluster.

The rules:

* a row's input is its ``image_field`` value when that is set and not null (bytes of an
  image or a PDF, told apart by the ``%PDF-`` magic, or a path string), else its
  ``text_field`` value, which must then be a non-empty string;
* a PDF expands to one output row per page, with ``id`` ``"<row id>#p<page>"`` and ``page``
  set (1-based); other rows keep their ``id`` and ``page`` is null;
* the output keeps every source column except raw image bytes, and adds ``kind``, ``page``,
  ``tokens``, ``dense`` (a fixed-size list of float32) and, when asked, ``multivector`` (a list
  of fixed-size lists of float32, one per token).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pyarrow as pa

from ..inputs import PDF, Image

if TYPE_CHECKING:
    from ..embedder import Embedder, EmbedResult

PDF_MAGIC = b"%PDF-"
OUTPUT_COLUMNS = ("id", "kind", "page", "tokens", "dense", "multivector")


class RowError(ValueError):
    """A row that cannot become an input; ``reason`` names the field."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def row_input(row: dict[str, Any], text_field: str, image_field: str | None) -> Any:
    """The omnivec input of one row: a str, an :class:`Image` or a :class:`PDF`."""
    if image_field is not None and row.get(image_field) is not None:
        value = row[image_field]
        if isinstance(value, dict) and "bytes" in value:      # Ray/HF image struct {bytes, path}
            value = value["bytes"] if value["bytes"] is not None else value.get("path")
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
            return PDF(data) if data[:5] == PDF_MAGIC else Image(data)
        if isinstance(value, str) and value:
            return PDF(value) if value.lower().endswith(".pdf") else Image(value)
        raise RowError(f"field {image_field!r} must hold image/PDF bytes or a path, got {type(value).__name__}")
    value = row.get(text_field)
    if not isinstance(value, str):
        what = "is missing" if text_field not in row else f"is {type(value).__name__}, not a string"
        raise RowError(f"field {text_field!r} {what}")
    if not value.strip():
        raise RowError(f"field {text_field!r} is empty")
    return value


def content_id(row: dict[str, Any], text_field: str, image_field: str | None) -> str:
    """A row id from its content, for datasets without an id column (equal rows share it)."""
    h = hashlib.sha256()
    for name in (image_field, text_field):
        value = row.get(name) if name is not None else None
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, str):
            value = value.encode("utf-8")
        h.update(b"\0" if value is None else b"\1" + bytes(value))
    return h.hexdigest()[:32]


def binary_columns(schema: pa.Schema) -> set[str]:
    """Columns of raw bytes (image data): left out of the output, which holds vectors."""
    return {f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)}


@dataclass
class EmbeddedRows:
    """The items of a batch of rows: which row each came from, its page, and its vectors."""

    origins: list[int] = field(default_factory=list)       # row index in the batch
    pages: list[int | None] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    dense: np.ndarray | None = None
    multivector: list[np.ndarray] | None = None
    failures: dict[int, str] = field(default_factory=dict)  # row index -> reason


def embed_rows(embedder: "Embedder", inputs: Sequence[Any], task: str, *, multivector: bool,
               dimensions: int | None, limits: Any = None) -> EmbeddedRows:
    """Embed one input per row (None: the row already failed); bad rows are reported, not raised."""
    live = [i for i, x in enumerate(inputs) if x is not None]
    res, rejected = embedder.embed_skipping([inputs[i] for i in live], task, dense=True,
                                            multivector=multivector, dimensions=dimensions,
                                            progress=False, limits=limits)
    return _collect(res, live, {live[i]: reason for i, reason in rejected.items()})


def _collect(res: "EmbedResult", live: list[int], failures: dict[int, str]) -> EmbeddedRows:
    out = EmbeddedRows(dense=res.dense, multivector=res.multivector, failures=failures)
    last, page = None, 0
    for origin, kind, tokens in zip(res.origins, res.kinds, res.tokens):
        row = live[origin]
        page = page + 1 if row == last else 1
        last = row
        out.origins.append(row)
        out.kinds.append(kind)
        out.tokens.append(tokens)
        out.pages.append(page)
    return out


def output_table(source: pa.Table, ids: Sequence[str], embedded: EmbeddedRows, pdf_rows: set[int],
                 dim: int, multivector_dim: int | None) -> pa.Table:
    """Source columns (bytes left out) repeated per item, plus id, kind, page, tokens and vectors."""
    keep = [c for c in source.column_names if c not in binary_columns(source.schema) and c != "id"]
    taken = source.select(keep).take(pa.array(embedded.origins, pa.int64())) if keep else None
    pages = [p if o in pdf_rows else None for o, p in zip(embedded.origins, embedded.pages)]
    item_ids = [ids[o] if o not in pdf_rows else f"{ids[o]}#p{p}" for o, p in zip(embedded.origins, pages)]
    n = len(embedded.origins)
    dense = embedded.dense if embedded.dense is not None and n else np.zeros((0, dim), np.float32)
    columns: dict[str, pa.Array] = {
        "id": pa.array(item_ids, pa.string()),
        "kind": pa.array(embedded.kinds, pa.string()),
        "page": pa.array(pages, pa.int32()),
        "tokens": pa.array(embedded.tokens, pa.int32()),
        "dense": fixed_size_rows(dense, dense.shape[1] if dense.ndim == 2 else dim),
    }
    if multivector_dim is not None:
        columns["multivector"] = token_rows(embedded.multivector or [], multivector_dim)
    table = pa.table(columns)
    if taken is not None:
        for name in keep:
            table = table.append_column(source.schema.field(name), taken.column(name))
    return table


def fixed_size_rows(matrix: np.ndarray, dim: int) -> pa.FixedSizeListArray:
    """An (n, dim) float32 matrix as one fixed-size list per row."""
    flat = np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)


def token_rows(arrays: Sequence[np.ndarray], dim: int) -> pa.ListArray:
    """Per-row (tokens, dim) matrices as a list of fixed-size lists."""
    lengths = np.array([len(a) for a in arrays], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = (np.concatenate([np.asarray(a, np.float32).reshape(-1, dim) for a in arrays])
            if arrays else np.zeros((0, dim), np.float32))
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), fixed_size_rows(flat, dim))


def dense_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A ``dense`` column back to an (n, dim) float32 matrix."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), -1).astype(np.float32, copy=False)


def multivector_list(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """A ``multivector`` column back to per-row (tokens, dim) float32 matrices."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dim = arr.type.value_type.list_size
    flat = arr.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    offsets = arr.offsets.to_numpy()
    return [flat[offsets[i]:offsets[i + 1]] for i in range(len(arr))]
