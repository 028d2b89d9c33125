"""Mutations of valid files for the property tests and the service's storm (scripts/serve_storm.py): valid
seed files of every format the project reads, byte-level mutations drawn by Hypothesis (or by a seeded
``random.Random``, for the storm), and structure-aware ones (a PNG or a DICOM that declares huge
dimensions), and the per-example bounds every property checks (time and traced memory)."""

from __future__ import annotations

import contextlib
import faulthandler
import io
import os
import random
import struct
import sys
import tracemalloc
import zlib
from collections.abc import Callable, Iterator

import numpy as np
from hypothesis import strategies as st

EXAMPLE_S = float(os.environ.get("COVIDNET_EXAMPLE_S", "60"))  # one example; past it: stacks dumped, run ended


# --- bounds ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def bounded(max_traced: int | None = None, max_resident: int | None = None) -> Iterator[None]:
    """One example: ended (with every thread's stack) if it runs past EXAMPLE_S; its peak of traced
    allocations (Python objects and NumPy arrays) must stay under ``max_traced``, and its peak resident
    memory (the kernel's high-water mark, reset at the start) under ``max_resident`` above where it began.
    Traced allocations bound what is decoded in memory; resident memory bounds file readers, for which
    CPython's ``f.read(n)`` allocates the n bytes a mutated length field asks for before it reads the few
    that are there: address space, not memory (never touched, it is never resident)."""
    faulthandler.dump_traceback_later(EXAMPLE_S, exit=True, file=sys.__stderr__)
    resident = max_resident is not None and _reset_peak_rss()
    start = _status_kb("VmRSS") if resident else 0
    if max_traced is not None:
        # started once and left on (tests/properties/conftest.py stops it after each test): its peak is reset
        # per example instead. Stopping it after every example once ended a long run in a segfault inside
        # tracemalloc.stop() that did not recur (docs/reliability.md).
        if not tracemalloc.is_tracing():
            tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1] - base if max_traced is not None else 0
        grown = (_status_kb("VmHWM") - start) * 1024 if resident else 0
    finally:
        faulthandler.cancel_dump_traceback_later()
    if max_traced is not None:
        assert peak <= max_traced, f"peak traced allocation {peak:,} bytes > the bound of {max_traced:,}"
    if resident:
        assert grown <= max_resident, f"resident memory grew {grown:,} bytes > the bound of {max_resident:,}"


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak resident set size (Linux 4.0+)
            f.write("5")
        return True
    except OSError:
        return False


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# --- seed images ------------------------------------------------------------------------------------------


