import pytest

from geolib.profiles import PROFILE_NAMES, PROFILES, resolve


def test_every_profile_has_the_same_sections():
    sections = {name: set(PROFILES[name]) for name in PROFILE_NAMES}
    assert sections["smoke"] == sections["default"] == sections["full"]


def test_overrides_win_and_none_means_profile_value():
    cfg = resolve("smoke", "world", preset=None, seed=3)
    assert cfg["preset"] == "smoke" and cfg["seed"] == 3 and cfg["profile"] == "smoke"
    assert cfg["device"] in ("cpu", "cuda")


def test_amp_only_on_gpu():
    cfg = resolve("full", "common", device="cpu")
    assert cfg["amp"] is False


def test_unknown_profile_and_section():
    with pytest.raises(ValueError, match="smoke, default, full"):
        resolve("fast", "world")
    with pytest.raises(KeyError, match="no section"):
        resolve("smoke", "nonexistent")


def test_every_profile_builds_every_section_and_the_classes_list_every_key():
    from geolib.config import SECTIONS
    from geolib.profiles import section_keys

    for name in PROFILE_NAMES:
        for section in PROFILES[name]:
            cfg = resolve(name, section, device="cpu")
            assert isinstance(cfg, SECTIONS[section]) and cfg.profile == name
            assert set(PROFILES[name][section]) <= set(section_keys(section))
    assert section_keys("phase1")[:5] == ["seed", "seeds", "device", "amp", "num_workers"]  # common's first
    assert "profile" not in section_keys("phase1") and "phase1" not in section_keys("distill")


def test_a_profile_key_the_dataclass_lacks_or_a_value_of_the_wrong_type_is_an_error():
    import copy

    from geolib.profiles import validate_profiles

    validate_profiles(PROFILES)
    bad = copy.deepcopy(PROFILES)
    bad["default"]["phase1"]["flip_ttta"] = True
    with pytest.raises(ValueError, match="profile 'default', section 'phase1'.*'flip_ttta'.*did you mean 'flip_tta'"):
        validate_profiles(bad)
    bad = copy.deepcopy(PROFILES)
    bad["smoke"]["phase1"]["epochs"] = "3"
    with pytest.raises(ValueError, match="'epochs' of section 'phase1' must be int, got '3'"):
        validate_profiles(bad)
    bad = copy.deepcopy(PROFILES)
    del bad["full"]["explorer"]["grid_k"]
    with pytest.raises(ValueError, match="needs grid_k"):
        validate_profiles(bad)
    bad = copy.deepcopy(PROFILES)
    bad["smoke"]["phase3"] = {}
    with pytest.raises(ValueError, match="section 'phase3', which has no dataclass"):
        validate_profiles(bad)


def test_an_unknown_override_fails_naming_the_section_and_the_closest_key():
    with pytest.raises(ValueError, match=r"'flip_ttta' for section 'phase1': did you mean 'flip_tta'\?"):
        resolve("default", "phase1", flip_ttta=True)
    with pytest.raises(ValueError, match="'epochs' for section 'world'"):  # a key of another section
        resolve("smoke", "world", epochs=3)
    with pytest.raises(ValueError, match="'lr' of section 'phase1' must be float"):
        resolve("smoke", "phase1", lr="fast")


def test_a_section_reads_like_the_dict_it_replaces():
    cfg = resolve("smoke", "phase1", epochs=2, device="cpu")
    assert cfg["epochs"] == cfg.epochs == cfg.get("epochs") == 2 and cfg.get("not_a_key", 7) == 7
    assert "epochs" in cfg and "not_a_key" not in cfg and len(cfg) == len(list(cfg))
    plain = {**cfg}
    assert plain == dict(cfg) == cfg.to_dict() and plain["profile"] == "smoke"
    cfg["sampling"] = "gps"
    assert cfg.sampling == "gps"
    with pytest.raises(KeyError, match="did you mean 'sampling'"):
        cfg["samplng"] = "gps"
    with pytest.raises(KeyError, match="did you mean 'epochs'"):
        cfg["epoch"]
    # notebook 03 nests the resolved phase1 section in its distill section
    distill = resolve("smoke", "distill", device="cpu")
    distill["phase1"] = resolve("smoke", "phase1", seed=4, device="cpu")
    assert distill["phase1"]["seed"] == 4 and distill.to_dict()["phase1"]["epochs"] == 1
    assert isinstance(distill.to_dict()["phase1"], dict)


