"""Batched per-image augmentation (vpr_train.Augment): identities, ranges and per-image draws."""
import torch

from geolib.vpr_train import Augment, color_jitter, normalize, random_resized_crop


def _batch(n=6, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def test_no_augmentation_is_only_normalisation():
    x = _batch()
    out = Augment(16, 0.0, 0.0, 0.0, 0.0, 0.0)(x)
    torch.testing.assert_close(out, normalize(x))


def test_jitter_keeps_range_and_draws_per_image():
    torch.manual_seed(0)
    x = _batch(n=1).float().div(255).repeat(8, 1, 1, 1)  # the same image eight times
    out = color_jitter(x, 0.7, 0.7, 0.7, 0.5)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert len({round(float(o.mean()), 5) for o in out}) == 8  # each copy got its own draw


def test_hue_rotation_leaves_gray_and_full_turn_alone():
    gray = torch.full((2, 3, 4, 4), 0.4)
    torch.testing.assert_close(color_jitter(gray, 0, 0, 0, 0.5), gray, atol=1e-5, rtol=0)
    x = _batch(n=2, size=4).float().div(255)
    torch.manual_seed(1)
    small = color_jitter(x, 0, 0, 0, 1e-6)  # a vanishing rotation is the identity
    torch.testing.assert_close(small, x, atol=1e-4, rtol=0)


def test_crop_identity_and_per_image_crops():
    x = _batch(n=4, size=16).float().div(255)
    torch.testing.assert_close(random_resized_crop(x, 16, 0.0), x)
    # area 1 and ratio 1: the crop is the whole image
    torch.testing.assert_close(random_resized_crop(x, 16, 1e-9, (1.0, 1.0)), x, atol=1e-4, rtol=0)
    torch.manual_seed(0)
    same = x[:1].repeat(5, 1, 1, 1)
    out = random_resized_crop(same, 8, 0.6)
    assert out.shape == (5, 3, 8, 8)
    assert len({round(float(o.sum()), 3) for o in out}) == 5


def test_augment_output_shape_and_type():
    out = Augment(12)(_batch(size=16))
    assert out.shape == (6, 3, 12, 12) and out.dtype == torch.float32
