"""Image decoding of mutated bytes (every format the project reads): an ``ImageReadError`` naming the
file, or a 2-D uint8 image within the pixel limit; never another exception, a hang, or traced memory
past a bound. The same reader decodes every file the build reads and every upload the service takes."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from mutate import bounded, declare_size, ops_strategy, seeds

from covidnet.contract import Contract
from covidnet.errors import CovidnetError, ImageReadError
from covidnet.imageio import frontal_problem, read_image_bytes

SEEDS = seeds()
KINDS = sorted(SEEDS)
MAX_PIXELS = 4_000_000  # what these properties allow a decoded image (the service's default is 60 million)
# traced allocations of one example: the image at a few bytes per pixel through its conversions (float32
# scaling of a 16-bit DICOM is 4 bytes per pixel, twice), the input, and pydicom's dataset
MAX_TRACED = 16 * MAX_PIXELS + (8 << 20)


LAST_INPUT = os.environ.get("COVIDNET_LAST_INPUT")  # a file: each input is written there first (a crash's)


def check(data: bytes, name: str, min_side: int | None = None) -> np.ndarray | None:
    """The property, for one input: the image or None (a one-line ImageReadError naming ``name``)."""
    if LAST_INPUT:  # a decoder that kills the process leaves no report: this file then holds its input
        with open(LAST_INPUT, "wb") as f:
            f.write(data)
    try:
        image = read_image_bytes(data, name, min_side=min_side, max_pixels=MAX_PIXELS)
    except ImageReadError as e:
        message = str(e)
        assert message.startswith(f"{name}: ") and "\n" not in message, message
        return None
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 2, (image.dtype, image.shape)
    assert 0 < image.size <= MAX_PIXELS
    return image


def test_every_seed_decodes_to_its_image():
    """The seeds are valid: a mutation's failure is the mutation's."""
    for kind, (name, data) in SEEDS.items():
        image = check(data, name)
        assert image is not None and image.shape == (40, 48), kind
        assert int(image.max()) - int(image.min()) > 100, kind


@pytest.mark.parametrize("kind", KINDS)
@given(ops=ops_strategy(), min_side=st.sampled_from([None, 16, 32]))
def test_mutated_bytes_decode_or_fail_in_one_line(kind, ops, min_side):
    from mutate import apply

    name, data = SEEDS[kind]
    mutated = apply(data, ops)
    with bounded(MAX_TRACED, 2 * MAX_TRACED):
        check(mutated, name, min_side)
        assert frontal_problem(name, mutated) in (None,) or isinstance(frontal_problem(name, mutated), str)


@pytest.mark.parametrize("kind", KINDS)
@given(
    width=st.integers(1, 70_000),
    height=st.integers(1, 70_000),
    ops=st.one_of(st.just([]), ops_strategy(2)),
)
@example(width=50_000, height=50_000, ops=[])  # issue 28's PNG
@example(width=40_000, height=40_000, ops=[])  # and DICOM
@example(width=2_001, height=1_999, ops=[])  # just over MAX_PIXELS
def test_declared_dimensions_are_refused_before_decoding_or_fail_in_one_line(kind, width, height, ops):
    """A header that declares more pixels than the limit is refused from the header (ImageTooLargeError),
    whatever the bytes after it; one that declares fewer decodes or fails as any corrupt file does."""
    from mutate import apply

    name, data = SEEDS[kind]
    mutated = apply(declare_size(kind, data, width, height), ops)
    with bounded(MAX_TRACED, 2 * MAX_TRACED):
        image = check(mutated, name)
    if image is not None:
        assert image.size <= MAX_PIXELS


@pytest.mark.parametrize("kind", KINDS)
@given(ops=ops_strategy(4))
def test_the_contract_turns_mutated_uploads_into_its_pixels_or_one_line(kind, ops):
    """What the service does with an upload: ``Contract.load_bytes`` gives (S, S) uint8 or an ImageReadError."""
    from mutate import apply

    name, data = SEEDS[kind]
    contract = Contract(stored_size=32, top_crop=0.08)
    with bounded(MAX_TRACED, 2 * MAX_TRACED):
        try:
            pixels = contract.load_bytes(apply(data, ops), name, MAX_PIXELS)
        except CovidnetError as e:
            assert isinstance(e, ImageReadError) and str(e).startswith(f"{name}: "), str(e)
        else:
            assert pixels.shape == (32, 32) and pixels.dtype == np.uint8


def test_a_corrupt_rle_segment_is_a_read_error_not_a_decoder_panic():
    """Found by test_mutated_bytes_decode_or_fail_in_one_line[dicom_rle]: one zeroed byte near the end of
    an RLE segment makes pylibjpeg-rle (Rust) index past its buffer and raise pyo3's PanicException, a
    BaseException that ``except Exception`` let through (a traceback in `data build`, a dropped request in
    `serve`)."""

    name, data = SEEDS["dicom_rle"]
    assert len(data) == 4672  # the seed these bytes were found in
    mutated = data[:4615] + b"\x00" + data[4616:]
    with pytest.raises(ImageReadError, match=r"^x\.dcm: cannot decode DICOM pixel data") as e:
        read_image_bytes(mutated, name)
    assert type(e.value.__cause__).__name__ == "PanicException"


def test_a_dicom_element_with_a_broken_vr_is_a_read_error_not_a_traceback():
    """Found by test_declared_dimensions_... (long profile): pydicom converts an element's value when it is
    first read, so a Rows whose VR was mutated ('US' -> 'U\\0') raised NotImplementedError from
    ``ds.get('Rows')``, outside the (TypeError, ValueError) the reader caught; the same in frontal_problem
    for ViewPosition, which the service calls first: a 500."""
    from mutate import dicom_with

    name, data = SEEDS["dicom"]
    rows = b"\x28\x00\x10\x00US"  # (0028,0010) Rows, explicit VR little endian
    assert data.count(rows) == 1
    with pytest.raises(ImageReadError, match=r"^x\.dcm: DICOM Rows/Columns are not numbers"):
        read_image_bytes(data.replace(rows, b"\x28\x00\x10\x00U\x00"), name)
    lateral = dicom_with(data, ViewPosition="LL")
    view = b"\x18\x00\x01\x51CS"  # (0018,5101) ViewPosition
    assert frontal_problem(name, lateral) is not None and lateral.count(view) == 1
    assert frontal_problem(name, lateral.replace(view, b"\x18\x00\x01\x51C\x00")) is None  # the pixels will say
