#!/usr/bin/env bash
# Create .venv with torch (installed first, then pinned through a constraints file so no
# dependency can swap in another build), and agrifm with extras, editable.
#   AGRIFM_TORCH=torch==X          the torch to install (default below)
#   AGRIFM_TORCH_INDEX=URL         where to get it, e.g. https://download.pytorch.org/whl/cpu
#                                  for the CPU-only build (no multi-GB CUDA libraries)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
TORCH_SPEC=${AGRIFM_TORCH:-torch==2.13.0}
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # numpy with torch: importing torch without numpy warns "Failed to initialize NumPy".
  .venv/bin/python -m pip install -q ${AGRIFM_TORCH_INDEX:+--index-url "$AGRIFM_TORCH_INDEX"} "$TORCH_SPEC" "numpy>=1.26"
fi
# Pin whatever torch is installed, so extras (lightning, torchmetrics) never replace it.
echo "torch==$(.venv/bin/python -c 'import torch; print(torch.__version__)')" > .venv/constraints.txt
.venv/bin/python -m pip install -q -c .venv/constraints.txt -e ".[test]"
# tcmalloc makes CPU training steps faster (1.34x measured, benchmarks/README.md); used by the agrifm launcher when present.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && ! ldconfig -p | grep -q libtcmalloc_minimal; then
  (apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 || true)
fi
echo "agrifm installed in .venv ($(.venv/bin/agrifm --version))"
