"""End to end: a real folder indexed with the embedded default model, searched through LanceDB
and Qdrant's local mode, re-indexed incrementally, killed mid-run and resumed, and driven by the CLI.

Images and PDF pages go through OCR on the default model (~1 s each), so only five exist.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from omnivec.cli import app
from omnivec.index import Index, IndexMismatchError

pytest.importorskip("lancedb")
pytest.importorskip("qdrant_client")
pytest.importorskip("bm25s")

pytestmark = pytest.mark.slow  # indexes a corpus (OCR, default model) into both stores

runner = CliRunner()

TEXTS = {
    "policies/refunds.md": """# Refund policy

## Eligibility
Customers can ask for a refund within 30 days of purchase. The item must be unused and in its
original packaging. Digital downloads are not refundable once opened.

## How refunds are handled
Refunds are credited to the original payment method within five business days after we receive
the returned item. Shipping costs are not refunded.
""",
    "ops/kubernetes.md": """# Deploying the service on Kubernetes

Build the container image, push it to the registry, then apply the manifests with kubectl.
The Deployment runs three replicas behind a Service; a rolling update replaces pods one at a
time. Use `kubectl rollout status deployment/api` to watch it and `kubectl rollout undo` to go back.
Liveness and readiness probes hit /health and /ready.
""",
    "kitchen/bread.txt": """Sourdough bread recipe

Mix 500 g of flour, 350 g of water, 100 g of active starter and 10 g of salt. Knead the dough,
let it rise for four hours with a few folds, shape a loaf and proof it overnight in the fridge.
Bake at 240 degrees in a covered Dutch oven for 20 minutes, then uncovered until the crust is dark.
""",
    "notes/astronomy.md": """# Observing Jupiter

With a small telescope you can see the four Galilean moons and the cloud belts of Jupiter.
The Great Red Spot is a storm larger than Earth. Opposition is the best time to observe.
""",
}

CODE = '''"""Geographic helpers."""
import math


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in kilometres between two GPS coordinates."""
    r = 6371.0
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))


class Thermostat:
    """Keeps a room at a target temperature by switching the heater on and off."""

    def __init__(self, target_celsius: float) -> None:
        self.target = target_celsius

    def heater_on(self, current_celsius: float) -> bool:
        return current_celsius < self.target - 0.5
