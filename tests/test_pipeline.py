import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from geolib.apps.pipeline import NotebookFailed, discover, parse_value, run_notebook, select

ROOT = Path(__file__).resolve().parent.parent


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("None") is None and parse_value("[1, 2]") == [1, 2]
    assert parse_value("/data/University-1652") == "/data/University-1652"


def test_select_one_and_a_range():
    nbs = [Path(f"{n:02d}_x.ipynb") for n in range(1, 6)]
    assert [p.name[:2] for p in select(nbs, only=["3"])] == ["03"]
    assert [p.name[:2] for p in select(nbs, start="02", stop="04")] == ["02", "03", "04"]
    with pytest.raises(ValueError, match="no notebook matches"):
        select(nbs, only=["09"])


def test_discover_finds_numbered_notebooks_in_order():
    names = [p.name for p in discover()]
    assert names == sorted(names) and all(n[:2].isdigit() for n in names) and len(names) >= 4


def test_failure_names_notebook_cell_and_partial_output(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("profile = 'smoke'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell("raise ValueError('boom ' + profile)")]
    src = tmp_path / "07_fails.ipynb"
    nbformat.write(nb, src)
    with pytest.raises(NotebookFailed) as info:
        run_notebook(src, "smoke", out_dir=tmp_path / "out", progress=False)
    msg = str(info.value)
    assert "07_fails.ipynb" in msg and "cell 4" in msg and "ValueError: boom smoke" in msg
    assert info.value.output.exists() and str(info.value.output) in msg


def test_cli_rejects_bad_selection_before_running():
    res = subprocess.run([sys.executable, "-m", "geolib", "run", "--only", "99"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 2 and "no notebook matches" in res.stderr
    res = subprocess.run([sys.executable, "-m", "geolib", "run", "--profile", "fast"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_a_misspelt_parameter_names_the_closest_accepted_one():
    from geolib.apps.pipeline import check_parameters

    nbs = [p for p in discover() if p.name.startswith("02")]
    with pytest.raises(ValueError, match=r"'flip_ttta': did you mean 'flip_tta'\?.*accepted: "):
        check_parameters({"flip_ttta": True}, nbs)
