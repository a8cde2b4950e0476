"""Tiny random CLIP and DINOv2 checkpoints in the released layout, for offline tests and dry runs.

Each is written by transformers' `save_pretrained` (config, safetensors weights and the image
processor), so loading them goes through exactly the code that loads `openai/clip-vit-base-patch16`
and `facebook/dinov2-small`. Sizes keep a CPU forward at 224 px in milliseconds: width 32, 2 layers.
"""
from __future__ import annotations

from pathlib import Path

CLIP_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   image_size=224, patch_size=16)
CLIP_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 vocab_size=64, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
DINO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=224, patch_size=14)


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A full `CLIPModel` (text and vision towers, 16-d projection) and its `CLIPImageProcessor`."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(text_config=CLIP_TEXT, vision_config=CLIP_VISION, projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(folder)
    return folder


def save_tiny_dinov2(folder: Path, seed: int = 0) -> Path:
    """A `Dinov2Model` (32-d class token) and the processor DINOv2 is released with (`BitImageProcessor`)."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(**DINO)).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def tiny_teacher_dirs(root: Path) -> list[str]:
    """Teacher specs for a profile's `teachers` list: `["clip:<root>/clip", "dinov2:<root>/dinov2"]`.

    Writes the two checkpoints under `root` unless they are already there.
    """
    root = Path(root)
    specs = []
    for kind, save in (("clip", save_tiny_clip), ("dinov2", save_tiny_dinov2)):
        folder = root / kind
        if not (folder / "config.json").exists():
            save(folder)
        specs.append(f"{kind}:{folder}")
    return specs
