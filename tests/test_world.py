"""The synthetic world: determinism, geometry consistency, export layouts, coordinates."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from geolib.world import export as E
from geolib.world import render as R
from geolib.world import generate as W
from geolib.world import build as B
from geolib.coords import latlon_to_utm, utm_to_latlon
from geolib.data.transforms import polar_transform


@pytest.fixture(scope="module")
def smoke_roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("world")
    return {name: B.build_world("smoke", seed=seed, out=base / name, progress=False, record=False)
            for name, seed in (("a", 0), ("b", 0), ("c", 1))}


@pytest.fixture(scope="module")
def smoke_world() -> W.World:
    return W.generate(W.preset_params("smoke"), 0)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ("build_stats.json",)}


def test_same_seed_is_byte_identical_and_other_seed_differs(smoke_roots):
    a, b, c = (_files(smoke_roots[k]) for k in "abc")
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    assert a["world.json"] != c["world.json"]


def test_cache_key_tracks_version_params_and_seed(monkeypatch):
    p = W.preset_params("smoke")
    key = W.cache_key(p, 0)
    assert key == W.cache_key(W.preset_params("smoke"), 0)
    assert key != W.cache_key(p, 1)
    assert key != W.cache_key(W.preset_params("smoke", image_size=72), 0)
    monkeypatch.setattr(W, "GENERATOR_VERSION", "0-test")
    assert key != W.cache_key(p, 0)


def test_cached_export_is_reused(smoke_roots):
    root = smoke_roots["a"]
    stamp = (root / "world.json").stat().st_mtime_ns
    assert B.build_world("smoke", seed=0, out=root, progress=False, record=False) == root
    assert (root / "world.json").stat().st_mtime_ns == stamp


def test_university_layout(smoke_roots):
    root = smoke_roots["a"] / "university1652"
    meta = json.loads((smoke_roots["a"] / "world.json").read_text())
    train = {int(d.name) for d in (root / "train" / "street").iterdir()}
    gallery = {int(d.name) for d in (root / "test" / "gallery_satellite").iterdir()}
    query = {int(d.name) for d in (root / "test" / "query_street").iterdir()}
    assert all(len(d.name) == 4 for d in (root / "train" / "drone").iterdir())
    assert train and query and not train & gallery
    assert query < gallery, "test galleries must hold distractors that no query has"
    roles = {p["label"]: p for p in meta["places"]}
    assert {roles[q]["role"] for q in query} == {"query"}
    assert {roles[g]["role"] for g in gallery - query} == {"distractor"}
    regions = lambda labels: {roles[x]["region"] for x in labels}  # noqa: E731
    assert not regions(train) & regions(gallery), "train and test regions must be disjoint"
    for view in ("satellite", "drone", "street"):
        for split in ("train/" + view, "test/gallery_" + view, "test/query_" + view):
            assert all(any(d.iterdir()) for d in (root / split).iterdir()), f"empty folder in {split}"
    rows = list(csv.DictReader(open(root / "locations.csv")))
    assert list(rows[0]) == ["label", "utm_east", "utm_north", "utm_zone", "lat", "lon", "region"]
    assert len(rows) == len(meta["places"])
    assert (root / "world.json").read_bytes() == (smoke_roots["a"] / "world.json").read_bytes()


def test_cvusa_layout(smoke_roots):
    root = smoke_roots["a"] / "cvusa"
    for name in ("train-19zl.csv", "val-19zl.csv"):
        rows = (root / "splits" / name).read_text().splitlines()
        assert rows
        for row in rows:
            aerial, pano, ann = row.split(",")
            assert aerial.startswith("bingmap/19/") and pano.startswith("streetview/panos/")
            assert (root / aerial).is_file() and (root / pano).is_file()
            assert Path(aerial).stem == Path(pano).stem == Path(ann).stem


def test_vpr_layout_names_and_positives(smoke_roots):
    root = smoke_roots["a"] / "vpr"
    for split in ("train", "val", "test"):
        db = list((root / split / "database").glob("*.jpg"))
        assert db
        utm = lambda p: np.array([float(p.name.split("@")[1]), float(p.name.split("@")[2])])  # noqa: E731
        db_utm = np.stack([utm(p) for p in db])
        for folder in ("queries", "queries_night", "queries_fog"):
            qs = list((root / split / folder).glob("*.jpg"))
            assert qs, f"{split}/{folder} is empty"
            for q in qs:
                f = q.name.split("@")
                assert len(f) == 16 and f[3] == "33" and f[4] == "T" and f[9] == ""
                lat, lon = utm_to_latlon(float(f[1]), float(f[2]), 33)
                assert abs(lat - float(f[5])) < 1e-5 and abs(lon - float(f[6])) < 1e-5
                assert np.linalg.norm(db_utm - utm(q), axis=1).min() <= 25.0


def test_exports_pass_check_data(smoke_roots):
    validate = pytest.importorskip("geolib.data.validate")
    for fmt in ("university1652", "cvusa", "vpr"):
        ds = validate.check_data(fmt, smoke_roots["a"] / fmt, progress=False)
        assert not ds.errors, (fmt, ds.errors[:3])


def test_utm_inverse_known_point_and_round_trip():
    # On the central meridian (15 E in zone 33) at 45 N: easting 500 km, northing k0 * M(45 deg).
    lat, lon = utm_to_latlon(500_000.0, 4_982_950.400, 33)
    assert abs(lat - 45.0) < 1e-6 and abs(lon - 15.0) < 1e-9
    for la, lo in ((45.3, 14.7), (41.9, 12.5), (47.8, 17.9)):
        e, n = latlon_to_utm(la, lo, 33)
        back = utm_to_latlon(e, n, 33)
        assert abs(back[0] - la) < 1e-8 and abs(back[1] - lo) < 1e-8
    # south of the equator: the 10,000 km false northing, and the inverse is told the hemisphere
    e, n = latlon_to_utm(-33.9, 18.4, 34)
    assert 6_000_000 < n < 10_000_000
    assert utm_to_latlon(e, n, 34, northern=False) == pytest.approx((-33.9, 18.4), abs=1e-8)
    with pytest.raises(ValueError, match="zone"):
        latlon_to_utm(45.0, 15.0, 61)


def test_polar_transform_bottom_row_is_tile_centre_and_south_is_column_zero():
    s = 64
    tile = np.zeros((s, s), np.float32)
    tile[s // 2, s // 2] = 1.0
    tile[s // 2 + 20, s // 2] = 2.0            # 20 px south of the centre
    out = polar_transform(tile, 32, 128)
    assert np.allclose(out[-1], 1.0)
    south = np.unravel_index(np.argmax(out == out.max()), out.shape)
    assert out.max() > 1.0 and south[1] in (0, 1, 127)


def test_satellite_tile_centre_is_the_place(smoke_world):
    for place in smoke_world.places:
        scene = smoke_world.regions[place.region].scene
        size = smoke_world.params.image_size
        out = R.render_satellite(scene, torch.tensor([[place.x, place.y]]), size, 48.0)
        assert int(out["bid"][0, size // 2, size // 2]) == place.building


def test_street_view_height_matches_heightmap(smoke_world):
    """The target's top edge in each street view sits at the building's height, by triangulation."""
    p = smoke_world.params
    tops, heights = [], []
    for place in smoke_world.places:
        scene = smoke_world.regions[place.region].scene
        for cam in place.street:
            pos = torch.tensor([[cam["x"], cam["y"], cam["z"]]])
            head, pitch = torch.tensor([cam["heading"]]), torch.tensor([cam["pitch"]])
            out = R.render_perspective(scene, pos, head, pitch, cam["fov"], p.image_size)
            mask = out["bid"][0] == place.building
            assert mask[:, p.image_size // 2 - 4: p.image_size // 2 + 4].any(), "target not in view centre"
            _, el = R.camera_rays(head, pitch, cam["fov"], p.image_size)
            rows, cols = torch.nonzero(mask, as_tuple=True)
            i = torch.argmin(rows)
            r, c = rows[i], cols[i]
            if r == 0:
                continue                          # cut off by the frame: no top edge to measure
            z = cam["z"] + float(out["depth"][0, r, c]) * math.tan(math.radians(float(el[0, r, c])))
            tops.append(z)
            heights.append(place.height)
    assert len(tops) >= 5
    err = np.abs(np.array(tops) - np.array(heights))
    assert np.median(err) < 1.0 and err.max() < 4.0


def test_panorama_column_matches_bearing(smoke_world):
    p = smoke_world.params
    region = smoke_world.regions[0]
    x, y, _ = W.road_points(region, 1, p, np.random.default_rng(3))[0]
    h, w = 64, 256
    out = R.render_panorama(region.scene, torch.tensor([[x, y, R.EYE_HEIGHT]]), h, w)
    bid = out["bid"][0].numpy()
    checked = 0
    angle = math.radians(region.style["angle"])
    for b in np.unique(bid[bid >= 0]):
        cols = np.unique(np.nonzero(bid == b)[1])
        (cx, cy), (hx, hy) = region.buildings["center"][b], region.buildings["half"][b]
        u = cx + np.array([-hx, hx, hx, -hx])
        v = cy + np.array([-hy, -hy, hy, hy])
        gx, gy = W._from_grid(u, v, angle)
        bearings = np.degrees(np.arctan2(gx - x, gy - y))
        centre = math.degrees(math.atan2(float(gx.mean()) - x, float(gy.mean()) - y))
        rel = (bearings - centre + 180) % 360 - 180          # footprint corners around its centre
        col_bearing = (180.0 + 360.0 * cols / w) % 360
        col_rel = (col_bearing - centre + 180) % 360 - 180
        tol = 360.0 / w * 1.5
        assert (col_rel >= rel.min() - tol).all() and (col_rel <= rel.max() + tol).all(), (
            f"building {b}: columns outside its footprint's bearings")
        checked += 1
    assert checked >= 3
    assert R.panorama_azimuths(w)[w // 2] % 360 == 0.0


def test_views_look_at_their_place(smoke_world):
    shots = [s for s in E.plan_university(smoke_world) if s.view == "drone"][:8]
    imgs, bids = E.render_batch(smoke_world, shots)
    size = smoke_world.params.image_size
    centre = bids[:, size // 2 - 6: size // 2 + 6, size // 2 - 6: size // 2 + 6]
    hits = [(c == s.target).mean() for c, s in zip(centre, shots)]
    assert np.mean(hits) > 0.5
    assert imgs.dtype == np.uint8 and imgs.shape[1:] == (size, size, 3)


def test_facade_colour_is_hue_rotated_roof_colour():
    from geolib.world.baselines import rgb_to_hsv

    roof = (40.0, 0.5, 0.7)
    h, s, _ = rgb_to_hsv(W.facade_colour(roof)[None])[0]
    assert abs((h - roof[0] - W.FACADE_HUE_SHIFT + 180) % 360 - 180) < 0.5 and abs(s - roof[1]) < 1e-3


def test_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        B.cli(["--preset", "nope"])
    with pytest.raises(SystemExit):
        B.cli(["--seed", "-1", "--out", str(tmp_path / "w")])
    other = tmp_path / "not_a_world"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        B.build_world("smoke", out=other, progress=False, record=False)


def test_records_written_once_per_key(tmp_path, smoke_roots):
    from geolib.records import read_records

    B.build_world("smoke", seed=0, out=smoke_roots["a"], progress=False, profile="smoke")
    B.build_world("smoke", seed=0, out=smoke_roots["a"], progress=False, profile="smoke")
    recs = read_records("smoke", "world")
    models = sorted(r["model"] for r in recs)
    assert models.count("oracle") == 1 and models.count("renderer") == 1
    assert {"raw-pixels", "color-histogram", "chance"} <= set(models)
    assert all(r["protocol"] == "university1652-official" for r in recs if r["model"] != "renderer")


def test_extra_train_regions_add_train_places_only():
    base = W.preset_params("smoke")
    more = W.preset_params("smoke", extra_train_regions=2)
    assert W.cache_key(base, 0) != W.cache_key(more, 0)
    a, b = W.generate(base, 0), W.generate(more, 0)
    assert [r.split for r in b.regions[len(a.regions):]] == ["train", "train"]
    old = [(p.region, p.building, p.role) for p in a.places]
    assert [(p.region, p.building, p.role) for p in b.places][:len(old)] == old  # the first regions are unchanged
    assert any(p.region >= len(a.regions) for p in b.places)
    assert {p.role for p in b.places if p.region >= len(a.regions)} == {"train"}
    assert {s.region for s in E.plan_cvusa(b)[0]} == {s.region for s in E.plan_cvusa(a)[0]}


def _plan_keys(shots: list) -> list[tuple]:
    return [(s.region, s.view, s.condition, tuple(s.paths), json.dumps(s.pose, sort_keys=True, default=float))
            for s in shots]


def test_more_vpr_train_regions_leave_other_exports_and_vpr_val_test_unchanged():
    base = W.preset_params("smoke", extra_train_regions=2)  # train regions 0, 2, 4, 5
    more = W.preset_params("smoke", extra_train_regions=2, vpr_regions=(3, 1, 1))
    assert W.cache_key(base, 0) != W.cache_key(more, 0)
    a, b = W.generate(base, 0), W.generate(more, 0)
    ra, rb = E.vpr_regions(a), E.vpr_regions(b)
    assert rb["train"][:len(ra["train"])] == ra["train"] and len(rb["train"]) == 3
    assert (rb["val"], rb["test"]) == (ra["val"], ra["test"])
    assert _plan_keys(E.plan_university(b)) == _plan_keys(E.plan_university(a))
    assert _plan_keys(E.plan_cvusa(b)[0]) == _plan_keys(E.plan_cvusa(a)[0])
    va, vb = _plan_keys(E.plan_vpr(a)), _plan_keys(E.plan_vpr(b))
    not_train = lambda keys: [k for k in keys if not k[3][0].startswith(f"{E.VPR}/train/")]  # noqa: E731
    assert not_train(vb) == not_train(va) and not_train(va)
    assert set(va) < set(vb)  # the old train shots are all still there, with the same poses and names


def test_fresh_street_photos_are_new_views_of_their_places(smoke_world, smoke_roots, tmp_path):
    """The localization demo's photos: new cameras (not an exported file), deterministic, looking at the place."""
    test_places = [p for p in smoke_world.places if p.role == "query"][:3]
    labels = [p.label for p in test_places]
    items = E.fresh_street_photos(smoke_world, labels, tmp_path / "a")
    again = E.fresh_street_photos(smoke_world, labels, tmp_path / "b")
    other = E.fresh_street_photos(smoke_world, labels, tmp_path / "c", draw=2)
    assert [it.label for it in items] == labels and all(it.view == "street" for it in items)
    assert [it.path.read_bytes() for it in items] == [it.path.read_bytes() for it in again]
    assert all(a.path.read_bytes() != b.path.read_bytes() for a, b in zip(items, other))
    exported = {p.read_bytes() for p in (smoke_roots["a"] / E.UNIVERSITY).rglob("street-*.jpg")}
    assert exported and not any(it.path.read_bytes() in exported for it in items)
    for it, place in zip(items, test_places):
        e, n, *_ = E.place_utm(smoke_world, place)
        assert (it.utm_east, it.utm_north) == (e, n)
    shots = E.plan_fresh_street(smoke_world, labels)
    _, bids = E.render_batch(smoke_world, shots)
    assert all((b == s.target).mean() > 0.05 for b, s in zip(bids, shots))  # the building fills part of the frame
    with pytest.raises(ValueError, match="not in this world"):
        E.fresh_street_photos(smoke_world, [10_000], tmp_path / "d")
