"""Scale out on Ray: embed datasets and corpora larger than one machine (``pip install 'omnivec[ray]'``).

>>> import ray, omnivec.distributed as od                                   # doctest: +SKIP
>>> ds = od.embed_dataset(ray.data.read_parquet("docs/"), task="retrieval.passage",
...                       multivector=True, actors=4, gpus_per_actor=0.5)   # a lazy Ray Dataset
>>> ds.write_parquet("out/")                                                # doctest: +SKIP

Each actor of the pool loads the model once (``omnivec.load``: ONNX on CPU, packed bf16 on
GPU) and embeds its batches through :class:`omnivec.Embedder`, so a row's vectors are the
library's vectors for that row. ``omnivec embed-dataset`` (:func:`run_job`) adds what a long
job needs: stable row ids, resuming, a progress bar, failures reported and skipped, and
outputs to Parquet, LanceDB or Qdrant. Modules: ``rows`` (row -> input, Arrow columns),
``units`` (the input cut into resumable pieces), ``sinks`` (outputs), ``worker`` (the actors),
``job`` (the driver), ``cluster`` (connecting).
"""
from __future__ import annotations

from typing import Any

from .job import JobSummary, run_job
from .worker import EmbedSettings, RowEmbedder

__all__ = ["embed_dataset", "run_job", "JobSummary", "EmbedSettings"]

ERROR_MODES = ("skip", "keep")


def embed_dataset(ds: Any, model: str | None = None, *, task: str = "retrieval.passage",
                  multivector: bool = False, dimensions: int | None = None, text_field: str = "text",
                  image_field: str | None = None, id_field: str | None = None, actors: int = 1,
                  gpus_per_actor: float = 0.0, cpus_per_actor: float = 1.0, batch_rows: int = 256,
                  errors: str = "skip", device: str | None = None, adapters: str | None = None,
                  precision: str | None = None) -> Any:
    """``ds`` with vectors: a lazy Ray Dataset (``map_batches`` over a pool of ``actors``).

    A row's input is ``image_field`` (image or PDF bytes, or a path) when set and not null, else
    ``text_field``. Output columns: the source columns (raw bytes left out), ``id`` (``id_field``,
    else a hash of the row's content), ``kind``, ``page`` (PDF rows: one output row per page,
    ``id`` ``"<id>#p<page>"``), ``tokens``, ``dense`` (fixed-size list of float32) and with
    ``multivector`` a ``multivector`` column (``dimensions`` cuts the dense vectors only) (a list of 128-d token vectors per row). Rows that
    cannot be embedded (a corrupt image, an empty text) are dropped with a warning in the worker
    log, or with ``errors="keep"`` kept with null vectors and the reason in an ``error`` column.
    ``model="default"`` or None is the embedded default.
    """
    import ray.data

    from ..tasks import resolve_tasks

    if errors not in ERROR_MODES:
        raise ValueError(f"errors must be one of {', '.join(ERROR_MODES)}, got {errors!r}")
    if actors < 1 or batch_rows < 1:
        raise ValueError(f"actors and batch_rows must be >= 1, got {actors} and {batch_rows}")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        raise ValueError(f"dimensions must be a positive integer, got {dimensions!r}")
    resolve_tasks(task, 1, None)      # an unknown task fails here, not inside every actor
    settings = EmbedSettings(model=None if model == "default" else model, task=task, multivector=multivector,
                             dimensions=dimensions, text_field=text_field, image_field=image_field,
                             id_field=id_field, adapters=adapters, precision=precision, device=device)
    return ds.map_batches(RowEmbedder, batch_size=batch_rows, batch_format="pyarrow",
                          fn_constructor_kwargs={"settings": settings, "errors": errors, "cpus": cpus_per_actor},
                          compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor,
                          num_gpus=gpus_per_actor or None)
