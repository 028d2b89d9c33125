"""`covidnet data build`: splits, guarantees, the report, bad input, atomicity. Phantom sources for the
fast tests; the real sources in ../shared/data for the realdata ones."""

import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import imagehash
import numpy as np
import pytest
from PIL import Image

from covidnet.contract import Contract
from covidnet.data.build import NEAR_DUP_BITS, PHASH_SIZE, BuildConfig, SourceSpec, build_dataset, near_duplicate_pairs
from covidnet.data.build.dedup import near_matches
from covidnet.data.records import CLASSES
from covidnet.data.store import open_store
from covidnet.data.synth import SynthConfig, write_phantom_dataset
from covidnet.errors import ConfigError, CovidnetError, SourceError


@pytest.fixture(scope="module")
def phantom_source(tmp_path_factory) -> Path:
    return write_phantom_dataset(
        tmp_path_factory.mktemp("ph") / "cohen", SynthConfig(n=36, seed=1, size=96), progress=False
    )


@pytest.fixture
def source_copy(phantom_source, tmp_path) -> Path:
    dst = tmp_path / "src"
    shutil.copytree(phantom_source, dst)
    return dst


def build(tmp_path, *sources, **kw) -> dict:
    specs = [SourceSpec.parse(s) if isinstance(s, str) else s for s in sources]
    cfg = BuildConfig(sources=specs, out=tmp_path / "out", size=64, workers=kw.pop("workers", 1), progress=False, **kw)
    return build_dataset(cfg)


def split_of_patients(out: Path) -> dict[str, set[str]]:
    seen = defaultdict(set)
    for row in csv.DictReader(open(out / "index.csv")):
        seen[f"{row['source']}:{row['patient_id']}"].add(row["split"])
    return seen


