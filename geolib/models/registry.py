"""The model registry: build any geolib network by name, and rebuild any saved one from its files.

`create_model(name, **options)` builds a registered network; `load_model(path)` rebuilds a saved
one whatever trained it. Families register themselves when their module is imported
(`register_model`, `register_loader`); the tables below name those modules as strings, so this
registry, at the bottom of the models layer, imports none of the recipes built on it.
Every option is a plain JSON value, kept in `model.config`, so a checkpoint's JSON metadata can
rebuild its model and an index can name the exact model it was built with (`config_hash`).
"""
from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import nn


ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}
# Families defined elsewhere register themselves when their module is imported; naming the module
# here lets `create_model` and `load_model` rebuild them without the caller importing it first.
_PROVIDERS: dict[str, str] = {"phase1": "geolib.models.phase1", "phase1-cpu": "geolib.models.phase1",
                              "placenet": "geolib.training.cosplace", "hierarchical": "geolib.training.hierarchical",
                              "safa": "geolib.training.safa", "student": "geolib.training.distill4geo"}
ModelLoader = Callable[[Path, str], Any]
_LOADERS: dict[tuple[str, str], ModelLoader] = {}
# saved kinds whose family has its own loader (register_loader), and the module that registers it
_LOADER_PROVIDERS: dict[tuple[str, str], str] = {
    ("folder", "cosplace"): "geolib.training.cosplace", ("folder", "dc"): "geolib.training.dc",
    ("folder", "hierarchical"): "geolib.training.hierarchical", ("config", "student"): "geolib.training.distill4geo"}

# --------------------------------------------------------------------------------------------
# registry


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: make a factory available to `create_model(name, ...)`."""
    def add(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory
    return add


def _import_provider(name: str) -> None:
    if name not in _REGISTRY and name in _PROVIDERS:
        importlib.import_module(_PROVIDERS[name])


def list_models() -> list[str]:
    for name in _PROVIDERS:
        _import_provider(name)
    return sorted(_REGISTRY)


def create_model(name: str, **options: Any) -> nn.Module:
    _import_provider(name)
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _REGISTRY[name](**options)


def register_loader(kind: str, loader: ModelLoader, saved_as: str = "folder") -> None:
    """Let `load_model` rebuild a saved model with the family's own loader, `loader(path, device)`:
    a folder whose meta says `kind` (`saved_as="folder"`), or a model config named `kind` beside
    its weights (`saved_as="config"`; others are rebuilt with `rebuild_model`).

    The family module calls this at import; `load_model` imports it by the module name in
    `_LOADER_PROVIDERS`, so this registry never imports the recipes built on top of it."""
    if saved_as not in ("folder", "config"):
        raise ValueError(f"saved_as={saved_as!r}: use 'folder' (a model.json's kind) or 'config' (a config's name)")
    if _LOADERS.get((saved_as, kind), loader) is not loader:
        raise ValueError(f"a loader for saved models of kind {kind!r} ({saved_as}) is already registered")
    _LOADERS[(saved_as, kind)] = loader


def _loader(saved_as: str, kind: str) -> ModelLoader | None:
    key = (saved_as, kind)
    if key not in _LOADERS and key in _LOADER_PROVIDERS:
        importlib.import_module(_LOADER_PROVIDERS[key])
    return _LOADERS.get(key)


def config_hash(config: Mapping[str, Any]) -> str:
    """Short stable hash of a JSON config: names the model an index or cache was built with."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# loading any saved geolib model

# folders written by geolib.training.groups.save_model_files: the kinds with a folder loader above
SAVED_KINDS = tuple(kind for saved_as, kind in _LOADER_PROVIDERS if saved_as == "folder")


def load_model(path: str | Path, device: str = "cpu") -> Any:
    """Rebuild any saved geolib model from its files alone, in eval mode on `device`.

    One entry point, so a notebook, a teacher or an index can name a model by its path whatever
    trained it. What `path` may be, and what comes back:
    - a training checkpoint (`<dir>/best` or `<dir>/last`, with or without `.json`; or `<dir>`,
      `best` before `last`) whose JSON meta names the model (`config.extra.model`, or `model_config`):
      the network (`CrossViewModel`, SAFA, student, `PlaceNet`, `HierarchicalClassifier`...);
    - a CosPlace / D&C / hierarchical folder (`model.json` + `model.safetensors`, meta `kind`):
      CosPlace → `PlaceNet` (as `cosplace.load_cosplace`), D&C → `GroupTraining` (as
      `dc.load_dc`: network, group heads and cells), hierarchical → `SavedHierarchical`
      (as `hierarchical.load_hierarchical`: the classifier with its region and place ids);
    - a model config JSON beside a `.safetensors` file of the same stem (`distill4geo.save_student`).
    """
    return load_model_and_meta(path, device)[0]


