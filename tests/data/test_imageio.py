"""read_image / read_image_bytes on real files written here: PNG, JPEG, WebP and DICOM, good and bad."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomfiles import dicom, save_dicom
from PIL import Image, ImageFile
from pydicom import Dataset, uid

from covidnet.errors import CovidnetError, ImageReadError
from covidnet.imageio import read_image, read_image_bytes


def gradient(h: int = 48, w: int = 64) -> np.ndarray:
    """A uint8 image that uses the full 0..255 range, so min-max scaling leaves it unchanged."""
    x = np.linspace(0, 255, w)
    y = np.linspace(0, 1, h)[:, None]
    img = np.rint(x[None, :] * (0.5 + 0.5 * y)).astype(np.uint8)
    img[0, 0], img[-1, -1] = 0, 255
    return img


def save_pil(path: Path, img: Image.Image, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def window_linear(x: float, center: float, width: float) -> float:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR windowing onto 0..1, written out independently of pydicom."""
    return float(np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0))


def assert_read_error(path_or_call, *needles: str) -> str:
    with pytest.raises(ImageReadError) as info:
        path_or_call() if callable(path_or_call) else read_image(path_or_call)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


# ------------------------------------------------------------------------------ Pillow formats


def test_8bit_png_reads_back_exactly(tmp_path):
    img = gradient()
    out = read_image(save_pil(tmp_path / "a.png", Image.fromarray(img)))
    assert out.dtype == np.uint8 and out.shape == (48, 64)
    np.testing.assert_array_equal(out, img)


def test_16bit_png_is_scaled_by_its_range_not_clipped(tmp_path):
    values = np.array([[0, 1024, 2048, 4095]] * 8, dtype=np.uint16)  # a 12-bit image stored in 16 bits
    path = save_pil(tmp_path / "deep.png", Image.fromarray(values))
    assert Image.open(path).mode.startswith("I")  # really a 16-bit PNG
    out = read_image(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], [0, 64, 128, 255])  # round(v / 4095 * 255)


def test_rgb_and_rgba_png_become_luma(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    expected = np.array(Image.fromarray(rgb).convert("L"))
    np.testing.assert_array_equal(read_image(save_pil(tmp_path / "rgb.png", Image.fromarray(rgb))), expected)
    rgba = np.dstack([rgb, np.full((32, 40), 7, np.uint8)])  # alpha is dropped, as cv2.imread does
    np.testing.assert_array_equal(read_image(save_pil(tmp_path / "rgba.png", Image.fromarray(rgba))), expected)


def test_la_and_palette_png_become_grey(tmp_path):
    img = gradient()
    la = Image.merge("LA", [Image.fromarray(img), Image.new("L", (64, 48), 0)])
    np.testing.assert_array_equal(read_image(save_pil(tmp_path / "la.png", la)), img)
    palette = Image.fromarray(np.dstack([img] * 3)).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    out = read_image(save_pil(tmp_path / "p.png", palette))
    assert np.abs(out.astype(int) - img).max() <= 8  # adaptive palette quantises a little


def test_jpeg_reads_close_to_source(tmp_path):
    img = gradient()
    out = read_image(save_pil(tmp_path / "a.jpg", Image.fromarray(img), quality=95))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img).mean() < 2


def test_colour_jpeg_becomes_grey(tmp_path):
    rgb = np.dstack([gradient()] * 3)
    out = read_image(save_pil(tmp_path / "c.jpg", Image.fromarray(rgb), quality=95))
    assert out.ndim == 2 and np.abs(out.astype(int) - gradient()).mean() < 2


def test_lossless_webp_reads_back_exactly(tmp_path):
    img = gradient()
    out = read_image(save_pil(tmp_path / "a.webp", Image.fromarray(img), lossless=True))
    np.testing.assert_array_equal(out, img)


def test_min_side_decodes_large_jpeg_at_reduced_scale_keeping_short_side(tmp_path):
    yy, xx = np.mgrid[0:768, 0:1024]
    big = np.rint(127.5 + 100 * np.sin(xx / 40.0) * np.cos(yy / 55.0)).astype(np.uint8)  # smooth, 768 x 1024
    path = save_pil(tmp_path / "big.jpg", Image.fromarray(big), quality=90)
    assert read_image(path).shape == (768, 1024)
    assert read_image(path, min_side=150).shape == (192, 256)  # 768 // 150 = 5 -> 1/4 scale
    assert read_image(path, min_side=384).shape == (384, 512)  # exactly half still fits
    assert read_image(path, min_side=385).shape == (768, 1024)  # half would be too small: full size
    reduced = Image.fromarray(read_image(path, min_side=150)).resize((256, 192), Image.Resampling.BILINEAR)
    full = Image.fromarray(read_image(path)).resize((256, 192), Image.Resampling.BILINEAR)
    assert np.abs(np.array(reduced, int) - np.array(full, int)).mean() < 0.5  # same picture, cheaper


