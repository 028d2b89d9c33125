"""Source readers: each layout as its source publishes it. RSNA and RICORD are DICOM trees written here
with pydicom (their real data is not in ../shared/data); the others are checked on real files too."""

import csv
from pathlib import Path

import numpy as np
import pytest
from dicomfiles import dicom, save_dicom
from PIL import Image

from covidnet.data.build import BuildConfig, SourceSpec, build_dataset
from covidnet.data.sources import map_finding, read_source
from covidnet.errors import SourceError, UsageError


def radiograph(seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((size, size)) * 255).astype(np.uint8)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.mark.parametrize(
    "finding, label",
    [
        ("COVID-19", "COVID-19"),
        ("COVID-19, ARDS", "COVID-19"),
        ("Pneumonia/Viral/COVID-19", "COVID-19"),
        ("Pneumonia/Bacterial/Streptococcus", "pneumonia"),
        ("SARS", "pneumonia"),
        ("Pneumonia/Fungal/Pneumocystis", "pneumonia"),
        ("Streptococcus", "pneumonia"),
        ("No Finding", "normal"),
        ("todo", None),
        ("ARDS", None),
        ("Pneumonia/Lipoid", None),
        ("Tuberculosis", None),
        ("", None),
    ],
)
def test_findings_flat_and_hierarchical_map_to_covidx_classes(finding, label):
    assert map_finding(finding) == label


# --- RSNA -------------------------------------------------------------------------------------------


@pytest.fixture
def rsna_root(tmp_path) -> Path:
    root = tmp_path / "rsna"
    (root / "stage_2_train_images").mkdir(parents=True)
    patients = {
        "p-normal": "Normal",
        "p-opacity": "Lung Opacity",
        "p-other": "No Lung Opacity / Not Normal",
        "p-missing": "Normal",
    }
    write_csv(
        root / "stage_2_train_labels.csv",
        ["patientId", "x", "y", "width", "height", "Target"],
        [
            ["p-normal", "", "", "", "", 0],
            ["p-opacity", 10, 10, 20, 20, 1],
            ["p-opacity", 30, 10, 20, 20, 1],  # two boxes: one image
            ["p-other", "", "", "", "", 0],
            ["p-missing", "", "", "", "", 0],
        ],
    )
    write_csv(
        root / "stage_2_detailed_class_info.csv",
        ["patientId", "class"],
        [[p, c] for p, c in patients.items()] + [["p-opacity", "Lung Opacity"]],
    )
    for k, pid in enumerate(["p-normal", "p-opacity", "p-other"]):
        ds = dicom(radiograph(k), PatientID=pid, PatientAge="045Y", PatientSex="F", ViewPosition="PA")
        save_dicom(root / "stage_2_train_images" / f"{pid}.dcm", ds)
    return root


def test_rsna_labels_one_record_per_patient_and_header_metadata(rsna_root):
    data = read_source("rsna", rsna_root)
    by_pid = {r.patient_id: r for r in data.records}
    assert set(by_pid) == {"p-normal", "p-opacity"}
    assert by_pid["p-normal"].label == "normal" and by_pid["p-opacity"].label == "pneumonia"
    assert (by_pid["p-normal"].age, by_pid["p-normal"].sex, by_pid["p-normal"].view) == (45.0, "F", "PA")
    reasons = {e.item.split(":")[-1]: e.reason for e in data.exclusions}
    assert reasons == {"p-other": "not normal, no opacity (excluded as in COVIDx)", "p-missing": "image missing"}


def test_rsna_builds_end_to_end_through_dicom_decoding(rsna_root, tmp_path):
    cfg = BuildConfig(
        sources=[SourceSpec("rsna", rsna_root, "rsna")],
        out=tmp_path / "out",
        size=32,
        val_fraction=0,
        test_fraction=0,
        workers=1,
        progress=False,
    )
    report = build_dataset(cfg)
    assert report["n_images"] == 2
    stored = np.load(tmp_path / "out" / "images.npy")
    assert stored.shape == (2, 32, 32) and stored.std() > 10  # real pixels, not a blank


def test_rsna_without_its_tables_stops(tmp_path):
    (tmp_path / "rsna").mkdir()
    with pytest.raises(SourceError, match="stage_2_train_labels.csv"):
        read_source("rsna", tmp_path / "rsna")


# --- RICORD -----------------------------------------------------------------------------------------


