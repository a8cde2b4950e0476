"""Notebook 01's steps: which roots to look at, their validation, the world's tables and figures.

The exploration notebook reads like a tour of the data; the rules behind each stop (which folder
is which dataset, how a VPR root's splits and query folders are found, how the world's regions are
summarised) live here so that they are tested and the notebook only calls them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import dataroots

FORMATS = ("university1652", "cvusa", "cvact", "vigor")  # everything else explored is a VPR root


def roots(profile: str, preset: str, seed: int, *, u1652_root: str | Path | None = None,
          pairs_root: str | Path | None = None, pairs_format: str | None = None,
          vpr_root: str | Path | None = None, vpr_test_roots: Mapping[str, str | Path] | None = None
          ) -> tuple[dict[str, Path], dict[str, Any] | None]:
    """(name → root, the world's `world.json` or None): the given roots, else the synthetic world's
    exports and their release-exact copies (`release:<name>`), one name per dataset."""
    out: dict[str, Path] = {}
    if u1652_root or pairs_root or vpr_root or vpr_test_roots:
        if u1652_root:
            out["university1652"] = Path(u1652_root)
        if pairs_root:
            out[pairs_format or "cvusa"] = Path(pairs_root)
        if vpr_root:
            out["vpr"] = Path(vpr_root)
        for name, path in (vpr_test_roots or {}).items():
            out[f"vpr:{name}"] = Path(path)
        return out, None
    world_root = dataroots.world(profile, preset, seed)
    out = {fmt: world_root / fmt for fmt in ("university1652", "cvusa", "vpr")}
    release = dataroots.release(world_root)  # the same world, laid out exactly as the public releases
    out.update({f"release:{name}": path for name, path in release.items() if name != "sidefiles"})
    return out, json.loads((world_root / "world.json").read_text(encoding="utf-8"))


def _check(name: str, fmt: str, root: Path, **options: Any):
    """check-data on a root; a release copy's images are hard links of ones already decoded, so its
    layout is read and validated without reading the images again."""
    from ..data.datasets import load_dataset
    from ..data.validate import check_data, format_report

    if name.startswith("release:"):
        ds = load_dataset(fmt, root, check="none", strict=False, **options)
    else:
        ds = check_data(fmt, root, progress=True, **options)
    print(f"{name}:", format_report(ds, max_problems=10))
    return ds


def check_roots(roots: Mapping[str, Path], query_folder: str | None = None,
                u1652_side: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validate every root (each split of a VPR root, with its first query folder); name → dataset.

    A VPR root whose `train/` is a plain tree of @-named images (SF-XS) is read as one database.
    `u1652_side` (coordinates, regions) goes to the `university1652` root only.
    """
    from .geoclass import resolve_query_folders

    checked: dict[str, Any] = {}
    for name, root in roots.items():
        fmt = name.split(":")[-1]
        if fmt in FORMATS:
            checked[name] = _check(name, fmt, root, **(dict(u1652_side or {}) if name == "university1652" else {}))
            continue
        splits = dataroots.vpr_splits(root)
        if (root / "train").is_dir() and "train" not in splits:
            checked[f"{name}/train"] = _check(f"{name}/train (plain tree)", "vpr", root, split="train",
                                              query_folder=None, database_folder=".")
        for split in splits:
            folder = next(iter(resolve_query_folders(root, split, query_folder).values()))
            checked[f"{name}/{split}"] = _check(f"{name}/{split} ({folder})", "vpr", root, split=split,
                                                query_folder=folder)
    return checked


def group_table(checked: Mapping[str, Any]):
    """One row per (dataset, group) of the validated datasets' summaries."""
    import pandas as pd

    return pd.DataFrame([{"format": name, "group": g, **v} for name, ds in checked.items()
                         for g, v in ds.summary()["groups"].items()])


def world_tables(meta: Mapping[str, Any]):
    """(places, regions, roles) tables of a synthetic world's `world.json`: every place; per region
    its split, style and number of places; per role the number of places and their mean height."""
    import pandas as pd

    places = pd.DataFrame(meta["places"])
    regions = pd.DataFrame([{"region": r["index"], "split": r["split"], "buildings": r["buildings"],
                             "road angle": round(r["style"]["angle"], 1),
                             "floors": tuple(r["style"]["floors"]), "roof hue": round(r["style"]["roof_hue"]),
                             "sun elevation": round(r["style"]["sun_el"], 1)} for r in meta["regions"]])
    regions["places"] = regions["region"].map(places.groupby("region").size()).fillna(0).astype(int)
    roles = places.groupby(["role"]).agg(places=("label", "size"), mean_height_m=("height", "mean")).round(1)
    return places, regions, roles


def image_grid(paths: Sequence[str | Path], title: str, ncol: int = 8, save: str | Path | None = None):
    """Up to two rows of images under one title (saved to `save` when given); None for no images."""
    import matplotlib.pyplot as plt
    from PIL import Image

    paths = list(paths)[:ncol * 2]
    if not paths:
        return None
    nrow = (len(paths) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.6 * ncol, 1.7 * nrow), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, p in zip(axes.flat, paths):
        with Image.open(p) as im:
            ax.imshow(im.copy())
    fig.suptitle(title)
    fig.tight_layout()
    if save:
        fig.savefig(save, dpi=100)
    return fig


def polar_figure(cvusa_root: str | Path, save: str | Path | None = None):
    """The first validation pair of a CVUSA-layout root: aerial tile, its polar transform, and the
    panorama, stacked so that buildings line up column for column."""
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from ..data.transforms import polar_transform

    root = Path(cvusa_root)
    split = root / "splits" / "val-19zl.csv"
    lines = split.read_text(encoding="utf-8").splitlines() if split.is_file() else []
    if not lines:
        raise FileNotFoundError(f"{split}: no validation pairs; give a CVUSA root with splits/val-19zl.csv")
    row = lines[0].split(",")
    tile = np.asarray(Image.open(root / row[0]))
    pano = np.asarray(Image.open(root / row[1]))
    polar = polar_transform(tile, pano.shape[0], pano.shape[1])
    fig, axes = plt.subplots(3, 1, figsize=(10, 6), gridspec_kw={"height_ratios": [2, 1, 1]})
    for ax, img, title in zip(axes, (tile, polar, pano), ("aerial tile (north up)", "its polar transform",
                                                          "panorama at the tile centre")):
        ax.imshow(img)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    if save:
        fig.savefig(save, dpi=100)
    return fig


def label_distribution_figure(items: Sequence[Any], save: str | Path | None = None):
    """Images per place, one histogram per view with a bar per split: a place with one street image
    cannot be both a training pair and a held-out query."""
    import matplotlib.pyplot as plt
    import pandas as pd

    table = pd.DataFrame([{"view": it.view, "split": it.split, "label": it.label} for it in items])
    per_place = table.groupby(["split", "view", "label"]).size().rename("images").reset_index()
    views = [v for v in ("street", "drone", "satellite") if v in set(per_place.view)]
    fig, axes = plt.subplots(1, max(1, len(views)), figsize=(13, 3), squeeze=False)
    for ax, view in zip(axes.flat, views):
        sub = per_place[per_place.view == view]
        splits = sorted(sub.split.unique())
        ax.hist([sub[sub.split == s]["images"] for s in splits], bins=10, label=splits)
        ax.set_title(f"{view}: images per place")
        ax.legend()
    fig.tight_layout()
    if save:
        fig.savefig(save, dpi=100)
    return fig


def places_per_region_figure(places: Any):
    """Stacked bars of a world's places per region and role (gallery places, distractors, ...)."""
    ax = places.groupby(["region", "role"]).size().unstack(fill_value=0).plot.bar(stacked=True, figsize=(10, 3))
    ax.set_ylabel("places")
    ax.set_title("places per region and role")
    return ax.figure


def sample_grids(items: Sequence[Any], folder: str | Path, seed: int = 0, per_view: int = 16) -> list[Any]:
    """Grids of random train images per view, then every view of one place: what the models see.
    Saved as `01_grid_<view>.png` and `01_one_place.png` under `folder`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    figures = []
    for view in ("street", "drone", "satellite"):
        paths = [it.path for it in items if it.view == view and it.split == "train"]
        picked = sorted(rng.choice(len(paths), min(per_view, len(paths)), replace=False)) if paths else []
        figures.append(image_grid([paths[i] for i in picked], f"{view} views", save=folder / f"01_grid_{view}.png"))
    label = items[0].label
    same = [it.path for it in items if it.label == label]
    figures.append(image_grid(same, f"every view of place {label:04d}", ncol=min(8, len(same)),
                              save=folder / "01_one_place.png"))
    return [f for f in figures if f is not None]


def world_map(meta: Mapping[str, Any], places: Any, save: str | Path | None = None):
    """An interactive plotly map of a world's places by region and role, with the street cameras in grey
    (the world's regions are placed in UTM zone 33)."""
    import numpy as np
    import plotly.express as px
    import plotly.graph_objects as go

    from ..coords import utm_to_latlon

    origin = {r["index"]: r["origin_utm"] for r in meta["regions"]}
    cams = [utm_to_latlon(origin[im["region"]][0] + im["pose"]["x"], origin[im["region"]][1] + im["pose"]["y"], 33)
            for im in meta["images"] if im["view"] == "street"]
    fig = px.scatter(places, x="lon", y="lat", color=places["region"].astype(str), symbol="role",
                     hover_data=["label", "height", "floors"], title="places by region; grey: street cameras")
    fig.add_trace(go.Scatter(x=[c[1] for c in cams], y=[c[0] for c in cams], mode="markers",
                             marker=dict(size=3, color="grey"), name="street cameras"))
    fig.update_yaxes(scaleanchor="x", scaleratio=1 / np.cos(np.radians(places["lat"].mean())))
    if save:
        fig.write_html(save)
    return fig