def rewrite_metadata(src: Path, edit) -> None:
    rows = list(csv.DictReader(open(src / "metadata.csv")))
    fields = list(rows[0])
    edit(rows)
    with open(src / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


# --- phantom data: the guarantees and the outputs ---------------------------------------------------


def test_phantom_build_writes_label_files_store_and_report(phantom_source, tmp_path):
    report = build(tmp_path, f"cohen={phantom_source}", val_fraction=0.2, test_fraction=0.2)
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {
        "train.txt",
        "val.txt",
        "test.txt",
        "records.csv",
        "report.json",
        "config.json",
        "contract.json",
        "images.npy",
        "index.csv",
    }
    store = open_store(out)
    assert store.images.shape == (report["n_images"], 64, 64) and store.images.dtype == np.uint8
    n_listed = 0
    for split in ("train", "val", "test"):
        lines = (out / f"{split}.txt").read_text().splitlines()
        n_listed += len(lines)
        assert all(len(l.split()) == 4 and l.split()[2] in CLASSES for l in lines)
        assert len(lines) == sum(report["totals"][split].values()) > 0
    assert n_listed == report["n_images"] == 36
    assert all(len(s) == 1 for s in split_of_patients(out).values())
    assert all(v["passed"] for v in report["checks"].values())
    assert json.loads((out / "config.json").read_text())["size"] == 64


def test_stored_image_is_the_preprocessed_file(phantom_source, tmp_path):
    from covidnet.contract import load_image

    build(tmp_path, f"cohen={phantom_source}")
    store = open_store(tmp_path / "out")
    row = store.index[0]
    assert np.array_equal(store.images[0], load_image(phantom_source / "images" / row["filename"], 64))


def test_same_seed_same_split_other_seed_other_split(phantom_source, tmp_path):
    build(tmp_path / "a", f"cohen={phantom_source}", seed=3)
    build(tmp_path / "b", f"cohen={phantom_source}", seed=3, workers=2)
    build(tmp_path / "c", f"cohen={phantom_source}", seed=4)
    a, b, c = ((tmp_path / x / "out" / "test.txt").read_text() for x in "abc")
    assert a == b and a != c


def test_exact_duplicate_across_sources_is_removed_and_near_duplicate_too(phantom_source, source_copy, tmp_path):
    # source_copy holds the same images: every one is an exact duplicate of the first source's
    img = source_copy / "images" / sorted(p.name for p in (source_copy / "images").iterdir())[0]
    arr = np.array(Image.open(img))
    Image.fromarray(np.clip(arr.astype(int) + 3, 0, 255).astype(np.uint8)).save(img)  # now a near duplicate
    report = build(tmp_path, f"cohen={phantom_source}", f"cohen:copy={source_copy}")
    reasons = report["excluded"]["by_reason"]
    assert reasons["exact duplicate"] == 35 and reasons["near duplicate"] == 1
    assert report["n_images"] == 36


def test_near_duplicate_pairs_is_exact_hamming_search():
    rng = np.random.default_rng(0)
    h = rng.integers(0, 256, size=(50, 32), dtype=np.uint8)
    h[7] = h[3]
    h[9] = h[3] ^ np.array([1] + [0] * 31, dtype=np.uint8)  # one bit away
    pairs = set(near_duplicate_pairs(h, max_bits=2, block=16))
    assert {(3, 7), (3, 9), (7, 9)} <= pairs
    brute = {(i, j) for i in range(50) for j in range(i + 1, 50) if np.unpackbits(h[i] ^ h[j]).sum() <= 2}
    assert pairs == brute


# --- bad input ----------------------------------------------------------------------------------------


def test_missing_source_folder_stops_at_once(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        build(tmp_path, f"cohen={tmp_path / 'nowhere'}")
    assert not (tmp_path / "out").exists()


def test_missing_metadata_stops_at_once(source_copy, tmp_path):
    (source_copy / "metadata.csv").unlink()
    with pytest.raises(SourceError, match="metadata.csv"):
        build(tmp_path, f"cohen={source_copy}")


def test_bad_rows_are_excluded_with_reasons_and_the_rest_builds(source_copy, tmp_path):
    images = sorted((source_copy / "images").iterdir())
    images[0].unlink()  # a row whose image is absent
    data = images[1].read_bytes()
    images[1].write_bytes(data[: len(data) // 2])  # truncated
    images[2].write_bytes(b"this is not an image")

    def edit(rows):
        rows[3]["finding"] = "Alien invasion"  # unknown label

    rewrite_metadata(source_copy, edit)
    report = build(tmp_path, f"cohen={source_copy}")
    by_reason = report["excluded"]["by_reason"]
    assert by_reason == {"image missing": 1, "unreadable image": 2, "finding not in COVIDx classes": 1}
    items = {e["reason"]: e for e in report["excluded"]["items"]}
    assert items["image missing"]["item"].endswith("metadata.csv:2")  # names file and row
    assert images[1].name in json.dumps(report["excluded"]["items"])
    assert report["n_images"] == 32


def test_strict_fails_on_error_exclusions_and_writes_nothing(source_copy, tmp_path):
    sorted((source_copy / "images").iterdir())[0].write_bytes(b"")
    with pytest.raises(CovidnetError, match="--strict"):
        build(tmp_path, f"cohen={source_copy}", strict=True)
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out.building") for p in tmp_path.iterdir())


def test_strict_accepts_documented_filters(source_copy, tmp_path):
    rewrite_metadata(source_copy, lambda rows: rows[0].update(view="L"))
    report = build(tmp_path, f"cohen={source_copy}", strict=True)
    assert report["excluded"]["by_reason"] == {"lateral view": 1}


def test_patient_in_two_sources_with_different_labels_is_excluded(source_copy, phantom_source, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(phantom_source, other)
    for p in (other / "images").iterdir():  # different images, so no duplicates
        arr = np.array(Image.open(p))
        Image.fromarray(np.ascontiguousarray(arr[::-1])).save(p)
    rows = list(csv.DictReader(open(phantom_source / "metadata.csv")))
    pid, finding = rows[0]["patientid"], rows[0]["finding"]
    flipped = "No Finding" if "COVID" in finding else "Pneumonia/Viral/COVID-19"
    rewrite_metadata(other, lambda rs: [r.update(finding=flipped) for r in rs if r["patientid"] == pid])
    report = build(tmp_path, f"cohen={phantom_source}", f"cohen:other={other}")
    bad = [e for e in report["excluded"]["items"] if e["reason"] == "patient in two sources with different labels"]
    assert bad and all(pid in e["detail"] for e in bad)


def test_existing_output_is_refused_unless_overwrite(phantom_source, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        build(tmp_path, f"cohen={phantom_source}")
    assert (tmp_path / "out" / "keep.txt").exists()
    build(tmp_path, f"cohen={phantom_source}", overwrite=True)
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "report.json").exists()


def test_lungs_without_the_opened_segmenter_is_one_line_before_anything_is_written(phantom_source, tmp_path):
    # data is a lower layer than covidnet.lungs: the caller opens the model of --lungs and hands it over
    model = tmp_path / "lungs.onnx"
    model.write_bytes(b"not read")
    other = tmp_path / "other.onnx"
    other.write_bytes(b"not read")
    framed = Contract(stored_size=64, top_crop=0.2)
    cases = [
        (model, None, r"BuildConfig.lungs is set: pass the segmenter, build_dataset\(cfg, segmenter=covidnet.load\("),
        (None, SimpleNamespace(path=model, contract=framed), "BuildConfig.lungs is not set"),
        (model, SimpleNamespace(path=other, contract=framed), "the segmenter passed is not BuildConfig.lungs"),
        (model, SimpleNamespace(path=model, contract=framed), "trained on a top crop of 0.2.*--top-crop 0.2"),
    ]
    for lungs, segmenter, message in cases:
        cfg = BuildConfig(sources=[SourceSpec("cohen", phantom_source, "cohen")], out=tmp_path / "new" / "out",
                          size=64, workers=1, progress=False, lungs=lungs)  # fmt: skip
        with pytest.raises(CovidnetError, match=message) as e:
            build_dataset(cfg, segmenter=segmenter)
        assert "\n" not in str(e.value)
        assert not (tmp_path / "new").exists()


# --- real data ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_build(shared_data, tmp_path_factory):
    src = shared_data / "sources"
    out = tmp_path_factory.mktemp("real") / "covidx"
    cfg = BuildConfig(
        sources=[SourceSpec(r, src / r, r) for r in ("cohen", "figure1", "nih", "kermany")],
        out=out,
        size=128,
        workers=2,
        progress=False,
    )
    return build_dataset(cfg), out


@pytest.mark.realdata
def test_real_build_no_patient_crosses_splits(real_build):
    report, out = real_build
    assert report["n_images"] > 1000
    crossing = {p: s for p, s in split_of_patients(out).items() if len(s) > 1}
    assert crossing == {}


@pytest.mark.realdata
def test_real_build_no_duplicate_pair_crosses_splits(real_build):
    """Recomputed independently of the build: perceptual hashes of the stored images, and file hashes."""
    report, out = real_build
    store = open_store(out)
    hashes = np.stack(
        [
            np.packbits(imagehash.phash(Image.fromarray(np.asarray(im)), hash_size=PHASH_SIZE).hash.flatten())
            for im in store.images
        ]
    )
    splits = [r["split"] for r in store.index]
    crossing = [(i, j) for i, j in near_duplicate_pairs(hashes, NEAR_DUP_BITS) if splits[i] != splits[j]]
    assert crossing == []
    assert report["excluded"]["by_reason"]["exact duplicate"] >= 1  # the real sources do repeat images
    assert report["excluded"]["by_reason"]["near duplicate"] >= 2  # figure1 images republished in cohen


@pytest.mark.realdata
def test_real_build_report_says_what_was_excluded(real_build):
    report, _ = real_build
    by_reason = report["excluded"]["by_reason"]
    assert by_reason["lateral view"] == 55  # the cohen README's count of lateral views
    assert by_reason["paediatric"] >= 300  # the whole kermany source, excluded by default
    assert all(v["passed"] for v in report["checks"].values())
    assert report["counts"]["test"]["COVID-19"].get("cohen", 0) > 0


@pytest.mark.realdata
def test_official_covidx3_test_images_land_in_test(shared_data, tmp_path):
    src, covidx = shared_data / "sources", shared_data / "covidx"
    report = build(
        tmp_path,
        f"cohen={src / 'cohen'}",
        f"figure1={src / 'figure1'}",
        split_files=[("train", covidx / "train_COVIDx3.txt"), ("test", covidx / "test_COVIDx3.txt")],
        workers=2,
    )
    have = {p.stem for s in ("cohen", "figure1") for p in (src / s / "images").iterdir()}
    wanted = [
        l.split()[1]
        for l in (covidx / "test_COVIDx3.txt").read_text().splitlines()
        if len(l.split()) > 3 and l.split()[3] in ("cohen", "fig1")
    ]
    wanted = {Path(f).stem for f in wanted if Path(f).stem in have}
    test = {Path(l.split()[1]).stem for l in (tmp_path / "out" / "test.txt").read_text().splitlines()}
    assert len(wanted) > 40 and wanted <= test
    assert report["official_split"]["missing_count"] > 0  # RSNA etc. are not in ../shared/data
    assert all(len(s) == 1 for s in split_of_patients(tmp_path / "out").values())


def test_near_duplicate_search_agrees_with_bytewise_xor_popcount_across_blocks():
    rng = np.random.default_rng(4)
    h = rng.integers(0, 256, (1500, 32), dtype=np.uint8)
    h[1499] = h[3]  # identical
    h[1200], h[1200, 0] = h[8], h[8, 0] ^ 0xFF  # 8 bits apart
    h[900], h[900, :4] = h[9], h[9, :4] ^ 0xFF  # 32 bits apart: not a near duplicate at 24
    ref = sorted(
        (i, int(j))
        for i in range(len(h))
        for j in np.nonzero(np.bitwise_count(h[i] ^ h[i + 1 :]).sum(1) <= NEAR_DUP_BITS)[0] + i + 1
    )
    assert sorted(near_duplicate_pairs(h, block=400)) == ref and (3, 1499) in ref and (8, 1200) in ref
    assert (9, 900) not in ref


def test_one_hash_against_many_finds_what_the_all_pairs_search_pairs_it_with():
    """``near_matches`` (one film against a store, ``pretrain --images``) and ``near_duplicate_pairs`` (the
    build's all-pairs search) are one threshold: the matches of each hash are its pairs, at every distance."""
    rng = np.random.default_rng(5)
    h = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    for k, bits in enumerate((0, 1, 23, 24, 25, 40)):  # the threshold's both sides
        h[100 + k] = h[k] ^ np.packbits(np.arange(256) < bits)
    pairs = near_duplicate_pairs(h)
    for i in range(len(h)):
        mates = sorted({j for p in pairs for j in p if i in p} - {i})
        found = [int(j) for j in near_matches(h[i].tobytes(), h) if j != i]
        assert found == mates
    assert [len(near_matches(h[k].tobytes(), h[100:106])) for k in range(6)] == [1, 1, 1, 1, 0, 0]
