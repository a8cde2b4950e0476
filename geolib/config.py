"""From a resolved profile section to the objects a run builds: the model, the loop's config and
`train_crossview`'s options. Notebooks, `geolib train` and the ablation rows all go through here,
so a profile key means the same thing everywhere."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from .train import TrainConfig

def phase1_model(cfg: dict[str, Any]) -> nn.Module:
    """The model a resolved `phase1` profile section describes (notebook 02 and `geolib train`)."""
    from .models import create_model

    return create_model(cfg["model"], img_size=cfg["image_size"], l2l=cfg["l2l"], fusion=cfg["fusion"],
                        pooling=cfg["pooling"], **(cfg.get("model_options") or {}))

def phase1_fit_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """`train_crossview` keywords a resolved `phase1` section sets (besides the TrainConfig)."""
    return {"image_size": cfg["image_size"], "loss": cfg["loss"], "max_minutes": cfg["minutes"],
            "augment": cfg.get("augment", "jitter"), "preload": cfg.get("preload", False),
            "flip": cfg.get("flip_tta", False)}

def phase1_train_config(cfg: dict[str, Any]) -> "TrainConfig":
    from .train import TrainConfig

    return TrainConfig(views=("street", "drone", "satellite"), epochs=cfg["epochs"],
                       batch_size=cfg["batch_size"], lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                       warmup=cfg["warmup"], amp=cfg["amp"], device=cfg["device"], seed=cfg["seed"],
                       num_workers=cfg["num_workers"], sampling=cfg["sampling"], eval_every=cfg["eval_every"],
                       channels_last=cfg.get("channels_last", False))
