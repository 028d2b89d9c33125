"""The sources COVIDx 9 adds, each in its own layout, on format-true fixtures written here: Stony Brook's TCIA
DICOM tree (pydicom), BIMCV-COVID19+'s BIDS tree (16-bit PNGs, DICOM-JSON sidecars, TSV tables) and the SIRM
rows of the COVID-19 Radiography Database (an .xlsx sheet); then COVIDx 9A's own lists matched against them."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from dicomfiles import dicom, save_dicom
from PIL import Image
from pydicom import Dataset
from xlsxfiles import write_xlsx

from covidnet.data.build import BuildConfig, SourceSpec, build_dataset
from covidnet.data.sources import COVIDX_SOURCE_ALIASES, READERS, official_key, read_source
from covidnet.data.sources._common import read_sheet
from covidnet.errors import SourceError


def radiograph(seed: int, size: int = 64, dtype=np.uint8) -> np.ndarray:
    """Noise: distinct seeds give images no duplicate search confuses (each fixture has its own range)."""
    rng = np.random.default_rng(seed)
    top = 4095 if dtype == np.uint16 else 255
    return (rng.random((size, size)) * top).astype(dtype)


def reasons(data) -> dict[str, str]:
    return {Path(e.item).name if "/" in e.item else e.item: e.reason for e in data.exclusions}


def build(tmp_path, *specs, **kw) -> dict:
    cfg = BuildConfig(
        sources=[SourceSpec(*s) for s in specs],
        out=tmp_path / "out",
        size=64,
        workers=1,
        progress=False,
        val_fraction=0,
        **kw,
    )
    return build_dataset(cfg)


def split_by_name(out: Path) -> dict[str, str]:
    return {r["filename"]: r["split"] for r in csv.DictReader(open(out / "index.csv"))}


# --- Stony Brook (COVID-19-NY-SBU, TCIA) ----------------------------------------------------------------

SBU = [  # patient, study folder, series folder, modality, ViewPosition, SeriesDescription, what the reader makes of it
    ("A100001", "01-26-1901-NA-CHEST_AP_PORT-59725", "3.000000-AP-38183", "CR", "AP", "AP", "frontal"),
    (
        "A100001",
        "01-28-1901-NA-CHEST_AP_PORT-11111",
        "2.000000-CHEST_AP_PORT-22222",
        "DX",
        "",
        "CHEST_AP_PORT",
        "frontal",
    ),
    ("A100001", "01-28-1901-NA-CHEST_2V-33333", "4.000000-LATERAL-44444", "DX", "", "LATERAL", "lateral view"),
    ("A200002", "12-27-1900-NA-CHEST_PA_LAT-55555", "1.000000-PA-66666", "DX", "PA", "PA", "frontal"),
    ("A200002", "12-27-1900-NA-CHEST_PA_LAT-55555", "2.000000-LAT-77777", "DX", "LL", "LAT", "lateral view"),
    ("A200002", "12-29-1900-NA-CT_CHEST-88888", "5.000000-AXIAL-99999", "CT", "", "AXIAL", "not an X-ray"),
    ("A300003", "01-01-1901-NA-CHEST-12345", "1.000000-NA-54321", "CR", "AP", "LATERAL", "view not frontal or unknown"),
    ("A300003", "01-02-1901-NA-CHEST-12346", "1.000000-NA-54322", "CR", "", "", "view not frontal or unknown"),
]


SBU_OUTCOMES = {f"{pid}-{study}-{series}-1-1": outcome for pid, study, series, *_, outcome in SBU}  # by COVIDx name


def write_sbu(root: Path, rows=SBU) -> dict[str, str]:
    """The tree under a download's manifest folder; returns {COVIDx name stem: expected outcome}."""
    out = {}
    for k, (pid, study, series, modality, view, desc, outcome) in enumerate(rows):
        d = root / "COVID-19-NY-SBU" / pid / study / series
        d.mkdir(parents=True)
        for n in range(1, 4 if modality == "CT" else 2):  # a CT series has many slices, a radiograph series one file
            ds = dicom(
                radiograph(10 * k + n),
                PatientID=pid,
                Modality=modality,
                ViewPosition=view,
                SeriesDescription=desc,
                PatientAge="061Y",
                PatientSex="M",
                StudyInstanceUID=f"1.2.3.{k}",
            )
            save_dicom(d / f"1-{n}.dcm", ds)
        out[f"{pid}-{study}-{series}-1-1"] = outcome
    return out


