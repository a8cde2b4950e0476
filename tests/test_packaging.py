"""The frame every issue plugs into: packaging, README commands, CI, notebook hygiene."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    have = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            have |= {_name(r) for r in dep["pip"] if not r.startswith("-")}
        else:
            have.add(_name(dep.split("::")[-1]))
    aliases = {"pytorch": "torch", "faiss-gpu": "faiss-cpu"}
    have = {aliases.get(n, n) for n in have} - {"python", "pip", "pytorch-cuda"}
    assert wanted - have == set(), "in pyproject.toml but not environment.yml"
    assert have - wanted == set(), "in environment.yml but not pyproject.toml"
    assert any(isinstance(d, dict) and "-e .[dev]" in d["pip"] for d in env["dependencies"])


def test_constraints_pin_the_local_torch_pair():
    pins = (ROOT / "constraints.txt").read_text()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins
    assert "-c constraints.txt" in (ROOT / "run_all.sh").read_text()


def test_readme_opens_with_the_two_commands_and_ci_calls_the_test_one():
    lines = [l for l in (ROOT / "README.md").read_text().splitlines() if l.strip()]
    assert lines[0] == "```bash" and lines[3] == "```"
    pipeline_cmd, test_cmd = (l.split("#")[0].strip() for l in lines[1:3])
    assert pipeline_cmd == "./run_all.sh" and test_cmd == "./run_all.sh --test"
    ci = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_cmd in ci
    assert any("HF_HUB_OFFLINE=1" in l for l in ci)


def test_outputs_is_ignored():
    assert "outputs/" in (ROOT / ".gitignore").read_text().split()


def notebook_has_outputs(path: Path) -> bool:
    """What nbstripout --verify checks, so the suite fails on a notebook saved with outputs."""
    res = subprocess.run([sys.executable, "-m", "nbstripout", "--verify", str(path)], capture_output=True)
    return res.returncode != 0


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebooks_are_committed_stripped(path):
    assert not notebook_has_outputs(path), f"{path.name} has outputs: run nbstripout {path}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_anatomy(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and re.search(r"^profile\s*=", tagged[0].source, re.M)


def test_stripping_check_catches_outputs(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1 + 1", execution_count=1)
    cell.outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    nb.cells = [cell]
    path = tmp_path / "dirty.ipynb"
    nbformat.write(nb, path)
    assert notebook_has_outputs(path)
