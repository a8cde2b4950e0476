"""Notebook 01's steps on tiny hand-made inputs: roots by kind, world tables, figures."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from geolib.apps import exploration  # noqa: E402


def test_given_roots_are_named_by_kind(tmp_path):
    found, meta = exploration.roots("smoke", "smoke", 0, u1652_root=tmp_path / "u", pairs_root=tmp_path / "p",
                                    pairs_format="vigor", vpr_test_roots={"tokyo-xs": tmp_path / "t"})
    assert meta is None
    assert found == {"university1652": tmp_path / "u", "vigor": tmp_path / "p", "vpr:tokyo-xs": tmp_path / "t"}


def test_world_tables_count_places_per_region():
    style = {"angle": 12.34, "floors": [2, 5], "roof_hue": 100.4, "sun_el": 40.06}
    meta = {"places": [{"label": 1, "region": 0, "role": "train", "height": 10.0},
                       {"label": 2, "region": 0, "role": "test", "height": 20.0},
                       {"label": 3, "region": 1, "role": "test", "height": 30.0}],
            "regions": [{"index": 0, "split": "train", "buildings": 2, "style": style},
                        {"index": 1, "split": "test", "buildings": 1, "style": style},
                        {"index": 2, "split": "test", "buildings": 0, "style": style}]}
    places, regions, roles = exploration.world_tables(meta)
    assert len(places) == 3 and list(regions["places"]) == [2, 1, 0]
    assert roles.loc["test", "places"] == 2 and roles.loc["test", "mean_height_m"] == 25.0


def test_image_grid_saves_and_skips_empty(tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((8, 8, 3), i * 60, np.uint8)).save(paths[-1])
    fig = exploration.image_grid(paths, "three", ncol=2, save=tmp_path / "grid.png")
    assert len([ax for ax in fig.axes if ax.images]) == 3 and (tmp_path / "grid.png").is_file()
    assert exploration.image_grid([], "none") is None


def test_polar_figure_needs_the_split_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="val-19zl.csv"):
        exploration.polar_figure(tmp_path)
    (tmp_path / "splits").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "tile.png")
    Image.fromarray(np.zeros((8, 32, 3), np.uint8)).save(tmp_path / "pano.png")
    (tmp_path / "splits" / "val-19zl.csv").write_text("tile.png,pano.png\n")
    fig = exploration.polar_figure(tmp_path)
    assert [ax.images[0].get_array().shape[:2] for ax in fig.axes] == [(16, 16), (8, 32), (8, 32)]


def _items(tmp_path):
    from geolib.data.datasets import ImageItem

    items = []
    for label in (1, 2):
        for view, n in (("street", 3), ("drone", 2), ("satellite", 1)):
            for i in range(n):
                path = tmp_path / f"{label}_{view}_{i}.png"
                Image.fromarray(np.full((8, 8, 3), 40 * label + i, np.uint8)).save(path)
                split = "train" if label == 1 else "test"
                items.append(ImageItem(path, view, split, "train" if split == "train" else "gallery", label))
    return items


def test_label_distribution_and_sample_grids(tmp_path):
    items = _items(tmp_path)
    fig = exploration.label_distribution_figure(items, save=tmp_path / "dist.png")
    assert [ax.get_title() for ax in fig.axes] == ["street: images per place", "drone: images per place",
                                                  "satellite: images per place"]
    assert (tmp_path / "dist.png").is_file()
    figs = exploration.sample_grids(items, tmp_path, seed=0)
    # a grid per view of the train split (place 1 only), then every view of the first place
    assert len(figs) == 4 and sorted(p.name for p in tmp_path.glob("01_*.png")) == [
        "01_grid_drone.png", "01_grid_satellite.png", "01_grid_street.png", "01_one_place.png"]
    assert len([ax for ax in figs[0].axes if ax.images]) == 3 and len([ax for ax in figs[3].axes if ax.images]) == 6
