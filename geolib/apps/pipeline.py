"""The papermill runner behind `run_all.sh`.

It runs `notebooks/NN_*.ipynb` in order into `outputs/<profile>/notebooks/`, passing the profile
and every `-p NAME VALUE` override to each notebook. When a cell fails it says which notebook and
which cell, and where the partial output notebook is, then exits non-zero.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..paths import REPO_ROOT, atomic_write_json, outputs_root
from ..profiles import PROFILE_NAMES

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NAME_RE = re.compile(r"^(\d\d)_.+\.ipynb$")


def discover(notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    return sorted(p for p in notebook_dir.glob("*.ipynb") if NAME_RE.match(p.name))


def notebook_parameters(notebook: Path) -> list[str]:
    """Names the notebook's `parameters` cell assigns: the only names papermill can set in it."""
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            tree = ast.parse("".join(cell["source"]))
            return [t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                    for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    if isinstance(t, ast.Name)]
    return []


# Names earlier versions took, and what replaced them.
RENAMED = {
    "data_root": "data roots are named by dataset kind: -p u1652_root DIR (University-1652), "
                 "-p vpr_root DIR (place recognition with a train split), -p vpr_test_roots '{\"tokyo-xs\": DIR}', "
                 "-p pairs_root DIR -p pairs_format cvusa|cvact|vigor",
    "university_root": "use -p u1652_root DIR",
    "query_folders": "use -p query_folder NAME (the split's query folder; detected when there is one)",
}


def check_parameters(parameters: dict[str, Any], notebooks: Sequence[Path]) -> dict[Path, dict[str, Any]]:
    """Each notebook's share of the `-p` overrides; a name no notebook of the run takes is an error.

    Papermill only logs "Passed unknown parameter" and runs on with the default, so a typo or a
    setting the notebook does not have would silently change nothing.
    """
    accepted = {nb: notebook_parameters(nb) for nb in notebooks}
    known = sorted({name for names in accepted.values() for name in names})
    unknown = [name for name in parameters if name not in known]
    if unknown:
        lines = [f"{name}: {RENAMED[name]}" for name in unknown if name in RENAMED]
        others = [name for name in unknown if name not in RENAMED]
        close = {name: difflib.get_close_matches(name, known, n=1) for name in others}
        hints = "".join(f" {name!r}: did you mean {close[name][0]!r}?" for name in others if close[name])
        if others:
            lines.append(f"unknown parameter(s) {others} for {', '.join(nb.name for nb in notebooks)};{hints} "
                         f"accepted: {', '.join(known)}")
        raise ValueError("\n".join(lines))
    return {nb: {k: v for k, v in parameters.items() if k in names} for nb, names in accepted.items()}


def parse_value(text: str) -> Any:
    """`-p` values: Python/JSON literals where they parse (3, 0.5, True, None, [1, 2]), else strings."""
    lowered = {"true": True, "false": False, "none": None, "null": None}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def select(notebooks: Sequence[Path], only: Sequence[str] = (), start: str | None = None,
           stop: str | None = None) -> list[Path]:
    """Pick notebooks by number or name prefix: `--only 02`, `--from 02 --to 04`."""
    def number(p: Path) -> str:
        return p.name[:2]

    def matches(p: Path, key: str) -> bool:
        return number(p) == key.zfill(2) or p.stem == key or p.name.startswith(key)

    picked = list(notebooks)
    if only:
        picked = [p for p in picked if any(matches(p, k) for k in only)]
        unknown = [k for k in only if not any(matches(p, k) for p in notebooks)]
        if unknown:
            raise ValueError(f"no notebook matches {unknown}; have {[p.name for p in notebooks]}")
    if start:
        picked = [p for p in picked if number(p) >= start.zfill(2)]
    if stop:
        picked = [p for p in picked if number(p) <= stop.zfill(2)]
    if not picked:
        raise ValueError("the selection matches no notebook")
    return picked


class NotebookFailed(RuntimeError):
    def __init__(self, notebook: Path, output: Path, cell: int | None, detail: str):
        where = f"cell {cell}" if cell is not None else "before any cell ran"
        super().__init__(f"FAILED {notebook.name} at {where}: {detail}\n"
                         f"partial output notebook: {output}")
        self.notebook, self.output, self.cell = notebook, output, cell


