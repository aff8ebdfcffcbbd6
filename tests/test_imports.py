"""The package, the model and the compat layer import without the heavy optional libraries."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

HEAVY = ("rasterio", "h5py", "pandas", "lightning", "pytorch_lightning", "matplotlib")


def test_core_imports_stay_light():
    code = (
        "import sys; sys.path.insert(0, 'benchmarks')\n"
        "import agrifm, agrifm.models, agrifm.compat, bench_model\n"
        "import agrifm.models.agrifm, agrifm.models.fast, agrifm.models.efficient\n"
        "agrifm.AgriFM, agrifm.build_model\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
