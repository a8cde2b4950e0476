"""`check-data`: validate a dataset before an hour of training, not during it.

Warnings (empty class folders, stray files) do not fail the check: the real University-1652 has
both. Errors (unreadable images, names that do not parse, missing split files) do.
"""
from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .datasets import FORMATS, GeoDataset, Problem, load_dataset
from .images import inspect_image


def check_data(fmt: str, root: str | Path, *, decode: bool = True, workers: int = 2,
               progress: bool = True, **options: Any) -> GeoDataset:
    """Load `root` without raising, then (with `decode`) decode every image and add its problems.

    Odd but usable images (grayscale, RGBA, CMYK, 16-bit, EXIF-rotated) are converted, not
    reported as errors; how many needed it is kept in `options["converted"]`.
    """
    ds = load_dataset(fmt, root, check="none" if decode else "quick", strict=False, **options)
    if not decode:
        return ds
    paths = [it.path for it in ds.items]
    converted = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(inspect_image, paths, chunksize=16)
        for path, (error, note) in tqdm(zip(paths, results), total=len(paths), desc="decoding images",
                                        disable=not progress, unit="img"):
            if error:
                ds.problems.append(Problem("error", str(path), error.split(": ", 1)[-1]))
            elif note:
                converted += 1
    ds.options["converted"] = converted
    return ds


def format_report(ds: GeoDataset, max_problems: int = 200) -> str:
    s = ds.summary()
    lines = [f"{s['format']} dataset at {s['root']}", f"  images: {s['images']}   views: {', '.join(s['views']) or '-'}"]
    if s["pairs"]:
        lines.append(f"  one-to-one pairs: {s['pairs']}")
    lines.append(f"  {'split/role/view':34s} {'images':>8s} {'classes':>8s}")
    for key, g in s["groups"].items():
        lines.append(f"  {key:34s} {g['images']:8d} {g['classes']:8d}")
    empty = s["classes_without_images"]
    lines.append(f"  classes without images: {len(empty)}" + (f" ({', '.join(empty[:10])}{' …' if len(empty) > 10 else ''})" if empty else ""))
    if "converted" in ds.options:
        lines.append(f"  images converted on load (mode/EXIF): {ds.options['converted']}")
    problems = ds.errors + ds.warnings
    for p in problems[:max_problems]:
        lines.append(str(p))
    if len(problems) > max_problems:
        lines.append(f"... {len(problems) - max_problems} more problems not shown")
    verdict = "FAILED" if ds.errors else "OK"
    lines.append(f"{verdict}: {len(ds.errors)} error(s), {len(ds.warnings)} warning(s)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m geolib check-data",
                                description="Validate a dataset folder; exit 1 when it has errors.")
    p.add_argument("root", type=Path, help="dataset root folder")
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    p.add_argument("--split", help="VPR split (default test); VIGOR split (default test)")
    p.add_argument("--query-folder", default=None, help="VPR query folder name, e.g. queries_v1")
    p.add_argument("--mode", choices=("cross", "same"), help="VIGOR: cross-area or same-area")
    p.add_argument("--quick", action="store_true", help="check file ends only, do not decode every image")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-problems", type=int, default=200)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.root.exists():
        print(f"error: {args.root}: no such folder")
        return 1
    options: dict[str, Any] = {}
    if args.fmt in ("vpr", "vigor") and args.split:
        options["split"] = args.split
    if args.fmt == "vpr" and args.query_folder:
        options["query_folder"] = args.query_folder
    if args.fmt == "vigor" and args.mode:
        options["mode"] = args.mode
    ds = check_data(args.fmt, args.root, decode=not args.quick, workers=args.workers, **options)
    print(format_report(ds, args.max_problems))
    return 1 if ds.errors else 0
