"""`python -m geolib train`: Phase 1 outside a notebook, as notebook 02 trains it; DDP under torchrun."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..training.crossview import phase1_fit_options, phase1_model, phase1_train_config
from ..training.crossview import phase1_distillation, train_crossview
from ..data.datasets import GeoDataset, ImageItem


def _none_or(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """A flag parser that also takes "none"/"null" (an optional setting unset)."""
    def parse(text: str) -> Any:
        return None if text.strip().lower() in ("none", "null") else convert(text)
    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


_json_or_text.__name__ = "JSON"


def flag_kind(hint: Any) -> tuple[str, Callable[[str], Any] | None, tuple[Any, ...] | None]:
    """(kind, parser, choices) of a flag for a field's type hint: bool, int, float, a fixed set of
    strings, text, or JSON (lists, dicts, and text-or-list settings such as `teachers`)."""
    import types
    import typing

    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    optional = type(None) in args
    kinds = [a for a in args if a is not type(None)]
    wrap = _none_or if optional else (lambda f: f)
    if kinds == [bool]:
        return "bool", None, None
    if len(kinds) == 1 and typing.get_origin(kinds[0]) is typing.Literal:
        return "choice", wrap(str), typing.get_args(kinds[0]) + ((None,) if optional else ())
    if kinds == [int]:
        return "int", wrap(int), None
    if kinds == [float]:
        return "float", wrap(float), None
    if kinds == [str]:
        return "str", wrap(str), None
    return "json", wrap(_json_or_text), None


def build_parser():
    """One flag per field of `geolib.config.Phase1` (`common`'s included), typed by the field's type
    and documented by its comment, so a new setting is a new flag without touching this parser.
    A flag not given is absent from the parsed namespace (`argparse.SUPPRESS`), so the namespace
    holds exactly the settings the command line named."""
    import argparse

    from ..config import Phase1
    from ..profiles import PROFILE_NAMES, PROFILES

    p = argparse.ArgumentParser(prog="python -m geolib train",
                                description="Train Phase 1 outside a notebook, teachers included, as notebook 02 "
                                            "does; under torchrun it runs DDP. Unset flags take the profile's value.")
    p.add_argument("--profile", default="default", choices=PROFILE_NAMES)
    p.add_argument("--u1652-root", "--data-root", dest="u1652_root",
                   help="a University-1652 root holding train/ and test/; default: the synthetic world's")
    p.add_argument("--u1652-coordinates", help="CSV building -> utm_east, utm_north (needed by --sampling gps)")
    p.add_argument("--out", help="checkpoint folder (default outputs/<profile>/checkpoints/phase1)")
    p.add_argument("--dry-run", action="store_true",
                   help="the profile's models and sizes on capped work (geolib.dryrun): does this command get through?")
    hints, docs = Phase1.types(), Phase1.help()
    default = Phase1.build({**PROFILES["default"]["common"], **PROFILES["default"]["phase1"]}, "profile 'default'")
    for key in sorted(Phase1.settable()):
        kind, parse, choices = flag_kind(hints[key])
        flag = f"--{key.replace('_', '-')}"
        helptext = docs.get(key, "") + f" [default profile: {json.dumps(default[key])}]"
        unset = argparse.SUPPRESS
        if kind == "bool":
            p.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=unset, help=helptext)
        elif kind == "choice":
            p.add_argument(flag, dest=key, type=parse, default=unset, choices=choices, help=helptext)
        else:
            meta = {"json": "JSON", "int": "N", "float": "X"}.get(kind, key.split("_")[-1].upper())
            p.add_argument(flag, dest=key, type=parse, default=unset, metavar=meta,
                           help=helptext + (" (JSON)" if kind == "json" else ""))
    return p


def validate_phase1(cfg: Mapping[str, Any]) -> list[str]:
    """One line per setting that cannot train, so a bad command fails before any data is read.
    The types (an int, a JSON object, a list of names) are `resolve`'s check; these are the ranges."""
    errors = [f"--{key.replace('_', '-')} must be an integer ≥ 1, got {cfg[key]!r}"
              for key in ("epochs", "batch_size", "image_size", "eval_every") if cfg[key] < 1]
    if not cfg["lr"] > 0:
        errors.append(f"--lr must be a number > 0, got {cfg['lr']!r}")
    if cfg["minutes"] is not None and not cfg["minutes"] >= 0:
        errors.append(f"--minutes must be a number ≥ 0 or none, got {cfg['minutes']!r}")
    return errors


def dry_run_dataset(ds: GeoDataset) -> GeoDataset:
    """The share of a dataset a dry run touches: the train places of `dryrun.STEPS` batches and
    `dryrun.items` of every evaluated (split, role, view) set."""
    from dataclasses import replace

    from .. import dryrun

    train = [it for it in ds.items if it.split == "train"]
    keep = dryrun.label_cap([it.label for it in train], 4 * dryrun.STEPS * dryrun.BATCH) or set()
    items = [it for it in train if it.label in keep]
    groups: dict[tuple[str, str, str], list[ImageItem]] = {}
    for it in ds.items:
        if it.split != "train":
            groups.setdefault((it.split, it.role, it.view), []).append(it)
    for group in groups.values():
        items += dryrun.items(group)
    return replace(ds, items=items, pairs=[])


def main(argv: list[str] | None = None) -> int:
    """`python -m geolib train …`; `torchrun --nproc_per_node N -m geolib train …` for DDP.

    Bad arguments and dataset errors print one message and exit (2 and 1), without a traceback.
    """
    import os
    import sys

    from . import dataroots
    from .. import dryrun
    from ..data.datasets import DatasetError
    from ..training.needs import NeedMissing, Needs
    from ..training.needs import phase1 as phase1_needs
    from ..paths import outputs_root, phase1_checkpoint_dir
    from ..profiles import resolve

    args = build_parser().parse_args(argv)
    data_flags = ("profile", "out", "dry_run", "u1652_root", "u1652_coordinates")
    overrides = {k: v for k, v in vars(args).items() if k not in data_flags}  # the settings given
    if args.dry_run:
        os.environ[dryrun.ENV] = "1"  # resolve() then caps epochs, batches and the world's size
    try:
        cfg = resolve(args.profile, "phase1", **overrides)
    except ValueError as err:  # a value of the wrong type, e.g. --model-options that is not a JSON object
        print(f"error: {err}", file=sys.stderr)
        return 2
    for key, value in overrides.items():
        if value is None:
            cfg[key] = None  # "--minutes none", "--teachers none": unset, not the profile's value
    errors = validate_phase1(cfg)
    if args.u1652_root and not Path(args.u1652_root).is_dir():
        errors.append(f"--u1652-root {args.u1652_root} is not a folder; give the University-1652 root")
    if errors:
        for line in errors:
            print(f"error: {line}", file=sys.stderr)
        return 2
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        backend = "nccl" if cfg["device"].startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
        if cfg["device"].startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    rank = int(os.environ.get("RANK", "0"))
    try:  # the data as notebook 02 reads it
        data = dataroots.u1652(args.profile, cfg["preset"], cfg["seed"], args.u1652_root, args.u1652_coordinates)
        ds = data.load()
        cfg = phase1_needs(cfg, ds.items, Needs(log=print if rank == 0 else (lambda _: None)))
    except (DatasetError, FileNotFoundError, NeedMissing) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if dryrun.active():
        ds = dry_run_dataset(ds)
    net = phase1_model(cfg)
    train_cfg = phase1_train_config(cfg)
    out = Path(args.out) if args.out else phase1_checkpoint_dir(args.profile)
    # as notebook 02: teachers cached under outputs/cache/teachers; rank 0 embeds, the others then read
    if world_size > 1 and rank > 0:
        torch.distributed.barrier()
    distill, status = phase1_distillation(cfg, ds, net, outputs_root() / "cache" / "teachers",
                                          log=print if rank == 0 else (lambda _: None))
    if world_size > 1 and rank == 0:
        torch.distributed.barrier()
    if rank == 0 and status:
        print(f"teachers: {status}")
    res = train_crossview(net, ds, train_cfg, out, **phase1_fit_options(cfg), progress=rank == 0,
                          extra_loss=distill, extra_modules=[distill] if distill else [],
                          eval_directions=(("street", "drone"), ("street", "satellite")) if rank == 0 or world_size == 1 else ())
    if rank == 0:
        print(f"trained {len(res.history)} epoch(s); last: {res.history[-1] if res.history else None}")
        print(f"checkpoints in {out}")
    if world_size > 1:
        torch.distributed.destroy_process_group()
    return 0
