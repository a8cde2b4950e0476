"""vpr_train: batched per-image augmentation (identities, ranges, per-image draws), Phase 2 training through
geolib.training.loop (dry-run caps, resume checks), and the rules for a folder that already holds a saved model."""
import pytest
import torch

from geolib.training.groups import Augment, color_jitter, normalize, random_resized_crop


def _batch(n=6, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def test_no_augmentation_is_only_normalisation():
    x = _batch()
    out = Augment(16, 0.0, 0.0, 0.0, 0.0, 0.0)(x)
    torch.testing.assert_close(out, normalize(x))


def test_jitter_keeps_range_and_draws_per_image():
    torch.manual_seed(0)
    x = _batch(n=1).float().div(255).repeat(8, 1, 1, 1)  # the same image eight times
    out = color_jitter(x, 0.7, 0.7, 0.7, 0.5)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert len({round(float(o.mean()), 5) for o in out}) == 8  # each copy got its own draw


def test_hue_rotation_leaves_gray_and_full_turn_alone():
    gray = torch.full((2, 3, 4, 4), 0.4)
    torch.testing.assert_close(color_jitter(gray, 0, 0, 0, 0.5), gray, atol=1e-5, rtol=0)
    x = _batch(n=2, size=4).float().div(255)
    torch.manual_seed(1)
    small = color_jitter(x, 0, 0, 0, 1e-6)  # a vanishing rotation is the identity
    torch.testing.assert_close(small, x, atol=1e-4, rtol=0)


def test_crop_identity_and_per_image_crops():
    x = _batch(n=4, size=16).float().div(255)
    torch.testing.assert_close(random_resized_crop(x, 16, 0.0), x)
    # area 1 and ratio 1: the crop is the whole image
    torch.testing.assert_close(random_resized_crop(x, 16, 1e-9, (1.0, 1.0)), x, atol=1e-4, rtol=0)
    torch.manual_seed(0)
    same = x[:1].repeat(5, 1, 1, 1)
    out = random_resized_crop(same, 8, 0.6)
    assert out.shape == (5, 3, 8, 8)
    assert len({round(float(o.sum()), 3) for o in out}) == 5


def test_augment_output_shape_and_type():
    out = Augment(12)(_batch(size=16))
    assert out.shape == (6, 3, 12, 12) and out.dtype == torch.float32


def _tiny_run(out_dir=None, epochs=3, batches=5, lr=0.1):
    from types import SimpleNamespace

    from torch import nn

    from geolib.training.groups import run_training, training_settings

    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    calls = []

    def step(batch, epoch):
        calls.append((epoch, batch))
        return model(torch.ones(1, 2)).pow(2).sum()

    cfg = SimpleNamespace(epochs=epochs, seed=0, device="cpu", lr=lr)
    res = run_training(model, [{"params": model.parameters(), "lr": lr}], step, lambda epoch, rng: list(range(batches)),
                       cfg, training_settings(vars(cfg)), out_dir=out_dir, progress=False)
    return res, calls


def test_training_honours_dry_run_caps(monkeypatch):
    from geolib import dryrun

    res, calls = _tiny_run()
    assert len(calls) == 15 and len(res.history) == 3
    monkeypatch.setenv(dryrun.ENV, "1")
    res, calls = _tiny_run()
    assert len(res.history) == dryrun.EPOCHS and len(calls) == dryrun.EPOCHS * dryrun.STEPS


def test_a_real_run_does_not_resume_a_dry_runs_checkpoint(tmp_path, monkeypatch):
    from geolib import dryrun

    monkeypatch.setenv(dryrun.ENV, "1")
    _tiny_run(tmp_path / "run")
    assert (tmp_path / "run" / "last.json").exists()
    monkeypatch.delenv(dryrun.ENV)
    res, calls = _tiny_run(tmp_path / "run")
    assert res.resumed_from == 0 and len(calls) == 15
    res, calls = _tiny_run(tmp_path / "run", epochs=4)  # a real checkpoint is resumed
    assert res.resumed_from == 3 and len(calls) == 5


def test_an_unfinished_run_of_other_settings_is_refused(tmp_path):
    """The loop keeps the settings flat in `last`; both the folder check and the loop name the change."""
    import json

    from geolib.training.groups import run_settings, saved_model_state, training_settings

    _tiny_run(tmp_path / "run", epochs=2)
    config = json.loads((tmp_path / "run" / "last.json").read_text())["meta"]["config"]
    wanted = training_settings({"epochs": 2, "seed": 0, "lr": 0.1})
    assert run_settings(config) == wanted and config["optimizer"] == "adam"
    assert saved_model_state(tmp_path / "run", "x", {**wanted, "epochs": 3}) == "train"  # longer: continues
    with pytest.raises(ValueError, match=r"unfinished x run .*lr: saved 0.1, now 0.2"):
        saved_model_state(tmp_path / "run", "x", {**wanted, "lr": 0.2})
    with pytest.raises(ValueError, match=r"other settings \(lr: saved 0.1, now 0.2\)"):
        _tiny_run(tmp_path / "run", epochs=3, lr=0.2)


def test_default_optimisation_fields_stay_out_of_the_settings():
    from geolib.training.groups import LOOP_DEFAULTS, training_settings

    assert training_settings({"lr": 1.0, **LOOP_DEFAULTS}) == {"lr": 1.0}  # saved models keep their hash
    assert training_settings({"lr": 1.0, **LOOP_DEFAULTS, "grad_clip": 1.0}) == {"lr": 1.0, "grad_clip": 1.0}


def test_saved_model_state_rules(tmp_path, monkeypatch):
    from torch import nn

    from geolib import dryrun
    from geolib.training.groups import save_model_files, saved_model_state, settings_hash

    a = {"lr": 0.1, "epochs": 2}
    assert saved_model_state(None, "x", a) == "none" and saved_model_state(tmp_path, "x", a) == "train"
    save_model_files(tmp_path, nn.Linear(1, 1), "x", settings=a, settings_hash=settings_hash(a), dry_run=False)
    assert saved_model_state(tmp_path, "x", a) == "load"
    assert saved_model_state(tmp_path, "x", {**a, "epochs": 5}) == "train"  # longer: the run continues
    with pytest.raises(ValueError, match="epochs: saved 2, now 1"):
        saved_model_state(tmp_path, "x", {**a, "epochs": 1})
    with pytest.raises(ValueError, match="lr: saved 0.1, now 0.2"):
        saved_model_state(tmp_path, "x", {**a, "lr": 0.2})
    with pytest.raises(ValueError, match="holds a 'x' model, not a 'y' one"):
        saved_model_state(tmp_path, "y", a)
    monkeypatch.setenv(dryrun.ENV, "1")
    assert saved_model_state(tmp_path, "x", {**a, "lr": 0.2}) == "nosave"  # a dry run leaves a real model alone
