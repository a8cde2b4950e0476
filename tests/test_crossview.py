import numpy as np
import pytest

from conftest import build_crossview_tree
from geolib.evaluation.crossview import evaluate_crossview, record_evaluation, top_matches
from geolib.training.crossview import train_crossview
from geolib.data.datasets import load_dataset
from geolib.models import create_model
from geolib.records import read_records
from geolib.training.multiview import TrainConfig

TINY = dict(img_size=32, embed_dim=16, fusion_dim=16,
            backbone_options={"window_size": 2, "embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]})


@pytest.fixture
def world(tmp_path):
    return load_dataset("university1652", build_crossview_tree(tmp_path / "u", distractors=2))


def test_evaluation_covers_every_direction_with_distractors(world):
    model = create_model("phase1-cpu", **TINY)
    ev = evaluate_crossview(model, world, 32)
    assert set(ev.results) == {"street→drone", "street→satellite", "drone→satellite", "satellite→drone"}
    r = ev.results["street→drone"]
    assert (r.n_queries, r.gallery_size) == (4, 6) and len(r.curve) == 6 and r.curve[-1] == 100.0
    assert ev.sets[("gallery", "drone")].emb.shape == (6, 16)
    scores, idx = top_matches(ev, "street", "drone", k=3)
    assert idx.shape == (4, 3) and np.all(np.diff(scores, axis=1) <= 0)
    recs = record_evaluation(ev, source="cv-test", model="phase1-random-init", dataset="fixture",
                             profile="smoke", seed=0, config={"a": 1})
    assert len(recs) == 4 and read_records("smoke", "cv-test")[0]["query_view"] == "street"


def test_training_runs_and_keeps_best(world, tmp_path):
    model = create_model("phase1-cpu", **TINY)
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-3)
    res = train_crossview(model, world, cfg, tmp_path / "ck", image_size=32, progress=False)
    assert [r["epoch"] for r in res.history] == [1, 2]
    assert "street→drone R@1" in res.history[0] and res.best_path is not None
    from geolib.checkpoint import read_checkpoint
    assert read_checkpoint(res.best_path)[0]["meta"]["epoch"] == 2  # the last, annealed epoch
    with pytest.raises(ValueError, match="select must be one of"):
        train_crossview(model, world, cfg, tmp_path / "x", image_size=32, progress=False, select="best")


def test_smoke_profile_run_killed_after_an_epoch_resumes_to_the_same_metrics(world, tmp_path):
    import torch
    from geolib.training.crossview import phase1_fit_options, phase1_model, phase1_train_config
    from geolib.profiles import resolve
    from geolib.training.loop import seed_everything

    cfg = resolve("smoke", "phase1", epochs=3, device="cpu")
    opts = {**phase1_fit_options(cfg), "progress": False}

    def run(out, on_epoch=None):
        seed_everything(cfg["seed"])
        return train_crossview(phase1_model(cfg), world, phase1_train_config(cfg), out, on_epoch=on_epoch, **opts)

    def kill_after_2(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    straight = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", kill_after_2)
    torch.manual_seed(99)  # the resumed run must take everything from the checkpoint
    resumed = run(tmp_path / "b")
    assert resumed.resumed_from == 2 and [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert resumed.history[-1]["street→drone R@1"] == straight.history[-1]["street→drone R@1"]
    np.testing.assert_allclose([r["loss"] for r in resumed.history], [r["loss"] for r in straight.history], rtol=1e-5)


def test_last_evaluation_in_training_is_reused_by_the_final_one(world, tmp_path):
    """With the final evaluation's flip and cache, the curve's last point and the table are one
    measurement: evaluating the saved model again computes nothing new for those sets."""
    from geolib.training.crossview import load_trained_model
    from geolib.evaluation.cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path / "cache")
    model = create_model("phase1-cpu", **TINY)
    res = train_crossview(model, world, TrainConfig(epochs=1, batch_size=4), tmp_path / "ck", image_size=32,
                          progress=False, flip=True, cache=cache)
    assert cache.misses == 3  # street queries, drone and satellite galleries, flipped
    saved, _ = load_trained_model(res.best_path)
    final = evaluate_crossview(saved, world, 32, (("street", "drone"), ("street", "satellite")), flip=True, cache=cache)
    assert (cache.hits, cache.misses) == (3, 3)
    assert final.results["street→drone"].metrics["R@1"] == pytest.approx(res.history[-1]["street→drone R@1"])
    evaluate_crossview(saved, world, 32, (("street", "drone"),), flip=False, cache=cache)
    assert cache.misses == 5  # without flip they are other embeddings


def test_trained_model_reloads_from_its_checkpoint(world, tmp_path):
    import torch
    from geolib.training.crossview import load_trained_model

    model = create_model("phase1-cpu", **TINY)
    res = train_crossview(model, world, TrainConfig(epochs=1, batch_size=4), tmp_path / "ck", image_size=32,
                          progress=False, eval_directions=())
    again, meta = load_trained_model(res.last_path)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again(x, view="drone"), model(x, view="drone"))
    assert meta["epoch"] == 1


def test_phase1_distillation_from_a_checkpoint_teacher_and_offline_foundation_teachers(world, tmp_path, monkeypatch):
    from geolib.training.crossview import phase1_distillation

    teacher = create_model("phase1-cpu", **TINY)
    first = train_crossview(teacher, world, TrainConfig(epochs=1, batch_size=4), tmp_path / "t", image_size=32,
                            progress=False, eval_directions=())
    student = create_model("phase1-cpu", **TINY)
    cfg = {"teachers": [f"geolib:{first.last_path}"], "device": "cpu"}
    lines: list[str] = []
    distill, status = phase1_distillation(cfg, world, student, tmp_path / "cache", log=lines.append)
    assert status == {f"geolib:{first.last_path}": "used"} and distill is not None
    assert any(p.suffix == ".safetensors" for p in (tmp_path / "cache").iterdir())  # embedded once, on disk
    res = train_crossview(student, world, TrainConfig(epochs=1, batch_size=4), tmp_path / "s", image_size=32,
                          progress=False, eval_directions=(), extra_loss=distill, extra_modules=[distill])
    assert np.isfinite(res.history[0]["loss"])

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    lines.clear()
    distill, status = phase1_distillation({"teachers": "available", "device": "cpu"}, world, student,
                                          tmp_path / "cache", log=lines.append)
    assert distill is None and set(status) == {"clip-vit-b16", "dinov2-vit-s14"}
    assert all(v.startswith("unavailable") for v in status.values()) and len(lines) == 2
    with pytest.raises(Exception, match="clip"):
        phase1_distillation({"teachers": ["clip-vit-b16"], "device": "cpu"}, world, student, tmp_path / "cache")


def test_history_plot_draws_recall_evaluated_after_the_first_epoch():
    import matplotlib
    matplotlib.use("Agg")
    from geolib.apps.plots import plot_history

    history = [{"epoch": 1, "loss": 3.0, "minutes_total": 0.5},
               {"epoch": 2, "loss": 2.0, "minutes_total": 1.0, "street→drone R@1": 5.0},
               {"epoch": 3, "loss": 1.5, "minutes_total": 1.5},
               {"epoch": 4, "loss": 1.2, "minutes_total": 2.0, "street→drone R@1": 9.0}]
    ax = plot_history(history).axes[1]
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [1.0, 2.0] and list(line.get_ydata()) == [5.0, 9.0]
    assert ax.get_xlabel() == "training minutes"


def test_train_cli_has_a_flag_for_every_phase1_key_and_validates_first(capsys):
    import argparse

    from geolib.apps.train_cli import build_parser, main
    from geolib.profiles import section_keys

    parser = build_parser()
    flags = {s for a in parser._actions for s in a.option_strings}
    for key in section_keys("phase1"):
        assert f"--{key.replace('_', '-')}" in flags, key
    for extra in ("--u1652-root", "--data-root", "--out", "--profile", "--dry-run"):
        assert extra in flags
    args = parser.parse_args(["--no-flip-tta", "--model-options", '{"embed_dim": 8}', "--teachers", '["a", "b"]',
                              "--lr", "3e-4", "--epochs", "2", "--minutes", "none", "--teachers", "available"])
    assert args.flip_tta is False and args.model_options == {"embed_dim": 8} and args.lr == 3e-4
    assert args.epochs == 2 and args.minutes is None and args.teachers == "available"
    assert parser.parse_args(["--teachers", '["clip:/x"]']).teachers == ["clip:/x"]
    assert any(isinstance(a, argparse.BooleanOptionalAction) and "--flip-tta" in a.option_strings for a in parser._actions)
    assert main(["--profile", "smoke", "--epochs", "0", "--batch-size", "0", "--lr", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --epochs must be an integer ≥ 1, got 0", "error: --batch-size must be an integer ≥ 1, got 0",
                   "error: --lr must be a number > 0, got 0.0"]


def test_train_cli_reports_dataset_errors_in_one_message(tmp_path, capsys):
    from conftest import build_university
    from geolib.apps.train_cli import main

    root = build_university(tmp_path / "u", broken=True)
    assert main(["--profile", "smoke", "--u1652-root", str(root), "--out", str(tmp_path / "o")]) == 1
    captured = capsys.readouterr()
    assert "university1652 dataset at" in captured.err and "truncated JPEG" in captured.err
    assert "Traceback" not in captured.err + captured.out


def test_train_cli_dry_run_distils_tiny_clip_and_dinov2_teachers_per_image(world, tmp_path, monkeypatch, capsys):
    """`python -m geolib train` wires the teachers as notebook 02 does: cached under outputs/cache/teachers,
    each training image distilled toward the teachers' embedding of that image."""
    import json

    from geolib.training import teachers as T
    from geolib.apps.train_cli import main
    from geolib.paths import outputs_root
    from tiny_teachers import tiny_teacher_dirs

    monkeypatch.setenv("GEOLIB_DRY_RUN", "0")  # restored after the test; main sets it for --dry-run
    specs = tiny_teacher_dirs(tmp_path / "teachers")
    seen: list[dict] = []
    forward = T.ImageDistillation.forward

    def spy(self, images, embeddings, labels, paths=None):
        seen.append(paths)
        return forward(self, images, embeddings, labels, paths)

    monkeypatch.setattr(T.ImageDistillation, "forward", spy)
    assert main(["--profile", "smoke", "--u1652-root", str(world.root), "--out", str(tmp_path / "ck"), "--dry-run",
                 "--teachers", json.dumps(specs), "--distill-weight", "0.5", "--no-preload"]) == 0
    out = capsys.readouterr().out
    assert "trained 1 epoch(s)" in out and all(f"'{s}': 'used'" in out for s in specs)
    cached = sorted(p.name for p in (outputs_root() / "cache" / "teachers").iterdir())
    assert len([n for n in cached if n.endswith(".safetensors")]) == 2
    assert seen and set(seen[0]) == {"street", "drone", "satellite"}
    train_paths = {str(it.path) for it in world.select(split="train")}
    assert all(p in train_paths for batch in seen for v in batch.values() for p in v)


def test_train_crossview_refuses_test_selection_copies_its_config_and_records_a_cap(world, tmp_path):
    import json

    model = create_model("phase1-cpu", **TINY)
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-3)
    with pytest.raises(ValueError, match="test split.*optimistic"):
        train_crossview(model, world, cfg, tmp_path / "t", image_size=32, progress=False, select="test")
    res = train_crossview(model, world, cfg, tmp_path / "ck", image_size=32, progress=False, max_minutes=0,
                          eval_directions=())
    assert cfg.extra == {}  # the caller's config is not modified
    assert res.cut_by_budget and res.epochs_done == 1
    meta = json.loads((tmp_path / "ck" / "last.json").read_text())["meta"]
    assert meta["cut_by_budget"] is True and meta["config"]["extra"]["model"]["name"] == "phase1-cpu"
    with pytest.raises(ValueError, match="batch_size: saved 4, now 2"):
        train_crossview(create_model("phase1-cpu", **TINY), world, TrainConfig(epochs=3, batch_size=2, lr=1e-3),
                        tmp_path / "ck", image_size=32, progress=False)
