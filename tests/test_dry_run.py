"""The published path runs: `./run_all.sh --profile full --dry-run` on data laid out exactly as the
public releases are (the synthetic world's release-exact copies), and on release-like trees built
without the world (tiny images, no side files, the release's folder names).

The README's commands for the published results are these runs with real roots.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geolib.records import read_records  # noqa: F401  (records are read from each run's own root below)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def run(outputs: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOLIB_")}
    env.update(GEOLIB_OUTPUTS=str(outputs), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "geolib", "run", "--no-report", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


def records(outputs: Path, profile: str, source: str) -> list[dict]:
    path = outputs / "dry-run" / profile / "metrics" / f"{source}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    from geolib.data.release import write_release
    from geolib.world.build import build_world

    world = build_world("smoke", seed=0, out=tmp_path_factory.mktemp("world") / "w", progress=False, record=False)
    return write_release(world)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    from tiny_teachers import tiny_teacher_dirs

    return tiny_teacher_dirs(tmp_path_factory.mktemp("teachers"))


def full_dry_run(out: Path, release: dict, teachers: dict, *only: str) -> dict:
    """`--profile full --dry-run` of some notebooks with every data root as the README's published
    commands give them; returns the run's pipeline summary."""
    params = {"u1652_root": str(release["university1652"]),
              "u1652_regions": str(release["sidefiles"] / "university1652_regions.csv"),
              "vpr_root": str(release["sf-xs"]),
              "vpr_test_roots": json.dumps({"tokyo-xs": str(release["tokyo-xs"]), "sf-xl": str(release["sf-xl"])}),
              "pairs_root": str(release["cvusa"]), "pairs_format": "cvusa", "teachers": json.dumps(teachers)}
    if only == ("04",):  # the runner refuses a -p name that none of the notebooks run takes
        params = {k: v for k, v in params.items() if k not in ("pairs_root", "pairs_format", "teachers")}
    picked = [a for n in only for a in ("--only", n)]
    res = run(out, "--profile", "full", "--dry-run", *picked, *[a for k, v in params.items() for a in ("-p", k, v)])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((out / "dry-run" / "full" / "pipeline.json").read_text())
    assert summary["dry_run"] and [n["notebook"][:2] for n in summary["notebooks"]] == list(only)
    print({n["notebook"]: n["seconds"] for n in summary["notebooks"]})
    return summary


# The full profile's dry run is split in two so that the suite's two workers share it: notebooks 01,
# 02, 03 and 05 in the order they depend on each other, and 04 (whose hierarchical classifier falls
# back to a random-init Phase 1 encoder when 02 has not run, saying so) on its own.
@pytest.mark.timeout(900)
def test_full_profile_dry_run_on_release_exact_data(release, teachers, tmp_path):
    """Notebooks 01, 02, 03 and 05 on the full profile (Swin-T at 224 px, CLIP + DINOv2 teachers from
    local folders, VGG16 SAFA at 112x616) on University-1652 and CVUSA as released: the commands of the
    README's published results."""
    out = tmp_path / "out"
    full_dry_run(out, release, teachers, "01", "02", "03", "05")
    # Phase 1: University-1652 has no coordinates, so GPS sampling fell back to random, and says so
    p1 = [r for r in records(out, "full", "02_phase1_crossview") if r["model"] == "phase1"]
    assert p1 and all(r["dataset"] == "university1652" for r in p1)
    assert p1[0]["config"]["sampling"] == "random" and "sampling" in p1[0]["config"]["fallbacks"]
    assert p1[0]["config"]["teachers"] and p1[0]["config"]["dry_run"] is True
    # notebook 03: part C on CVUSA with the published SAFA
    c = [r for r in records(out, "full", "03_distillation_ablation") if r["dataset"] == "cvusa"
         and r["model"].startswith("safa")]
    assert c and c[0]["config"]["backbone"] == "vgg16" and c[0]["config"]["pano_hw"] == [112, 616]


@pytest.mark.timeout(900)
def test_full_profile_dry_run_of_notebook_04_on_release_exact_data(release, teachers, tmp_path):
    """Notebook 04 on the full profile (ResNet-18 CosPlace at 512 px, EfficientNet-B0 D&C) on SF-XS,
    Tokyo-XS, SF-XL and University-1652 (with the regions side file) as released."""
    out = tmp_path / "out"
    full_dry_run(out, release, teachers, "04")
    # the course table from one trained model (SF-XS val/test, Tokyo-XS), D&C on SF-XL, and the
    # hierarchical classifier with the regions side file
    p2 = records(out, "full", "04_phase2_classifier")
    seen = {(r["model"], r["dataset"], r["split"]) for r in p2}
    for dataset, split in (("sf-xs", "val"), ("sf-xs", "test"), ("tokyo-xs", "test"), ("sf-xl", "test")):
        assert ("cosplace", dataset, split) in seen, (dataset, split, sorted(seen))
    assert any(m.startswith("dc-") and d == "sf-xl" for m, d, _ in seen)
    assert any(r["task"] == "classification" and r["dataset"] == "university1652" for r in p2)
    # saved models: train once, test anywhere
    saved = out / "dry-run" / "full" / "checkpoints" / "phase2"
    assert (saved / "cosplace" / "model.json").exists() and (saved / "hierarchical").is_dir()


