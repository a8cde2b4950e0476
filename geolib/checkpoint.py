"""Resumable checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint `NAME` is two files: `NAME.safetensors` (model and optimizer tensors, RNG states) and
`NAME.json` (epoch, config, metrics, the optimizer's and scheduler's plain values). The JSON is
written last and records the tensor file's size, so a run killed between the two writes is never
mistaken for a complete checkpoint.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .paths import atomic_path, atomic_write_json

FORMAT_VERSION = 1


def _split_state(state: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor of a nested state into `tensors`; leave a JSON-able placeholder."""
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(state, dict):
        return {"__dict__": [[_key(k), _split_state(v, f"{prefix}.{k}", tensors)] for k, v in state.items()]}
    if isinstance(state, (list, tuple)):
        return {"__list__": [_split_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(state)],
                "tuple": isinstance(state, tuple)}
    if isinstance(state, (np.floating, np.integer)):
        return state.item()
    return state


def _key(k: Any) -> Any:
    return {"__int__": k} if isinstance(k, int) else k


def _join_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {(k["__int__"] if isinstance(k, dict) else k): _join_state(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [_join_state(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
    return obj


def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
            "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, **meta: Any) -> Path:
    """Write `path.safetensors` then `path.json`; `meta` (epoch, config, metrics…) must be JSON-able."""
    path = Path(path).with_suffix("")
    tensors: dict[str, torch.Tensor] = {}
    state = {
        "model": _split_state(_unwrap(model).state_dict(), "model", tensors),
        "optimizer": _split_state(optimizer.state_dict(), "optimizer", tensors) if optimizer else None,
        "scheduler": _split_state(scheduler.state_dict(), "scheduler", tensors) if scheduler else None,
        "rng": _split_state(rng_state(), "rng", tensors),
    }
    tensor_path = path.with_name(path.name + ".safetensors")
    with atomic_path(tensor_path) as tmp:
        save_file(tensors, str(tmp))
    doc = {"format_version": FORMAT_VERSION, "tensor_file": tensor_path.name,
           "tensor_bytes": tensor_path.stat().st_size, "state": state, "meta": meta}
    return atomic_write_json(path.with_name(path.name + ".json"), doc, sort_keys=False, indent=None)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    path = Path(path).with_suffix("") if str(path).endswith((".json", ".safetensors")) else Path(path)
    doc_path = path.with_name(path.name + ".json")
    if not doc_path.exists():
        raise FileNotFoundError(f"{doc_path}: no checkpoint metadata; was the run saved here?")
    doc = json.loads(doc_path.read_text())
    tensor_path = doc_path.with_name(doc["tensor_file"])
    if not tensor_path.exists() or tensor_path.stat().st_size != doc["tensor_bytes"]:
        raise ValueError(f"{tensor_path}: missing or not the file {doc_path.name} was written with; "
                         "the run was interrupted while saving: delete both files and resume from the other checkpoint")
    return doc, load_file(str(tensor_path))


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, restore_rng: bool = False, strict: bool = True) -> dict[str, Any]:
    """Restore what was saved into the given objects and return the `meta` dict."""
    doc, tensors = read_checkpoint(path)
    state = doc["state"]
    _unwrap(model).load_state_dict(_join_state(state["model"], tensors), strict=strict)
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(_join_state(state["optimizer"], tensors))
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(_join_state(state["scheduler"], tensors))
    if restore_rng:
        set_rng_state(_join_state(state["rng"], tensors))
    return doc["meta"]


def load_weights(path: str | Path, module: torch.nn.Module, prefix: str = "model.") -> dict[str, Any]:
    """Load only the `prefix` part of a checkpoint's model state (e.g. the network of a training
    bundle that also holds loss parameters); returns the checkpoint's `meta`."""
    meta, picked = read_model_state(path, prefix)
    if not picked:
        raise KeyError(f"{path}: no weights under {prefix!r}; keys start with "
                       f"{sorted({k.split('.')[0] for k in read_model_state(path, '')[1]})}")
    _unwrap(module).load_state_dict(picked)
    return meta


def read_model_state(path: str | Path, prefix: str = "model.") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A checkpoint's `meta` and the part of its model state under `prefix`, with the prefix cut."""
    doc, tensors = read_checkpoint(path)
    state = _join_state(doc["state"]["model"], tensors)
    return doc["meta"], {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
