"""Release-exact trees of the smoke world, and the independent tiny release trees, load as the
public releases do: no coordinates unless side files are given, plain VPR train trees, test-only
sets, CVACT's .mat and VIGOR's label files."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from geolib.data.datasets import load_dataset, parse_vpr_name
from geolib.data.release import TREES, write_release
from release_trees import MAKERS

SIDE = "sidefiles"


@pytest.fixture(scope="module")
def world_release(tmp_path_factory, one_torch_thread):
    """The smoke world and its release, shared by this module: 3 s to build with one torch
    thread, 14 s with two on busy shared cores (measured)."""
    from geolib.world.build import build_world

    base = tmp_path_factory.mktemp("release")
    root = build_world("smoke", seed=0, out=base / "world", progress=False, record=False)
    return root, write_release(root)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _dirs(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_dir()}


def test_trees_hold_exactly_the_release_layout(world_release):
    root, paths = world_release
    assert set(paths) == set(TREES) and {p.name for p in root.joinpath("release").iterdir()} == set(TREES) | {".complete"}
    u = paths["university1652"]
    assert {p.name for p in u.iterdir()} == {"train", "test"}
    assert {p.name for p in (u / "train").iterdir()} == {"satellite", "drone", "street", "google"}
    assert {p.name for p in (u / "test").iterdir()} == {f"{r}_{v}" for r in ("query", "gallery")
                                                      for v in ("satellite", "drone", "street")}
    assert all(p.suffix == ".jpg" and p.parent.name.isdigit() and len(p.parent.name) == 4 for p in _files(u))
    # google holds hard links of street images of the same building
    g = _files(u / "train" / "google")
    assert g and all(any(os.path.samefile(f, s) for s in (u / "train" / "street" / f.parent.name).iterdir()) for f in g)
    # distractors kept: some gallery buildings have no query
    gal = {p.name for p in (u / "test" / "gallery_satellite").iterdir()}
    qry = {p.name for p in (u / "test" / "query_satellite").iterdir()}
    assert qry < gal
    assert _dirs(paths["sf-xs"]) == {"train", "val", "val/database", "val/queries", "test", "test/database",
                                     "test/queries"}
    assert _dirs(paths["tokyo-xs"]) == {"test", "test/database", "test/queries"}
    assert _dirs(paths["sf-xl"]) == {"train", "val", "val/database", "val/queries", "test", "test/database",
                                     "test/queries_v1"}  # SF-XL's processed/ folder
    assert all("night" in p.name for p in (paths["tokyo-xs"] / "test" / "queries").iterdir())
    assert _dirs(paths["cvusa"]) == {"splits", "bingmap", "bingmap/19", "streetview", "streetview/panos"}
    assert _dirs(paths["cvact"]) == {"ANU_data_small", "ANU_data_small/streetview", "ANU_data_small/satview_polish"}
    assert {p.name for p in paths["cvact"].iterdir() if p.is_file()} == {"ACT_data.mat"}
    cities = {"NewYork", "Seattle", "Chicago", "SanFrancisco"}
    assert _dirs(paths["vigor"]) == ({"splits"} | {f"splits/{c}" for c in cities}
                                     | {f"{c}/{v}" for c in cities for v in ("panorama", "satellite")} | cities)
    for c in cities:
        assert {p.name for p in (paths["vigor"] / "splits" / c).iterdir()} == {
            "satellite_list.txt", "pano_label_balanced.txt", "same_area_balanced_train.txt",
            "same_area_balanced_test.txt"}
        for tile in (paths["vigor"] / c / "satellite").iterdir():
            assert tile.name.startswith("satellite_") and tile.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in paths[SIDE].iterdir()} == {"university1652_coordinates.csv", "university1652_regions.csv"}
    for name in TREES:
        if name != SIDE:
            assert not [p for p in _files(paths[name]) if p.name in ("world.json", "locations.csv", ".complete")]
    # images are hard links into the export, not copies
    db = next((paths["sf-xl"] / "test" / "database").iterdir())
    assert os.path.samefile(db, root / "vpr" / "test" / "database" / db.name)


def test_release_is_reused_and_refuses_a_foreign_folder(world_release, tmp_path):
    root, paths = world_release
    marker = root / "release" / ".complete"
    before = marker.stat().st_ino
    (root / ".release.building-999999999").mkdir()  # a killed run's leftovers (no such process)
    assert write_release(root) == paths and marker.stat().st_ino == before  # reused, not rebuilt
    marker.write_text("world-0000 release-0\n")  # another world's release: rebuilt, leftovers cleared
    assert write_release(root) == paths and marker.read_text().startswith(json.loads(
        (root / "world.json").read_text())["key"])
    assert not [p for p in root.iterdir() if p.name.startswith(".release.building")]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a release"):
        write_release(root, tmp_path / "mine")
    with pytest.raises(FileNotFoundError, match="world.json"):
        write_release(tmp_path)


def test_build_world_release_flag_reuses_both(world_release):
    from geolib.world.build import build_world

    root, paths = world_release
    assert build_world("smoke", seed=0, out=root, progress=False, record=False, release=True) == root
    assert (paths["cvact"] / "ACT_data.mat").is_file()


def test_side_files_give_the_world_coordinates_and_regions(world_release):
    root, paths = world_release
    world = load_dataset("university1652", root / "university1652")
    side = load_dataset("university1652", paths["university1652"],
                        coordinates=paths[SIDE] / "university1652_coordinates.csv",
                        regions=paths[SIDE] / "university1652_regions.csv")
    bare = load_dataset("university1652", paths["university1652"])
    key = lambda it: (it.split, it.role, it.view, it.label, it.path.name)  # noqa: E731
    want = {key(it): (it.utm_east, it.utm_north, it.utm_zone, it.lat, it.lon, it.meta["region"]) for it in world.items}
    got = {key(it): (it.utm_east, it.utm_north, it.utm_zone, it.lat, it.lon, it.meta["region"])
           for it in side.items if it.view != "google"}
    assert got == want and side.warnings == []
    assert len(bare.items) == len(side.items) > len(world.items)  # + google
    assert all(it.utm_east is None and it.lat is None and "region" not in it.meta for it in bare.items)


def test_every_release_tree_loads_without_errors(world_release):
    from geolib.data.validate import check_data

    _, paths = world_release
    cases = [("university1652", "university1652", {}), ("vpr", "sf-xs", {"split": "train"}),
             ("vpr", "sf-xs", {"split": "val"}), ("vpr", "sf-xs", {"split": "test"}),
             ("vpr", "tokyo-xs", {"split": "test"}), ("vpr", "sf-xl", {"split": "test", "query_folder": "queries_v1"}),
             ("cvusa", "cvusa", {}), ("cvact", "cvact", {"zone": "33T"})]
    cases += [("vigor", "vigor", {"split": s, "mode": m}) for s in ("train", "test") for m in ("cross", "same")]
    for fmt, tree, opts in cases:
        ds = check_data(fmt, paths[tree], progress=False, workers=1, **opts)
        assert ds.errors == [] and ds.items, (tree, opts, [str(p) for p in ds.problems[:3]])
    train = load_dataset("vpr", paths["sf-xs"], split="train")
    assert train.options["layout"] == "plain" and {it.role for it in train.items} == {"gallery"}


def test_sf_xs_train_is_one_group_with_one_heading_per_class(world_release):
    from geolib.training import cosplace
    from geolib.data.release import _class_and_group

    root, paths = world_release
    names = [p.name for p in (paths["sf-xs"] / "train").iterdir()]
    f = [parse_vpr_name(n) for n in names]
    e, n, h = (np.array([x[k] for x in f]) for k in ("utm_east", "utm_north", "heading"))
    classes, groups = cosplace.class_and_group(e, n, h, M=10, alpha=30, N=5, L=2)
    assert len({tuple(g) for g in groups.tolist()}) == 1
    cells: dict[tuple, set] = {}
    for c in classes.tolist():
        cells.setdefault((c[0], c[1]), set()).add(c[2])
    assert all(len(hs) == 1 for hs in cells.values())
    assert max(np.unique(classes, axis=0, return_counts=True)[1]) <= 10
    # the same formula as cosplace's, on every image of the world's train database
    fw = [parse_vpr_name(p.name) for p in (root / "vpr" / "train" / "database").iterdir()]
    ew, nw, hw = (np.array([x[k] for x in fw]) for k in ("utm_east", "utm_north", "heading"))
    for a, b in zip(_class_and_group(ew, nw, hw, 10.0, 30.0, 5, 2), cosplace.class_and_group(ew, nw, hw)):
        np.testing.assert_array_equal(a, b)


def test_cosplace_train_items_from_plain_and_divided_train(world_release):
    from geolib.training.cosplace import load_train_items

    root, paths = world_release
    plain = load_train_items(paths["sf-xs"])
    divided = load_train_items(root / "vpr")
    assert len(plain) == len(_files(paths["sf-xs"] / "train")) and all(it.heading is not None for it in plain)
    assert len(divided) == len(_files(root / "vpr" / "train"))  # database and every query folder


def test_cvact_utm_and_splits_follow_the_cvusa_pairs(world_release):
    root, paths = world_release
    meta = json.loads((root / "world.json").read_text())
    origin = {r["index"]: r["origin_utm"] for r in meta["regions"]}
    pose = {im["path"]: im for im in meta["images"]}
    ds = load_dataset("cvact", paths["cvact"], zone="33T")
    for split, csv_name in (("train", "train-19zl.csv"), ("val", "val-19zl.csv")):
        rows = list(csv.reader(open(root / "cvusa" / "splits" / csv_name)))
        pans = ds.select(split=split, view="panorama")
        assert [p.path.name for p in pans] == [f"{Path(r[0]).stem}_grdView.jpg" for r in rows]
        for r, it in zip(rows, pans):
            im = pose[f"cvusa/{r[0]}"]
            assert it.utm_east == pytest.approx(origin[im["region"]][0] + im["pose"]["x"], abs=1e-6)
            assert it.utm_north == pytest.approx(origin[im["region"]][1] + im["pose"]["y"], abs=1e-6)


def test_vigor_positive_and_semi_positives(world_release):
    _, paths = world_release
    train = load_dataset("vigor", paths["vigor"], split="train", mode="cross")
    test = load_dataset("vigor", paths["vigor"], split="test", mode="cross")
    assert {it.meta["city"] for it in train.items} == {"NewYork", "Seattle"}
    assert {it.meta["city"] for it in test.items} == {"Chicago", "SanFrancisco"}
    for ds in (train, test):
        for q, g in ds.pairs:
            pano, tile = ds.items[q], ds.items[g]
            assert (pano.lat, pano.lon) == (tile.lat, tile.lon)  # taken at its tile's centre
            semis = pano.meta["semi_positives"]
            assert len(semis) == 3 and g not in semis
            city = [it for it in ds.items if it.role == "gallery" and it.meta["city"] == pano.meta["city"]]
            dist = lambda it: math.hypot(it.lat - pano.lat, (it.lon - pano.lon) * math.cos(math.radians(pano.lat)))  # noqa: E731
            nearest = sorted((it for it in city if it is not tile), key=dist)[:3]
            assert [ds.items[s].path for s in semis] == [it.path for it in nearest]
    same_train = load_dataset("vigor", paths["vigor"], split="train", mode="same")
    same_test = load_dataset("vigor", paths["vigor"], split="test", mode="same")
    assert len(same_train.pairs) + len(same_test.pairs) == len(train.pairs) + len(test.pairs)


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_independent_tiny_trees_load(name, tmp_path):
    root = MAKERS[name](tmp_path / name)
    options = {"university1652": [{}], "cvusa": [{}], "cvact": [{}],
               "vigor": [{"split": s, "mode": m} for s in ("train", "test") for m in ("cross", "same")],
               "sf-xs": [{"split": "train"}, {"split": "val"}, {"split": "test"}],
               "tokyo-xs": [{"split": "test"}], "sf-xl": [{"split": "test", "query_folder": "queries_v1"}]}[name]
    fmt = "vpr" if name.startswith("sf-") or name == "tokyo-xs" else name
    n_images = len([p for p in _files(root) if p.suffix in (".jpg", ".jpeg", ".png")])
    assert n_images <= 60
    for opts in options:
        ds = load_dataset(fmt, root, **opts)
        assert ds.items and ds.errors == []
        if fmt == "vpr" and opts["split"] != "train":
            db, q = ds.select(role="gallery"), ds.select(role="query")
            d = np.hypot(*(np.array([[a.utm_east, a.utm_north] for a in q])[:, None]
                           - np.array([[b.utm_east, b.utm_north] for b in db])[None]).transpose(2, 0, 1))
            assert (d.min(axis=1) <= 25).all()
        if fmt == "vigor":
            assert all(len(it.meta["semi_positives"]) == 3 for it in ds.select(role="query"))
    if name == "sf-xs":
        from geolib.training.cosplace import divide_items, load_train_items

        division = divide_items(load_train_items(root), min_images_per_class=5)
        assert division.num_groups == 1 and len(division.class_ids) == 4