def test_stonybrook_keeps_frontal_radiographs_with_header_patients_and_covidx_names(tmp_path):
    root = tmp_path / "manifest-1628608914773"
    want = write_sbu(root)
    data = read_source("stonybrook", root)
    assert {r.stem: "frontal" for r in data.records} == {s: o for s, o in want.items() if o == "frontal"}
    assert {r.patient_id for r in data.records} == {"A100001", "A200002"}
    assert all(r.label == "COVID-19" and r.age == 61 and r.sex == "M" for r in data.records)
    assert all(r.filename.endswith("-1-1.dcm") and r.path.name == "1-1.dcm" for r in data.records)
    got = {
        "-".join(Path(e.item).parts[-4:])[:-4]
        if e.item.endswith(".dcm")
        else "-".join(Path(e.item).parts[-3:]) + "-1-1": e.reason
        for e in data.exclusions
    }
    assert got == {s: o for s, o in want.items() if o != "frontal"}
    ct = next(e for e in data.exclusions if e.reason == "not an X-ray")
    assert Path(ct.item).name == "5.000000-AXIAL-99999" and "3 files" in ct.detail  # one item for the series


def test_stonybrook_official_names_match_and_are_counted_per_source(tmp_path):
    root = tmp_path / "sbu"
    write_sbu(root)
    names = [s for s, o in SBU_OUTCOMES.items() if o == "frontal"]
    (tmp_path / "train.txt").write_text("".join(f"{n.split('-')[0]} {n}.jpg COVID-19 stonybrook\n" for n in names[:2]))
    (tmp_path / "test.txt").write_text(
        f"A200002 {names[2]}.jpg COVID-19 stonybrook\nA999999 A999999-gone-1-1.jpg COVID-19 stonybrook\n"
    )
    report = build(
        tmp_path,
        ("stonybrook", root, "stonybrook"),
        split_files=[("train", tmp_path / "train.txt"), ("test", tmp_path / "test.txt")],
    )
    got = split_by_name(tmp_path / "out")
    assert got == {f"{names[0]}.dcm": "train", f"{names[1]}.dcm": "train", f"{names[2]}.dcm": "test"}
    o = report["official_split"]
    assert o["matched_by_source"] == {"stonybrook": {"train": 2, "val": 0, "test": 1}}
    assert o["missing_by_source"] == {"stonybrook": 1} and o["missing"][0].endswith("A999999-gone-1-1.jpg")
    assert (tmp_path / "out" / "train.txt").read_text().split()[
        1
    ] == f"{names[0]}.dcm"  # our label files name them alike


def test_stonybrook_tree_without_frontal_images_stops(tmp_path):
    write_sbu(tmp_path / "sbu", [r for r in SBU if r[-1] != "frontal"])
    with pytest.raises(SourceError, match=r"no frontal CR/DX images among 7 DICOM file\(s\).*2 lateral view"):
        read_source("stonybrook", tmp_path / "sbu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no DICOM files"):
        read_source("stonybrook", tmp_path / "empty")


# --- BIMCV-COVID19+ -------------------------------------------------------------------------------------


def sidecar_json(**fields) -> dict:
    """A sidecar as BIMCV writes it: the DICOM header in the DICOM JSON model (tags as hex keys)."""
    ds = Dataset()
    for k, v in fields.items():
        setattr(ds, k, v)
    return ds.to_json_dict()


def write_tsv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(header)
        w.writerows(rows)