'''

PDF_PAGES = [
    ("Volcanoes", "A volcano erupts when magma rises through the crust. Lava flows, ash clouds "
                  "and pyroclastic flows make eruptions dangerous."),
    ("Chess openings", "The Sicilian Defence answers the king's pawn opening. Players study "
                       "openings, castling and endgames to win at chess."),
    ("Honeybees", "Honeybees pollinate flowers and crops. A hive has one queen, thousands of "
                  "worker bees and drones, and stores honey in wax combs."),
]

# (query, expected path, expected page)
QUERIES = [
    ("how are refunds handled?", "policies/refunds.md", None),
    ("rolling update of pods with kubectl", "ops/kubernetes.md", None),
    ("how long to bake sourdough", "kitchen/bread.txt", None),
    ("function computing the distance between two GPS coordinates", "src/geo.py", None),
    ("invoice total amount in euros", "scans/invoice.png", None),
    ("which insects pollinate flowers and make honey", "report.pdf", 3),
    ("volcanic eruption lava", "report.pdf", 1),
]


def _image(path: Path, lines: list[str]) -> None:
    from PIL import Image, ImageDraw, ImageFont
    font = ImageFont.load_default(size=40)
    # Near-square: the OCR detector scales the short side up to 736 px, so a wide strip costs more.
    img = Image.new("RGB", (520, 360), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((40, 40 + 70 * i), line, fill="black", font=font)
    img.save(path)


def _pdf(path: Path) -> None:
    from fpdf import FPDF
    pdf = FPDF(format=(110, 90))          # small, squarish pages: OCR time grows with the pixels
    pdf.set_margins(8, 8)
    pdf.set_auto_page_break(False)
    for title, body in PDF_PAGES:
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 20)
        pdf.cell(0, 11, title, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=14)
        pdf.multi_cell(0, 7, body)
    pdf.output(str(path))


def make_corpus(root: Path) -> Path:
    for rel, text in TEXTS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    (root / "src").mkdir()
    (root / "src/geo.py").write_text(CODE, encoding="utf-8")
    (root / "scans").mkdir()
    _image(root / "scans/invoice.png", ["INVOICE", "TOTAL 420 EUR"])
    _image(root / "scans/parking.png", ["NO PARKING", "FIRE LANE"])
    _pdf(root / "report.pdf")
    (root / "broken.pdf").write_bytes(b"%PDF-1.7\n" + os.urandom(2000))
    return root


STORES = {
    "lance": lambda tmp: str(tmp / "store.omnivec"),
    "qdrant-local": lambda tmp: f"qdrant+local://{tmp / 'qdrant'}/docs",
}


@pytest.fixture(scope="module")
def ocr_once():
    """OCR each distinct image once per module: both store kinds index the same five images, and
    OCR (~1-3 s an image on a busy CPU) would otherwise dominate the run. Results are unchanged."""
    import omnivec.ocr
    real = omnivec.ocr.ocr_image
    cache: dict[tuple, str] = {}

    def cached(image, **kwargs):
        key = (image.size, image.mode, image.tobytes(), tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = real(image, **kwargs)
        return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(omnivec.ocr, "ocr_image", cached)
        yield


@pytest.fixture(scope="module", params=sorted(STORES))
def built(request, tmp_path_factory, default_model, ocr_once):
    """A multi-vector index of the corpus in each store kind (built once per kind)."""
    tmp = tmp_path_factory.mktemp(request.param)
    root = make_corpus(tmp / "docs")
    ix = Index(STORES[request.param](tmp), model=default_model, multivector=True)
    summary = ix.add_path(root)
    yield ix, root, summary
    ix.close()


def test_summary_reports_the_corrupt_file_and_counts(built):
    ix, _root, s = built
    assert [p for p, _reason in s.errors] == ["broken.pdf"], s.errors
    assert s.errors[0][1]                                    # a reason, not an empty string
    assert s.files == 9 and s.new == 9 and s.changed == s.unchanged == s.removed == 0
    stats = ix.stats()
    assert stats["files"] == 8 and stats["items"] == s.items >= 10
    assert stats["multivector"] and stats["multivector_storage"] == "float16"
    assert stats["model"] == "multilingual-e5-small"


@pytest.mark.parametrize("rerank,hybrid", [("none", False), ("maxsim", False), ("none", True), ("maxsim", True)])
def test_queries_find_the_right_file_and_page(built, rerank, hybrid):
    ix, _root, _s = built
    for query, path, page in QUERIES:
        hits = ix.search(query, k=3, rerank=rerank, hybrid=hybrid)
        top = hits[0]
        assert (top.path, top.page) == (path, page) or (top.path == path and page is None), \
            (query, rerank, hybrid, [(h.path, h.page, round(h.score, 3)) for h in hits])
        stages = {"none": {"dense"}, "maxsim": {"dense", "maxsim"}}[rerank] | ({"rrf"} if hybrid else set())
        assert stages <= set(top.scores), top.scores


def test_hits_carry_snippets_and_spans(built):
    ix, _root, _s = built
    hit = ix.search("how are refunds handled?", k=1, rerank="none")[0]
    assert "refund" in hit.snippet.lower() and len(hit.snippet) <= 210
    assert hit.line_start is not None and hit.line_end >= hit.line_start
    page = ix.search("chess openings Sicilian", k=1, rerank="none")[0]
    assert (page.path, page.page, page.kind) == ("report.pdf", 2, "pdf-page")
    assert "Sicilian" in page.snippet                         # the PDF's text layer, for display
    assert json.loads(json.dumps(page.to_dict()))["page"] == 2


def test_reopen_checks_model_and_settings(built, default_model):
    ix, _root, _s = built
    if not ix.spec.startswith("qdrant+local"):               # local Qdrant folders allow one client
        with pytest.raises(IndexMismatchError, match="multivector"):
            Index(ix.spec, model=default_model, multivector=False)
        with pytest.raises(IndexMismatchError, match="chunk_tokens"):
            Index(ix.spec, model=default_model, chunk_tokens=64)
        meta = ix.store.get_meta()
        ix.store.set_meta({**meta, "model": "some-other-model"})
        try:
            with pytest.raises(IndexMismatchError, match="not comparable"):
                Index(ix.spec, model=default_model)
        finally:
            ix.store.set_meta(meta)
    with pytest.raises(ValueError, match="multi-vectors"):
        Index(f"qdrant+memory:///x{id(ix)}", model=default_model).search("x", rerank="maxsim")


def test_incremental_update(built):
    """Last in the module: it edits the corpus of its store kind."""
    ix, root, _s = built
    again = ix.add_path(root)
    assert (again.items, again.new, again.changed, again.removed, again.unchanged) == (0, 1, 0, 0, 8)
    assert [p for p, _ in again.errors] == ["broken.pdf"]     # retried, still reported

    (root / "kitchen/bread.txt").write_text(TEXTS["kitchen/bread.txt"].replace("240", "250"), encoding="utf-8")
    (root / "ops/kubernetes.md").unlink()
    third = ix.add_path(root, progress=True)                 # the bar runs (on captured stderr)
    assert (third.changed, third.removed, third.unchanged) == (1, 1, 6)
    assert third.items == 1                                  # only the bread file, one chunk
    hits = ix.search("rolling update of pods with kubectl", k=10, rerank="none")
    assert "ops/kubernetes.md" not in {h.path for h in hits}
    top = ix.search("how long to bake sourdough", k=1)[0]
    assert "250 degrees" in ix.store.get([top.id])[top.id].text
    assert ix.stats()["files"] == 7
    assert ix.remove_path("scans") == 2 and ix.stats()["files"] == 5


# ------------------------------------------------------------------ crash, resume, CLI
WORDS = ("river mountain copper violin lantern harbor glacier orchard tunnel falcon meadow cobalt "
         "saddle prism walnut canyon beacon quartz tundra ember marble pepper velvet anchor").split()


def _bulk_corpus(root: Path, n: int) -> None:
    """n small text files, each a different deterministic word salad (one chunk each).

    Short on purpose: the model embeds ~20-60 such files a second on a busy 2-core CPU, and the
    run only has to outlive its first commit by a second or so."""
    root.mkdir(parents=True)
    for i in range(n):
        words = [WORDS[(i * 7 + j * (i % 5 + 1)) % len(WORDS)] for j in range(10)]
        (root / f"note_{i:04d}.txt").write_text(f"Note {i}. " + " ".join(words) + ".\n", encoding="utf-8")
    (root / "target.md").write_text("# Mailing address\n\nSend cheques to our office at 12 Elm Street, "
                                    "Springfield. The post office box is closed on Sundays.\n",
                                    encoding="utf-8")


def _committed(store: str) -> dict[str, str]:
    from omnivec.index.stores import open_store
    try:
        st = open_store(store, create=False)
    except (FileNotFoundError, ValueError):
        return {}
    try:
        return st.indexed_files()
    finally:
        st.close()


def _ids(store: str) -> tuple[list[str], int]:
    from omnivec.index.stores import open_store
    st = open_store(store, create=False)
    try:
        return [i for i, _text in st.iter_texts()], st.count()
    finally:
        st.close()


@pytest.fixture
def reuse_model(monkeypatch, default_model):
    """CLI commands invoked in this process load the default model by name; hand them the
    session's instance (same weights) instead of a new ONNX session (seconds on a busy CPU).
    The subprocess in the crash test still loads it the real way, from the index's meta."""
    import omnivec
    real = omnivec.load

    def load(model=None, **kwargs):
        return default_model if model in (None, "default", "multilingual-e5-small") else real(model, **kwargs)

    monkeypatch.setattr(omnivec, "load", load)


def test_sigkill_mid_run_then_resume_equals_a_clean_index(tmp_path, default_model, reuse_model):
    root = tmp_path / "bulk"
    _bulk_corpus(root, 100)             # files are committed every embedding call (16-64 items)
    total = 101
    store = str(tmp_path / "crash.omnivec")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "omnivec.cli", "index", str(root), "--store", store],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        committed: dict[str, str] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            committed = _committed(store)
            if committed:
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"indexing finished before it could be killed: {proc.stderr.read()!r}"
        assert committed, "no file was committed in time"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    at_kill = _committed(store)
    assert 0 < len(at_kill) < total, len(at_kill)

    # Resume in this process through the CLI: only the files not committed are embedded.
    r = runner.invoke(app, ["index", str(root), "--store", store, "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)["summary"]
    assert summary["unchanged"] == len(at_kill) and summary["new"] == total - len(at_kill)
    assert summary["errors"] == [] and summary["items"] == total - len(at_kill)

    clean = str(tmp_path / "clean.omnivec")
    with Index(clean, model=default_model) as ix:
        ix.add_path(root)
    resumed_ids, resumed_count = _ids(store)
    clean_ids, clean_count = _ids(clean)
    assert resumed_count == clean_count == len(set(resumed_ids)) == total     # one chunk each, no duplicates
    assert sorted(resumed_ids) == sorted(clean_ids)
    assert _committed(store) == _committed(clean)
    from omnivec.index.stores import open_store
    a, b = open_store(store, create=False), open_store(clean, create=False)
    sample = sorted(resumed_ids)[::20]
    ra, rb = a.get(sample), b.get(sample)
    for i in sample:                                      # the same vectors, not just the same ids
        assert np.allclose(ra[i].dense, rb[i].dense, atol=1e-5) and ra[i].text == rb[i].text
    a.close(), b.close()

    # Search the index written by the killed and the resumed process, as JSON on stdout.
    r = runner.invoke(app, ["search", "where do I send a cheque by post?", "--store", store, "--json", "-k", "3"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert hits[0]["path"] == "target.md" and set(hits[0]) >= {"score", "snippet", "line_start", "scores"}

    r = runner.invoke(app, ["search", "cheque", "--store", store, "--hybrid"])
    assert r.exit_code == 0 and "target.md" in r.stdout


def test_cli_errors_are_clear(tmp_path, reuse_model):
    r = runner.invoke(app, ["search", "anything", "--store", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "no index at" in " ".join(r.output.split())
    r = runner.invoke(app, ["index", str(tmp_path / "nope"), "--store", str(tmp_path / "s")])
    assert r.exit_code == 2 and "is not a directory" in " ".join(r.output.split())
    r = runner.invoke(app, ["search", "anything", "--store", "qdrant://127.0.0.1:9/docs"])   # discard port
    assert r.exit_code == 2 and "cannot reach Qdrant" in " ".join(r.output.split())
    (tmp_path / "empty").mkdir()
    store = str(tmp_path / "empty.omnivec")
    assert runner.invoke(app, ["index", str(tmp_path / "empty"), "--store", store]).exit_code == 0
    r = runner.invoke(app, ["search", "anything", "--store", store])
    assert r.exit_code == 2 and "is empty" in " ".join(r.output.split())


def test_rrf_and_snippets():
    from omnivec.index.lexical import BM25Index, rrf
    from omnivec.index.snippets import make_snippet
    fused = rrf([["a", "b", "c"], ["c", "a"]])
    assert [i for i, _ in fused] == ["a", "c", "b"]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    bm = BM25Index([("x", "bread and butter"), ("y", "kubectl rollout"), ("z", "")])
    assert bm.search("kubectl rollout status", 5)[0][0] == "y" and bm.search("???", 5) == []
    text = "intro " * 100 + "the refund is credited within five days " + "outro " * 100
    snip = make_snippet(text, "when is my refund credited?")
    assert "refund is credited" in snip and snip.startswith("…") and snip.endswith("…")
    assert len(snip) <= 202 and make_snippet("short text", "x") == "short text"
