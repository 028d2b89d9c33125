"""preprocess / load_image: the reference COVID-Net's top crop, central square crop and resize; lung masks
through the same geometry (``Contract.mask``) and back (``Contract.uncrop``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from covidnet.contract import DEFAULT_SIZE, TOP_CROP, Contract, load_image, preprocess
from covidnet.errors import ConfigError, ImageReadError
from covidnet.imageio import image_shape, read_image


def test_reference_constants():
    assert TOP_CROP == 0.08 and DEFAULT_SIZE == 480


def test_output_is_size_by_size_uint8():
    image = np.random.default_rng(0).integers(0, 256, (90, 70), dtype=np.uint8)
    for size in (16, 64, 128):
        out = preprocess(image, size=size)
        assert out.shape == (size, size) and out.dtype == np.uint8 and out.flags.writeable


def test_default_size_is_480():
    assert preprocess(np.zeros((100, 120), np.uint8)).shape == (480, 480)


def test_top_band_is_removed():
    image = np.zeros((100, 100), np.uint8)
    image[:5] = 255  # burnt-in text in the top 5 % of rows
    assert preprocess(image, size=64).max() == 0  # 8 % cut: all of it gone, no bleed from resizing
    assert preprocess(image, size=64, top_crop=0.0).max() > 200  # control: without the cut it shows


def test_top_crop_counts_rows_as_the_reference_does():
    image = np.arange(50, dtype=np.uint8)[:, None].repeat(50, axis=1)  # row i has value i
    out = preprocess(image, size=46, top_crop=0.08)  # int(50 * 0.08) = 4 rows cut, 46 x 50 left
    np.testing.assert_array_equal(out[:, 0], np.arange(4, 50))


def test_wide_image_keeps_its_centre():
    image = np.full((64, 192), 100, np.uint8)  # left third 100
    image[:, 64:128] = 200  # centre third 200 (the mark)
    image[:, 128:] = 50  # right third 50
    out = preprocess(image, size=32)  # 59 rows after the cut; square = columns 66..124
    assert (out == 200).all()


def test_tall_image_keeps_its_vertical_centre():
    image = np.zeros((200, 50), np.uint8)
    image[:16] = 255  # the 8 % cut (16 rows)
    image[103:113, 20:30] = 255  # a mark at the centre (row 108) of the 184 rows left after the cut
    image[:50, :] = 255  # rows above the central square (16 + 67 = 83): must not appear
    out = preprocess(image, size=50)
    rows, cols = np.nonzero(out > 128)
    assert abs(rows.mean() - 24.5) <= 1 and abs(cols.mean() - 24.5) <= 1


def test_downscaling_is_anti_aliased():
    image = np.zeros((200, 200), np.uint8)
    image[:, ::2] = 255  # one-pixel stripes: a plain bilinear sampler would alias them to stripes or flat 0/255
    out = preprocess(image, size=20, top_crop=0.0)
    assert np.abs(out[:, 1:-1].astype(int) - 128).max() <= 1  # averaged to mid-grey (edges see half a filter)


def test_input_is_not_modified_or_aliased():
    image = np.random.default_rng(1).integers(0, 256, (52, 48), dtype=np.uint8)
    before = image.copy()
    out = preprocess(image, size=48)  # int(52 * .08) = 4 rows cut: 48 x 48, no resize needed
    np.testing.assert_array_equal(out, before[4:])
    out[:] = 0
    np.testing.assert_array_equal(image, before)


def test_load_image_equals_preprocess_of_read_image(tmp_path):
    image = np.random.default_rng(2).integers(0, 256, (120, 100), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(image).save(path)
    np.testing.assert_array_equal(load_image(path, size=64), preprocess(read_image(path), size=64))
    np.testing.assert_array_equal(load_image(path, size=64, top_crop=0.2), preprocess(image, size=64, top_crop=0.2))


def test_load_image_on_large_jpeg_matches_full_decode(tmp_path):
    yy, xx = np.mgrid[0:1100, 0:1000]
    image = np.rint(127.5 + 100 * np.sin(xx / 90.0) * np.cos(yy / 120.0)).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(image).save(path, quality=90)
    fast = load_image(path, size=128)  # DCT-downscaled decode
    assert min(read_image(path, min_side=math.ceil(128 / (1 - TOP_CROP))).shape) < 1000  # it really was
    full = preprocess(read_image(path), size=128)
    # the crops, rounded at 1/4 scale, can land up to 3 source pixels off: a small shift, no more
    assert np.abs(fast.astype(int) - full).mean() < 1.0


def test_load_image_raises_read_error_for_a_bad_file(tmp_path):
    with pytest.raises(ImageReadError, match="missing.png"):
        load_image(tmp_path / "missing.png")


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((32, 32, 3), np.uint8),
        np.zeros((32, 32), np.uint16),
        np.zeros((32, 32), np.float32),
        np.zeros((0, 32), np.uint8),
        [[0, 1], [2, 3]],
    ],
    ids=["rgb", "uint16", "float", "empty", "list"],
)
def test_bad_image_raises_config_error(image):
    with pytest.raises(ConfigError):
        preprocess(image, size=32)


@pytest.mark.parametrize("size", [0, 15, -480, 32.0, True, "480"])
def test_bad_size_raises_config_error(size, tmp_path):
    with pytest.raises(ConfigError, match="size"):
        preprocess(np.zeros((32, 32), np.uint8), size=size)
    with pytest.raises(ConfigError, match="size"):
        load_image(tmp_path / "never-read.png", size=size)  # arguments are checked before the file


@pytest.mark.parametrize("top_crop", [-0.01, 0.5, 0.9, float("nan"), "0.08", None])
def test_bad_top_crop_raises_config_error(top_crop):
    with pytest.raises(ConfigError, match="top_crop"):
        preprocess(np.zeros((32, 32), np.uint8), size=32, top_crop=top_crop)


def test_a_mask_follows_its_image_through_the_top_crop_and_the_square():
    """A marked pixel of a mask lands where the same pixel of its image lands, for a tall and a wide image,
    and for a mask at another resolution than its image."""
    contract = Contract(stored_size=32, top_crop=0.15)
    for shape, spot in (((100, 80), (60, 23)), ((70, 120), (40, 88))):
        image = np.zeros(shape, np.uint8)
        image[spot[0] : spot[0] + 4, spot[1] : spot[1] + 4] = 255
        stored_image = contract.pixels(image)
        for scale in (1, 3):
            mask = np.asarray(Image.fromarray(image).resize((shape[1] * scale, shape[0] * scale), Image.NEAREST))
            stored_mask = contract.mask(mask, image_shape=shape)
            assert set(np.unique(stored_mask)) <= {0, 255}
            centre = lambda a: np.argwhere(a > 0).mean(0)  # noqa: E731
            assert np.abs(centre(stored_mask) - centre(stored_image)).max() <= 0.5
        back = contract.uncrop(contract.mask(image), shape)  # and back onto the whole image
        assert back.shape == shape and np.abs(np.argwhere(back).mean(0) - np.argwhere(image).mean(0)).max() <= 1.0
    top = np.zeros((100, 80), np.uint8)
    top[:14] = 255  # only in the rows the top crop removes
    assert not contract.mask(top).any()


def test_image_shape_reads_the_header_as_read_image_decodes(tmp_path):
    for shape in ((37, 52), (90, 40)):
        p = tmp_path / f"{shape[0]}.jpg"
        Image.fromarray(np.zeros(shape, np.uint8)).save(p)
        assert image_shape(p) == shape == read_image(p).shape
    turned = tmp_path / "turned.jpg"  # a phone photo of a film: EXIF orientation 6 turns it upright
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((30, 50), np.uint8)).save(turned, exif=exif)
    assert image_shape(turned) == (50, 30) == read_image(turned).shape