BIMCV = [  # subject, session, rest of the file name, sidecar (None: none; str: written as is), outcome
    (
        "S03097",
        "E26968",
        "run-1_bp-chest_vp-pa_dx",
        sidecar_json(ViewPosition="PA", SeriesDescription="TORAX PA", Modality="DX", BodyPartExamined="CHEST"),
        "frontal",
    ),
    (
        "S03097",
        "E26968",
        "run-2_bp-chest_vp-ll_dx",
        sidecar_json(ViewPosition="LL", SeriesDescription="TORAX LAT", Modality="DX"),
        "lateral view",
    ),
    (
        "S03097",
        "E27000",
        "run-1_bp-chest_vp-ap_cr",
        sidecar_json(SeriesDescription="Tórax AP portátil", Modality="CR"),
        "frontal",
    ),
    ("S03122", "E06219", "run-1_bp-chest_vp-pa_dx", None, "frontal"),  # no sidecar: the file name says PA
    (
        "S03122",
        "E06219",
        "run-2_bp-chest_vp-pa_dx",
        {"ViewPosition": "PA", "Modality": "DX"},
        "frontal",
    ),  # keyword keys
    ("S03122", "E06219", "run-3_bp-chest_vp-pa_dx", "{not json", "frontal"),  # unreadable: the file name says PA
    (
        "S03122",
        "E06301",
        "run-1_bp-abdomen_vp-ap_dx",
        sidecar_json(Modality="DX", BodyPartExamined="ABDOMEN"),
        "not a chest radiograph",
    ),
]


def write_bimcv(root: Path, rows=BIMCV) -> dict[str, str]:
    out = {}
    for k, (sub, ses, rest, side, outcome) in enumerate(rows):
        d = root / f"sub-{sub}" / f"ses-{ses}" / "mod-rx"
        d.mkdir(parents=True, exist_ok=True)
        stem = f"sub-{sub}_ses-{ses}_{rest}"
        Image.fromarray(radiograph(100 + k, dtype=np.uint16)).save(d / f"{stem}.png")  # 16-bit, as BIMCV ships them
        if side is not None:
            (d / f"{stem}.json").write_text(side if isinstance(side, str) else json.dumps(side))
        out[stem] = outcome
    write_tsv(
        root / "participants.tsv",
        ["participant", "modality_dicom", "body_parts", "age", "gender"],
        [
            ["sub-S03097", "['CR', 'DX']", "[['chest']]", "[80]", "M"],
            ["sub-S03122", "['DX']", "[['chest']]", "[45, 46]", "F"],
        ],
    )
    write_tsv(
        root / "sub-S03097" / "sub-S03097_sessions.tsv",
        ["session_id", "study_date", "medical_evaluation"],
        [["ses-E26968", "20200315", "Informe"], ["ses-E27000", "20200320", ""]],
    )
    write_tsv(
        root / "derivatives" / "labels" / "labels_covid_posi.tsv",
        ["ReportID", "PatientID", "Report", "Labels"],
        [["ses-E26968", "sub-S03097", "opacidades", "['COVID 19', 'alveolar pattern']"]],
    )
    return out


def test_bimcv_reads_the_bids_tree_sidecars_and_tables(tmp_path):
    root = tmp_path / "covid19_posi"
    want = write_bimcv(root)
    data = read_source("bimcv", root)
    assert {r.stem for r in data.records} == {s for s, o in want.items() if o == "frontal"}
    assert reasons(data) == {f"{s}.png": o for s, o in want.items() if o != "frontal"}
    by_stem = {r.stem: r for r in data.records}
    first = by_stem["sub-S03097_ses-E26968_run-1_bp-chest_vp-pa_dx"]
    assert (first.patient_id, first.age, first.sex, first.view, first.label) == ("S03097", 80, "M", "PA", "COVID-19")
    assert first.extra["study_date"] == "20200315" and "alveolar pattern" in first.extra["findings"]
    assert {r.patient_id: r.age for r in data.records} == {"S03097": 80, "S03122": 45}
    assert [a.reason for a in data.anomalies] == ["sidecar unreadable"]
    assert any("1 image(s) without a JSON sidecar" in n for n in data.notes)


