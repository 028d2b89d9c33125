"""Small valid source trees, one per reader of ``covidnet.data.sources``, each in its source's own layout,
and which of its files are metadata (mutated as text) and which are binary (mutated as bytes). The readers
read tables, label files, sidecars and DICOM headers, not pixels, so the images are tiny PNGs."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

from mutate import radiograph
from xlsxfiles import write_xlsx

PNG = None  # filled on first use: one tiny PNG's bytes


def png() -> bytes:
    global PNG
    if PNG is None:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(radiograph(8, 8)).save(buf, format="PNG")
        PNG = buf.getvalue()
    return PNG


def write_csv(path: Path, header: list[str], rows: list[list], delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)


def images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(png())


def dicom_file(path: Path, **elements) -> None:
    from dicomfiles import dicom, save_dicom

    path.parent.mkdir(parents=True, exist_ok=True)
    elements.setdefault("SOPInstanceUID", "1.2.826.0.1.3680043.8.498.1")
    save_dicom(path, dicom(radiograph(8, 8), **elements))


# --- one writer per reader: (text files, binary files) relative to the root ---------------------------------


def cohen(root: Path) -> tuple[list[str], list[str]]:
    header = ["patientid", "offset", "sex", "age", "finding", "view", "modality", "folder", "filename", "url"]
    rows = [
        ["1", "0", "M", "65", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "images", "a.png", "https://x.org/1"],
        ["1", "3", "M", "65", "Pneumonia/Viral/COVID-19", "AP Supine", "X-ray", "images", "b.png", ""],
        ["2", "", "F", "40", "Pneumonia/Bacterial/Streptococcus", "AP", "X-ray", "images", "c.png", ""],
        ["3", "", "F", "", "No Finding", "PA", "X-ray", "images", "d.png", ""],
        ["4", "", "", "", "todo", "L", "CT", "images", "e.png", ""],
    ]
    write_csv(root / "metadata.csv", header, rows)
    images(root / "images", ["a.png", "b.png", "c.png", "d.png", "e.png"])
    return ["metadata.csv"], []


def figure1(root: Path) -> tuple[list[str], list[str]]:
    rows = [["P1a", "COVID-19", "PA", "60", "M"], ["P2", "Pneumonia", "AP", "", "F"], ["P3", "", "L", "", ""]]
    write_csv(root / "metadata.csv", ["patientid", "finding", "view", "age", "sex"], rows)
    images(root / "images", ["P1a.png", "P2.jpg", "P3.png"])
    return ["metadata.csv"], []


def actualmed(root: Path) -> tuple[list[str], list[str]]:
    rows = [["A1", "A1-1.png", "COVID-19", "PA"], ["A2", "A2-1.png", "No finding", "AP"], ["A3", "x.png", "", ""]]
    write_csv(root / "metadata.csv", ["patientid", "imagename", "finding", "view"], rows)
    images(root / "images", ["A1-1.png", "A2-1.png"])
    return ["metadata.csv"], []


def nih(root: Path) -> tuple[list[str], list[str]]:
    header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender"]
    rows = [
        ["00000001_000.png", "No Finding", "0", "1", "58", "M"],
        ["00000001_001.png", "Pneumonia|Effusion", "1", "1", "58", "M"],
        ["00000002_000.png", "Cardiomegaly", "0", "00002", "81", "F"],
    ]
    write_csv(root / "Data_Entry_2017.csv", [*header, "View Position"], [[*r, "PA"] for r in rows])
    images(root / "images", [r[0] for r in rows])
    return ["Data_Entry_2017.csv"], []


def rsna(root: Path) -> tuple[list[str], list[str]]:
    write_csv(
        root / "stage_2_train_labels.csv",
        ["patientId", "x", "y", "width", "height", "Target"],
        [["p1", "", "", "", "", "0"], ["p2", "1", "2", "3", "4", "1"], ["p2", "5", "6", "7", "8", "1"]],
    )
    write_csv(
        root / "stage_2_detailed_class_info.csv",
        ["patientId", "class"],
        [["p1", "Normal"], ["p2", "Lung Opacity"], ["p3", "No Lung Opacity / Not Normal"]],
    )
    for pid in ("p1", "p2", "p3"):
        dicom_file(root / "stage_2_train_images" / f"{pid}.dcm", PatientAge="045Y", PatientSex="F", ViewPosition="PA")
    return ["stage_2_train_labels.csv", "stage_2_detailed_class_info.csv"], ["stage_2_train_images/p2.dcm"]


def covidx(root: Path) -> tuple[list[str], list[str]]:
    lines = {
        "train": ["1 a.png COVID-19 cohen", "2 b.png normal rsna", "3 c.png pneumonia rsna"],
        "val": ["4 d.png normal rsna"],
        "test": ["5 e.png COVID-19 ricord", "COVID 70 COVID(70).png COVID-19 sirm"],
    }
    for split, text in lines.items():
        (root / f"{split}.txt").write_text("\n".join(text) + "\n")
        images(root / split, [line.split()[-3] for line in text])
    return ["train.txt", "val.txt", "test.txt"], []


def folder(root: Path) -> tuple[list[str], list[str]]:
    images(root / "NORMAL", ["person1_a.png", "n2.jpeg"])
    images(root / "PNEUMONIA", ["person2_virus_1.png"])
    images(root / "COVID" / "images", ["COVID-1.png"])
    images(root / "Lung_Opacity", ["o.png"])
    return [], []


kermany = radiography_db = folder


def ricord(root: Path) -> tuple[list[str], list[str]]:
    pid = "MIDRC-RICORD-1C-419639-000918"
    files = []
    for k in range(2):
        rel = f"{pid}/01-01-2020-CHEST-14760/{k + 1}.000000-AP-1234{k}/1-1.dcm"
        dicom_file(root / rel, PatientID=pid, ViewPosition="AP", StudyInstanceUID="1.2.826.0.1.3680043.10.474.4")
        files.append(rel)
    return [], files


def stonybrook(root: Path) -> tuple[list[str], list[str]]:
    files = []
    for k, (pid, modality, view) in enumerate([("A1", "CR", "AP"), ("A1", "DX", "LL"), ("A2", "DX", "PA")]):
        rel = f"COVID-19-NY-SBU/{pid}/01-0{k}-1900-NA-CHEST-1{k}/1.000000-{view}-2{k}/1-1.dcm"
        dicom_file(
            root / rel, PatientID=pid, Modality=modality, ViewPosition=view, PatientAge="061Y", StudyInstanceUID="1.2"
        )
        files.append(rel)
    return [], files


def bimcv(root: Path) -> tuple[list[str], list[str]]:
    from pydicom import Dataset

    def sidecar(**fields) -> str:
        ds = Dataset()
        for k, v in fields.items():
            setattr(ds, k, v)
        return json.dumps(ds.to_json_dict())

    text = []
    for sub, ses, rest, side in [
        ("S1", "E1", "run-1_bp-chest_vp-pa_dx", sidecar(ViewPosition="PA", Modality="DX", BodyPartExamined="CHEST")),
        ("S1", "E1", "run-2_bp-chest_vp-ll_dx", sidecar(ViewPosition="LL", Modality="DX")),
        ("S2", "E2", "run-1_bp-chest_vp-ap_cr", json.dumps({"ViewPosition": "AP", "Modality": "CR"})),
    ]:
        d = root / f"sub-{sub}" / f"ses-{ses}" / "mod-rx"
        stem = f"sub-{sub}_ses-{ses}_{rest}"
        images(d, [f"{stem}.png"])
        (d / f"{stem}.json").write_text(side)
        text.append(str((d / f"{stem}.json").relative_to(root)))
    write_csv(
        root / "participants.tsv",
        ["participant", "age", "gender"],
        [["sub-S1", "[80]", "M"], ["sub-S2", "[45, 46]", "F"]],
        "\t",
    )
    write_csv(
        root / "sub-S1" / "sub-S1_sessions.tsv",
        ["session_id", "study_date"],
        [["ses-E1", "20200315"]],
        "\t",
    )
    write_csv(
        root / "derivatives" / "labels" / "labels_covid_posi.tsv",
        ["ReportID", "PatientID", "Labels"],
        [["ses-E1", "sub-S1", "['COVID 19']"]],
        "\t",
    )
    return [
        *text,
        "participants.tsv",
        "sub-S1/sub-S1_sessions.tsv",
        "derivatives/labels/labels_covid_posi.tsv",
    ], []


def sirm(root: Path) -> tuple[list[str], list[str]]:
    url = "https://sirm.org/category/senza-categoria/covid-19/"
    rows = [
        ["FILE NAME", "FORMAT", "SIZE", "URL"],
        ["COVID-1", "PNG", "256*256", url],
        ["COVID-2", "PNG", "256*256", "https://github.com/ieee8023/covid-chestxray-dataset"],
        ["COVID-3", "PNG", "256*256", url],
    ]
    images(root / "COVID" / "images", ["COVID-1.png", "COVID-2.png", "COVID-3.png"])
    write_xlsx(root / "COVID.metadata.xlsx", rows)
    return ["COVID.metadata.xlsx!xl/sharedStrings.xml", "COVID.metadata.xlsx!xl/worksheets/sheet1.xml"], [
        "COVID.metadata.xlsx"
    ]


def rewrite_member(archive: Path, member: str, fn) -> None:
    """Replace one member of a zip (an .xlsx's XML) with ``fn(its bytes)``."""
    with zipfile.ZipFile(archive) as z:
        items = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in items:
            z.writestr(name, fn(data) if name == member else data)


WRITERS = {
    "cohen": cohen,
    "figure1": figure1,
    "actualmed": actualmed,
    "rsna": rsna,
    "nih": nih,
    "radiography-db": radiography_db,
    "ricord": ricord,
    "folder": folder,
    "kermany": kermany,
    "covidx": covidx,
    "stonybrook": stonybrook,
    "bimcv": bimcv,
    "sirm": sirm,
}
