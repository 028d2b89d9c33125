"""`covidnet data build --lung-masks NAME=DIR`: lung masks joined by file-name stem, through their images'
geometry, stored beside them; every mask left out has its reason; phantoms (whose lungs the generator
drew) and, in the realdata tests, the V7 Labs masks as the shared folder and the torchxrayvision zip hold
them."""

import csv
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import covidnet

from covidnet.contract import Contract
from covidnet.data.build import BuildConfig, SourceSpec, build_dataset
from covidnet.data.lungmasks import MaskSpec
from covidnet.data.store import MASKS_FILE, open_store
from covidnet.data.synth import MASKS_DIR, SynthConfig, write_phantom_dataset
from covidnet.errors import CovidnetError, UsageError

SIZE = 64


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_phantom_dataset(
        tmp_path_factory.mktemp("lm") / "cohen", SynthConfig(n=24, seed=4, size=96), progress=False
    )


def build(tmp_path, source: Path, masks: list[tuple[str, Path]], **kw) -> dict:
    return build_dataset(
        BuildConfig(
            sources=[SourceSpec("cohen", source, "cohen")],
            out=tmp_path / "out",
            size=SIZE,
            workers=1,
            progress=False,
            lung_masks=[MaskSpec(n, p) for n, p in masks],
            **kw,
        )
    )


def index(out: Path) -> list[dict]:
    return list(csv.DictReader(open(out / "index.csv")))


def png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(np.asarray(array, np.uint8)).save(path, format="PNG")
    return path


def test_synth_writes_each_phantoms_true_lungs_as_a_mask(phantoms):
    images = sorted((phantoms / "images").iterdir())
    masks = sorted((phantoms / MASKS_DIR).iterdir())
    assert [p.name for p in masks] == [p.name for p in images]
    for p in masks[:4]:
        m = np.asarray(Image.open(p))
        assert m.shape == (96, 96) and set(np.unique(m)) == {0, 255}
        assert 0.15 < (m == 255).mean() < 0.55  # two lungs: a fair share of the film, not all of it


def test_phantom_masks_join_every_image_through_its_geometry(phantoms, tmp_path):
    report = build(tmp_path, phantoms, [("phantom", phantoms / MASKS_DIR)])
    out = tmp_path / "out"
    rows = index(out)
    assert {r["lung_mask"] for r in rows} == {"phantom"}
    store = open_store(out)
    contract = Contract(stored_size=SIZE)
    stored = store.read_masks(store.rows())
    for k, r in enumerate(rows):  # each stored mask is its file through the contract, and nothing else
        assert np.array_equal(stored[k], contract.mask(np.asarray(Image.open(phantoms / MASKS_DIR / r["filename"]))))
    assert set(np.unique(stored)) == {0, 255}
    s = report["lung_masks"]
    assert s["sets"] == [
        {"name": "phantom", "path": str((phantoms / MASKS_DIR).absolute()), "masks": 24, "left_out": 0}
    ]
    assert sum(s["in_dataset"]["images"].values()) == len(rows) == 24 and s["excluded"]["count"] == 0
    assert s["in_dataset"]["masked_images_left_out_by_the_build"] == 0 and s["predicted"] is None
    assert list(store.mask_rows("train")) == [int(r["row"]) for r in rows if r["split"] == "train"]
    assert json.loads((out / "config.json").read_text())["lung_masks"][0]["name"] == "phantom"


def test_every_bad_mask_is_left_out_with_its_reason(phantoms, tmp_path):
    folder = tmp_path / "masks"
    shutil.copytree(phantoms / MASKS_DIR, folder)
    names = sorted(p.name for p in folder.iterdir())
    good = np.asarray(Image.open(folder / names[0]))
    png(folder / "nosuch-1.png", good)  # names no image
    png(folder / names[1], np.zeros_like(good))  # empty
    png(folder / names[2], np.where(good == 255, 200, 0))  # other values
    png(folder / (Path(names[3]).stem + ".webp.png"), good)  # stem 'X.webp': no image of that stem either
    Image.fromarray(good).save(folder / (Path(names[4]).stem + ".webp"), format="WEBP", lossless=True)  # second
    (folder / names[5]).write_bytes(b"\x89PNG\r\n\x1a\n not really")  # unreadable
    png(folder / names[6], np.asarray(Image.fromarray(good).resize((96, 60), Image.NEAREST)))  # wrong aspect
    report = build(tmp_path, phantoms, [("phantom", folder)])
    by_reason = report["lung_masks"]["excluded"]["by_reason"]
    assert by_reason == {
        "lung mask matches no image": 2,
        "second lung mask for one image": 1,
        "empty lung mask": 1,
        "lung mask with other values": 1,
        "unreadable lung mask": 1,
        "lung mask shape does not match its image": 1,
    }
    items = {e["item"]: e for e in report["lung_masks"]["excluded"]["items"]}
    assert "200" in items[str(folder / names[2])]["detail"]
    assert "96 x 60" in items[str(folder / names[6])]["detail"]
    rows = {r["filename"]: r for r in index(tmp_path / "out")}
    store = open_store(tmp_path / "out")
    for n in names[1:3] + names[5:7]:
        assert rows[n]["lung_mask"] == "" and not store.read_masks([int(rows[n]["row"])]).any()
    assert rows[names[4]]["lung_mask"] == "phantom"  # its first mask, the .png, is kept
    assert sum(r["lung_mask"] == "phantom" for r in rows.values()) == 24 - 4
    assert len(store.mask_rows()) == 20 and report["n_images"] == 24  # no image is left out for its mask


