import math

import torch

from covidnet.augment import AugmentConfig, augment, augment_labels, sample_params

NONE = AugmentConfig(0, 0, 0, 0, (1.0, 1.0))


def test_identity_parameters_leave_the_image_unchanged():
    x = torch.rand(3, 1, 32, 32)
    assert torch.allclose(augment(x, sample_params(3, NONE, torch.Generator().manual_seed(0))), x, atol=1e-5)


def test_every_image_gets_its_own_parameters():
    p = sample_params(64, AugmentConfig(), torch.Generator().manual_seed(0))
    angles, zooms, flips = p[:, 0], p[:, 1], p[:, 4]
    assert len(set(angles.tolist())) == 64 and len(set(zooms.tolist())) == 64
    assert angles.abs().max() <= math.radians(10) and zooms.min() >= 0.85 and zooms.max() <= 1.15
    assert 10 < (flips < 0).sum() < 54  # about half flipped


def test_same_seed_same_augmentation():
    x = torch.rand(4, 1, 32, 32)
    a = augment(x, sample_params(4, AugmentConfig(), torch.Generator().manual_seed(5)))
    b = augment(x, sample_params(4, AugmentConfig(), torch.Generator().manual_seed(5)))
    c = augment(x, sample_params(4, AugmentConfig(), torch.Generator().manual_seed(6)))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flip_mirrors_and_brightness_scales():
    x = torch.zeros(1, 1, 8, 8)
    x[..., :, :2] = 0.5  # a bright left edge
    p = sample_params(1, NONE, torch.Generator())
    p[0, 4] = -1.0  # flip
    p[0, 5] = 1.1  # brighter
    y = augment(x, p)
    assert torch.allclose(y[..., :, -2:], torch.full_like(y[..., :, -2:], 0.55), atol=1e-5)
    assert y[..., :, :2].abs().max() < 1e-6


def test_rotation_by_ninety_degrees_moves_a_corner():
    x = torch.zeros(1, 1, 9, 9)
    x[..., 0, 0] = 1.0  # top-left
    p = sample_params(1, NONE, torch.Generator())
    p[0, 0] = math.pi / 2
    y = augment(x, p)
    corners = {
        k: float(v)
        for k, v in {"tl": y[0, 0, 0, 0], "tr": y[0, 0, 0, -1], "bl": y[0, 0, -1, 0], "br": y[0, 0, -1, -1]}.items()
    }
    assert max(corners, key=corners.get) in ("tr", "bl") and corners["tl"] < 0.1


def test_a_mask_is_warped_with_its_image_and_keeps_its_values():
    """Image and lung mask under the same parameters: the mask nearest-neighbour (only 0, 127, 255 come
    out), the image bilinear; a block drawn in both lands in the same place (brightness 1, no blur)."""
    mask = torch.zeros(6, 1, 48, 48)
    mask[:, :, 10:30, 8:20] = 255.0
    mask[:, :, 12:14, 10:12] = 127.0  # an ignore patch
    image = (mask > 0).float()
    params = sample_params(6, AugmentConfig(brightness=0.0), torch.Generator().manual_seed(3))
    warped_mask, warped_image = augment_labels(mask, params), augment(image, params)
    assert set(torch.unique(warped_mask).tolist()) <= {0.0, 127.0, 255.0}
    agree = ((warped_mask > 0) == (warped_image > 0.5)).float().mean()
    assert agree > 0.98 and not torch.equal(warped_mask, mask)
    flip = torch.tensor([[0.0, 1.0, 0.0, 0.0, -1.0, 1.0]])  # a flip alone mirrors the mask exactly
    assert torch.equal(augment_labels(mask[:1], flip), mask[:1].flip(-1))
