"""The covidx reader: a released COVIDx folder (label files + train/ val/ test/), its official split kept by
the build, binary releases through to `covidnet train --binary`, the release's known defects handled and
reported, bad input refused. Trees are written here from phantoms (and, for the realdata test, from the
shared cohen images); never a real release."""

import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image
from test_cli import covidnet

from covidnet.data.build import BuildConfig, SourceSpec, build_dataset
from covidnet.data.records import to_binary
from covidnet.data.sources import map_finding, read_source
from covidnet.data.store import open_store
from covidnet.data.synth import SynthConfig, write_phantom_dataset
from covidnet.errors import CovidnetError, SourceError


def write_covidx_tree(
    root: Path, phantoms: Path, binary: bool = False, val: bool = True, origin: str = "cohen"
) -> dict:
    """A COVIDx-layout folder from a phantom dataset: every 5th patient in test, the next in val (if ``val``),
    the rest in train. Returns {split: {filename: (patient, label)}} as written."""
    rows = list(csv.DictReader(open(phantoms / "metadata.csv")))
    patients = sorted({r["patientid"] for r in rows})
    split_of = {p: "test" if k % 5 == 0 else ("val" if val and k % 5 == 1 else "train") for k, p in enumerate(patients)}
    written: dict = defaultdict(dict)
    lines = defaultdict(list)
    for r in rows:
        label = map_finding(r["finding"])
        label = to_binary(label) if binary else label
        split = split_of[r["patientid"]]
        (root / split).mkdir(parents=True, exist_ok=True)
        shutil.copy(phantoms / "images" / r["filename"], root / split / r["filename"])
        lines[split].append(f"{r['patientid']} {r['filename']} {label} {origin}")
        written[split][r["filename"]] = (r["patientid"], label)
    for split, ls in lines.items():
        (root / f"{split}.txt").write_text("\n".join(ls) + "\n")
    return dict(written)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_phantom_dataset(
        tmp_path_factory.mktemp("ph") / "cohen", SynthConfig(n=36, seed=5, size=64), progress=False
    )


@pytest.fixture
def tree(phantoms, tmp_path):
    root = tmp_path / "COVIDx"
    return root, write_covidx_tree(root, phantoms)


def build(tmp_path, root, **kw) -> dict:
    cfg = BuildConfig(
        sources=[SourceSpec("covidx", root, "covidx")], out=tmp_path / "out", size=64, workers=1, progress=False, **kw
    )
    return build_dataset(cfg)


def index_rows(out: Path) -> list[dict]:
    return list(csv.DictReader(open(out / "index.csv")))


def line(root: Path, split: str, text: str) -> None:
    with open(root / f"{split}.txt", "a") as f:
        f.write(text + "\n")


# --- reading a release ------------------------------------------------------------------------------


def test_reader_takes_labels_patients_and_split_from_the_label_files(tree):
    root, written = tree
    data = read_source("covidx", root)
    got = {r.path.name: (r.extra["official_split"], r.patient_id, r.label) for r in data.records}
    want = {name: (split, pid, label) for split, names in written.items() for name, (pid, label) in names.items()}
    assert got == want and len(got) == 36
    assert {r.source for r in data.records} == {"covidx/cohen"}  # the release's origin stays visible
    assert [r.extra["official_split"] for r in data.records] == sorted(
        (r.extra["official_split"] for r in data.records), key=("test", "val", "train").index
    )  # test first
    assert data.exclusions == [] and data.anomalies == []


def test_build_keeps_the_official_split_by_default(tree, tmp_path):
    root, written = tree
    report = build(tmp_path, root)
    split_of = {r["filename"]: r["split"] for r in index_rows(tmp_path / "out")}
    assert split_of == {name: split for split, names in written.items() for name in names}
    official = report["official_split"]
    assert official["matched"] == {s: len(written[s]) for s in ("train", "val", "test")}
    assert official["matched_by_source"] == {"covidx/cohen": official["matched"]}
    assert official["val"] == "from the official lists" and official["leakage"] == {"patients": 0, "images_left_out": 0}
    assert sorted(Path(f).name for f in official["release_label_files"]) == ["test.txt", "train.txt", "val.txt"]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["split"] == "official"