def test_min_side_never_shrinks_below_it(tmp_path):
    path = save_pil(tmp_path / "big.jpg", Image.fromarray(np.tile(gradient(48, 64), (16, 16))), quality=90)
    for min_side in (100, 192, 200, 383, 384, 385, 768, 2000):
        assert min(read_image(path, min_side=min_side).shape) >= min(min_side, 768)


def test_min_side_is_ignored_for_png(tmp_path):
    path = save_pil(tmp_path / "big.png", Image.fromarray(np.tile(gradient(), (4, 4))))
    assert read_image(path, min_side=16).shape == (192, 256)


def test_exif_orientation_is_applied(tmp_path):
    img = np.zeros((32, 64), np.uint8)
    img[:, :8] = 255  # a bright left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = read_image(save_pil(tmp_path / "phone.jpg", Image.fromarray(img), quality=95, exif=exif))
    assert out.shape == (64, 32)
    assert out[:8].mean() > 200 and out[16:].mean() < 30  # the left edge is now the top


def test_read_image_bytes_matches_read_image(tmp_path):
    path = save_pil(tmp_path / "a.png", Image.fromarray(gradient()))
    np.testing.assert_array_equal(read_image_bytes(path.read_bytes(), "a.png"), read_image(path))
    jpeg = save_pil(tmp_path / "a.jpg", Image.fromarray(np.tile(gradient(), (8, 8))), quality=90)
    np.testing.assert_array_equal(read_image_bytes(jpeg.read_bytes(), min_side=100), read_image(jpeg, min_side=100))


def test_truncated_images_stay_an_error():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # importing the reader must not loosen Pillow


# ------------------------------------------------------------------------------------- DICOM


def test_monochrome2_8bit_dicom_reads_back_exactly(tmp_path):
    img = gradient()
    out = read_image(save_dicom(tmp_path / "m2.dcm", dicom(img)))
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out, img)


def test_monochrome1_is_inverted(tmp_path):
    stored = np.zeros((32, 32), np.uint16)
    stored[:, 16:] = 4095  # bright in the stored data...
    stored[0, 0] = 1000
    out = read_image(save_dicom(tmp_path / "m1.dcm", dicom(stored, "MONOCHROME1", 12)))
    assert (out[:, 16:] == 0).all()  # ...comes out dark
    assert out[1, 0] == 255  # stored 0 is white in MONOCHROME1
    assert out[0, 0] == round(255 - 1000 / 4095 * 255)


def test_rescale_and_window_map_pixels_where_the_window_says(tmp_path):
    slope, intercept, center, width = 2.0, -1024.0, 40.0, 400.0  # CT-like: HU = 2 * stored - 1024
    stored = np.array([[100, 532, 582, 600, 1000]] * 4, dtype=np.uint16)
    ds = dicom(
        stored, bits_stored=12, RescaleSlope=slope, RescaleIntercept=intercept, WindowCenter=center, WindowWidth=width
    )
    out = read_image(save_dicom(tmp_path / "win.dcm", ds))
    expected = [round(255 * window_linear(2 * int(s) - 1024, center, width)) for s in stored[0]]
    assert expected[0] == 0 and expected[-1] == 255 and 0 < expected[1] < expected[2] < expected[3] < 255
    assert np.abs(out[0].astype(int) - expected).max() <= 1


def test_window_spans_0_to_255_even_when_the_image_does_not_fill_it(tmp_path):
    stored = np.array([[1000, 1100, 1200]] * 4, dtype=np.uint16)  # narrow range inside a wide window
    ds = dicom(stored, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    out = read_image(save_dicom(tmp_path / "wide.dcm", ds))
    expected = [round(255 * window_linear(int(v), 2048, 4096)) for v in stored[0]]
    assert np.abs(out[0].astype(int) - expected).max() <= 1  # not stretched to 0..255


def test_voi_lut_sequence_is_applied(tmp_path):
    stored = np.array([[0, 1, 2, 3]] * 4, dtype=np.uint16)
    ds = dicom(stored, bits_stored=12)
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]
    item.add_new("LUTData", "US", [0, 4000, 1000, 2000])  # non-monotonic, so applying it is visible
    ds.VOILUTSequence = [item]
    out = read_image(save_dicom(tmp_path / "lut.dcm", ds))
    np.testing.assert_array_equal(out[0], [0, 255, round(1000 / 4000 * 255), round(2000 / 4000 * 255)])


def test_signed_16bit_dicom_keeps_negative_values_dark(tmp_path):
    stored = np.array([[-1000, 0, 1000, 3000]] * 4, dtype=np.int16)
    ds = dicom(stored)
    assert ds.PixelRepresentation == 1
    out = read_image(save_dicom(tmp_path / "signed.dcm", ds))
    np.testing.assert_array_equal(out[0], [0, 64, 128, 255])  # min-max: (v + 1000) / 4000 * 255


def test_signed_dicom_with_window_below_zero(tmp_path):
    stored = np.array([[-1000, -600, -500, 0]] * 4, dtype=np.int16)
    ds = dicom(stored, WindowCenter=-600, WindowWidth=1200)
    out = read_image(save_dicom(tmp_path / "lung.dcm", ds))
    expected = [round(255 * window_linear(int(v), -600, 1200)) for v in stored[0]]
    assert np.abs(out[0].astype(int) - expected).max() <= 1