def test_a_cell_ending_in_cfg_shows_one_setting_per_line():
    from IPython.lib.pretty import pretty

    shown = pretty(resolve("smoke", "explorer", device="cpu"))
    assert shown.startswith("Explorer {'seed': 0,\n") and "'grid_k': 5,\n" in shown


def test_every_field_is_documented_by_its_comment():
    from geolib.config import SECTIONS

    for cls in SECTIONS.values():
        undocumented = [n for n in cls.names() if not cls.help().get(n)]
        assert not undocumented, f"{cls.__name__}: {undocumented}"


def test_default_profile_values_reach_the_loop_config():
    from geolib.training.crossview import phase1_fit_options, phase1_train_config

    cfg = resolve("default", "phase1", device="cpu", grad_clip=0.5, freeze=[".backbone."], backbone_lr_scale=0.25,
                  gps_near=8, gps_random=4, gps_pool=16)
    tc = phase1_train_config(cfg)
    assert (tc.grad_clip, tc.freeze, tc.backbone_lr_scale) == (0.5, (".backbone.",), 0.25)
    assert (tc.gps_near, tc.gps_random, tc.gps_pool) == (8, 4, 16)
    assert (tc.epochs, tc.lr, tc.batch_size, tc.channels_last) == (30, 2e-3, 32, True)
    assert phase1_fit_options(cfg)["flip"] is True and phase1_fit_options(cfg)["max_minutes"] is None
    # a plain dict written before the new keys existed gets the loop's own defaults
    from geolib.training.multiview import TrainConfig

    old = {k: v for k, v in cfg.items() if k not in ("grad_clip", "freeze", "gps_pool")}
    assert phase1_train_config(old).gps_pool == TrainConfig().gps_pool
    assert phase1_train_config(old).grad_clip == TrainConfig().grad_clip


def test_dry_run_caps_work_but_keeps_models_and_sizes(monkeypatch):
    monkeypatch.setenv("GEOLIB_DRY_RUN", "1")
    cfg = resolve("default", "phase1", device="cpu")
    assert cfg.dry_run is True and cfg.epochs < 30 and cfg.preset == "smoke" and cfg.image_size == 48
    p2 = resolve("default", "phase2", device="cpu")
    assert p2.dry_run is True and len(p2.dc_heads) == 1 and p2.augment_copies == 1 and p2.out_dim == 128


def _another(value):
    """A different value of the same kind, to see whether a setting changes anything downstream."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, list):
        return [*value, "other"]
    if isinstance(value, dict):
        return {**value, "other": 1}
    return 1.5  # None: an optional number (minutes, grad_clip)


def test_no_phase1_setting_is_silently_dropped(monkeypatch):
    """Each field changes the model's arguments, the TrainConfig or train_crossview's options, unless
    it is listed here with the code that reads it."""
    import copy

    import geolib.models
    from geolib.config import Phase1
    from geolib.training.crossview import phase1_fit_options, phase1_model, phase1_train_config

    read_elsewhere = {"preset": "dataroots.u1652", "teachers": "crossview.phase1_distillation",
                      "distill_loss": "crossview.phase1_distillation", "distill_weight": "crossview.phase1_distillation",
                      "seeds": "apps.seed_runs.phase1_seeds (the other seeds' runs)"}
    built: dict = {}
    monkeypatch.setattr(geolib.models, "create_model", lambda name, **kw: built.update(name=name, **kw))

    def downstream(cfg):
        built.clear()
        phase1_model(cfg)
        return phase1_train_config(cfg).to_dict(), phase1_fit_options(cfg), dict(built)

    base = resolve("smoke", "phase1", device="cpu")
    for name in Phase1.settable():
        if name not in read_elsewhere:
            changed = copy.deepcopy(base)
            changed[name] = _another(base[name])
            assert downstream(changed) != downstream(base), f"phase1 setting {name!r} reaches nothing"