def test_bimcv_images_decode_and_match_covidx_corrected_names(tmp_path):
    root = tmp_path / "covid19_posi"
    kept = sorted(s for s, o in write_bimcv(root).items() if o == "frontal")
    (tmp_path / "train.txt").write_text("".join(f"S03122 {s}-corrected.png COVID-19 bimcv\n" for s in kept[2:]))
    (tmp_path / "test.txt").write_text("".join(f"S03097 {s}-corrected.png COVID-19 bimcv\n" for s in kept[:2]))
    report = build(
        tmp_path,
        ("bimcv", root, "bimcv"),
        split_files=[("train", tmp_path / "train.txt"), ("test", tmp_path / "test.txt")],
    )
    assert report["n_images"] == 5 and report["official_split"]["matched_by_normalised_name"] == 5
    assert {n: s for n, s in split_by_name(tmp_path / "out").items()} == {
        f"{k}.png": "test" if "S03097" in k else "train" for k in kept
    }
    assert all(v["passed"] for v in report["checks"].values())
    images = np.load(tmp_path / "out" / "images.npy")
    assert images.shape == (5, 64, 64) and images.std() > 10  # 16-bit pixels scaled, not clipped to black


def test_bimcv_without_frontal_radiographs_or_images_stops(tmp_path):
    write_bimcv(tmp_path / "a", [r for r in BIMCV if r[-1] != "frontal"])
    with pytest.raises(SourceError, match="no frontal chest CR/DX radiographs among 2 image"):
        read_source("bimcv", tmp_path / "a")
    (tmp_path / "b" / "sub-S1").mkdir(parents=True)
    with pytest.raises(SourceError, match=r"sub-\*/ses-\*/mod-rx/\*.png"):
        read_source("bimcv", tmp_path / "b")


# --- SIRM (COVID-19 Radiography Database) ---------------------------------------------------------------


def write_xlsx_openpyxl(path: Path, rows: list[list[str]]) -> Path:
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    for row in rows:
        wb.active.append(row)
    wb.save(path)
    return path


SIRM_URL = "https://sirm.org/category/senza-categoria/covid-19/"
SHEET = [
    ["FILE NAME", "FORMAT", "SIZE", "URL"],
    ["COVID-1", "PNG", "256*256", SIRM_URL],
    ["COVID-2", "PNG", "256*256", "https://www.sirm.org/2020/03/covid-19-caso-2/"],
    ["COVID-3", "PNG", "256*256", "https://github.com/ieee8023/covid-chestxray-dataset"],
    ["COVID-4", "PNG", "256*256", "https://bimcv.cipf.es/bimcv-projects/bimcv-covid19/"],
    ["COVID-5", "PNG", "256*256", SIRM_URL],
]  # no such image


def write_radiography_db(root: Path, writer=write_xlsx, sheet=SHEET) -> Path:
    (root / "COVID" / "images").mkdir(parents=True)
    (root / "COVID" / "masks").mkdir()
    for k in range(1, 5):
        Image.fromarray(radiograph(200 + k)).save(root / "COVID" / "images" / f"COVID-{k}.png")
    writer(root / "COVID.metadata.xlsx", sheet)
    return root


@pytest.mark.parametrize("writer", [write_xlsx, write_xlsx_openpyxl], ids=["excel-layout", "openpyxl"])
def test_sirm_keeps_the_rows_whose_url_is_sirms(tmp_path, writer):
    root = write_radiography_db(tmp_path / "COVID-19_Radiography_Dataset", writer)
    data = read_source("sirm", root)
    assert sorted(r.path.name for r in data.records) == ["COVID-1.png", "COVID-2.png"]
    assert all(r.label == "COVID-19" and r.patient_id == r.path.stem for r in data.records)
    sheet = root / "COVID.metadata.xlsx"
    assert {e.item: e.reason for e in data.exclusions} == {
        f"{sheet}:4": "not from SIRM",
        f"{sheet}:5": "not from SIRM",
        f"{sheet}:6": "image missing",
    }
    assert "github.com" in data.exclusions[0].detail
    assert any("no patient ids" in n for n in data.notes)