def test_multiframe_dicom_gives_the_first_frame(tmp_path):
    first = gradient()
    frames = np.stack([first, 255 - first])
    out = read_image(save_dicom(tmp_path / "multi.dcm", dicom(frames)))
    np.testing.assert_array_equal(out, first)


def test_rgb_dicom_becomes_luma(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    out = read_image(save_dicom(tmp_path / "rgb.dcm", dicom(rgb, "RGB")))
    assert np.abs(out.astype(int) - np.array(Image.fromarray(rgb).convert("L"))).max() <= 1


@pytest.mark.parametrize("syntax", [uid.RLELossless, uid.JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_compressed_dicom_decodes_like_uncompressed(tmp_path, syntax):
    stored = (np.arange(48 * 64).reshape(48, 64) % 4096).astype(np.uint16)
    plain = read_image(save_dicom(tmp_path / "plain.dcm", dicom(stored, "MONOCHROME2", 12)))
    ds = dicom(stored, "MONOCHROME2", 12)
    ds.compress(syntax, stored)
    path = save_dicom(tmp_path / "packed.dcm", ds)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_image(path), plain)


def test_dicom_without_preamble_is_read_when_named_dcm(tmp_path):
    ds = dicom(gradient())
    raw = io.BytesIO()
    ds.save_as(raw)  # no enforce_file_format: no preamble, no "DICM"
    data = raw.getvalue()
    assert data[128:132] != b"DICM"
    (tmp_path / "raw.dcm").write_bytes(data)
    np.testing.assert_array_equal(read_image(tmp_path / "raw.dcm"), gradient())
    np.testing.assert_array_equal(read_image_bytes(data, "upload.dcm"), gradient())
    (tmp_path / "raw.bin").write_bytes(data)
    assert_read_error(tmp_path / "raw.bin", "raw.bin", "not an image")


def test_dicom_with_preamble_is_read_whatever_its_name(tmp_path):
    path = save_dicom(tmp_path / "scan.png", dicom(gradient()))  # misnamed, but has "DICM" at byte 128
    np.testing.assert_array_equal(read_image(path), gradient())


def test_read_image_bytes_reads_dicom(tmp_path):
    path = save_dicom(tmp_path / "m2.dcm", dicom(gradient()))
    np.testing.assert_array_equal(read_image_bytes(path.read_bytes()), gradient())


# --------------------------------------------------------------------------------- bad input


def test_missing_file_raises_read_error_naming_it(tmp_path):
    assert_read_error(tmp_path / "nope.png", "nope.png", "no such file")


def test_image_read_error_is_a_covidnet_error():
    assert issubclass(ImageReadError, CovidnetError)


def test_zero_byte_file_raises_read_error(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert_read_error(tmp_path / "empty.png", "empty.png", "empty file")
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert_read_error(tmp_path / "empty.dcm", "empty.dcm", "empty file")


def test_truncated_jpeg_raises_instead_of_padding(tmp_path):
    path = save_pil(tmp_path / "cut.jpg", Image.fromarray(np.tile(gradient(), (2, 2))), quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_read_error(path, "cut.jpg", "truncated or corrupt image")
    assert_read_error(lambda: read_image(path, min_side=32), "cut.jpg", "truncated or corrupt image")


def test_truncated_png_raises(tmp_path):
    path = save_pil(
        tmp_path / "cut.png", Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8))
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_read_error(path, "cut.png", "truncated or corrupt image")


def test_text_file_named_png_raises(tmp_path):
    (tmp_path / "notes.png").write_text("patient 12: PA view\nno findings\n")
    assert_read_error(tmp_path / "notes.png", "notes.png", "not an image")


def test_text_file_named_dcm_raises(tmp_path):
    (tmp_path / "notes.dcm").write_text("patient 12: PA view\nno findings\n" * 10)
    assert_read_error(tmp_path / "notes.dcm", "notes.dcm", "not a")


def test_dicom_without_pixel_data_raises(tmp_path):
    ds = dicom(gradient())
    del ds.PixelData
    assert_read_error(save_dicom(tmp_path / "header.dcm", ds), "header.dcm", "no pixel data")


def test_truncated_dicom_raises(tmp_path):
    path = save_dicom(tmp_path / "cut.dcm", dicom(gradient()))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    assert_read_error(path, "cut.dcm")


def test_unsupported_format_raises(tmp_path):
    path = save_pil(tmp_path / "a.bmp", Image.fromarray(gradient()))
    assert_read_error(path, "a.bmp", "unsupported format BMP")


def test_directory_raises_read_error(tmp_path):
    assert_read_error(tmp_path, str(tmp_path), "directory")


def test_bad_upload_bytes_name_the_upload():
    assert_read_error(lambda: read_image_bytes(b"GIF? no", "scan.jpg"), "scan.jpg", "not an image")
    assert_read_error(lambda: read_image_bytes(b""), "<upload>", "empty file")