def run_notebook(notebook: Path, profile: str, parameters: dict[str, Any] | None = None,
                 out_dir: Path | None = None, log_output: bool = False,
                 progress: bool = True) -> Path:
    """Execute one notebook with papermill; raise `NotebookFailed` naming the failing cell."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    out_dir = out_dir or outputs_root() / profile / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / notebook.name
    params = {"profile": profile, **(parameters or {})}
    try:
        pm.execute_notebook(str(notebook), str(output), parameters=params, kernel_name="python3",
                            cwd=str(notebook.parent), log_output=log_output, progress_bar=progress)
    except PapermillExecutionError as err:
        # exec_count counts code cells from 1 in run order; that is the "[n]" shown in Jupyter.
        raise NotebookFailed(notebook, output, err.exec_count, f"{err.ename}: {err.evalue}") from None
    return output


def run_pipeline(profile: str, parameters: dict[str, Any], notebooks: Sequence[Path],
                 log_output: bool = False, dry_run: bool = False) -> list[dict[str, Any]]:
    shares = check_parameters(parameters, notebooks)
    os.environ.setdefault("GEOLIB_OUTPUTS", str(outputs_root()))
    if dry_run:
        from .. import dryrun

        os.environ[dryrun.ENV] = "1"
    if profile != "full" or dry_run:
        # No default run waits on a hub: missing weights fail fast with a clear message instead.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    timings = []
    for nb in notebooks:
        t0 = time.perf_counter()
        print(f"==> {nb.name} (profile {profile})", flush=True)
        output = run_notebook(nb, profile, shares[nb], log_output=log_output)
        seconds = round(time.perf_counter() - t0, 1)
        timings.append({"notebook": nb.name, "seconds": seconds, "output": str(output)})
        print(f"    done in {seconds:.1f} s -> {output}", flush=True)
    return timings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_all.sh", description="Run the geolocal notebooks in order with papermill.")
    p.add_argument("--profile", default="default", choices=PROFILE_NAMES,
                   help="smoke: seconds per notebook; default: CPU pipeline on the synthetic world; "
                        "full: published settings for a GPU and real data")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="override a notebook parameter in every notebook (repeatable)")
    p.add_argument("--only", action="append", default=[], metavar="NN",
                   help="run only this notebook (number or name; repeatable)")
    p.add_argument("--from", dest="start", metavar="NN", help="first notebook of a range")
    p.add_argument("--to", dest="stop", metavar="NN", help="last notebook of a range")
    p.add_argument("--list", action="store_true", help="list the notebooks and exit")
    p.add_argument("--log-output", action="store_true", help="stream cell output to the terminal")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report at the end")
    p.add_argument("--dry-run", action="store_true",
                   help="the profile's code path (models, sizes, teachers, data checks) with every training "
                        "capped at a few steps and every evaluation at a few dozen images: does this command "
                        "get through on this data? Outputs go to <outputs>/dry-run/")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    notebooks = discover()
    if args.list:
        print("\n".join(p.name for p in notebooks))
        return 0
    try:
        picked = select(notebooks, args.only, args.start, args.stop)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    bad = [name for name, _ in args.parameter if not name.isidentifier()]
    if bad:
        print(f"error: parameter names must be Python identifiers: {bad}", file=sys.stderr)
        return 2
    parameters = {name: parse_value(value) for name, value in args.parameter}
    try:
        check_parameters(parameters, picked)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:  # a dry run's checkpoints must never be mistaken for a real run's
        os.environ["GEOLIB_OUTPUTS"] = str(outputs_root() / "dry-run")
    try:
        timings = run_pipeline(args.profile, parameters, picked, log_output=args.log_output, dry_run=args.dry_run)
    except NotebookFailed as err:
        print(str(err), file=sys.stderr)
        return 1
    summary = {"profile": args.profile, "parameters": parameters, "dry_run": args.dry_run, "notebooks": timings}
    atomic_write_json(outputs_root() / args.profile / "pipeline.json", summary)
    if not args.no_report:
        _write_report(args.profile)
    print(f"all {len(timings)} notebook(s) passed; outputs in {outputs_root() / args.profile}")
    return 0


def _write_report(profile: str) -> None:
    try:
        from . import report
    except ImportError:
        return
    path = report.write_report(profile)
    print(f"report: {path}")
