"""`check-data`: validate a dataset before an hour of training, not during it.

Warnings (empty class folders, stray files, VPR queries with no database image within 25 m) do not
fail the check: the real University-1652 has the first two, SF-XL the third. Errors (unreadable or
oversized images, names that do not parse, missing split files, no images at all) do.

Exit codes: 0 OK, 1 the data has errors, 2 the command line is wrong (unknown split or mode, a root
folder that does not exist). The report goes to stdout, errors to stderr.
"""
from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .datasets import FORMATS, GeoDataset, Problem, load_dataset
from .images import inspect_image

# The splits each format's loader knows; VPR's are whatever folders its root holds.
FORMAT_SPLITS: dict[str, tuple[str, ...]] = {"university1652": ("train", "test"), "cvusa": ("train", "val"),
                                             "cvact": ("train", "val"), "vigor": ("train", "test")}
VIGOR_MODES = ("cross", "same")
VPR_RADIUS = 25.0  # metres; the `vpr-25m` protocol's positive radius (inclusive)
LAYOUTS = {
    "university1652": "train/<view>/<id>/ and test/{query,gallery}_<view>/<id>/",
    "cvusa": "splits/{train,val}-19zl.csv naming bingmap/ and streetview/ images",
    "cvact": "ACT_data.mat beside ANU_data_small/",
    "vigor": "<city>/{panorama,satellite}/ with splits/<city>/ label files",
    "vpr": "<split>/database/ and <split>/queries/ of @-named images",
    "folder": "any tree of .jpg/.jpeg/.png files",
}
MAX_LISTED = 10  # converted files / positive-less queries named in the report


class UsageError(ValueError):
    """A command line that cannot describe a check: exit code 2, one line, no traceback."""


def check_data(fmt: str, root: str | Path, *, decode: bool = True, workers: int = 2,
               progress: bool = True, **options: Any) -> GeoDataset:
    """Load `root` without raising, then (with `decode`) decode every image and add its problems.

    Odd but usable images (grayscale, RGBA, CMYK, 16-bit, EXIF-rotated) are converted, not
    reported as errors; how many needed it is kept in `options["converted"]`, which files in
    `options["converted_files"]` ((path, note) pairs). A tree with no image for `fmt` is an error:
    a wrong `--format` would otherwise pass with nothing checked.
    """
    ds = load_dataset(fmt, root, check="none" if decode else "quick", strict=False, **options)
    if not ds.items and not any(p.severity == "error" and p.path == str(ds.root) for p in ds.problems):
        ds.problems.append(Problem("error", str(ds.root), f"no images found for format {fmt}; it expects "
                                   f"{LAYOUTS.get(fmt, 'its own layout')} (wrong --format or ROOT?)"))
    if fmt == "vpr":
        _check_vpr_positives(ds)
    if not decode:
        return ds
    paths = [it.path for it in ds.items]
    converted: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(inspect_image, paths, chunksize=16)
        for path, (error, note) in tqdm(zip(paths, results), total=len(paths), desc="decoding images",
                                        disable=not progress or not paths, unit="img"):
            if error:
                ds.problems.append(Problem("error", str(path), error.split(": ", 1)[-1]))
            elif note:
                converted.append((str(path), note))
    ds.options["converted"] = len(converted)
    ds.options["converted_files"] = converted
    return ds


def _check_vpr_positives(ds: GeoDataset, radius: float = VPR_RADIUS) -> None:
    """Warn about queries with no database image within `radius` m: recall counts them as misses."""
    queries = ds.select(role="query")
    database = ds.select(role="gallery")
    if not queries or not database:
        return  # a missing folder is already an error of its own
    import numpy as np
    from scipy.spatial import KDTree  # a fifth of sklearn.neighbors' import time, for one nearest distance

    tree = KDTree(np.array([[d.utm_east, d.utm_north] for d in database], np.float64))
    nearest, _ = tree.query(np.array([[q.utm_east, q.utm_north] for q in queries], np.float64), k=1)
    lonely = [q for q, dist in zip(queries, nearest) if not dist <= radius]  # inclusive, as vpr_positives
    if lonely:
        names = ", ".join(q.path.name for q in lonely[:MAX_LISTED])
        more = f" and {len(lonely) - MAX_LISTED} more" if len(lonely) > MAX_LISTED else ""
        folder = lonely[0].path.parent
        ds.problems.append(Problem("warning", str(folder), f"{len(lonely)} of {len(queries)} queries have no "
                                   f"database image within {radius:g} m, so they count as misses in every "
                                   f"recall: {names}{more}"))
    ds.options["queries_without_positive"] = len(lonely)


