"""Vector stores (LanceDB embedded, Qdrant local mode) against numpy ground truth."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from omnivec.index.stores import LanceStore, QdrantStore, open_store
from omnivec.index.types import Record
from omnivec.scoring import maxsim_scores

DIM, MDIM = 24, 16
BACKENDS = ["lance", "qdrant-local"]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def spec_for(kind: str, tmp_path) -> str:
    return {"lance": str(tmp_path / "lance-store"), "qdrant-local": f"qdrant+local://{tmp_path}/qdrant/docs",
            "qdrant-memory": "qdrant+memory:///docs"}[kind]


def make_records(path: str, n: int, rng: np.random.Generator, *, file_hash: str = "h1",
                 tokens: int = 5, with_multi: bool = True) -> list[Record]:
    return [Record(id=f"{hashlib.sha256(path.encode()).hexdigest()[:16]}-{i}", path=path, file_hash=file_hash, kind="text",
                   dense=unit(rng.standard_normal(DIM)),
                   multivector=unit(rng.standard_normal((tokens + i % 3, MDIM))) if with_multi else None,
                   text=f"{path} chunk {i}", line_start=i * 10 + 1, line_end=i * 10 + 9, ordinal=i)
            for i in range(n)]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(params=BACKENDS + ["qdrant-memory"])
def any_store(request, tmp_path):
    store = open_store(spec_for(request.param, tmp_path), dim=DIM, multivector_dim=MDIM)
    yield store
    store.close()


@pytest.fixture(params=BACKENDS)
def kind(request) -> str:
    return request.param


def fill(store, rng, n_files: int = 6, per_file: int = 5) -> list[Record]:
    recs: list[Record] = []
    for f in range(n_files):
        batch = make_records(f"docs/file{f}.txt", per_file, rng)
        store.commit_file(batch[0].path, "h1", batch)
        recs += batch
    return recs


def test_commit_count_and_markers(any_store, rng):
    recs = fill(any_store, rng)
    assert any_store.count() == len(recs)
    assert any_store.indexed_files() == {f"docs/file{f}.txt": "h1" for f in range(6)}
    assert any_store.stored_paths() == set(any_store.indexed_files())
    assert (any_store.dim, any_store.multivector_dim, any_store.multivector_storage) == (DIM, MDIM, "float16")


def test_search_dense_matches_numpy(any_store, rng):
    recs = fill(any_store, rng)
    X = np.stack([r.dense for r in recs])
    ids = [r.id for r in recs]
    for qi in range(5):
        q = unit(rng.standard_normal(DIM))
        truth = X @ q
        hits = any_store.search_dense(q, 5)
        assert len(hits) == 5
        assert hits[0][0].id == ids[int(np.argmax(truth))]
        for rec, score in hits:
            assert score == pytest.approx(float(truth[ids.index(rec.id)]), abs=1e-3)
            np.testing.assert_allclose(rec.dense, X[ids.index(rec.id)], atol=1e-6)
        assert [s for _r, s in hits] == sorted((s for _r, s in hits), reverse=True)
    assert any_store.search_dense(X[3], 1)[0][1] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="dim"):
        any_store.search_dense(np.ones(DIM + 1, np.float32), 3)


def test_recommit_replaces_and_delete(any_store, rng):
    fill(any_store, rng, n_files=3, per_file=4)
    newer = make_records("docs/file1.txt", 2, rng, file_hash="h2")
    any_store.commit_file("docs/file1.txt", "h2", newer)
    assert any_store.count() == 4 + 2 + 4
    assert any_store.indexed_files()["docs/file1.txt"] == "h2"
    got = any_store.get([r.id for r in newer] + [newer[0].id.rsplit("-", 1)[0] + "-3"])
    assert set(got) == {r.id for r in newer}          # ordinal 3 of the old version is gone
    any_store.delete_file("docs/file1.txt")
    any_store.delete_file("never/indexed.txt")         # no error
    assert "docs/file1.txt" not in any_store.indexed_files()
    assert "docs/file1.txt" not in any_store.stored_paths()
    assert any_store.count() == 8
    any_store.commit_file("empty.txt", "e", [])        # a file without items is still marked indexed
    assert any_store.indexed_files()["empty.txt"] == "e"


def test_crash_leaves_orphans_that_commit_replaces(any_store, rng):
    fill(any_store, rng, n_files=2, per_file=3)
    partial = make_records("crashed.md", 4, rng)
    any_store._write_items(partial[:2])                 # killed after writing items, before the marker
    assert "crashed.md" not in any_store.indexed_files()
    assert "crashed.md" in any_store.stored_paths()
    assert not any(t.startswith("crashed.md") for _i, t in any_store.iter_texts())
    any_store.commit_file("crashed.md", "h1", partial)
    assert any_store.indexed_files()["crashed.md"] == "h1"
    assert any_store.count() == 6 + 4
    assert sorted(i for i, t in any_store.iter_texts() if t.startswith("crashed.md")) == sorted(r.id for r in partial)


def test_iter_texts_and_get(any_store, rng):
    recs = fill(any_store, rng, n_files=2, per_file=3)
    assert dict(any_store.iter_texts()) == {r.id: r.text for r in recs}
    got = any_store.get([recs[4].id, "missing-id", recs[0].id])
    assert set(got) == {recs[4].id, recs[0].id}
    r = got[recs[4].id]
    assert (r.path, r.file_hash, r.kind, r.text, r.line_start, r.line_end, r.ordinal, r.page) == \
           (recs[4].path, "h1", "text", recs[4].text, recs[4].line_start, recs[4].line_end, recs[4].ordinal, None)
    np.testing.assert_allclose(r.dense, recs[4].dense, atol=1e-6)


@pytest.mark.parametrize("storage", ["float32", "float16", "binary"])
def test_multivector_round_trip(kind, storage, tmp_path, rng):
    store = open_store(spec_for(kind, tmp_path), dim=DIM, multivector_dim=MDIM, multivector_storage=storage)
    recs = make_records("a.txt", 4, rng)
    recs.append(Record(id="no-multi", path="a.txt", file_hash="h1", kind="image", dense=unit(rng.standard_normal(DIM)),
                       page=2, ordinal=4))
    store.commit_file("a.txt", "h1", recs)
    got = store.multivectors([r.id for r in recs] + ["unknown"])
    assert set(got) == {r.id for r in recs}
    assert got["no-multi"].shape == (0, MDIM)
    for r in recs[:4]:
        m = got[r.id]
        assert m.dtype == np.float32 and m.shape == r.multivector.shape
        if storage == "binary":
            np.testing.assert_array_equal(m > 0, r.multivector > 0)
            np.testing.assert_allclose(np.abs(m), 1 / math.sqrt(MDIM), rtol=1e-6)
        else:
            np.testing.assert_allclose(m, r.multivector, atol=1e-3 if storage == "float16" else 1e-6)
    assert store.get(["no-multi"])["no-multi"].page == 2
    store.close()


@pytest.mark.parametrize("storage", ["float16", "binary"])
def test_qdrant_search_maxsim(storage, tmp_path, rng):
    store = open_store("qdrant+memory:///mv", dim=DIM, multivector_dim=MDIM, multivector_storage=storage)
    assert isinstance(store, QdrantStore)
    recs = fill(store, rng, n_files=4, per_file=5)
    q_dense, q_tokens = recs[7].dense, unit(rng.standard_normal((4, MDIM)))
    cands = [r.id for r, _s in store.search_dense(q_dense, 8)]
    stored = store.multivectors(cands)
    truth = maxsim_scores([q_tokens], [stored[i] for i in cands])[0]
    hits = store.search_maxsim(q_tokens, 3, 8, q_dense)
    order = np.argsort(-truth)[:3]
    assert [r.id for r, _s in hits] == [cands[i] for i in order]
    np.testing.assert_allclose([s for _r, s in hits], truth[order], atol=1e-3)
    store.close()


def test_persistence_and_meta(kind, tmp_path, rng):
    spec = spec_for(kind, tmp_path)
    store = open_store(spec, dim=DIM, multivector_dim=MDIM, multivector_storage="binary")
    recs = fill(store, rng, n_files=2, per_file=3)
    meta = {"model": "e5-small", "tasks": {"query": "retrieval.query"}, "chunk": [512, 64]}
    store.set_meta(meta)
    store.set_meta({**meta, "model": "e5-base"})
    before = store.search_dense(recs[2].dense, 3)
    store.close()
    again = open_store(spec, create=False)
    assert (again.dim, again.multivector_dim, again.multivector_storage) == (DIM, MDIM, "binary")
    assert again.get_meta() == {**meta, "model": "e5-base"}
    assert again.count() == 6 and len(again.indexed_files()) == 2
    after = again.search_dense(recs[2].dense, 3)
    assert [(r.id, round(s, 5)) for r, s in after] == [(r.id, round(s, 5)) for r, s in before]
    assert again.size_bytes() > 0
    again.close()


def test_config_mismatch_and_missing(kind, tmp_path):
    spec = spec_for(kind, tmp_path)
    open_store(spec, dim=DIM, multivector_dim=MDIM).close()
    with pytest.raises(ValueError, match=f"built with dim {DIM}"):
        open_store(spec, dim=DIM * 2)
    with pytest.raises(ValueError, match="built with multivector_storage 'float16'"):
        open_store(spec, multivector_storage="binary")
    with pytest.raises(ValueError, match="multivector_dim"):
        open_store(spec, dim=DIM, multivector_dim=MDIM + 1)
    open_store(spec, dim=DIM, multivector_dim=MDIM, multivector_storage="float16").close()   # same: fine
    with pytest.raises(FileNotFoundError):
        open_store(spec_for(kind, tmp_path / "nowhere"), create=False)
    with pytest.raises(ValueError, match="without dim"):
        open_store(spec_for(kind, tmp_path / "fresh"))


def test_paths_with_quotes_and_unicode(any_store, rng):
    paths = ["it's a \"quote\".txt", "back\\slash' OR '1'='1.md", "ünïcødé/日本語 ファイル.txt", "plain.txt"]
    for p in paths:
        any_store.commit_file(p, "h-" + p, make_records(p, 2, rng))
    assert any_store.indexed_files() == {p: "h-" + p for p in paths}
    any_store.delete_file(paths[1])
    assert any_store.stored_paths() == {paths[0], paths[2], paths[3]}
    any_store.commit_file(paths[2], "h2", make_records(paths[2], 1, rng))
    assert any_store.count() == 2 + 1 + 2


def test_invalid_records_write_nothing(any_store, rng):
    bad = make_records("bad.txt", 3, rng)
    bad[2].dense = np.ones(DIM + 1, np.float32)
    with pytest.raises(ValueError, match="dense vector has shape"):
        any_store.commit_file("bad.txt", "h", bad)
    with pytest.raises(ValueError, match="expected 'other.txt'"):
        any_store.commit_file("other.txt", "h", make_records("bad.txt", 1, rng))
    assert any_store.count() == 0 and any_store.stored_paths() == set()


def test_store_without_multivectors(kind, tmp_path, rng):
    store = open_store(spec_for(kind, tmp_path), dim=DIM)
    store.commit_file("a", "h", make_records("a", 2, rng, with_multi=False))
    assert store.multivector_dim is None and store.count() == 2
    with pytest.raises(ValueError, match="multi-vector"):
        store.commit_file("b", "h", make_records("b", 1, rng))
    with pytest.raises(ValueError, match="no multi-vectors"):
        store.multivectors(["x"])
    store.close()


def test_lance_optimize_keeps_data(tmp_path, rng):
    store = open_store(tmp_path / "s", dim=DIM, multivector_dim=MDIM)
    assert isinstance(store, LanceStore)
    recs = fill(store, rng)
    store.commit_file("docs/file0.txt", "h9", make_records("docs/file0.txt", 1, rng))
    store.optimize()
    assert store.count() == len(recs) - 4
    assert store.search_dense(recs[-1].dense, 1)[0][0].id == recs[-1].id


def test_spec_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown store scheme"):
        open_store("s3://bucket/x", dim=DIM)
    with pytest.raises(ValueError, match="collection"):
        open_store("qdrant+memory:///", dim=DIM)
    with pytest.raises(ValueError, match="no host"):
        open_store("qdrant:///coll", dim=DIM)


def test_qdrant_upserts_in_bounded_batches(monkeypatch, rng):
    from omnivec.index.stores import qdrant as qdrant_mod

    monkeypatch.setattr(qdrant_mod, "BATCH", 3)
    monkeypatch.setattr(qdrant_mod, "BATCH_FLOATS", 150)
    store = open_store("qdrant+memory:///batches", dim=DIM, multivector_dim=MDIM)
    calls = []
    real_upsert = store.client.upsert
    monkeypatch.setattr(store.client, "upsert", lambda *a, **kw: calls.append(len(a[1])) or real_upsert(*a, **kw))
    recs = make_records("big.pdf", 10, rng, tokens=5)
    store.commit_file("big.pdf", "h", recs)
    assert store.count() == 10 and store.indexed_files() == {"big.pdf": "h"}
    assert max(calls) <= 3 and sum(calls) == 10 + 1          # items, then the marker
    store.close()


def test_lance_auto_compaction_keeps_data(monkeypatch, tmp_path, rng):
    from omnivec.index.stores import lance as lance_mod

    monkeypatch.setattr(lance_mod, "COMPACT_EVERY", 2)
    store = open_store(tmp_path / "s", dim=DIM, multivector_dim=MDIM)
    recs = fill(store, rng, n_files=5, per_file=2)            # compacts twice on the way
    store.commit_file("docs/file0.txt", "h2", recs[:1])
    assert store.count() == 9 and store.indexed_files()["docs/file0.txt"] == "h2"
    assert store.multivectors([recs[9].id])[recs[9].id].shape == recs[9].multivector.shape


def test_lance_creation_cut_short_is_reused(tmp_path, rng):
    import lancedb

    folder = tmp_path / "s"
    lancedb.connect(str(folder)).create_table("items", schema=__import__("pyarrow").schema([("x", "int32")]))
    with pytest.raises(FileNotFoundError):
        open_store(folder, create=False)
    store = open_store(folder, dim=DIM, multivector_dim=MDIM)     # empty leftover: replaced
    store.commit_file("a", "h", make_records("a", 2, rng))
    assert store.count() == 2
    store._items.delete("true")
    (folder / "omnivec-store.json").unlink()
    store.commit_file("b", "h", make_records("b", 1, rng))
    with pytest.raises(ValueError, match="not an omnivec store"):
        open_store(folder, dim=DIM)


def test_qdrant_creation_cut_short_is_reused(rng):
    from qdrant_client import QdrantClient, models

    client = QdrantClient(":memory:")
    client.create_collection("docs", vectors_config={"dense": models.VectorParams(size=DIM, distance=models.Distance.DOT)})
    with pytest.raises(FileNotFoundError):
        QdrantStore(client, "docs", is_local=True, create=False)
    store = QdrantStore(client, "docs", is_local=True, dim=DIM)
    store.commit_file("a", "h", make_records("a", 1, rng, with_multi=False))
    client.delete_collection("docs__files")
    with pytest.raises(ValueError, match="not an omnivec store"):
        QdrantStore(client, "docs", is_local=True, dim=DIM)
    client.close()
