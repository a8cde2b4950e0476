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


# ----------------------------------------------------------------------------- import layers

# Each module of geolib sits in one layer and imports only from its own layer or lower ones, at
# module level or inside a function alike (a lazy import is still a dependency; only imports
# under `if TYPE_CHECKING:` are left out, as they never run). Strings passed to importlib (the
# command table of __main__.py) are not imports.
LAYERS = ("core", "data", "models", "training", "retrieval", "world", "apps")
MODULE_LAYER = {
    # core: files, records, switches; no geolib imports of consequence
    "paths": "core", "records": "core", "dryrun": "core", "checkpoint": "core", "npy": "core",
    "cost": "core", "coords": "core",
    # data: decoding, layouts, loaders, checks, data-level transforms
    "images": "data", "transforms": "data", "datasets": "data", "validate": "data", "release": "data",
    # models: layers, losses, networks, teachers (datasets is below: models use its GrayWorld)
    "layers": "models", "losses": "models", "models": "models", "teachers": "models", "embedding": "models",
    # training and evaluation: loops, recipes, metrics, the settings that drive them, the
    # embedding cache evaluation reads from
    "evaluate": "training", "loop": "training", "train": "training", "crossview": "training",
    "distill": "training", "safa": "training", "vpr_train": "training", "cosplace": "training",
    "divide_classify": "training", "classifier": "training", "config": "training",
    "profiles": "training", "needs": "training", "embcache": "training",
    "results": "training",
    # retrieval: saved gallery indexes and where-was-this-photo-taken
    "index": "retrieval", "localization": "retrieval",
    # the synthetic world: generation, rendering, export, its baselines and build
    "render": "world", "world": "world", "export": "world", "baselines": "world", "world_build": "world",
    # apps: commands, notebooks' helpers, reports (dataroots builds the world when no data is found)
    "__init__": "apps", "__main__": "apps", "pipeline": "apps", "report": "apps", "bench": "apps",
    "explorer": "apps", "train_cli": "apps", "ablation": "apps", "phase2": "apps", "plots": "apps",
    "exploration": "apps", "findings": "apps", "vpr_compare": "apps", "gallery": "apps",
    "dataroots": "apps",
}
# (importer, imported): why the edge is tolerated and the change that removes it. The tests below
# ignore these edges, and fail once one disappears, so the list only shrinks.
KNOWN_EXCEPTIONS = {
    ("world", "world_build"): "old callers' geolib.world.build_world alias (world.__getattr__); remove once "
                              "dataroots.py, bench.py, tests/test_release.py, tests/test_dry_run.py import "
                              "build_world from geolib.world_build",
    ("datasets", "world"): "datasets.py: import latlon_to_utm from geolib.coords, not geolib.world",
    ("release", "world"): "release.py: import utm_to_latlon from geolib.coords, not geolib.world",
    ("safa", "render"): "safa.py: from .transforms import polar_transform (not from .render)",
    ("models", "cosplace"): "models.load_model's registry imports the recipes that define models; "
                            "let each recipe register its loader, or move the dispatch up a layer",
    ("models", "divide_classify"): "as models → cosplace",
    ("models", "classifier"): "as models → cosplace",
    ("models", "distill"): "as models → cosplace",
    ("cosplace", "divide_classify"): "cosplace.load_or_train_group_model saves a D&C model through "
                                     "divide_classify.save_dc; pass the saver in, or move the save into "
                                     "divide_classify",
}
GEOLIB = ROOT / "geolib"


def geolib_imports(path: Path) -> dict[str, int]:
    """geolib modules imported by one file (relative or absolute, any depth), with a line number."""
    import ast

    found: dict[str, int] = {}
    modules = {p.stem for p in GEOLIB.glob("*.py")}

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "geolib" and len(parts) > 1:
                    found.setdefault(parts[1], node.lineno)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level == 1 or (node.level == 0 and (node.module or "").split(".")[0] == "geolib"):
                parts = (node.module or "").split(".")
                parts = parts[1:] if node.level == 0 else parts
                names = [parts[0]] if parts and parts[0] else [a.name for a in node.names]
                for name in names:
                    if name in modules:
                        found.setdefault(name, node.lineno)

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    found.pop(path.stem, None)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    return {p.stem: geolib_imports(p) for p in sorted(GEOLIB.glob("*.py"))}


def test_every_module_has_a_layer():
    modules = set(import_graph())
    missing, stale = sorted(modules - set(MODULE_LAYER)), sorted(set(MODULE_LAYER) - modules)
    assert not missing, (f"geolib/{', geolib/'.join(m + '.py' for m in missing)} not in MODULE_LAYER "
                         f"(tests/test_packaging.py): add it under the lowest layer of {LAYERS} that is at "
                         "least the layer of every geolib module it imports (apps if only commands, "
                         "notebooks or reports use it)")
    assert not stale, f"{stale} in MODULE_LAYER but no such file in geolib/: remove the entries"
    assert set(MODULE_LAYER.values()) <= set(LAYERS)


def test_import_graph_has_no_cycle():
    graph = {m: {d: n for d, n in deps.items() if (m, d) not in KNOWN_EXCEPTIONS}
             for m, deps in import_graph().items()}
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            steps = " → ".join(f"{a} (geolib/{a}.py:{graph[a][b]})" for a, b in zip(cycle, cycle[1:]))
            raise AssertionError(f"import cycle: {steps} → {cycle[-1]}; move the shared code into a "
                                 "module below both, or pass it in as an argument")


def test_imports_follow_the_layers():
    rank = {m: LAYERS.index(layer) for m, layer in MODULE_LAYER.items()}
    wrong = [f"geolib/{m}.py:{line} ({MODULE_LAYER[m]}) imports {d} ({MODULE_LAYER[d]})"
             for m, deps in import_graph().items() for d, line in sorted(deps.items())
             if m in rank and d in rank and rank[d] > rank[m] and (m, d) not in KNOWN_EXCEPTIONS]
    assert not wrong, ("imports from a higher layer (order " + " < ".join(LAYERS) + "):\n  " + "\n  ".join(wrong)
                       + "\nmove the imported code down, or the importer up (MODULE_LAYER in tests/test_packaging.py)")


def test_known_exceptions_are_still_needed():
    graph = import_graph()
    gone = [f"{a} → {b}" for a, b in KNOWN_EXCEPTIONS if b not in graph.get(a, {})]
    assert not gone, f"no longer imported: {gone}; delete them from KNOWN_EXCEPTIONS in tests/test_packaging.py"