def test_split_patient_redraws_the_split_by_patient(tree, tmp_path):
    root, written = tree
    report = build(tmp_path, root, split="patient", val_fraction=0.2, test_fraction=0.2, seed=1)
    rows = index_rows(tmp_path / "out")
    split_of = {r["filename"]: r["split"] for r in rows}
    assert len(split_of) == 36 and split_of != {n: s for s, names in written.items() for n in names}
    patients = defaultdict(set)
    for r in rows:
        patients[r["patient_id"]].add(r["split"])
    assert all(len(s) == 1 for s in patients.values()) and report["official_split"] is None


def test_a_release_without_val_gets_val_carved_from_official_train(phantoms, tmp_path):
    root = tmp_path / "COVIDx-CXR2"
    written = write_covidx_tree(root, phantoms, val=False)
    report = build(tmp_path, root, val_fraction=0.25)
    rows = index_rows(tmp_path / "out")
    assert {r["filename"] for r in rows if r["split"] == "test"} == set(written["test"])  # test untouched
    assert {r["filename"] for r in rows if r["split"] == "val"} <= set(written["train"])
    assert report["official_split"]["val"] == "carved from train by patient" and report["totals"]["val"]


def test_label_files_named_like_the_reference_are_found(phantoms, tmp_path):
    root = tmp_path / "COVIDx9"
    written = write_covidx_tree(root, phantoms)
    for split in written:
        (root / f"{split}.txt").rename(root / f"{split}_COVIDx9A.txt")
    assert len(read_source("covidx", root).records) == 36


# --- binary releases ----------------------------------------------------------------------------------


def test_binary_release_keeps_negative_for_binary_use_only(phantoms, tmp_path):
    root = tmp_path / "COVIDx-CXR4"
    written = write_covidx_tree(root, phantoms, binary=True)
    data = read_source("covidx", root)
    assert {r.label for r in data.records} == {"COVID-19", "negative"}
    assert all((r.label == "COVID-19") == (r.extra["covidx_label"] == "positive") for r in data.records)
    report = build(tmp_path, root)
    store = open_store(tmp_path / "out")
    by_name = {r["filename"]: r for r in store.index}
    for split, names in written.items():
        for name, (_, label) in names.items():
            assert by_name[name]["label_binary"] == label and by_name[name]["split"] == split
    assert sorted(store.labels(binary=True).tolist()).count(1) == sum(
        l == "positive" for n in written.values() for _, l in n.values()
    )
    with pytest.raises(CovidnetError, match="--binary"):
        store.labels()  # three-class targets do not exist for a negative image
    assert set(report["totals"]["train"]) == {"normal", "pneumonia", "COVID-19", "negative"}