def report_lines(ds: GeoDataset, max_problems: int = 200) -> tuple[list[str], list[str]]:
    """(stdout lines, stderr lines): the summary and warnings, then the errors and a FAILED verdict."""
    s = ds.summary()
    out = [f"{s['format']} dataset at {s['root']}", f"  images: {s['images']}   views: {', '.join(s['views']) or '-'}"]
    if s["pairs"]:
        out.append(f"  one-to-one pairs: {s['pairs']}")
    out.append(f"  {'split/role/view':34s} {'images':>8s} {'classes':>8s}")
    for key, g in s["groups"].items():
        out.append(f"  {key:34s} {g['images']:8d} {g['classes']:8d}")
    empty = s["classes_without_images"]
    out.append(f"  classes without images: {len(empty)}" + (f" ({', '.join(empty[:10])}{' …' if len(empty) > 10 else ''})" if empty else ""))
    if "converted" in ds.options:
        out.append(f"  images converted on load (mode/EXIF): {ds.options['converted']}")
        files = ds.options.get("converted_files") or []
        out += [f"    {path}: {note}" for path, note in files[:MAX_LISTED]]
        if len(files) > MAX_LISTED:
            out.append(f"    … and {len(files) - MAX_LISTED} more")
    errors, warnings = ds.errors, ds.warnings
    shown_errors = errors[:max_problems]
    shown_warnings = warnings[:max(0, max_problems - len(shown_errors))]
    out += [str(p) for p in shown_warnings]
    err = [str(p) for p in shown_errors]
    hidden = len(errors) + len(warnings) - len(shown_errors) - len(shown_warnings)
    if hidden:
        (err if errors else out).append(f"... {hidden} more problems not shown (--max-problems)")
    verdict = f"{len(errors)} error(s), {len(warnings)} warning(s)"
    (err if errors else out).append(f"{'FAILED' if errors else 'OK'}: {verdict}")
    return out, err


def format_report(ds: GeoDataset, max_problems: int = 200) -> str:
    """The whole report as one text (stdout part, then the errors)."""
    out, err = report_lines(ds, max_problems)
    return "\n".join(out + err)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m geolib check-data",
                                description="Validate a dataset folder; exit 1 when it has errors, "
                                            "2 on a wrong command line.")
    p.add_argument("root", type=Path, help="dataset root folder")
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    p.add_argument("--split", help="university1652: train|test (default both); cvusa, cvact: train|val "
                                   "(default both); vigor: train|test (default test); vpr: a folder under "
                                   "ROOT (default test)")
    p.add_argument("--query-folder", default=None, help="vpr: query folder name (default queries), e.g. queries_v1")
    p.add_argument("--database-folder", default=None, help="vpr: database folder name (default database)")
    p.add_argument("--mode", help="vigor: cross (cross-area, default) or same (same-area)")
    p.add_argument("--coordinates", type=Path, default=None,
                   help="university1652: side file building -> utm_east, utm_north (checked against the folders)")
    p.add_argument("--regions", type=Path, default=None,
                   help="university1652: side file building -> region (checked against the folders)")
    p.add_argument("--quick", action="store_true", help="check file ends only, do not decode every image")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-problems", type=int, default=200)
    return p


def loader_options(args: argparse.Namespace) -> dict[str, Any]:
    """The loader keywords for the command line, or `UsageError` naming the valid choices."""
    fmt, root = args.fmt, args.root
    if not root.exists():
        raise UsageError(f"{root}: no such folder; give the dataset root folder")
    if not root.is_dir():
        raise UsageError(f"{root}: is a file, not a folder; give the dataset root folder")
    if args.mode is not None and fmt != "vigor":
        raise UsageError(f"--mode applies to --format vigor only; drop it for {fmt}")
    for flag, value in (("--query-folder", args.query_folder), ("--database-folder", args.database_folder)):
        if value is not None and fmt != "vpr":
            raise UsageError(f"{flag} applies to --format vpr only; drop it for {fmt}")
    side = {k: v for k, v in (("coordinates", args.coordinates), ("regions", args.regions)) if v is not None}
    for flag, value in side.items():
        if fmt != "university1652":
            raise UsageError(f"--{flag} applies to --format university1652 only; drop it for {fmt}")
        if not value.is_file():
            raise UsageError(f"--{flag} {value}: no such file; give the CSV (see docs/data.md)")
    if fmt == "folder":
        if args.split is not None:
            raise UsageError("--format folder has no splits (every image is checked); drop --split")
        return {}
    options: dict[str, Any] = {}
    if fmt == "vpr":
        splits = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
        split = args.split or "test"
        if split not in splits:
            given = f"--split {split}" if args.split else f"the default split {split!r}"
            raise UsageError(f"{given} is not a folder of {root}; choose one of: {', '.join(splits)}" if splits
                             else f"{root} holds no split folders (test/, train/, …); point ROOT at the dataset folder")
        options["split"] = split
        if args.query_folder:
            options["query_folder"] = args.query_folder
        if args.database_folder:
            options["database_folder"] = args.database_folder
        return options
    valid = FORMAT_SPLITS[fmt]
    if args.split is not None and args.split not in valid:
        raise UsageError(f"--split {args.split} is not a {fmt} split; choose one of: {', '.join(valid)}")
    if fmt == "vigor":
        if args.mode is not None and args.mode not in VIGOR_MODES:
            raise UsageError(f"--mode {args.mode} is not a VIGOR mode; choose one of: {', '.join(VIGOR_MODES)}")
        options.update({k: v for k, v in (("split", args.split), ("mode", args.mode)) if v is not None})
    elif args.split is not None:
        options["splits"] = (args.split,)
    return {**options, **side}


def _cli_wording(ds: GeoDataset) -> None:
    """The loaders speak of Python keywords; on the command line the user needs the flags."""
    for p in ds.problems:
        p.message = p.message.replace("(set query_folder/database_folder)",
                                      "(choose them with --query-folder / --database-folder)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = loader_options(args)
    except UsageError as err:
        print(f"check-data: error: {err}", file=sys.stderr)
        return 2
    ds = check_data(args.fmt, args.root, decode=not args.quick, workers=args.workers, **options)
    _cli_wording(ds)
    out, err = report_lines(ds, args.max_problems)
    print("\n".join(out), flush=True)
    if err:
        print("\n".join(err), file=sys.stderr, flush=True)
    return 1 if ds.errors else 0
