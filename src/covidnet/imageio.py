"""Read one image file (PNG, JPEG, WebP or DICOM) into a 2-D uint8 greyscale array.

This is the only place the project decodes image bytes: the dataset build, training, evaluation,
prediction and the HTTP service all come through ``read_image`` / ``read_image_bytes`` (usually via
``covidnet.contract.load_image``), so an X-ray looks the same to every one of them.

Every failure the file can cause raises ``ImageReadError`` with one line that names the file.
"""

from __future__ import annotations

import io
import os
from pathlib import PurePath
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps

from covidnet.errors import ConfigError, ImageReadError, ImageTooLargeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".dcm", ".dicom")  # what a folder of images is read for


if TYPE_CHECKING:
    from pydicom import Dataset

PIL_FORMATS = ("PNG", "JPEG", "MPO", "WEBP")  # MPO: the multi-picture JPEG phones write; it is a JPEG
DICOM_SUFFIXES = (".dcm", ".dicom")
_DICM_OFFSET = 128  # a DICOM file: 128-byte preamble, then b"DICM"
_EXPECTED = "expected PNG, JPEG, WebP or DICOM"
_DETAIL_MAX = 160  # keeps a decoder's message to part of one line


def read_image(path: str | os.PathLike[str], min_side: int | None = None) -> np.ndarray:
    """The image at ``path`` as a (H, W) uint8 greyscale array.

    ``min_side``: the caller will shrink the image so that its short side is about this long; a
    large JPEG is then decoded at 1/2, 1/4 or 1/8 scale (DCT scaling, several times faster) while
    its short side stays >= ``min_side``. Other formats ignore it.
    """
    name = os.fspath(path)
    try:
        fp = open(path, "rb")
    except FileNotFoundError:
        raise ImageReadError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{name}: is a directory, not an image file") from None
    except OSError as exc:
        raise ImageReadError(f"{name}: cannot open ({exc.strerror or _detail(exc)})") from None
    with fp:
        return _read(fp, name, min_side)


