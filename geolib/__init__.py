"""geolocal toolkit: visual geo-localization in layers, each importing only the ones below it.

    core (top-level modules) ← data ← models ← evaluation ← training ← retrieval ← world ← apps

The names a user needs most are importable from `geolib` itself, loaded on first use so that
`import geolib` stays fast (torch, faiss and widgets load only when a name that needs them is used).
"""
from __future__ import annotations

import importlib
from typing import Any

# name -> (module, attribute): strings, so this package imports nothing until a name is used
_EXPORTS: dict[str, tuple[str, str]] = {
    "load_dataset": ("geolib.data.datasets", "load_dataset"),
    "check_data": ("geolib.data.validate", "check_data"),
    "build_world": ("geolib.world.build", "build_world"),
    "create_model": ("geolib.models.registry", "create_model"),
    "list_models": ("geolib.models.registry", "list_models"),
    "load_model": ("geolib.models.registry", "load_model"),
    "evaluate_crossview": ("geolib.evaluation.crossview", "evaluate_crossview"),
    "embed": ("geolib.evaluation.embedding", "embed"),
    "EmbeddingCache": ("geolib.evaluation.cache", "EmbeddingCache"),
    "GalleryIndex": ("geolib.retrieval.index", "GalleryIndex"),
    "localize": ("geolib.retrieval.localize", "localize"),
    "explore": ("geolib.apps.explorer", "explore"),
    "resolve": ("geolib.profiles", "resolve"),
    "write_record": ("geolib.records", "write_record"),
    "read_records": ("geolib.records", "read_records"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'geolib' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