@pytest.mark.parametrize("bad", ["no image", "other values"])
def test_strict_stops_the_build_for_a_left_out_mask(phantoms, tmp_path, bad):
    folder = tmp_path / "masks"
    shutil.copytree(phantoms / MASKS_DIR, folder)
    first = sorted(folder.iterdir())[0]
    if bad == "no image":
        shutil.copy(first, folder / "nosuch.png")
    else:
        png(first, np.full((96, 96), 3))
    with pytest.raises(CovidnetError, match="--strict: 1 lung mask"):
        build(tmp_path, phantoms, [("phantom", folder)], strict=True)
    assert not (tmp_path / "out").exists()


def test_a_zip_of_full_resolution_masks_gives_the_masks_of_the_folder(phantoms, tmp_path):
    """As the torchxrayvision wheel ships them: three times the image's resolution, PNG bytes under the
    image's own .jpg/.jpeg/.png name, in a subfolder of a zip that is read in place."""
    zpath = tmp_path / "masks.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for k, p in enumerate(sorted((phantoms / MASKS_DIR).iterdir())):
            big = Image.open(p).resize((288, 288), Image.NEAREST)
            buf = io.BytesIO()
            big.save(buf, format="PNG")
            z.writestr(f"semantic_masks/{p.stem}{('.jpg', '.jpeg', '.PNG')[k % 3]}", buf.getvalue())
    build(tmp_path / "a", phantoms, [("v7", zpath)])
    build(tmp_path / "b", phantoms, [("v7", phantoms / MASKS_DIR)])
    a, b = open_store(tmp_path / "a" / "out"), open_store(tmp_path / "b" / "out")
    assert np.array_equal(a.read_masks(a.rows()), b.read_masks(b.rows()))
    assert {r["lung_mask"] for r in a.index} == {"v7"}


def test_store_without_masks_says_how_to_build_them(phantoms, tmp_path):
    build(tmp_path, phantoms, [])
    store = open_store(tmp_path / "out")
    assert store.masks is None and not (tmp_path / "out" / MASKS_FILE).exists()
    assert {r["lung_mask"] for r in store.index} == {""} and len(store.mask_rows()) == 0
    with pytest.raises(CovidnetError, match="--lung-masks NAME=DIR"):
        store.read_masks([0])


def test_derived_store_keeps_the_masks(phantoms, tmp_path):
    build(tmp_path, phantoms, [("phantom", phantoms / MASKS_DIR)])
    store = open_store(tmp_path / "out")
    derived = store.derive(tmp_path / "derived", ["test"] * len(store.index))
    assert np.array_equal(derived.read_masks(derived.rows()), store.read_masks(store.rows()))
    assert len(derived.mask_rows("test")) == len(store.index)


@pytest.mark.parametrize("text", ["v7labs", "=/x", "predicted=/x"])
def test_a_malformed_mask_set_is_a_usage_error(text):
    with pytest.raises(UsageError, match="NAME=DIR"):
        MaskSpec.parse(text)


def test_cli_joins_masks_and_refuses_a_missing_folder_in_one_line(phantoms, tmp_path):
    r = covidnet(
        "data", "build", "--source", f"cohen={phantoms}", "--out", str(tmp_path / "ds"), "--size", "64",
        "--workers", "2", "--quiet", "--lung-masks", f"phantom={phantoms / MASKS_DIR}", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert sum(json.loads(r.stdout)["lung_masks"]["in_dataset"]["images"].values()) == 24
    r = covidnet("data", "build", "--source", f"cohen={phantoms}", "--out", str(tmp_path / "ds2"),
                 "--lung-masks", f"v7={tmp_path / 'nowhere'}")  # fmt: skip
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "nowhere" in r.stderr
    assert "Traceback" not in r.stderr


TXV_ZIP = "torchxrayvision/data/semantic_masks_v7labs_lungs.zip"


@pytest.mark.realdata
def test_v7labs_masks_from_the_shared_folder_and_the_wheels_zip_agree(shared_data, tmp_path):
    """The shared folder's masks are the wheel's, resized to the shared images: built from either (the zip
    read in place, its masks at full resolution), the stored masks of an image agree (Dice >= 0.97 at 64 px)."""
    import importlib.util

    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None:
        pytest.skip("torchxrayvision is not installed")
    zpath = Path(spec.origin).parent / "data" / Path(TXV_ZIP).name
    cohen = shared_data / "sources" / "cohen"
    ra = build(tmp_path / "a", cohen, [("v7labs", shared_data / "lungmasks" / "v7labs")])
    rb = build(tmp_path / "b", cohen, [("v7labs", zpath)])
    assert ra["lung_masks"]["excluded"]["count"] == 0
    assert sum(ra["lung_masks"]["in_dataset"]["images"].values()) == 329
    a, b = open_store(tmp_path / "a" / "out"), open_store(tmp_path / "b" / "out")
    assert [r["filename"] for r in a.index] == [r["filename"] for r in b.index]
    both = np.intersect1d(a.mask_rows(), b.mask_rows())
    assert len(both) >= 300
    ma, mb = a.read_masks(both) == 255, b.read_masks(both) == 255
    dice = 2 * (ma & mb).sum((1, 2)) / (ma.sum((1, 2)) + mb.sum((1, 2)))
    assert dice.min() >= 0.97, dice.min()
    zs = rb["lung_masks"]  # the wheel has masks for more of the shared images than the shared folder
    assert zs["sets"][0]["masks"] == 517 and sum(zs["in_dataset"]["images"].values()) >= 329
    assert set(zs["excluded"]["by_reason"]) <= {"lung mask matches no image", "empty lung mask"}
