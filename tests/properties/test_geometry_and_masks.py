"""The contract's geometry (``Contract.pixels``, ``mask``, ``uncrop``) on images and masks of any shape, and
the joining of lung masks (``covidnet.data.lungmasks``) from folders and zips of mutated mask files: right
results or a one-line error naming the file, never another exception."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from mutate import apply, bounded, ops_strategy

from covidnet.contract import Contract
from covidnet.data.lungmasks import (
    MASK_VALUES,
    REF_KEY,
    MaskReader,
    MaskSpec,
    join_lung_masks,
    mask_problem,
)
from covidnet.data.records import Record
from covidnet.errors import CovidnetError, ImageReadError

shapes = st.tuples(st.integers(1, 300), st.integers(1, 300))
top_crops = st.sampled_from([0.0, 0.08, 0.2, 0.49])
sizes = st.sampled_from([16, 17, 32, 64])


def box(shape, top_crop):
    """(top, left, side) of the kept square, written out here from the contract's definition (docs/data.md):
    drop int(H * top_crop) rows, then the central square of what is left."""
    h, w = shape
    cut = int(h * top_crop)
    side = min(h - cut, w)
    return cut + (h - cut - side) // 2, (w - side) // 2, side


@given(shape=shapes, top_crop=top_crops, size=sizes, seed=st.integers(0, 2**16))
def test_pixels_are_the_kept_square_resized(shape, top_crop, size, seed):
    image = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    out = Contract(stored_size=size, top_crop=top_crop).pixels(image)
    assert out.shape == (size, size) and out.dtype == np.uint8
    top, left, side = box(shape, top_crop)
    square = image[top : top + side, left : left + side]
    if side == size:
        np.testing.assert_array_equal(out, square)
    assert square.min() <= out.min() and out.max() <= square.max()  # a resize never leaves the square's range


@given(shape=shapes, top_crop=top_crops, size=sizes, seed=st.integers(0, 2**16))
def test_a_mask_keeps_its_values_and_uncrop_puts_it_back_where_it_came_from(shape, top_crop, size, seed):
    mask = np.random.default_rng(seed).choice(np.array(MASK_VALUES, np.uint8), shape)
    contract = Contract(stored_size=size, top_crop=top_crop)
    stored = contract.mask(mask)
    assert stored.shape == (size, size) and set(np.unique(stored)) <= set(np.unique(mask))
    back = contract.uncrop(stored, shape)
    assert back.shape == shape and set(np.unique(back)) <= set(np.unique(stored)) | {0}
    top, left, side = box(shape, top_crop)
    outside = np.ones(shape, bool)
    outside[top : top + side, left : left + side] = False
    assert not back[outside].any()  # nothing outside what the model saw
    if side == size:  # no resampling: the round trip is exact
        np.testing.assert_array_equal(
            back[top : top + side, left : left + side], mask[top : top + side, left : left + side]
        )
        np.testing.assert_array_equal(contract.mask(back), stored)
    if side >= size:  # nearest-neighbour up from the stored grid and down again lands on the same pixels
        np.testing.assert_array_equal(contract.mask(back), stored)


@given(image_shape=shapes, factor=st.sampled_from([1, 2, 3]), top_crop=top_crops, size=sizes, seed=st.integers(0, 99))
def test_a_full_resolution_mask_of_a_downsampled_image_lands_on_the_image(image_shape, factor, top_crop, size, seed):
    """``Contract.mask(mask, image_shape)``: a mask `factor` times the image's size is first brought to the image."""
    h, w = image_shape
    small = np.random.default_rng(seed).choice(np.array(MASK_VALUES, np.uint8), (h, w))
    big = np.repeat(np.repeat(small, factor, 0), factor, 1)
    contract = Contract(stored_size=size, top_crop=top_crop)
    np.testing.assert_array_equal(contract.mask(big, (h, w)), contract.mask(small))


# --- joining masks ----------------------------------------------------------------------------------------


def mask_png(shape, values=(0, 255), seed=0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.choice(np.array(values, np.uint8), shape)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


mask_files = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d", "zz"]),  # the stem: a, b, c have images; d is in two sources
        st.sampled_from([".png", ".PNG", ".jpg", ".txt"]),
        st.sampled_from([(0, 255), (0, 127, 255), (0,), (0, 3, 255)]),
        st.tuples(st.integers(1, 40), st.integers(1, 40)),
        st.one_of(st.just([]), ops_strategy(3)),
        st.sampled_from(["", "sub/"]),
    ),
    min_size=1,
    max_size=8,
)