def test_read_sheet_reads_text_numbers_and_gaps(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    wb.active.append(["FILE NAME", "SIZE", "URL"])
    wb.active.append(["COVID-1", 256, None])
    wb.active.append([None, None, None])
    wb.active.append(["COVID-2", 3.5, "https://sirm.org/x"])
    wb.save(tmp_path / "s.xlsx")
    assert read_sheet(tmp_path / "s.xlsx", "t", ("FILE NAME",)) == [
        {"FILE NAME": "COVID-1", "SIZE": "256", "URL": ""},
        {"FILE NAME": "COVID-2", "SIZE": "3.5", "URL": "https://sirm.org/x"},
    ]


def test_sirm_matches_covidx_numbering_and_builds(tmp_path):
    root = write_radiography_db(tmp_path / "db")
    (tmp_path / "train.txt").write_text("COVID 1 COVID(1).png COVID-19 sirm\n")  # COVIDx 8's five fields
    (tmp_path / "test.txt").write_text("COVID_2 COVID(2).png COVID-19 sirm\n")
    report = build(
        tmp_path,
        ("sirm", root, "sirm"),
        split_files=[("train", tmp_path / "train.txt"), ("test", tmp_path / "test.txt")],
    )
    assert split_by_name(tmp_path / "out") == {"COVID-1.png": "train", "COVID-2.png": "test"}
    assert report["official_split"]["matched_by_normalised_name"] == 2


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda root: (root / "COVID.metadata.xlsx").unlink(), "metadata sheet of source 'sirm' not found"),
        (
            lambda root: (root / "COVID.metadata.xlsx").write_bytes(b"FILE NAME,URL\n"),
            "cannot be read as an Excel workbook",
        ),
        (lambda root: write_xlsx(root / "COVID.metadata.xlsx", [r[:3] for r in SHEET]), "missing column.*URL"),
        (
            lambda root: write_xlsx(root / "COVID.metadata.xlsx", SHEET[:1] + SHEET[3:5]),
            "no image of source 'sirm' found",
        ),
    ],
)
def test_sirm_bad_sheets_stop_with_the_file_named(tmp_path, change, needle):
    root = write_radiography_db(tmp_path / "db")
    change(root)
    with pytest.raises(SourceError, match=needle):
        read_source("sirm", root)


# --- RICORD's COVIDx names --------------------------------------------------------------------------------


def write_ricord(root: Path) -> None:
    pid = "MIDRC-RICORD-1C-419639-000918"
    for k in range(2):  # one study, two series: COVIDx's k counts the study's files in order
        d = root / pid / "01-01-2020-CHEST-14760" / f"{k + 1}.000000-AP-1234{k}"
        d.mkdir(parents=True)
        save_dicom(
            d / "1-1.dcm",
            dicom(
                radiograph(300 + k),
                PatientID=pid,
                ViewPosition="AP",
                StudyInstanceUID="1.2.826.0.1.3680043.10.474.419639.3.14760",
            ),
        )


def test_ricord_records_carry_covidx_names(tmp_path):
    write_ricord(tmp_path / "ricord")
    names = sorted(r.filename for r in read_source("ricord", tmp_path / "ricord").records)
    assert names == ["MIDRC-RICORD-1C-419639-000918-14760-0.dcm", "MIDRC-RICORD-1C-419639-000918-14760-1.dcm"]


# --- COVIDx 9A from its sources ----------------------------------------------------------------------------