@pytest.mark.timeout(300)
def test_divide_and_classify_on_sf_xl_processed(release, tmp_path):
    """D&C as published: cells of SF-XL's train tree, LR@N on its test `queries_v1` (detected)."""
    out = tmp_path / "out"
    res = run(out, "--profile", "full", "--dry-run", "--only", "04", "-p", "methods", '["dc"]',
              "-p", "vpr_root", str(release["sf-xl"]))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    dc = [r for r in records(out, "full", "04_phase2_classifier") if r["model"].startswith("dc-")]
    assert {(r["dataset"], r["split"]) for r in dc} >= {("sf-xl", "test"), ("sf-xl", "val")}
    assert all(r["protocol"] == "dc-lr-25m" and "LR@1" in r["metrics"] for r in dc)
    assert dc[0]["config"]["backbone"] == "efficientnet_b0" and dc[0]["config"]["trained_on"] == "train"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fmt", ["cvact", "vigor"])
def test_distill4geo_and_safa_dry_run_on_cvact_and_vigor_releases(release, fmt, tmp_path):
    """Distill4Geo on the pairs (B2: the full profile's teacher and a student) and SAFA (C) on the CVACT
    (.mat) and VIGOR (city folders, semi-positives) release layouts; SAFA with a small backbone here,
    since the full-size one ran in the test above: these check the data paths."""
    out = tmp_path / "out"
    res = run(out, "--profile", "full", "--dry-run", "--only", "03", "-p", "rows", '["B2", "C"]',
              "-p", "pairs_root", str(release[fmt]), "-p", "pairs_format", fmt,
              "-p", "safa_backbone", "resnet10t", "-p", "pano_hw", "[32, 128]", "-p", "sat_size", "64")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = [r for r in records(out, "full", "03_distillation_ablation") if r["dataset"] == fmt]
    models = {r["model"] for r in rows}
    assert "teacher" in models and any(m.startswith("student-") for m in models) and any(m.startswith("safa") for m in models)
    if fmt == "vigor":
        assert all("hit_rate" in r["metrics"] for r in rows)


@pytest.mark.timeout(600)
def test_release_like_trees_built_without_the_world(tmp_path):
    """Tiny trees with only the releases' folder names and no side files: every notebook either
    completes or stops in its first cells naming the need and the fix; with two seeds, as a
    `-p seeds` run."""
    from release_trees import make_all

    trees = make_all(tmp_path / "data")
    out = tmp_path / "out"
    res = run(out, "--profile", "smoke", "--dry-run",
              "-p", "u1652_root", str(trees["university1652"]),
              "-p", "vpr_root", str(trees["sf-xs"]),
              "-p", "vpr_test_roots", json.dumps({"tokyo-xs": str(trees["tokyo-xs"]), "sf-xl": str(trees["sf-xl"])}),
              "-p", "pairs_root", str(trees["cvusa"]), "-p", "pairs_format", "cvusa", "-p", "seeds", "[0, 1]")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    p2 = records(out, "smoke", "04_phase2_classifier")
    # -p seeds: each notebook's headline comparison ran again with seed 1, recorded with its seed
    seeded = {(r["model"], r["seed"]) for nb in ("02_phase1_crossview", "03_distillation_ablation", "04_phase2_classifier")
              for r in records(out, "smoke", nb)}
    assert {("phase1", 0), ("phase1", 1), ("phase1-full", 1), ("teacher", 1), ("cosplace", 1)} <= seeded
    assert {r["dataset"] for r in p2 if r["model"] == "cosplace"} >= {"sf-xs", "tokyo-xs", "sf-xl"}
    # no regions side file: the hierarchical classifier was skipped, with the fix in the notebook
    assert not [r for r in p2 if r["task"] == "classification"]
    nb = json.loads((out / "dry-run" / "smoke" / "notebooks" / "04_phase2_classifier.ipynb").read_text())
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"])
    assert "skipped hierarchical" in text and "-p u1652_regions FILE" in text


def test_a_test_only_root_as_vpr_root_stops_in_the_first_cells(tmp_path):
    """Tokyo-XS has only test/: training on it stops before any work, naming the need and the fix."""
    from release_trees import make_tokyo_xs

    root = make_tokyo_xs(tmp_path / "tokyo_xs")
    out = tmp_path / "out"
    res = run(out, "--profile", "smoke", "--dry-run", "--only", "04", "-p", "vpr_root", str(root),
              "-p", "methods", '["cosplace"]', timeout=300)
    # no saved model and no train split: CosPlace is skipped with the reason; the notebook completes
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    nb = json.loads((out / "dry-run" / "smoke" / "notebooks" / "04_phase2_classifier.ipynb").read_text())
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"])
    assert "has no train split" in text and "skipped cosplace" in text
