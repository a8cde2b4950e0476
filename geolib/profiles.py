"""Run profiles: the one place where smoke, default and full settings live.

Notebooks keep a `parameters` cell whose knobs default to `None`; `resolve` fills each `None` from
the profile, so papermill's `-p` overrides and the profile never disagree about who wins.

- `smoke`: seconds per notebook; what the test suite runs.
- `default`: the CPU pipeline on the built-in synthetic world.
- `full`: the published settings, meant for a GPU kernel and real data.
"""
from __future__ import annotations

import copy
from typing import Any

PROFILE_NAMES = ("smoke", "default", "full")

# Each section belongs to one notebook or subsystem; issues add their own sections here.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "common": {"seed": 0, "device": "auto", "amp": False, "num_workers": 0},
        "world": {"preset": "smoke"},
    },
    "default": {
        "common": {"seed": 0, "device": "auto", "amp": False, "num_workers": 0},
        "world": {"preset": "default"},
    },
    "full": {
        "common": {"seed": 0, "device": "auto", "amp": True, "num_workers": 8},
        "world": {"preset": "large"},
    },
}


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILE_NAMES)}")
    return profile


def resolve(profile: str, section: str, **overrides: Any) -> dict[str, Any]:
    """Settings of `section` for `profile`, with `common` underneath and non-None overrides on top."""
    check_profile(profile)
    sections = PROFILES[profile]
    if section not in sections and section != "common":
        raise KeyError(f"profile {profile!r} has no section {section!r}; known: {sorted(sections)}")
    cfg = copy.deepcopy(sections["common"])
    cfg.update(copy.deepcopy(sections.get(section, {})))
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    cfg["profile"] = profile
    cfg["device"] = resolve_device(cfg.get("device", "auto"))
    if cfg["device"] == "cpu":
        cfg["amp"] = False  # mixed precision only pays on a GPU kernel
    return cfg


def resolve_device(device: str = "auto") -> str:
    """`auto` means CUDA when this kernel has it, else CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