@pytest.mark.slow
def test_binary_release_builds_and_trains_with_binary_through_the_cli(phantoms, tmp_path):
    root = tmp_path / "COVIDx-CXR4"
    write_covidx_tree(root, phantoms, binary=True)
    r = covidnet(
        "data",
        "build",
        "--source",
        f"covidx={root}",
        "--out",
        str(tmp_path / "ds"),
        "--size",
        "64",
        "--workers",
        "1",
        "--quiet",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    r = covidnet(
        "train",
        "--data",
        str(tmp_path / "ds"),
        "--out",
        str(tmp_path / "run"),
        "--binary",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--precise-bn",
        "0",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["state"] == "complete" and (tmp_path / "run" / "best.pt").is_file()
    from covidnet.train import TrainConfig, train

    with pytest.raises(CovidnetError, match="labelled only 'negative'.*--binary"):  # three classes: refused, one line
        train(TrainConfig(data=str(tmp_path / "ds"), out=str(tmp_path / "run3"), epochs=1, progress=False))


# --- the release's known defects ----------------------------------------------------------------------


def test_known_defects_are_handled_and_each_reported_by_file_and_patient(tree, tmp_path):
    root, written = tree
    train = sorted(written["train"])
    # a later test line of one of the train patients: that patient is in two official splits
    leak_name, (leak_pid, leak_label) = train[0], written["train"][train[0]]
    Image.open(root / "train" / train[1]).save(root / "test" / "moved.png")
    line(root, "test", f"{leak_pid} moved.png {leak_label} cohen")
    line(root, "train", f"{leak_pid} {leak_name} {leak_label} cohen")  # the same line again
    line(root, "train", f"other-patient {train[2]} {written['train'][train[2]][1]} cohen")  # one image, two patients
    line(root, "train", "p-sirm COVID(7).png positive sirm")  # binary label in a three-class file, (n) for -n
    Image.open(root / "train" / train[3]).save(root / "train" / "COVID-7.png")
    line(root, "train", "p-ext scan-1.png normal cohen")  # listed .png, on disk .jpg
    Image.open(root / "train" / train[4]).convert("L").save(root / "train" / "scan-1.jpg")
    line(root, "train", "p-neg neg-1.png negative rsna")  # negative says neither normal nor pneumonia
    Image.open(root / "train" / train[5]).save(root / "train" / "neg-1.png")
    line(root, "train", "COVID 70 COVID(70).png COVID-19 sirm")  # a space in the patient id (COVIDx 7/8)
    Image.open(root / "train" / train[6]).save(root / "train" / "COVID (70).png")
    line(root, "val", "p-gone gone.png pneumonia cohen")  # absent
    Image.open(root / "train" / train[7]).save(root / "train" / "stray.png")  # on disk, in no label file

    data = read_source("covidx", root)
    ex = {(e.reason, Path(e.item).name): e for e in data.exclusions}
    assert set(ex) == {
        ("duplicate line", leak_name),
        ("image listed twice", train[2]),
        ("negative label in a three-class file", "neg-1.png"),
        ("image missing", "gone.png"),
        ("image not in the label files", "stray.png"),
    }
    assert "patient 'other-patient'" in ex[("image listed twice", train[2])].detail
    assert (
        "patient 'p-gone'" in ex[("image missing", "gone.png")].detail
        and "val.txt:" in ex[("image missing", "gone.png")].detail
    )
    an = {(a.reason, Path(a.item).name) for a in data.anomalies}
    assert an == {
        ("binary label in a three-class file", "COVID(7).png"),
        ("file name differs from the label file", "COVID-7.png"),
        ("file name differs from the label file", "scan-1.jpg"),
        ("patient id with a space", "COVID(70).png"),
        ("file name differs from the label file", "COVID (70).png"),
        ("patient in two official splits", f"patient {leak_pid}"),
    }
    rec = {r.path.name: r for r in data.records}
    assert rec["COVID-7.png"].label == "COVID-19" and rec["COVID (70).png"].patient_id == "COVID 70"
    assert rec["COVID-7.png"].source == "covidx/sirm"
    assert any("1 patient(s) in two official splits" in n for n in data.notes)

    report = build(tmp_path, root)
    assert report["official_split"]["leakage"]["patients"] == 1
    left = [e for e in report["excluded"]["items"] if e["reason"] == "patient also in the official test split"]
    assert {r["split"] for r in index_rows(tmp_path / "out") if r["patient_id"] == leak_pid} == {"test"}
    assert (
        len(left)
        == report["official_split"]["leakage"]["images_left_out"]
        == len([n for n, (p, _) in written["train"].items() if p == leak_pid])
    )
    assert (
        report["anomalies"]["count"] == 6
        and report["anomalies"]["by_reason"]["file name differs from the label file"] == 3
    )
    names = json.dumps(report["excluded"]["items"])
    assert "gone.png" in names and "stray.png" in names and "neg-1.png" in names


def test_a_missing_image_is_fatal_only_with_strict(tree, tmp_path):
    root, _ = tree
    line(root, "test", "p-gone gone.png COVID-19 ricord")
    report = build(tmp_path / "a", root)
    items = [e for e in report["excluded"]["items"] if e["reason"] == "image missing"]
    assert len(items) == 1 and items[0]["item"].endswith("test/gone.png") and "p-gone" in items[0]["detail"]
    with pytest.raises(CovidnetError, match="--strict.*gone.png"):
        build(tmp_path / "b", root, strict=True)
    assert not (tmp_path / "b" / "out").exists()


def test_an_image_in_two_label_files_stays_in_test(tree, tmp_path):
    root, written = tree
    name, (pid, label) = next(iter(sorted(written["train"].items())))
    line(root, "test", f"{pid} {name} {label} cohen")
    shutil.copy(root / "train" / name, root / "test" / name)
    data = read_source("covidx", root)
    kept = [r for r in data.records if r.path.name == name]
    assert [r.extra["official_split"] for r in kept] == ["test"]
    assert [(e.reason, e.item) for e in data.exclusions] == [
        ("image in two official splits", str(root / "train" / name))
    ]


def test_conflicting_labels_for_one_image_leave_it_out(tree):
    root, written = tree
    name, (pid, label) = next(iter(sorted(written["train"].items())))
    line(root, "train", f"{pid} {name} {'normal' if label != 'normal' else 'pneumonia'} cohen")
    data = read_source("covidx", root)
    assert name not in {r.path.name for r in data.records}
    assert [e.reason for e in data.exclusions] == ["conflicting labels for one image"] * 2


# --- bad input ----------------------------------------------------------------------------------------


def test_a_folder_without_label_files_stops_with_one_line(tmp_path):
    (tmp_path / "COVIDx" / "train").mkdir(parents=True)
    r = covidnet("data", "build", "--source", f"covidx={tmp_path / 'COVIDx'}", "--out", str(tmp_path / "ds"), "--quiet")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "no COVIDx label files" in r.stderr and str(tmp_path / "COVIDx") in r.stderr
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("p1 only-two-fields.png", r"train.txt:\d+: too few fields"),
        ("p1 x.png level1 cohen", r"train.txt:\d+: unknown class 'level1' for x.png"),
        ("p1 x.png COVID-19 cohen extra field", r"train.txt:\d+: 6 fields and no class"),
    ],
)
def test_a_malformed_line_stops_the_build_naming_file_and_line(tree, tmp_path, text, needle):
    root, _ = tree
    line(root, "train", text)
    with pytest.raises(SourceError, match=needle):
        build(tmp_path, root)
    assert not (tmp_path / "out").exists()


