"""Ray scenarios run by tests/test_distributed.py in a network namespace that has only ``lo``.

``python tests/_ray_scenarios.py all WORKDIR`` builds a real corpus under WORKDIR,
runs the scenario and writes what it measured to WORKDIR/result.json (the test asserts on it).
Why a script: Ray must never bind the machine's external interface in tests, so the whole
cluster lives in a namespace made by ``unshare -n``; pytest itself stays outside it.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image as PILImage
from PIL import ImageDraw


def _image(label: str) -> bytes:
    im = PILImage.new("RGB", (360, 120), "white")
    ImageDraw.Draw(im).text((10, 45), label, fill="black")
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _pdf(pages: list[str]) -> bytes:
    from fpdf import FPDF
    pdf = FPDF()
    for text in pages:
        pdf.add_page()
        pdf.set_font("Helvetica", size=13)
        pdf.multi_cell(0, 7, text.encode("latin-1", "replace").decode("latin-1"))
    return bytes(pdf.output())


def build_corpus(root: Path, n_texts: int) -> dict:
    """A Parquet table (real stdlib passages, images, a PDF, a corrupt image, an empty text) and
    a folder of documents (markdown, code, images, a PDF, a corrupt PNG)."""
    from omnivec.data.stdlib import stdlib_passages

    texts = stdlib_passages(n_texts + 20)
    rows = [{"doc_id": f"t{i}", "text": t, "image": None} for i, t in enumerate(texts[:n_texts])]
    rows += [{"doc_id": "img-a", "text": None, "image": _image("a red bicycle leaning on a wall")},
             {"doc_id": "img-b", "text": None, "image": _image("invoice 1042, total 99 euros")},
             {"doc_id": "pdf-a", "text": None, "image": _pdf(texts[n_texts:n_texts + 2])},
             {"doc_id": "bad-image", "text": None, "image": b"\x89PNG\r\n\x1a\ntruncated"},
             {"doc_id": "empty", "text": "", "image": None}]
    schema = pa.schema([("doc_id", pa.string()), ("text", pa.string()), ("image", pa.binary())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "table.parquet", row_group_size=64)
    docs = root / "docs"
    docs.mkdir()
    for i in range(4):
        (docs / f"note{i}.md").write_text(f"# Note {i}\n\n" + "\n\n".join(texts[n_texts + 2 + 3 * i:n_texts + 5 + 3 * i]))
    (docs / "tool.py").write_text("def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n    return a + b\n")
    (docs / "sign.png").write_bytes(_image("opening hours 9 to 17"))
    (docs / "paper.pdf").write_bytes(_pdf(texts[:2]))
    (docs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    return {"rows": rows}


def library_vectors(rows: list[dict], multivector: bool) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """id -> (dense, multi) from Embedder.encode, row by row as the job names them."""
    import omnivec
    m = omnivec.load()
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    inputs, ids = [], []
    for r in rows:
        if r["image"] is not None:
            data = r["image"]
            if data[:5] == b"%PDF-":
                pages = m.embed([omnivec.PDF(data)], "retrieval.passage", dense=True, multivector=True)
                for p in range(len(pages.dense)):
                    out[f"{r['doc_id']}#p{p + 1}"] = (pages.dense[p], pages.multivector[p])
                continue
            try:
                omnivec.Image(data).load()
            except omnivec.InputError:
                continue
            inputs.append(omnivec.Image(data))
        elif r["text"]:
            inputs.append(r["text"])
        else:
            continue
        ids.append(r["doc_id"])
    both = m.embed(inputs, "retrieval.passage", dense=True, multivector=multivector)
    dense, multi = both.dense, both.multivector if multivector else [None] * len(ids)
    for rid, d, mv in zip(ids, dense, multi):
        out[rid] = (d, mv)
    return out


def read_parquet_output(folder: Path) -> pa.Table:
    parts = sorted(folder.glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts]) if parts else pa.table({})


def compare(table: pa.Table, ref: dict, multivector: bool) -> dict:
    from omnivec.distributed.rows import dense_matrix, multivector_list
    ids = table.column("id").to_pylist()
    dense = dense_matrix(table.column("dense"))
    cos = [float(dense[i] @ ref[rid][0]) for i, rid in enumerate(ids) if rid in ref]
    result = {"ids": len(ids), "unique_ids": len(set(ids)), "missing": sorted(set(ref) - set(ids)),
              "extra": sorted(set(ids) - set(ref)), "min_cos": min(cos) if cos else None}
    if multivector:
        mvs = multivector_list(table.column("multivector"))
        result["multi_max_abs"] = max(float(np.abs(mv - ref[rid][1]).max()) for mv, rid in zip(mvs, ids)
                                      if rid in ref)
    return result


def scenario_cluster(work: Path) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    import omnivec.distributed as od
    from omnivec.distributed.cluster import connect, node_addresses, only_loopback
    from omnivec.index import Index
    from omnivec.index.stores import open_store
    from omnivec.index.stores.qdrant import marker_id

    res: dict = {"only_loopback": only_loopback()}
    corpus = build_corpus(work, n_texts=200)
    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 200 * 2**20})
    second = cluster.add_node(num_cpus=2, object_store_memory=200 * 2**20)
    ray.init(address=cluster.address, logging_level="warning")
    connect(cluster.address)      # already initialised: only quiets Ray Data's own bars
    cluster.wait_for_nodes()
    res["cluster_start_s"] = time.perf_counter() - t0
    res["nodes"] = node_addresses()

    ref = library_vectors(corpus["rows"], multivector=True)
    timings: dict = {}
    t = time.perf_counter()
    # 1. the lazy library path on two nodes (actors on both): the library's vectors, row for row
    lib = od.embed_dataset(ray.data.read_parquet(str(work / "table.parquet")), image_field="image",
                           id_field="doc_id", actors=2, batch_rows=64)
    lib_table = pa.concat_tables(ray.get(lib.to_arrow_refs()))
    res["library"] = compare(lib_table, ref, multivector=False)
    timings["embed_dataset"] = time.perf_counter() - t

    # 2. the job, with the second node removed once the first chunk is committed: it completes,
    #    every row exactly once, still the library's vectors (dense and multi-vector)
    out = work / "out-table"
    removed: dict = {}

    def remove_when_started() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(out.glob("part-*.parquet")):
            time.sleep(0.05)
        removed["parts_at_removal"] = len(list(out.glob("part-*.parquet")))
        cluster.remove_node(second)
        removed["nodes_after"] = len(node_addresses())

    settings = od.EmbedSettings(image_field="image", id_field="doc_id", rows_per_unit=16, multivector=True)
    t = time.perf_counter()
    watcher = threading.Thread(target=remove_when_started)
    watcher.start()
    s1 = od.run_job(str(work / "table.parquet"), str(out), settings, address=None, actors=2)
    watcher.join()
    timings["job_node_loss"] = time.perf_counter() - t
    res["table"] = dict(compare(read_parquet_output(out), ref, multivector=True), **removed,
                        total_parts=len(list(out.glob("part-*.parquet"))))
    res["table"]["failures"] = sorted(f[0] for f in s1.failures)
    res["table"]["failures_file"] = sorted(json.loads(line)["id"] for line in
                                           (out / "_failures.jsonl").read_text().splitlines())

    # 3. rerun: nothing left to do
    s2 = od.run_job(str(work / "table.parquet"), str(out), settings, address=None, actors=2)
    res["rerun"] = {"chunks": s2.chunks, "done_before": s2.chunks_done_before}

    # 4. documents into Qdrant local mode (the driver is the one writer): equal to `omnivec index`,
    #    and idempotent when a chunk is committed again (a retried task)
    spec = f"qdrant+local://{work}/qdrant/docs"
    docs_settings = od.EmbedSettings()
    t = time.perf_counter()
    q1 = od.run_job(str(work / "docs"), spec, docs_settings, address=None, actors=1)
    store = open_store(spec, create=False)
    count1 = store.count()
    store.client.delete(store.files_collection, [marker_id("note0.md"), marker_id("paper.pdf")], wait=True)
    store.close()
    q2 = od.run_job(str(work / "docs"), spec, docs_settings, address=None, actors=1)
    store = open_store(spec, create=False)
    records = store.get([f"{rid}" for rid in _all_ids(store)])
    count2 = store.count()
    store.close()
    with Index(str(work / "local.omnivec")) as ix:
        ix.add_path(work / "docs", progress=False)
        local = ix.store.get(list(records))
        local_count = ix.store.count()
    timings["qdrant"] = time.perf_counter() - t
    res["qdrant"] = {"count1": count1, "count2": count2, "local_count": local_count,
                     "recommitted": q2.chunks, "failures": sorted(f[0] for f in q1.failures),
                     "min_cos": min(float(records[i].dense @ local[i].dense) for i in records),
                     "same_ids": sorted(records) == sorted(local)}

    res["timings"] = timings
    ray.shutdown()
    cluster.shutdown()
    t = time.perf_counter()
    res["kill"] = scenario_kill(work, corpus, ref)
    timings["kill"] = time.perf_counter() - t
    return res


def _all_ids(store) -> list[str]:
    return [rid for rid, _text in store.iter_texts()]


def _kill_namespace_peers() -> None:
    """SIGKILL every process in this network namespace but us and our parent (the namespace is
    this test's own, so that is exactly the Ray instance the killed driver started)."""
    own = os.readlink("/proc/self/ns/net")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (os.getpid(), os.getppid()):
            continue
        try:
            if os.readlink(entry / "ns" / "net") == own:
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            pass


def scenario_kill(work: Path, corpus: dict, ref: dict) -> dict:
    """Kill the driver (and the Ray it started) mid-run, rerun: the output equals a clean run."""
    out = work / "out-killed"
    cmd = [str(Path(sys.executable).parent / "omnivec"), "embed-dataset", str(work / "table.parquet"), "--out", str(out),
           "--ray-address", "local", "--image-field", "image", "--id-field", "doc_id", "--rows-per-unit", "16",
           "--json", "--no-progress"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(out.glob("part-*.parquet"))) < 2:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)          # the driver, mid-run,
    first.wait()
    _kill_namespace_peers()                       # and the Ray it started: a crashed machine
    parts_at_kill, stable_since, deadline = -1, time.monotonic(), time.monotonic() + 60
    while time.monotonic() < deadline and time.monotonic() - stable_since < 2:
        now = len(list(out.glob("part-*.parquet")))
        if now != parts_at_kill:
            parts_at_kill, stable_since = now, time.monotonic()
        time.sleep(0.2)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    summary = json.loads(second.stdout)
    groups = pq.read_metadata(work / "table.parquet")
    chunks = sum(-(-groups.row_group(i).num_rows // 16) for i in range(groups.num_row_groups))
    return {"parts_at_kill": parts_at_kill, "rerun_rc": second.returncode,
            "rerun_done_before": summary["chunks_done_before"], "rerun_chunks": summary["chunks"],
            "chunks_in_input": chunks, "output": compare(read_parquet_output(out), ref, multivector=False),
            "tmp_left": len(list(out.glob(".tmp-*")))}


if __name__ == "__main__":
    name, work = sys.argv[1], Path(sys.argv[2])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    result = {"all": scenario_cluster}[name](work)
    (work / "result.json").write_text(json.dumps(result, indent=1))
