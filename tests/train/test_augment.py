import math

import torch

from covidnet.augment import AugmentConfig, augment, sample_params

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
