"""The frame every part of geolib plugs into: packaging, README commands, CI, notebook hygiene."""
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

# The package's layout is its architecture: a module's layer is its subpackage (geolib/data/... is
# data), and the top-level modules are core. A module imports only its own layer or lower ones, at
# module level or inside a function alike (a lazy import is still a dependency; only imports under
# `if TYPE_CHECKING:` are left out, as they never run). Strings passed to importlib (the command
# table of __main__.py, the name table of __init__.py, the model registry's providers) are not imports.
LAYERS = ("core", "data", "models", "evaluation", "training", "retrieval", "world", "apps")
# top-level files: core, except the package's faces, which name everything (by importlib strings)
CORE = ("paths", "records", "profiles", "config", "dryrun", "checkpoint", "coords", "npy", "results")
FACES = ("__init__", "__main__")
# (importer, imported) as dotted names below geolib: why the edge is tolerated and the change that
# removes it. The tests below ignore these edges, and fail once one disappears, so the list only shrinks.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}
GEOLIB = ROOT / "geolib"


def module_name(path: Path) -> str:
    """`data.images` for geolib/data/images.py, `paths` for geolib/paths.py, `data` for its __init__."""
    parts = path.relative_to(GEOLIB).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" and len(parts) > 1 else ".".join(parts)


def layer_of(module: str) -> str | None:
    """The layer of a geolib module (its subpackage, or core for the top-level ones), or None."""
    head = module.split(".")[0]
    if head in LAYERS[1:]:
        return head
    if module in CORE:
        return "core"
    if module in FACES:
        return "apps"
    return None


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(GEOLIB.rglob("*.py"))}


def geolib_imports(path: Path) -> dict[str, int]:
    """geolib modules imported by one file (relative or absolute, any depth), with a line number."""
    import ast

    known = set(modules())
    here = module_name(path)
    package = here.split(".")[:-1] if path.name != "__init__.py" else here.split(".")
    if path.parent == GEOLIB:
        package = []
    found: dict[str, int] = {}

    def add(dotted: list[str], names: list[str], line: int) -> None:
        base = ".".join(dotted)
        targets = [f"{base}.{n}" if base else n for n in names]
        for target in targets:
            if target in known:
                found.setdefault(target, line)
            elif base in known or base.split(".")[0] in LAYERS[1:]:
                found.setdefault(base, line)

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
                    add(parts[1:-1], [parts[-1]], node.lineno)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            parts = (node.module or "").split(".") if node.module else []
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else list(package)
                add(base + parts, [a.name for a in node.names], node.lineno)
            elif parts and parts[0] == "geolib":
                add(parts[1:], [a.name for a in node.names], node.lineno)

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    found.pop(here, None)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    return {m: geolib_imports(p) for m, p in modules().items()}


def where(module: str) -> str:
    return str(modules()[module].relative_to(ROOT))


def test_every_module_has_a_layer():
    stray = sorted(m for m in modules() if layer_of(m) is None)
    assert not stray, (f"{', '.join(where(m) for m in stray)}: not in a layer. Move the file into the subpackage "
                       f"of the lowest layer of {LAYERS[1:]} that is at least the layer of every geolib module it "
                       "imports (geolib/apps/ if only commands, notebooks or reports use it), with `git mv`; "
                       "or, for a top-level module that imports no other geolib layer, add it to CORE in "
                       "tests/test_packaging.py")
    stale = sorted(m for m in CORE if m not in modules())
    assert not stale, f"{stale} in CORE but no such file in geolib/: remove them from CORE"


def test_every_subpackage_says_what_its_layer_holds():
    import ast

    for layer in LAYERS[1:]:
        init = GEOLIB / layer / "__init__.py"
        assert init.exists(), f"{init}: missing; every layer is a package with a docstring saying what it holds"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init}: add a docstring saying what the layer holds"


def test_import_graph_has_no_cycle():
    graph = {m: {d: n for d, n in deps.items() if (m, d) not in KNOWN_EXCEPTIONS}
             for m, deps in import_graph().items()}
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if d not in graph:
                continue
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            steps = " → ".join(f"{a} ({where(a)}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:]))
            raise AssertionError(f"import cycle: {steps} → {cycle[-1]}; move the shared code into a "
                                 "module below both, or pass it in as an argument")


def test_imports_follow_the_layers():
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    wrong = [f"{where(m)}:{line} ({layer_of(m)}) imports geolib.{d} ({layer_of(d)})"
             for m, deps in import_graph().items() for d, line in sorted(deps.items())
             if layer_of(m) and layer_of(d) and rank[layer_of(d)] > rank[layer_of(m)]
             and (m, d) not in KNOWN_EXCEPTIONS]
    assert not wrong, ("imports from a higher layer (order " + " < ".join(LAYERS) + "):\n  " + "\n  ".join(wrong)
                       + "\nmove the imported code down, or the importer up (git mv into a higher subpackage)")


def test_the_layer_check_sees_relative_and_lazy_imports(tmp_path, monkeypatch):
    """The checker itself: a lazy, relative, upward import is caught; one under TYPE_CHECKING is not."""
    src = GEOLIB / "data" / "images.py"
    fake = tmp_path / "geolib" / "data" / "images.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..apps import report\n"
                    "def f():\n    from ..training.loop import run\n    from .. import paths\n")
    monkeypatch.setattr(f"{__name__}.GEOLIB", tmp_path / "geolib")
    for p in (tmp_path / "geolib" / "training" / "loop.py", tmp_path / "geolib" / "paths.py",
              tmp_path / "geolib" / "apps" / "report.py"):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("")
    assert geolib_imports(fake) == {"training.loop": 5, "paths": 6}
    assert src.exists()


def test_known_exceptions_are_still_needed():
    graph = import_graph()
    gone = [f"{a} → {b}" for a, b in KNOWN_EXCEPTIONS if b not in graph.get(a, {})]
    assert not gone, f"no longer imported: {gone}; delete them from KNOWN_EXCEPTIONS in tests/test_packaging.py"


def test_the_package_face_names_resolve():
    """Each name `geolib` offers lazily is found where its table says (a moved module fails here)."""
    import geolib

    for name in geolib.__all__:
        assert getattr(geolib, name) is not None, name
    with pytest.raises(AttributeError):
        geolib.no_such_name  # noqa: B018


def test_no_module_is_left_at_an_old_flat_path():
    """The layout moved modules into layers without shims: a top-level file is core or a face."""
    top = sorted(p.stem for p in GEOLIB.glob("*.py"))
    assert set(top) <= set(CORE) | set(FACES), f"geolib/{set(top) - set(CORE) - set(FACES)}.py: move into a layer"