def test_covidx9a_lists_reproduce_their_split_from_the_sources(tmp_path):
    """Lines in train_COVIDx9A.txt's own form (and source names) for images of four sources: each image lands in
    its listed split and the report counts the matches per source."""
    write_sbu(tmp_path / "sbu")
    write_bimcv(tmp_path / "bimcv")
    write_radiography_db(tmp_path / "db")
    write_ricord(tmp_path / "ricord")
    sbu = [s for s, o in SBU_OUTCOMES.items() if o == "frontal"]
    bim = sorted(s for s, o in BIMCV_OUTCOMES.items() if o == "frontal")
    train = (
        [f"{s.split('-')[0]} {s}.jpg COVID-19 stonybrook" for s in sbu[:2]]
        + [f"S03097 {s}-corrected.png COVID-19 bimcv" for s in bim[:2]]
        + ["COVID_1 COVID(1).png COVID-19 sirm"]
    )
    test = (
        [f"A200002 {sbu[2]}.jpg COVID-19 stonybrook"]
        + [f"S03122 {s}-corrected.png COVID-19 bimcv" for s in bim[2:]]
        + ["COVID_2 COVID(2).png COVID-19 sirm"]
        + [f"419639-000918 MIDRC-RICORD-1C-419639-000918-14760-{k}.png COVID-19 ricord" for k in range(2)]
        + ["3f382606-c1bd-4742-82f8-36feafa7e643 3f382606-c1bd-4742-82f8-36feafa7e643.png normal rnsa"]
    )
    (tmp_path / "train_COVIDx9A.txt").write_text("\n".join(train) + "\n")
    (tmp_path / "test_COVIDx9A.txt").write_text("\n".join(test) + "\n")
    report = build(
        tmp_path,
        *[
            (r, tmp_path / d, r)
            for r, d in (("stonybrook", "sbu"), ("bimcv", "bimcv"), ("sirm", "db"), ("ricord", "ricord"))
        ],
        split_files=[("train", tmp_path / "train_COVIDx9A.txt"), ("test", tmp_path / "test_COVIDx9A.txt")],
    )
    o = report["official_split"]
    # no patient is listed in two splits, so every image lands as listed
    assert o["matched_by_source"] == {
        "bimcv": {"train": 2, "val": 0, "test": 3},
        "ricord": {"train": 0, "val": 0, "test": 2},
        "sirm": {"train": 1, "val": 0, "test": 1},
        "stonybrook": {"train": 2, "val": 0, "test": 1},
    }
    assert o["matched"] == {"train": 5, "val": 0, "test": 7} and o["missing_by_source"] == {"rnsa": 1}
    assert o["leakage"] == {"patients": 0, "images_left_out": 0}
    got = split_by_name(tmp_path / "out")
    listed = {official_key(l.split()[-3]): split for split, ls in (("train", train), ("test", test)) for l in ls}
    assert {official_key(n): s for n, s in got.items()} == {k: s for k, s in listed.items() if not k.startswith("3f38")}


BIMCV_OUTCOMES = {f"sub-{s}_ses-{e}_{rest}": o for s, e, rest, _, o in BIMCV}


@pytest.mark.realdata
def test_every_source_of_the_real_covidx9a_lists_has_a_reader_and_our_naming(shared_data):
    for name in ("train_COVIDx9A.txt", "test_COVIDx9A.txt"):
        for line in (shared_data / "covidx" / name).read_text().splitlines():
            pid, filename, _, source = line.split()
            assert COVIDX_SOURCE_ALIASES.get(source) in READERS, source
            if source == "stonybrook":  # patient-study-series-file, as stonybrook.covidx_name joins them
                assert filename.startswith(f"{pid}-") and filename.endswith("-1-1.jpg")
            elif source == "bimcv":
                assert filename.startswith(f"sub-{pid}_ses-") and official_key(filename).endswith(("_dx", "_cr"))
            elif source == "sirm":
                assert official_key(filename).startswith("COVID-") and official_key(filename)[6:].isdigit()
            elif source == "ricord":
                assert filename.startswith(f"MIDRC-RICORD-1C-{pid}-")