def load_model_and_meta(path: str | Path, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """`load_model`, plus the JSON metadata the model was saved with (a checkpoint's `meta`, a
    saved folder's meta, or a student's config)."""
    path = Path(path)
    doc_path = _model_json(path)
    try:
        doc = json.loads(doc_path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{doc_path}: not readable as JSON ({err}); expected a geolib model's metadata") from err
    if not isinstance(doc, dict):
        raise ValueError(f"{doc_path}: holds a JSON {type(doc).__name__}, not a geolib model's metadata")
    stem = doc_path.with_suffix("")
    if "state" in doc and "meta" in doc:  # a geolib.checkpoint file
        meta = doc["meta"]
        if meta.get("kind") is not None:
            return _load_saved_folder(stem.parent, meta, device), meta
        config = (meta.get("config") or {}).get("extra", {}).get("model") or meta.get("model_config")
        if not config:
            raise ValueError(f"{doc_path}: this checkpoint does not say which model it holds (no config.extra.model "
                             "or model_config in its meta); it was written before models recorded their config: "
                             "rebuild the model in code and load its weights with geolib.checkpoint.load_weights")
        model = rebuild_model(config, doc_path)
        _load_network_weights(stem, model)
        return model.to(device).eval(), meta
    if isinstance(doc.get("name"), str):  # a model config beside its weights (a student)
        tensors = stem.with_name(stem.name + ".safetensors")
        if not tensors.exists():
            raise FileNotFoundError(f"{tensors}: the weights of the model configured in {doc_path} are missing; "
                                    "copy both files of the saved model together")
        if (loader := _loader("config", doc["name"])) is not None:  # e.g. a student restores its backbone's source
            return loader(stem, device), doc
        from safetensors.torch import load_file

        model = rebuild_model(doc, doc_path)
        model.load_state_dict(load_file(str(tensors)))
        return model.to(device).eval(), doc
    raise ValueError(f"{doc_path}: not a geolib model: expected a checkpoint (keys state, meta), a saved "
                     f"CosPlace/D&C/hierarchical model.json, or a model config with a 'name'; found keys "
                     f"{sorted(doc)[:8]}")


def rebuild_model(config: Mapping[str, Any], source: str | Path = "config") -> nn.Module:
    """The untrained network a saved `model.config` describes (`create_model(name, **options)`),
    without pretrained weights: the caller loads the trained ones from the file, so rebuilding
    needs no download and no weights wheel."""
    options = dict(config)
    name = options.pop("name", None)
    if not isinstance(name, str):
        raise ValueError(f"{source}: the model config names no model ('name' missing); registered models: "
                         f"{', '.join(list_models())}")
    if "pretrained" in options:
        options["pretrained"] = False
    return create_model(name, **options)


def _model_json(path: Path) -> Path:
    """The JSON file that describes the model at `path` (a folder, a checkpoint stem, or a file)."""
    if path.is_dir():
        for name in ("model.json", "best.json", "last.json"):
            if (path / name).exists():
                return path / name
        held = sorted(p.name for p in path.iterdir())[:10]
        raise FileNotFoundError(f"{path}: no geolib model in this folder (it holds {held}); expected model.json "
                                "(a CosPlace, D&C or hierarchical model) or best.json / last.json (a training "
                                "checkpoint): give the folder a training wrote to")
    stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    doc_path = stem.with_name(stem.name + ".json")
    if not doc_path.exists():
        raise FileNotFoundError(f"{path}: no such geolib model ({doc_path.name} not found in {doc_path.parent}); "
                                "give a checkpoint such as <run>/best, a saved model folder, or a student file")
    return doc_path


def _load_saved_folder(folder: Path, meta: Mapping[str, Any], device: str) -> Any:
    kind = meta.get("kind")
    loader = _loader("folder", kind) if isinstance(kind, str) else None
    if loader is not None:
        return loader(folder, device)
    raise ValueError(f"{folder}/model.json: holds a model of kind {kind!r}, which this geolib cannot load "
                     f"(known kinds: {', '.join(SAVED_KINDS)}); update geolib or give another folder")


def _load_network_weights(stem: Path, model: nn.Module) -> None:
    """The network's weights from a checkpoint: a loop checkpoint keeps them under `model.` of its
    bundle (beside loss or head parameters); a plain one at the top."""
    from ..checkpoint import read_model_state

    _, state = read_model_state(stem, "")
    wanted = set(model.state_dict())
    for prefix in ("model.", ""):
        picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if wanted <= set(picked):
            model.load_state_dict({k: picked[k] for k in wanted})
            return
    have = sorted({k.split(".")[0] for k in state})
    raise ValueError(f"{stem}.safetensors: its weights do not fit the model its config describes "
                     f"(top-level keys {have}); the files were mixed up or written by another geolib")