def records(root: Path) -> list[Record]:
    out = []
    for stem, source in [("a", "s1"), ("b", "s1"), ("c", "s2"), ("d", "s1"), ("d", "s2")]:
        out.append(Record(patient_id=stem, path=root / source / f"{stem}.png", label="normal", source=source))
    return out


@given(files=mask_files, as_zip=st.booleans(), zip_ops=st.one_of(st.just([]), ops_strategy(2)))
def test_each_mask_is_joined_once_or_left_out_with_a_reason(files, as_zip, zip_ops):
    """The join and the reading of what it joined, as a build does: every mask file is joined to one image
    or left out with its reason; a joined mask reads as an image or fails with an ImageReadError naming it;
    mask_problem says what is wrong with a mask or lets it through, and what it lets through stores as a
    label map of 0, 127 and 255."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "masks"
        written = {}
        for k, (stem, ext, values, shape, ops, sub) in enumerate(files):
            name = f"{sub}{stem}{'_' * k if f'{sub}{stem}{ext}' in written else ''}{ext}"
            written[name] = apply(mask_png(shape, values, k), ops) if ops else mask_png(shape, values, k)
        if as_zip:
            path = tmp / "masks.zip"
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
                for name, data in written.items():
                    z.writestr(name, data)
            if zip_ops:
                path.write_bytes(apply(path.read_bytes(), zip_ops))
        else:
            path = folder
            for name, data in written.items():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(data)
        recs = records(tmp)
        with bounded(max_resident=64 << 20):
            try:
                section, excluded = join_lung_masks([MaskSpec("v7", path)], recs)
            except CovidnetError as e:
                assert str(path) in str(e) and "\n" not in str(e), str(e)
                assume(False)
                return
            joined = [r.extra[REF_KEY] for r in recs if REF_KEY in r.extra]
            listed = section["sets"][0]["masks"]
            assert len({j.item for j in joined}) + len(excluded) == listed
            assert len({e.item for e in excluded}) == len(excluded)
            assert all(r.stem == r.extra[REF_KEY].stem for r in recs if REF_KEY in r.extra)
            reader = MaskReader()
            contract = Contract(stored_size=16, top_crop=0.08)
            for ref in {j.item: j for j in joined}.values():
                try:
                    mask = reader.read(ref)
                except ImageReadError as e:
                    assert str(e).startswith(ref.item), str(e)
                    continue
                problem = mask_problem(mask, mask.shape)
                if problem is None:
                    stored = contract.mask(mask)
                    assert set(np.unique(stored)) <= set(MASK_VALUES)
                else:
                    assert isinstance(problem[0], str) and isinstance(problem[1], str)


@pytest.mark.parametrize("values", [(0, 255), (0, 127, 255)])
def test_a_seed_mask_joins_and_stores(values, tmp_path):
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "a.png").write_bytes(mask_png((20, 20), values))
    recs = records(tmp_path)
    section, excluded = join_lung_masks([MaskSpec("v7", tmp_path / "masks")], recs)
    assert not excluded and recs[0].extra[REF_KEY].stem == "a"
    mask = MaskReader().read(recs[0].extra[REF_KEY])
    assert mask_problem(mask, (20, 20)) is None


def zip_of_masks(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.png", mask_png((20, 20)))
        z.writestr("b.png", mask_png((20, 20), seed=1))
    return path


def test_a_damaged_member_of_a_mask_zip_is_an_image_read_error_naming_it(tmp_path):
    """Found by the join property (long profile): a zip whose member is damaged made MaskReader.read raise
    zipfile.BadZipFile (bad CRC, bad header), zlib.error, NotImplementedError or OSError: a traceback
    in the build's workers instead of the mask left out with its reason."""
    path = zip_of_masks(tmp_path / "m.zip")
    data = bytearray(path.read_bytes())
    data[60] ^= 0xFF  # inside a.png's compressed bytes
    path.write_bytes(bytes(data))
    recs = records(tmp_path)
    join_lung_masks([MaskSpec("v7", path)], recs)
    ref = recs[0].extra[REF_KEY]
    with pytest.raises(ImageReadError, match=rf"^{path}:a\.png: cannot be unpacked"):
        MaskReader().read(ref)


def test_a_mask_zip_with_a_damaged_directory_is_one_line_naming_it(tmp_path):
    path = zip_of_masks(tmp_path / "m.zip")
    data = path.read_bytes()
    first = data.index(b"PK\x01\x02")  # the central directory's first entry: its signature broken
    path.write_bytes(data[:first] + b"PK\x09\x09" + data[first + 4 :])
    with pytest.raises(CovidnetError, match=rf"^{path}: --lung-masks v7= is a damaged zip"):
        join_lung_masks([MaskSpec("v7", path)], records(tmp_path))
