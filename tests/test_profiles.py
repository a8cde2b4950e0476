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