def read_image_bytes(
    data: bytes | bytearray | memoryview,
    name: str = "<upload>",
    min_side: int | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """As ``read_image``, for bytes already in memory (an upload); ``name`` is used in messages and its
    extension as for a file (``.dcm`` lets a DICOM without preamble through). ``max_pixels``: refuse,
    with ``ImageTooLargeError``, an image of more pixels than this before decoding it (the bomb check
    of a service; Pillow's own limit, about 179 million pixels, always applies)."""
    return _read(io.BytesIO(data), name, min_side, max_pixels)


def image_shape(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(H, W) of the image at ``path`` as ``read_image`` without ``min_side`` returns it (EXIF orientation
    applied), read from its header: no pixel is decoded. What a lung mask of another resolution is resized
    to before it follows its image through the contract."""
    name = os.fspath(path)
    with open(path, "rb") as fp:
        head = fp.read(_DICM_OFFSET + 4)
        fp.seek(0)
        if head[_DICM_OFFSET:] == b"DICM" or PurePath(name).suffix.lower() in DICOM_SUFFIXES:
            import pydicom

            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=["Rows", "Columns"], force=True)
                return int(ds.Rows), int(ds.Columns)
            except Exception as exc:
                raise ImageReadError(f"{name}: DICOM header without Rows/Columns ({_detail(exc)})") from exc
        try:
            with Image.open(fp) as img:
                width, height = img.size
                turned = img.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
        except Exception as exc:
            raise ImageReadError(f"{name}: not an image, or a format not recognised ({_EXPECTED})") from exc
    return (width, height) if turned else (height, width)


LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL", "L")


def frontal_problem(path: str | os.PathLike[str], data: bytes | None = None) -> str | None:
    """Why an image is not a frontal chest radiograph, when its own metadata says so (a DICOM
    ViewPosition of LL, RL or LATERAL), else None. Other formats carry no view: None. ``data``: the
    file's bytes, already in memory (``path`` then only names it)."""
    if data is None:
        with open(path, "rb") as fp:
            head = fp.read(_DICM_OFFSET + 4)
    else:
        head = bytes(data[: _DICM_OFFSET + 4])
    if head[_DICM_OFFSET:] != b"DICM" and PurePath(path).suffix.lower() not in DICOM_SUFFIXES:
        return None
    import pydicom

    try:
        source = path if data is None else io.BytesIO(data)
        ds = pydicom.dcmread(source, stop_before_pixels=True, specific_tags=["ViewPosition"], force=True)
        view = str(ds.get("ViewPosition", "") or "").strip().upper()  # converted when read: may raise too
    except Exception:
        return None  # reading the pixels will say what is wrong
    if view in LATERAL_VIEWS:
        return f"lateral view (DICOM ViewPosition {view!r}); the models are for frontal radiographs"
    return None


def _read(fp: BinaryIO, name: str, min_side: int | None, max_pixels: int | None = None) -> np.ndarray:
    """The shared body of ``read_image`` and ``read_image_bytes``: sniff the format, then decode."""
    if min_side is not None and (
        isinstance(min_side, bool) or not isinstance(min_side, (int, np.integer)) or min_side < 1
    ):
        raise ConfigError(f"min_side must be a positive integer or None, not {min_side!r}")
    head = fp.read(_DICM_OFFSET + 4)
    if not head:
        raise ImageReadError(f"{name}: empty file (0 bytes)")
    fp.seek(0)
    has_preamble = head[_DICM_OFFSET:] == b"DICM"
    if has_preamble or PurePath(name).suffix.lower() in DICOM_SUFFIXES:
        return _read_dicom(fp, name, force=not has_preamble, max_pixels=max_pixels)
    return _read_pil(fp, name, min_side, max_pixels)


# ---------------------------------------------------------------------------------------- Pillow


def _too_large(name: str, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name}: image too large ({width} x {height} = {width * height:,} pixels; the limit is {max_pixels:,})"
        )


def _read_pil(fp: BinaryIO, name: str, min_side: int | None, max_pixels: int | None = None) -> np.ndarray:
    # Decoders raise many exception types on bad bytes (OSError, SyntaxError, ValueError, EOFError,
    # struct.error, ...); inside this narrow block every one of them is the file's fault.
    try:
        img = Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{name}: image too large ({_detail(exc)})") from exc
    except Image.UnidentifiedImageError:
        raise ImageReadError(f"{name}: not an image, or a format not recognised ({_EXPECTED})") from None
    except Exception as exc:
        raise ImageReadError(f"{name}: corrupt image header ({_detail(exc)})") from exc
    with img:
        if img.format not in PIL_FORMATS:
            raise ImageReadError(f"{name}: unsupported format {img.format} ({_EXPECTED})")
        _too_large(name, *img.size, max_pixels)
        if min_side is not None and img.format in ("JPEG", "MPO"):
            # The largest 1/2^k scale that keeps both sides >= min_side; "L" also skips colour
            # conversion for colour JPEGs (the decoder's luma equals Pillow's RGB->L weights).
            img.draft("L", (int(min_side), int(min_side)))
        try:
            img.load()  # decode inside the try: a truncated file raises (we never set LOAD_TRUNCATED_IMAGES)
        except Exception as exc:
            raise ImageReadError(f"{name}: truncated or corrupt image ({_detail(exc)})") from exc
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation in range(2, 9):  # a phone photo of a film; cv2.imread (the reference's reader) also turns it
            img = ImageOps.exif_transpose(img)
        return _pil_to_grey(img)


def _pil_to_grey(img: Image.Image) -> np.ndarray:
    """Greyscale uint8 from any Pillow mode; high-bit-depth modes are scaled by their range, not clipped."""
    if img.mode == "L":
        return np.array(img)
    if img.mode.startswith("I") or img.mode == "F":  # I;16 (16-bit PNG), I;16B, I, F
        arr = np.asarray(img)
        return _scale(arr, float(arr.min()), float(arr.max()))
    if img.mode in ("LA", "La"):
        return np.array(img.getchannel("L"))
    # RGB, RGBA, P, PA, 1, CMYK, YCbCr, ...: ITU-R 601 luma, alpha dropped, as cv2.imread does.
    if img.mode not in ("RGB", "RGBA", "P", "1"):
        img = img.convert("RGB")
    return np.array(img.convert("L"))


# ----------------------------------------------------------------------------------------- DICOM


def _read_dicom(fp: BinaryIO, name: str, force: bool, max_pixels: int | None = None) -> np.ndarray:
    import pydicom  # imported here: only DICOM files pay its import time
    from pydicom.pixels import apply_color_lut, pixel_array

    # pydicom raises many exception types on malformed files (InvalidDicomError, EOFError,
    # ValueError, KeyError, NotImplementedError, RuntimeError, ...); inside these narrow blocks
    # every one of them is the file's fault, and the cause stays chained for debugging.
    try:
        ds = pydicom.dcmread(fp, force=force)
    except Exception as exc:
        raise ImageReadError(f"{name}: not a readable DICOM file ({_detail(exc)})") from exc
    if not any(key in ds for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if force:  # no preamble and no pixels: most likely not DICOM at all
            raise ImageReadError(f"{name}: not a DICOM image (no DICM preamble and no pixel data)")
        raise ImageReadError(f"{name}: DICOM file has no pixel data")
    try:  # pydicom converts a value when it is first read: a damaged element raises here, of any type
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except Exception as exc:
        raise ImageReadError(f"{name}: DICOM Rows/Columns are not numbers") from exc
    _too_large(name, cols, rows, max_pixels)
    try:
        arr = pixel_array(ds, index=0)  # the first frame; decodes only that frame of a multi-frame file
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        if photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
            return _rgb_to_grey(arr, np.iinfo(arr.dtype).max)
        if arr.ndim == 3:  # RGB; pydicom has already converted YBR_* to RGB
            return _rgb_to_grey(arr, 2 ** int(ds.get("BitsStored", arr.dtype.itemsize * 8)) - 1)
        grey = _monochrome_to_uint8(arr, ds)
    except BaseException as exc:
        if not _decoder_fault(exc):
            raise
        raise ImageReadError(f"{name}: cannot decode DICOM pixel data ({_detail(exc)})") from exc
    return 255 - grey if photometric == "MONOCHROME1" else grey  # MONOCHROME1: low values are white


def _monochrome_to_uint8(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values -> modality values (rescale / LUT) -> VOI (window or LUT) -> 0..255.

    The 0..255 range spans what the VOI can output (the window's ends map to 0 and 255, as a viewer
    shows it); without a VOI it spans the image's own min..max.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(arr, ds)
    voi_lut = _voi_lut_item(ds)
    if voi_lut is not None:
        if not np.issubdtype(values.dtype, np.integer):  # a LUT is indexed by integers; pydicom warns on floats
            values = np.rint(values).astype(np.int64)
        first, entries = int(voi_lut.LUTDescriptor[1]), int(voi_lut.LUTDescriptor[0]) or 2**16
        domain = apply_voi_lut(np.arange(first, first + entries, dtype=np.int64), ds)
        lo, hi = float(domain.min()), float(domain.max())
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        with np.errstate(over="ignore"):  # SIGMOID at +-inf
            ends = apply_voi_lut(np.array([-np.inf, np.inf]), ds)
        lo, hi = float(ends.min()), float(ends.max())
    else:
        lo, hi = float(values.min()), float(values.max())
    return _scale(apply_voi_lut(values, ds), lo, hi)


def _voi_lut_item(ds: Dataset) -> Dataset | None:
    """The VOI LUT pydicom's ``apply_voi_lut`` will apply (it prefers a LUT to a window), or None."""
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    item = seq[0]
    return item if item.get("LUTDescriptor") is not None and item.get("LUTData") is not None else None


def _rgb_to_grey(rgb: np.ndarray, max_value: int) -> np.ndarray:
    """ITU-R 601 luma (Pillow's and cv2's weights) of an (H, W, 3) array whose full scale is ``max_value``."""
    luma = rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return _scale(luma, 0.0, float(max_value))


# ---------------------------------------------------------------------------------------- shared


def _scale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``lo..hi`` linearly onto 0..255 (clipped, rounded); a flat image (hi <= lo) becomes black."""
    if not hi > lo:
        return np.zeros(arr.shape[:2], dtype=np.uint8)
    out = (arr.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    np.clip(out, 0, 255, out=out)
    return np.rint(out).astype(np.uint8)


def _decoder_fault(exc: BaseException) -> bool:
    """Whether a decoder's exception is the file's fault: any Exception, and the ``PanicException`` of
    decoders written in Rust (pylibjpeg-rle indexes past its buffer on a corrupt RLE segment), which pyo3
    derives from BaseException; KeyboardInterrupt and SystemExit are not."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _detail(exc: BaseException) -> str:
    """A decoder's message squeezed onto one short line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 1] + "…"
