"""`python -m geolib train`: its flags are the Phase1 dataclass's fields, typed and documented by it."""
import argparse

import pytest

from geolib.config import Phase1
from geolib.apps.train_cli import build_parser, main


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    data = {"help", "profile", "u1652_root", "u1652_coordinates", "out", "dry_run"}
    return {a.dest: a for a in parser._actions if a.dest not in data}


def test_one_flag_per_phase1_field_with_its_comment_as_help():
    actions = _flags(build_parser())
    assert set(actions) == set(Phase1.settable())
    for name, action in actions.items():
        assert action.option_strings[0] == f"--{name.replace('_', '-')}"
        assert action.help.startswith(Phase1.help()[name]), name
    assert isinstance(actions["flip_tta"], argparse.BooleanOptionalAction)
    assert list(actions["sampling"].choices) == ["random", "gps"]


def test_flags_parse_by_the_fields_type():
    parser = build_parser()
    args = parser.parse_args(["--grad-clip", "none", "--freeze", '[".backbone."]', "--gps-pool", "64",
                              "--backbone-lr-scale", "0.5", "--distill-loss", "mse", "--teachers", "available"])
    assert args.grad_clip is None and args.freeze == [".backbone."] and args.gps_pool == 64
    assert args.backbone_lr_scale == 0.5 and args.distill_loss == "mse" and args.teachers == "available"
    for bad in (["--epochs", "none"], ["--gps-near", "1.5"], ["--sampling", "nearest"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_flags_reach_the_train_config():
    from geolib.training.crossview import phase1_train_config
    from geolib.profiles import resolve

    args = build_parser().parse_args(["--profile", "smoke", "--grad-clip", "0.5", "--freeze", '[".backbone."]',
                                      "--backbone-lr-scale", "0.25", "--gps-near", "3", "--device", "cpu"])
    overrides = {k: v for k, v in vars(args).items() if k in Phase1.settable()}
    tc = phase1_train_config(resolve(args.profile, "phase1", **overrides))
    assert (tc.grad_clip, tc.freeze, tc.backbone_lr_scale, tc.gps_near) == (0.5, (".backbone.",), 0.25, 3)


def test_a_value_of_the_wrong_type_fails_in_one_line(capsys):
    assert main(["--profile", "smoke", "--model-options", "wide"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'model_options'" in err[0] and "must be a dict" in err[0] and "'wide'" in err[0]
