"""RSNA Pneumonia Detection Challenge: ``stage_2_train_labels.csv`` (patientId, box, Target),
``stage_2_detailed_class_info.csv`` (patientId, class) and ``stage_2_train_images/<patientId>.dcm``.

A patient has one image and one row per opacity box, so several rows. As in COVIDx: class 'Normal' is
normal, Target 1 ('Lung Opacity') is pneumonia, and 'No Lung Opacity / Not Normal' is excluded (other
abnormalities). Age, sex and view come from the DICOM header (read without the pixel data). The challenge's
images are NIH ChestX-ray14's, so their site is NIH's (``nih.SITE``, the NIH Clinical Center).
"""

from __future__ import annotations

from pathlib import Path

import pydicom

from ..records import Record
from . import nih
from ._common import SourceData, parse_age, parse_sex, read_table, require_dir

NAME = "rsna"


def read(root: Path, source: str = NAME) -> SourceData:
    root = require_dir(root, source)
    labels_csv, classes_csv = root / "stage_2_train_labels.csv", root / "stage_2_detailed_class_info.csv"
    targets: dict[str, set[str]] = {}
    for row in read_table(labels_csv, source, ("patientId", "Target")):
        targets.setdefault(row["patientId"].strip(), set()).add(row["Target"].strip())
    classes: dict[str, set[str]] = {}
    for row in read_table(classes_csv, source, ("patientId", "class")):
        classes.setdefault(row["patientId"].strip(), set()).add(row["class"].strip())
    image_dir = root / "stage_2_train_images"
    out = SourceData()
    for pid in sorted(set(targets) | set(classes)):
        item = f"{labels_csv}:{pid}"
        cls, tgt = classes.get(pid, set()), targets.get(pid, set())
        if "1" in tgt or "Lung Opacity" in cls:
            label = "pneumonia"
        elif cls == {"Normal"} and tgt <= {"0"}:
            label = "normal"
        elif "No Lung Opacity / Not Normal" in cls:
            out.exclude(source, item, "not normal, no opacity (excluded as in COVIDx)", f"class {sorted(cls)}")
            continue
        else:
            out.exclude(
                source, item, "unknown label", f"class {sorted(cls) or 'missing'}, Target {sorted(tgt) or 'missing'}"
            )
            continue
        path = image_dir / f"{pid}.dcm"
        if not path.is_file():
            out.exclude(source, item, "image missing", f"{path} not found")
            continue
        age = sex = view = None
        try:
            ds = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["PatientAge", "PatientSex", "ViewPosition"]
            )
            age, sex, view = (
                parse_age(ds.get("PatientAge")),
                parse_sex(ds.get("PatientSex")),
                ds.get("ViewPosition") or None,
            )
        except Exception as e:  # the image itself is checked when it is decoded; here only metadata is lost
            out.notes.append(f"{path}: DICOM header unreadable ({type(e).__name__}); age, sex and view unknown")
        out.records.append(
            Record(
                patient_id=pid,
                path=path,
                label=label,
                source=source,
                view=view,
                age=age,
                sex=sex,
                extra={"rsna_class": "|".join(sorted(cls))},
                site=nih.SITE,
            )
        )
    return out