def test_ricord_reads_tcia_tree_strips_collection_prefix_and_skips_ct(tmp_path):
    root = tmp_path / "MIDRC-RICORD-1C"
    for k, (pid, modality) in enumerate(
        [
            ("MIDRC-RICORD-1C-419639-000918", "CR"),
            ("MIDRC-RICORD-1C-419639-000918", "DX"),
            ("MIDRC-RICORD-1C-419639-003251", "CT"),
        ]
    ):
        d = root / pid / f"01-01-2020-study{k}" / f"{k}.000000-series"
        d.mkdir(parents=True)
        save_dicom(
            d / "1-1.dcm", dicom(radiograph(k), PatientID=pid, Modality=modality, PatientAge="062Y", ViewPosition="AP")
        )
    data = read_source("ricord", root)
    assert [r.patient_id for r in data.records] == ["419639-000918", "419639-000918"]
    assert all(r.label == "COVID-19" and r.age == 62 for r in data.records)
    assert [e.reason for e in data.exclusions] == ["not an X-ray"]


# --- folder layouts: Kermany, the COVID-19 Radiography Database ----------------------------------------


def test_radiography_db_reads_class_folders_and_excludes_lung_opacity(tmp_path):
    root = tmp_path / "COVID-19_Radiography_Dataset"
    for k, cls in enumerate(["COVID", "Normal", "Viral Pneumonia", "Lung_Opacity"]):
        (root / cls / "images").mkdir(parents=True)
        (root / cls / "masks").mkdir()
        Image.fromarray(radiograph(k)).save(root / cls / "images" / f"{cls}-1.png")
        Image.fromarray(radiograph(k + 9)).save(
            root / cls / "masks" / f"{cls}-1.png"
        )  # masks are not images of patients
    data = read_source("radiography-db", root)
    assert sorted(r.label for r in data.records) == ["COVID-19", "normal", "pneumonia"]
    assert [e.reason for e in data.exclusions] == ["finding not in COVIDx classes"]
    assert any("no patient ids" in n for n in data.notes)


def test_kermany_records_are_paediatric_and_person_ids_are_patients(tmp_path):
    root = tmp_path / "chest_xray"
    for cls, names in {
        "NORMAL": ["IM-0001-0001.jpeg"],
        "PNEUMONIA": ["person12_virus_34.jpeg", "person12_bacteria_35.jpeg"],
    }.items():
        (root / cls).mkdir(parents=True)
        for k, n in enumerate(names):
            Image.fromarray(radiograph(k)).save(root / cls / n)
    data = read_source("kermany", root)
    assert {r.patient_id for r in data.records if r.label == "pneumonia"} == {"person12"}
    assert all(r.extra["population"] == "paediatric" for r in data.records)


def test_folder_without_class_folders_stops(tmp_path):
    (tmp_path / "x" / "cats").mkdir(parents=True)
    with pytest.raises(SourceError, match="no class folders"):
        read_source("folder", tmp_path / "x")


def test_unknown_reader_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="available"):
        read_source("nosuch", tmp_path)


def test_actualmed_finds_images_by_imagename(tmp_path):
    root = tmp_path / "actualmed"
    (root / "images").mkdir(parents=True)
    Image.fromarray(radiograph(0)).save(root / "images" / "img-1.png")
    write_csv(
        root / "metadata.csv",
        ["patientid", "finding", "view", "imagename"],
        [
            ["A-1", "COVID-19", "AP", "img-1.png"],
            ["A-2", "", "AP", "img-2.png"],
            ["A-3", "No finding", "PA", "gone.png"],
        ],
    )
    data = read_source("actualmed", root)
    assert [(r.patient_id, r.label) for r in data.records] == [("A-1", "COVID-19")]
    assert sorted(e.reason for e in data.exclusions) == ["image missing", "unlabelled"]


# --- real sources -------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_cohen_counts(shared_data):
    data = read_source("cohen", shared_data / "sources" / "cohen")
    reasons = [e.reason for e in data.exclusions]
    assert reasons.count("lateral view") == 55
    assert {r.label for r in data.records} == {"normal", "pneumonia", "COVID-19"}
    assert all(r.view in ("PA", "AP", "AP Supine", "AP semi erect", "AP erect") for r in data.records)


@pytest.mark.realdata
def test_real_figure1_letter_suffixes_are_one_patient(shared_data):
    data = read_source("figure1", shared_data / "sources" / "figure1")
    suffixed = [r for r in data.records if r.stem[-1].isalpha()]
    assert suffixed and all(r.patient_id == r.stem[:-1] for r in suffixed)
    per_patient = {}
    for r in suffixed:
        per_patient.setdefault(r.patient_id, []).append(r.stem)
    assert any(len(stems) > 1 for stems in per_patient.values())  # e.g. COVID-00013a and -b: one patient


@pytest.mark.realdata
def test_real_nih_labels_from_finding_labels(shared_data):
    data = read_source("nih", shared_data / "sources" / "nih")
    assert len(data.records) == 706
    assert sum(r.label == "normal" for r in data.records) == 350
    assert all(r.view in ("PA", "AP") for r in data.records)
