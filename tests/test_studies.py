"""Notebook 06's studies: augmentations, adaptation, the runner's records and reuse, the tables and
the rule that calls a difference measurable, and the world's second city."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from geolib.apps import geoclass, studies as S
from geolib.data.datasets import utm_of
from geolib.profiles import resolve
from geolib.records import read_records
from geolib.training import cosplace
from geolib.training.adaptation import Alignment, adapt_bn, apply_lut, coral_loss, histogram_match, reverse_gradient
from geolib.training.augment import (AUGMENTATIONS, StudyAugment, extra_transform, input_normalization, make_augment,
                                    split_name, stretch)
from geolib.training.cosplace import CosPlaceConfig, PlaceNet, backbone_input_size
from geolib.training.groups import Augment, training_settings
from phase2_toy import build_toy_vpr

torch.set_num_threads(1)
TOY = dict(backbone="resnet10t", pretrained=False, image_size=32, out_dim=16, batch_size=6, brightness=0.3,
           contrast=0.3, saturation=0.3, hue=0.0, random_resized_crop=0.1, backbone_lr=1e-3, classifier_lr=1e-2,
           min_images_per_class=5, M=10, alpha=360, N=1, L=1, groups_num=1, epochs=1, iterations_per_epoch=3,
           freeze_backbone=True, augment_copies=2, aggregation="gem")


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return build_toy_vpr(tmp_path_factory.mktemp("toy") / "world")


# --------------------------------------------------------------------------- settings and augmentations

def test_study_fields_at_their_defaults_keep_a_saved_models_settings():
    plain = training_settings(CosPlaceConfig(**TOY).to_dict())
    assert not {"augment", "vicreg_weight", "vicreg_pair", "align", "align_weight"} & set(plain)
    night = training_settings(CosPlaceConfig(**TOY, augment="night").to_dict())
    assert night["augment"] == "night" and {k: v for k, v in night.items() if k != "augment"} == plain


def test_base_augmentation_is_cosplaces_own_and_every_variant_is_seeded():
    cfg = CosPlaceConfig(**TOY)
    assert type(make_augment(cfg)) is Augment
    batch = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    for name in AUGMENTATIONS[1:]:
        aug = make_augment(cfg, name)
        assert isinstance(aug, StudyAugment)
        torch.manual_seed(3)
        a = aug(batch)
        torch.manual_seed(3)
        assert a.shape == (4, 3, 32, 32) and torch.equal(a, aug(batch)), name
    with pytest.raises(ValueError, match="perspective, erasing, night"):
        extra_transform("snow")


def test_night_augmentation_darkens_and_adds_noise():
    torch.manual_seed(0)
    night = extra_transform("night")
    night.p = 1.0
    img = torch.full((3, 16, 16), 0.6)
    out = night(img)
    assert out.mean() < 0.35 and out.std() > 0.0 and out.min() >= 0 and out.max() <= 1


def test_input_normalization_is_deterministic_and_applied_last_in_training():
    assert input_normalization("night") is None and split_name("weather+stretch") == ("weather", "stretch")
    with pytest.raises(ValueError, match="stretch, autocontrast, equalize"):
        split_name("base+gray")
    with pytest.raises(ValueError, match="perspective, erasing"):
        split_name("snow+stretch")
    # a night-like image: dark walls (0.02-0.10) and a few bright windows (1 %)
    g = torch.Generator().manual_seed(0)
    img = 0.02 + 0.08 * torch.rand(2, 3, 20, 20, generator=g)
    img[:, :, 0, :4] = 1.0
    out = stretch(img)
    assert out.median() > 0.4 and out.min() == 0 and out.max() == 1  # the walls, not the windows, set the range
    torch.testing.assert_close(stretch(0.5 * img), out)  # a darker exposure of the same scene: the same image
    for name in ("stretch", "autocontrast", "equalize"):
        fn = input_normalization(f"base+{name}")
        y = fn(img)
        assert torch.equal(y, fn(img)) and y.amin(dim=(2, 3)).max() < 0.01 and y.amax(dim=(2, 3)).min() > 0.99, name
    # min-max autocontrast lets the windows set the range and leaves the walls dark; equalising does not
    assert input_normalization("base+autocontrast")(img).median() < 0.1 < input_normalization("base+equalize")(img).median()
    aug = make_augment(CosPlaceConfig(**TOY), "base+stretch")
    torch.manual_seed(1)
    x = aug.unnormalized(torch.randint(0, 40, (3, 3, 40, 40), dtype=torch.uint8))
    assert torch.allclose(x.flatten(2).quantile(0.99, dim=2), torch.ones(3, 3), atol=0.02)


def test_histogram_matching_maps_the_target_onto_the_reference():
    g = torch.Generator().manual_seed(0)
    day = torch.rand(6, 3, 16, 16, generator=g) * torch.tensor([0.9, 0.8, 0.7]).view(1, 3, 1, 1)
    night = 0.3 * day ** 1.2 + 0.02
    lut = histogram_match(night, day)
    assert lut.shape == (3, 256) and bool((lut.diff(dim=1) >= 0).all())  # monotone per channel
    matched = apply_lut(night, lut)
    for c in range(3):  # quantiles of the matched night images are the day ones' (to a few 8-bit levels)
        q = torch.tensor([0.1, 0.5, 0.9])
        torch.testing.assert_close(matched[:, c].flatten().quantile(q), day[:, c].flatten().quantile(q),
                                   atol=0.03, rtol=0)
        assert (night[:, c].flatten().quantile(q) - day[:, c].flatten().quantile(q)).abs().max() > 0.2


# --------------------------------------------------------------------------- adaptation

def test_coral_is_zero_for_one_distribution_and_grows_with_a_covariance_gap():
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    assert coral_loss(x, x).item() == 0.0
    assert coral_loss(x, 3 * x).item() > coral_loss(x, 1.5 * x).item() > 0


def test_gradient_reversal_negates_and_dann_trains_its_classifier():
    x = torch.ones(3, requires_grad=True)
    reverse_gradient(x, 0.5).sum().backward()
    assert x.grad.tolist() == [-0.5, -0.5, -0.5]
    dann = Alignment("dann", 4)
    loss = dann(torch.randn(5, 4), torch.randn(5, 4) + 2)
    loss.backward()
    assert loss.item() > 0 and dann.domain[0].weight.grad is not None
    with pytest.raises(ValueError, match="coral, dann"):
        Alignment("mmd", 4)


def test_adabn_takes_the_targets_statistics_and_leaves_the_model_alone():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    before = net[1].running_mean.clone()
    target = [torch.randn(8, 3, 5, 5) * 0.1 + 2.0 for _ in range(3)]
    adapted = adapt_bn(net, target)
    with torch.no_grad():
        conv = torch.cat([adapted[0](t) for t in target])
    torch.testing.assert_close(adapted[1].running_mean, conv.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-4)
    assert torch.equal(net[1].running_mean, before) and not adapted.training
    with pytest.raises(ValueError, match="no batch-norm"):
        adapt_bn(torch.nn.Linear(2, 2), target)


# --------------------------------------------------------------------------- the network

def test_backbone_input_size_per_backbone():
    assert backbone_input_size("resnet18", 64) == 64
    assert backbone_input_size("vit_tiny_patch16_224", 70) == 64
    assert backbone_input_size("swin_tiny_patch4_window7_224", 512) == 448
    assert backbone_input_size("swin_tiny_patch4_window7_224", 64) == 224


def test_netvlad_and_a_transformer_backbone_give_unit_descriptors():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    vlad = PlaceNet("resnet10t", "netvlad", out_dim=16, image_size=32, clusters=4).eval()
    vit = PlaceNet("vit_tiny_patch16_224", "gem", out_dim=16, image_size=32).eval()
    for net in (vlad, vit):
        out = net(x)
        assert out.shape == (2, 16)
        torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    assert vlad.options["clusters"] == 4 and "clusters" not in vit.options


@pytest.mark.parametrize("changes", [dict(vicreg_weight=0.1), dict(vicreg_weight=0.1, vicreg_pair="night"),
                                     dict(align="coral", align_weight=1.0), dict(align="dann", align_weight=1.0)])
def test_auxiliary_losses_train_through_the_loop_on_cached_maps(toy_root, changes):
    items = cosplace.load_train_items(toy_root)
    queries = geoclass.split_sets(toy_root, "test", "queries", database=False)[1]["all"]
    target = [q for q in queries if cosplace.query_condition(q) == "night"]
    base = cosplace.train_cosplace(items, CosPlaceConfig(**TOY), progress=False)
    varied = cosplace.train_cosplace(items, CosPlaceConfig(**TOY, **changes), progress=False,
                                     target=target if "align" in changes else None)
    assert base.result.history[0]["loss"] != varied.result.history[0]["loss"]
    if "align" in changes:
        assert "target" in cosplace.group_settings(items, CosPlaceConfig(**TOY, **changes), target)
        with pytest.raises(ValueError, match="needs target images"):
            cosplace.train_cosplace(items, CosPlaceConfig(**TOY, **changes), progress=False)


# --------------------------------------------------------------------------- variants and splits

def test_every_study_has_three_variants_and_unsupported_ones_say_why():
    cfg = resolve("default", "studies", variants={})
    for study in S.STUDIES:
        assert len(S.variants(study, cfg)) >= 3, study
    aug = [v.name for v in S.variants("augmentation", cfg)]
    assert {"perspective", "erasing", "night", "haze"} <= set(aug) and len(aug) >= 5
    from geolib.training.loop import OPTIMIZERS

    for v in S.variants("optimizer", cfg):
        if v.changes.get("optimizer") not in (None, *OPTIMIZERS):
            assert "has no" in v.needs
    with pytest.raises(ValueError, match="unknown study"):
        S.variants("dropout", cfg)


def test_default_runs_one_seed_and_a_chosen_three_or_more_variants_of_every_study(toy_root, tmp_path):
    cfg = resolve("default", "studies")
    for study in S.STUDIES:
        chosen = S.variants(study, cfg)
        assert len(chosen) >= 3, study
        every = [v.name for v in S.all_variants(study, cfg)]
        assert [v.name for v in chosen] == [n for n in every if n in {v.name for v in chosen}]  # the study's order
    # the default is the common seed; -p seeds [0, 1, 2] seeds the research goal's studies only
    one = S.StudyRunner(cfg, _toy_data(toy_root), tmp_path, "smoke")
    assert cfg["seeds"] is None and one.seeds == [cfg["seed"]]
    three = S.StudyRunner(resolve("default", "studies", seeds=[0, 1, 2]), one.data, tmp_path, "smoke")
    assert three.seeds_of("augmentation") == [0, 1, 2] and three.seeds_of("backbone") == [0]
    with pytest.raises(ValueError, match="no 'snow'; choose among"):
        S.variants("augmentation", {**cfg, "variants": {"augmentation": ["night", "snow"]}})
    with pytest.raises(ValueError, match="at least one training seed"):
        S.StudyRunner({**cfg, "seeds": []}, one.data, tmp_path, "smoke")


def test_heldout_split_is_disjoint_complete_and_seed_independent():
    items = list(range(10))
    adapt, held = S.heldout_split(items, 0.5)
    assert sorted(adapt + held) == items and len(held) == 5 and not set(adapt) & set(held)
    assert S.heldout_split(items, 0.5) == (adapt, held)
    with pytest.raises(ValueError, match="strictly between"):
        S.heldout_split(items, 1.0)


# --------------------------------------------------------------------------- tables and findings

def _records(values):
    """{(variant, seed, split, condition): R@1} as vpr records of study `aug`."""
    return [{"task": "vpr", "model": f"aug/{v}", "seed": s, "dataset": "d", "split": sp,
             "query_view": f"query-{c}", "metrics": {"R@1": r, "R@5": r + 10}, "config": {}}
            for (v, s, sp, c), r in values.items()]


def test_measurable_means_beyond_twice_the_larger_seed_std():
    values = {}
    for seed, (b, big, small) in enumerate([(10, 20, 11), (12, 22, 13), (11, 21, 9)]):
        values.update({("base", seed, "val", "night"): b, ("big", seed, "val", "night"): big,
                       ("small", seed, "val", "night"): small})
    summary = S.summarize(_records(values), "aug")
    r1 = summary[summary.metric == "R@1"].set_index("variant")
    assert r1.loc["big", "delta"] == pytest.approx(10.0) and bool(r1.loc["big", "measurable"])
    assert r1.loc["small", "delta"] == pytest.approx(0.0) and not r1.loc["small", "measurable"]
    assert r1.loc["small", "spread"] == pytest.approx(2 * np.std([11, 13, 9], ddof=1))
    one = S.summarize(_records({k: v for k, v in values.items() if k[1] == 0}), "aug")
    assert not one.measurable.any()  # one seed: nothing is called measurable
    table = S.study_table(summary)
    assert table.loc["big", "val night"] == "21.0 ± 1.0 (+10.0*)" and table.loc["base", "val night"] == "11.0 ± 1.0"


def test_a_test_only_set_has_its_own_column_beside_the_roots_test():
    records = _records({("base", 0, "val", "night"): 10, ("base", 0, "test", "night"): 20,
                        ("big", 0, "val", "night"): 12, ("big", 0, "test", "night"): 25})
    city = [{**r, "dataset": "synthetic-default-city2", "metrics": {"R@1": r["metrics"]["R@1"] - 5}}
            for r in records if r["split"] == "test"]
    table = S.study_table(S.summarize(records + city, "aug"))
    assert table.loc["big", "test night"] == "25.0 (+5.0)" and table.loc["big", "city2 night"] == "20.0 (+5.0)"
    assert table.loc["base", "city2 night"] == "15.0"


def test_selection_looks_at_val_only_and_the_goal_needs_the_gain_beyond_the_spread():
    values = {}
    for seed in range(3):
        for split in ("val", "test-heldout"):
            values.update({("base", seed, split, "night"): 10 + seed, ("base", seed, split, "day"): 50 + seed,
                           ("night", seed, split, "night"): (18 if split == "val" else 17) + seed,
                           ("night", seed, split, "day"): 49 + seed,
                           # better on the held-out queries, worse on val: never chosen
                           ("haze", seed, split, "night"): (11 if split == "val" else 40) + seed,
                           ("haze", seed, split, "day"): 50 + seed})
    summary = S.summarize(_records(values), "aug")
    assert S.best_on_val(summary, "night") == "night"
    assert S.goal_candidate({"aug": summary}) == ("aug", "night")
    goal = S.research_goal({"aug": summary}, [("d", "test-heldout")])
    assert [f.holds for f in goal] == [True, True]
    assert goal[0].value == pytest.approx(7.0) and goal[1].value == pytest.approx(-1.0)
    noisy = dict(values)
    noisy[("night", 0, "test-heldout", "night")] = 2  # a seed spread wider than the gain
    goal = S.research_goal({"aug": S.summarize(_records(noisy), "aug")}, [("d", "test-heldout")])
    assert goal[0].holds is False and "within the seed spread" in goal[0].note
    findings = S.study_findings(summary, "aug", [("d", "test-heldout")], ["night"])
    assert findings[0].value == pytest.approx(7.0) and findings[0].note == "measurable"


# --------------------------------------------------------------------------- the runner

def _toy_data(root):
    from geolib.apps import geoclass

    db, queries = geoclass.split_sets(root, "test")
    night = queries.get("night") or [q for q in queries["all"] if cosplace.query_condition(q) == "night"]
    day = [q for q in (queries.get("day") or queries["all"]) if cosplace.query_condition(q) == "day"]
    q = {"day": day, "night": night}
    adapt, held = S.heldout_split(night, 0.5)
    sets = [S.EvalSet("toy", "val", db, q), S.EvalSet("toy", "test", db, q),
            S.EvalSet("toy", S.HELDOUT, db, {"day": day, "night": held})]
    return S.StudyData(root, "toy", cosplace.load_train_items(root), sets, {"night": adapt}, [])


def _cfg(**base):
    cfg = resolve("smoke", "studies")
    cfg["base"] = {**TOY, **base}
    cfg["seeds"] = [0]
    return cfg


def test_runner_records_every_set_and_condition_and_reuses_them(toy_root, tmp_path):
    data = _toy_data(toy_root)
    runner = S.StudyRunner(_cfg(), data, tmp_path / "saved", "smoke")
    outcome = runner.run_one("adaptation", S.BASE, 0)
    adabn = runner.run_one("adaptation", S.Variant("adabn", adabn=True), 0)
    assert outcome.how == "trained" and adabn.how == "loaded"  # the same settings: one saved model
    records = read_records("smoke", S.SOURCE)
    keys = {(r["model"], r["split"], r["query_view"]) for r in records}
    assert keys == {(m, s, f"query-{c}") for m in ("adaptation/base", "adaptation/adabn")
                    for s in ("val", "test", S.HELDOUT) for c in ("day", "night")}
    assert all(r["protocol"] == "vpr-25m" and r["config"]["run_hash"] for r in records)
    # day queries do not go through the night statistics; night ones do
    assert outcome.metrics[("toy", "val", "day")] == adabn.metrics[("toy", "val", "day")]
    again = S.StudyRunner(_cfg(), data, tmp_path / "saved", "smoke")
    assert again.run_one("adaptation", S.BASE, 0).how == "reused records"
    changed = S.StudyRunner(_cfg(iterations_per_epoch=4), data, tmp_path / "saved", "smoke")
    assert changed.run_one("adaptation", S.BASE, 0).how == "trained"


def test_a_run_is_evaluated_once_per_session_and_a_loaded_model_shares_the_frozen_maps(toy_root, tmp_path):
    data = _toy_data(toy_root)
    runner = S.StudyRunner(_cfg(), data, tmp_path / "saved", "smoke", source="06_once")
    course = runner.run_one("course", S.BASE, 0)
    base = runner.run_one("aggregation", S.BASE, 0)
    assert course.how == "trained" and base.how == "same run as course/base" and base.metrics == course.metrics
    assert {r["model"] for r in read_records("smoke", "06_once")} == {"course/base", "aggregation/base"}
    # a saved model is rebuilt without its pretrained flag: its frozen maps are still the trained model's
    trained = cosplace.train_cosplace(data.train_items, runner.config(S.BASE, 0), tmp_path / "m", progress=False)
    loaded = cosplace.load_cosplace(tmp_path / "m")
    assert runner._backbone_key(loaded) == runner._backbone_key(trained.model)
    maps = len(runner._maps)
    runner.evaluate(loaded)
    assert len(runner._maps) == maps  # no new maps: every image's map was already there
    # the held-out queries are a part of test's: their maps are not computed again
    rows = runner._maps[(runner._backbone_key(loaded), None, (None, None))]
    assert len(rows) == len({str(it.path) for s in data.eval_sets for it in
                             [*s.database, *(q for v in s.queries.values() for q in v)]})


def test_frozen_map_evaluation_equals_embedding_the_whole_network(toy_root, tmp_path):
    from geolib.apps import geoclass

    data = _toy_data(toy_root)
    runner = S.StudyRunner(_cfg(), data, tmp_path / "saved", "smoke")
    training = cosplace.train_cosplace(data.train_items, runner.config(S.BASE, 0), progress=False)
    cached = runner.evaluate(training.model, sets=data.eval_sets[:1])
    direct = geoclass.retrieve_conditions(training.model, data.eval_sets[0].database, data.eval_sets[0].queries, 32)
    for cond, (res, _) in direct.items():
        assert cached[("toy", "val", cond)].metrics == res.metrics
    # an input normalisation goes through the cached maps exactly as through the whole network
    stretched = runner.evaluate(training.model, sets=data.eval_sets[:1], augment="base+stretch")
    net = S._Pre(training.model, runner._input("stretch", None, 32))
    direct = geoclass.retrieve_conditions(net, data.eval_sets[0].database, data.eval_sets[0].queries, 32)
    for cond, (res, _) in direct.items():
        assert stretched[("toy", "val", cond)].metrics == res.metrics


def test_histogram_matching_variant_reads_target_pixels_and_leaves_day_queries_alone(toy_root, tmp_path):
    data = _toy_data(toy_root)
    runner = S.StudyRunner(_cfg(), data, tmp_path / "saved", "smoke", source="06_histmatch")
    base = runner.run_one("adaptation", S.BASE, 0)
    matched = runner.run_one("adaptation", S.Variant("histmatch", histmatch=True), 0)
    assert matched.how == "loaded" and matched.run_hash != base.run_hash
    assert matched.metrics[("toy", "val", "day")] == base.metrics[("toy", "val", "day")]
    lut = runner._match_lut(None, "night", 32)
    assert lut.shape == (3, 256) and not torch.allclose(lut, torch.linspace(0, 1, 256).expand(3, 256))
    records = [r for r in read_records("smoke", "06_histmatch") if r["model"] == "adaptation/histmatch"]
    assert records and all(r["config"]["histmatch"] and r["config"]["target"] for r in records)


def test_run_study_summarises_this_sessions_runs_and_skips_with_a_reason(toy_root, tmp_path):
    cfg = _cfg()
    cfg["lr_grid"], cfg["wd_grid"] = [1e-3], [0.0]
    runner = S.StudyRunner(cfg, _toy_data(toy_root), tmp_path / "saved", "smoke")
    result = S.run_study(runner, "optimizer", tmp_path)
    assert set(result.summary.variant) >= {"base", "adamw-lr0.001-wd0"}
    assert (tmp_path / "studies_optimizer.png").exists() and isinstance(result.table, pd.DataFrame)
    skipped = [o for o in result.outcomes if o.how.startswith("skipped")]
    assert all("geolib.training.loop has no" in o.how for o in skipped)
    assert all(f"{o.study}/{o.variant.name}" in result.markdown() for o in skipped)


# --------------------------------------------------------------------------- the second city

def test_second_city_is_a_test_only_vpr_root_of_its_own(tmp_path):
    from geolib.apps import geoclass
    from geolib.world.city import build_city, city_world
    from geolib.world.generate import UTM_ORIGIN, cache_key, preset_params

    world = tmp_path / "world"
    world.mkdir()
    (world / "world.json").write_text(json.dumps({"preset": "smoke", "seed": 0, "params": {},
                                                  "key": cache_key(preset_params("smoke"), 0)}))
    root = build_city(world)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["test"]
    db, queries = geoclass.split_sets(root, "test")
    assert db and set(queries) == {"day", "night", "fog"} and all(queries.values())
    east = utm_of(db)[:, 0]
    assert (east < UTM_ORIGIN[0] - 50_000).all()  # far from every region of the world
    stamp = (root / ".complete").stat().st_mtime_ns
    assert build_city(world) == root and (root / ".complete").stat().st_mtime_ns == stamp  # reused
    city, _ = city_world(world)
    assert all(r.style["road_width"] < 7.5 and r.style["floors"][0] >= 5 for r in city.regions)
    assert sorted(p.name for p in world.iterdir()) == ["city2", "world.json"]
