"""Models layer: the registry (`create_model`, `list_models`, `load_model`, `config_hash`), the
Phase 1 cross-view network and its backbones, and the layers networks are built from. Recipes
in the training layer register their own families here when they are imported.

`from geolib.models import create_model, load_model` is the user's way in; the names below are
re-exported from `registry` and `phase1`.
"""
from .phase1 import (PHASE1_CPU_DEFAULTS, PHASE1_DEFAULTS, POOLINGS, VIEW_LAYOUTS, Branch, CrossViewModel,
                     GrayWorldInput, create_backbone)
from .registry import (SAVED_KINDS, config_hash, create_model, list_models, load_model, load_model_and_meta,
                       rebuild_model, register_loader, register_model)

__all__ = ["PHASE1_CPU_DEFAULTS", "PHASE1_DEFAULTS", "POOLINGS", "VIEW_LAYOUTS", "Branch", "CrossViewModel",
           "GrayWorldInput", "create_backbone", "SAVED_KINDS", "config_hash", "create_model", "list_models",
           "load_model", "load_model_and_meta", "rebuild_model", "register_loader", "register_model"]