def radiograph(h: int = 40, w: int = 48, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    """A small grey image with structure (gradient, disc, noise) over the dtype's range."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    f = 0.5 * x / w + 0.3 * (((x - w / 2) ** 2 + (y - h / 2) ** 2) < (min(h, w) / 3) ** 2) + 0.2 * rng.random((h, w))
    top = np.iinfo(dtype).max
    return np.clip(f * top, 0, top).astype(dtype)


def _pil(arr: np.ndarray, fmt: str, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _dicom(arr: np.ndarray, syntax: str | None = None, bits: int | None = None, **elements) -> bytes:
    from dicomfiles import dicom
    from pydicom import uid

    if syntax == "jpeg":  # pydicom has no JPEG encoder: Pillow's baseline JPEG, encapsulated as scanners do
        from pydicom.encaps import encapsulate

        ds = dicom(arr.astype(np.uint8), "MONOCHROME2", None, **elements)
        ds.PixelData = encapsulate([_pil(arr.astype(np.uint8), "JPEG", quality=90)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
        ds.PhotometricInterpretation = "MONOCHROME2"
    else:
        ds = dicom(arr, "MONOCHROME2", bits, **elements)
        if syntax:
            ds.compress({"rle": uid.RLELossless, "j2k": uid.JPEG2000Lossless}[syntax], arr, generate_instance_uid=False)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def seeds(markers: tuple[str, str] = ("", "")) -> dict[str, tuple[str, bytes]]:
    """kind -> (file name, valid bytes) of every format the readers take: 8-bit and 16-bit PNG, RGB PNG,
    JPEG, WebP (lossy and lossless), DICOM uncompressed (8 and 16 bit), RLE, JPEG 2000 and JPEG baseline.
    ``markers``: a PatientName and a PatientID written into every DICOM (the storm checks they never
    come back)."""
    name, pid = markers
    dicom_tags = {
        "PatientName": name or "Phantom^Seed",
        "PatientID": pid or "PHANTOM-0",
        "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.28",  # fixed: the same bytes in every run
    }
    g8, g16 = radiograph(), radiograph(dtype=np.uint16)
    rgb = np.stack([g8, g8[::-1], g8[:, ::-1]], axis=-1)
    g12 = (g16 >> 4).astype(np.uint16)
    return {
        "png": ("x.png", _pil(g8, "PNG")),
        "png16": ("x.png", _pil(g16, "PNG")),
        "png_rgb": ("x.png", _pil(rgb, "PNG")),
        "jpeg": ("x.jpg", _pil(g8, "JPEG", quality=85)),
        "webp": ("x.webp", _pil(g8, "WEBP", quality=80)),
        "webp_lossless": ("x.webp", _pil(g8, "WEBP", lossless=True)),
        "dicom": ("x.dcm", _dicom(g8, **dicom_tags)),
        "dicom16": ("x.dcm", _dicom(g12, bits=12, **dicom_tags)),
        "dicom_rle": ("x.dcm", _dicom(g12, "rle", bits=12, **dicom_tags)),
        "dicom_j2k": ("x.dcm", _dicom(g12, "j2k", bits=12, **dicom_tags)),
        "dicom_jpeg": ("x.dcm", _dicom(g8, "jpeg", **dicom_tags)),
    }


# --- structure-aware mutations ----------------------------------------------------------------------------


def png_with_size(data: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR's width and height replaced (CRC recomputed, so only the size is wrong)."""
    assert data[12:16] == b"IHDR"
    ihdr = struct.pack(">II", width, height) + data[24:29]
    return data[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + data[33:]


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with its first SOF segment's dimensions replaced."""
    k = 2
    while k + 4 < len(data) and data[k] == 0xFF:
        marker, length = data[k + 1], struct.unpack(">H", data[k + 2 : k + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            return data[: k + 5] + struct.pack(">HH", height & 0xFFFF, width & 0xFFFF) + data[k + 9 :]
        k += 2 + length
    return data


def webp_with_size(data: bytes, width: int, height: int) -> bytes:
    """The WebP with its VP8 (lossy) or VP8L (lossless) frame header's dimensions replaced (at most 16,384)."""
    width, height = min(max(width, 1), 16384), min(max(height, 1), 16384)
    if data[12:16] == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        return data[:26] + struct.pack("<HH", width & 0x3FFF, height & 0x3FFF) + data[30:]
    if data[12:16] == b"VP8L" and data[20] == 0x2F:
        bits = struct.unpack("<I", data[21:25])[0]
        bits = (bits & ~0x0FFFFFFF) | (width - 1) | ((height - 1) << 14)
        return data[:21] + struct.pack("<I", bits) + data[25:]
    return data


def dicom_with(data: bytes, **elements) -> bytes:
    """The DICOM with these elements set (e.g. Rows, Columns declaring 40,000 x 40,000 over the same pixels)."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    for key, value in elements.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def declare_size(kind: str, data: bytes, width: int, height: int) -> bytes:
    """``data`` declaring ``width`` x ``height`` pixels in its own header, where the format allows it."""
    if kind.startswith("png"):
        return png_with_size(data, width, height)
    if kind == "jpeg":
        return jpeg_with_size(data, width, height)
    if kind.startswith("webp"):
        return webp_with_size(data, width, height)
    if kind.startswith("dicom"):
        return dicom_with(data, Rows=min(height, 0xFFFF), Columns=min(width, 0xFFFF))
    return data


# --- byte mutations ---------------------------------------------------------------------------------------

INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\xff\xd8\xff"]


def apply(data: bytes, ops: list[tuple]) -> bytes:
    """``data`` after each op: ('flip', at, byte), ('insert', at, bytes), ('delete', at, n), ('truncate',
    at), ('repeat', at, n); ``at`` is a fraction of the current length, so ops stay meaningful for any file."""
    b = bytearray(data)
    for op, at, *arg in ops:
        i = min(int(at * len(b)), max(len(b) - 1, 0))
        if op == "flip" and b:
            b[i] = arg[0]
        elif op == "insert":
            b[i:i] = arg[0]
        elif op == "delete":
            del b[i : i + arg[0]]
        elif op == "truncate":
            del b[i:]
        elif op == "repeat":
            b[i:i] = b[i : i + arg[0]] * 3
    return bytes(b)


def op_strategy() -> st.SearchStrategy:
    at = st.floats(0, 1, allow_nan=False)
    return st.one_of(
        st.tuples(st.just("flip"), at, st.integers(0, 255)),
        st.tuples(st.just("insert"), at, st.one_of(st.sampled_from(INTERESTING), st.binary(min_size=1, max_size=16))),
        st.tuples(st.just("delete"), at, st.integers(1, 64)),
        st.tuples(st.just("truncate"), at),
        st.tuples(st.just("repeat"), at, st.integers(1, 64)),
    )


def ops_strategy(max_ops: int = 6) -> st.SearchStrategy:
    return st.lists(op_strategy(), min_size=1, max_size=max_ops)


def random_ops(rng: random.Random, max_ops: int = 6) -> list[tuple]:
    """As ``ops_strategy`` draws them, from a seeded ``random.Random`` (the storm's mutations)."""
    ops = []
    for _ in range(rng.randint(1, max_ops)):
        kind, at = rng.choice(["flip", "flip", "insert", "delete", "truncate", "repeat"]), rng.random()
        if kind == "flip":
            ops.append((kind, at, rng.randrange(256)))
        elif kind == "insert":
            ops.append((kind, at, rng.choice(INTERESTING) if rng.random() < 0.5 else rng.randbytes(rng.randint(1, 16))))
        elif kind in ("delete", "repeat"):
            ops.append((kind, at, rng.randint(1, 64)))
        else:
            ops.append((kind, at))
    return ops


# --- text mutations (metadata tables, label files, JSON) -----------------------------------------------------

TEXT_PIECES = ['"', ",", "\n", "\r", "\t", " ", "\x00", "|", "/", "-1", "1e309", "nan", "²", "٣", "\ufeff", "é", "\\"]


def text_op_strategy(lines: int) -> st.SearchStrategy:
    """Ops on a text file's lines and characters: ('drop_line', k), ('dup_line', k), ('cut_field', k),
    ('extra_field', k), ('insert', at, text), ('delete', at, n), ('truncate', at), ('bytes', at, raw bytes)."""
    k = st.integers(0, max(lines - 1, 0))
    at = st.floats(0, 1, allow_nan=False)
    piece = st.one_of(st.sampled_from(TEXT_PIECES), st.text(max_size=8))
    return st.one_of(
        st.tuples(st.just("drop_line"), k),
        st.tuples(st.just("dup_line"), k),
        st.tuples(st.just("cut_field"), k),
        st.tuples(st.just("extra_field"), k),
        st.tuples(st.just("insert"), at, piece),
        st.tuples(st.just("delete"), at, st.integers(1, 32)),
        st.tuples(st.just("truncate"), at),
        st.tuples(st.just("bytes"), at, st.binary(min_size=1, max_size=4)),
    )


def apply_text(data: bytes, ops: list[tuple], sep: str = ",") -> bytes:
    """``data`` (a UTF-8 text file) after each text op (``text_op_strategy``)."""
    for op, where, *arg in ops:
        lines = data.split(b"\n")
        if op in ("drop_line", "dup_line", "cut_field", "extra_field"):
            k = where % max(len(lines), 1)
            if op == "drop_line" and len(lines) > 1:
                del lines[k]
            elif op == "dup_line":
                lines.insert(k, lines[k])
            elif op == "cut_field":
                lines[k] = lines[k].rsplit(sep.encode(), 1)[0]
            elif op == "extra_field":
                lines[k] = lines[k] + sep.encode() + b"extra"
            data = b"\n".join(lines)
            continue
        i = min(int(where * len(data)), len(data))
        if op == "insert":
            data = data[:i] + arg[0].encode("utf-8", "surrogatepass") + data[i:]
        elif op == "delete":
            data = data[:i] + data[i + arg[0] :]
        elif op == "truncate":
            data = data[:i]
        elif op == "bytes":
            data = data[:i] + arg[0] + data[i:]
    return data


def text_ops(lines: int, max_ops: int = 4) -> st.SearchStrategy:
    return st.lists(text_op_strategy(lines), min_size=1, max_size=max_ops)


def mutate_file(path, ops, fn: Callable[[bytes, list], bytes] = apply_text, **kw) -> None:
    path.write_bytes(fn(path.read_bytes(), ops, **kw))
