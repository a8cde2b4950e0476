"""Every notebook runs under papermill with the smoke profile, in order, sharing one outputs root."""
import json
from pathlib import Path

import pytest

from geolib.paths import outputs_root
from geolib.apps.pipeline import discover, run_notebook

# one worker runs the notebooks, in order (pytest -n: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("pipeline")

NOTEBOOKS = discover()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_smoke(notebook: Path, pipeline_outputs: Path):
    out = run_notebook(notebook, "smoke", progress=False)
    executed = json.loads(out.read_text())
    code = [c for c in executed["cells"] if c["cell_type"] == "code"]
    assert code and all(c.get("execution_count") for c in code), "every code cell ran"
    assert out.parent == outputs_root() / "smoke" / "notebooks" == pipeline_outputs / "smoke" / "notebooks"
