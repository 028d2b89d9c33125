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


ACQ = AugmentConfig(0, 0, 0, 0, (1.0, 1.0), gamma=0.5, blur=2.0, noise=0.05)


def test_without_acquisition_the_first_six_parameters_are_unchanged():
    g = AugmentConfig()
    with_acq = AugmentConfig(gamma=0.3, blur=1.0, noise=0.02)
    a = sample_params(8, g, torch.Generator().manual_seed(3))
    b = sample_params(8, with_acq, torch.Generator().manual_seed(3))
    assert a.shape == (8, 6) and b.shape == (8, 10) and torch.equal(a, b[:, :6])
    assert not with_acq.identity and ACQ.acquisition and not AugmentConfig().acquisition


def test_acquisition_gamma_blur_and_noise_do_what_they_say():
    x = torch.full((3, 1, 32, 32), 0.25)
    x[:, :, :, ::2] = 0.75  # vertical stripes
    p = sample_params(3, NONE, torch.Generator())
    gamma_only = torch.cat([p, torch.tensor([[2.0, 0, 0, 0], [0.5, 0, 0, 0], [1.0, 0, 0, 0]])], 1)
    y = augment(x, gamma_only)
    assert torch.allclose(y[0], x[0] ** 2, atol=1e-5) and torch.allclose(y[1], x[1] ** 0.5, atol=1e-5)
    assert torch.allclose(y[2], x[2], atol=1e-5)  # gamma 1, no blur, no noise: unchanged
    blur = torch.cat([p, torch.tensor([[1.0, 2.0, 0, 0], [1.0, 0.0, 0, 0], [1.0, 0.7, 0, 0]])], 1)
    y = augment(x, blur)
    assert y[0].std() < 0.05 * x[0].std() and torch.allclose(y[1], x[1], atol=1e-5)  # stripes gone; sigma 0: kept
    assert y[0].std() < y[2].std() < x[2].std()  # more blur, less contrast
    assert torch.allclose(y.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-4)  # blur keeps the mean
    noise = torch.cat([p, torch.tensor([[1.0, 0, 0.1, 7.0], [1.0, 0, 0.0, 7.0], [1.0, 0, 0.02, 7.0]])], 1)
    flat = torch.full((3, 1, 64, 64), 0.5)
    y = augment(flat, noise)
    assert abs(float((y[0] - 0.5).std()) - 0.1) < 0.01 and torch.equal(y[1], flat[1])
    assert abs(float((y[2] - 0.5).std()) - 0.02) < 0.003


def test_acquisition_is_reproducible_for_a_seed_and_differs_per_image():
    x = torch.rand(4, 1, 32, 32)
    a = augment(x, sample_params(4, ACQ, torch.Generator().manual_seed(1)))
    b = augment(x, sample_params(4, ACQ, torch.Generator().manual_seed(1)))
    p = sample_params(64, ACQ, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and len(set(p[:, 6].tolist())) == 64 and len(set(p[:, 7].tolist())) == 64
    assert p[:, 6].min() >= math.exp(-0.5) - 1e-6 and p[:, 6].max() <= math.exp(0.5) + 1e-6
    assert p[:, 7].max() <= 2.0 and p[:, 8].max() <= 0.05


def test_negative_acquisition_strength_is_one_clear_error_before_anything_is_read(tmp_path):
    import pytest

    from covidnet.errors import ConfigError
    from covidnet.train import TrainConfig, train

    with pytest.raises(ConfigError, match="--aug-gamma, --aug-blur and --aug-noise must be >= 0"):
        train(TrainConfig(data=str(tmp_path / "none"), out=str(tmp_path / "run"), aug_blur=-1.0))
    assert not (tmp_path / "run").exists()


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