def test_unknown_split_mode_is_refused(tree, tmp_path):
    root, _ = tree
    with pytest.raises(CovidnetError, match="--split must be official or patient"):
        build(tmp_path, root, split="random")


# --- real images --------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_cohen_images_in_a_covidx_layout_keep_the_official_split(shared_data, tmp_path):
    """COVIDx3's own cohen lines, with the shared cohen images copied into a COVIDx tree."""
    images = {p.stem: p for p in (shared_data / "sources" / "cohen" / "images").iterdir()}
    root = tmp_path / "COVIDx3"
    want = {}
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        lines = []
        for l in (shared_data / "covidx" / f"{split}_COVIDx3.txt").read_text().splitlines():
            f = l.split()
            if len(f) == 4 and f[3] == "cohen" and Path(f[1]).stem in images:
                src = images[Path(f[1]).stem]
                shutil.copy(src, root / split / src.name)  # the release's name, the shared file's extension
                lines.append(l)
                want[src.name] = split
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    assert sum(s == "test" for s in want.values()) >= 20
    report = build(tmp_path, root, val_fraction=0.1)
    rows = index_rows(tmp_path / "out")
    got = {r["filename"]: r["split"] for r in rows}
    left = {Path(e["item"]).name: e["reason"] for e in report["excluded"]["items"]}
    for name, split in want.items():  # every official image is in its split (val carved from train) or explained
        assert (got.get(name) == split or (split == "train" and got.get(name) == "val")) or name in left, name
    assert {n for n, s in got.items() if s == "test"} == {n for n, s in want.items() if s == "test"}  # test first
    assert (
        report["anomalies"]["by_reason"].get("file name differs from the label file", 0) > 0
    )  # .png listed, .jpg shared
    assert all(v["passed"] for v in report["checks"].values())
