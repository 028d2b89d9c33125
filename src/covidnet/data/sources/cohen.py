"""ieee8023/covid-chestxray-dataset (Cohen et al.): ``metadata.csv`` + ``images/``.

``finding`` is flat in early releases ('COVID-19', 'SARS', 'COVID-19, ARDS') and hierarchical in later
ones ('Pneumonia/Viral/COVID-19'); both are parsed. Only X-rays in frontal views are kept by default
(the reference builder's list: PA, AP, AP Supine, AP semi erect, AP erect); lateral, blank and '?'
views are excluded, each with its reason.

``rules="reference"`` selects rows as the reference builder does (lindawangg/COVID-Net,
``create_COVIDx.ipynb``): the last part of ``finding`` looked up in its fixed mapping (so 'No Finding',
'Pneumocystis', 'COVID-19, ARDS', … are left out), and COVID-19 rows whose ``url`` is eurorad, SIRM or
ml-workgroup dropped, since COVIDx takes those images from the COVID-19 Radiography Database.
docs/readers-vs-torchxrayvision.md compares the two rules.

The site is the ``location`` column (a hospital, a city or only a country, as each contributor wrote it),
normalised (``records.site_name``: white space, trailing punctuation and '?') with one spelling per place
(``one_spelling``); blank or '?' is unknown.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import UsageError
from ..records import Record, site_name
from ._common import (
    ImageIndex,
    SourceData,
    map_finding,
    one_line,
    one_spelling,
    parse_age,
    parse_sex,
    read_table,
    require_dir,
)

NAME = "cohen"
FRONTAL_VIEWS = ("PA", "AP", "AP Supine", "AP semi erect", "AP erect")
RULES = ("ours", "reference")
# the reference's ``mapping``, whole ('Lung Opacity' and '1' are there for RSNA's labels)
REFERENCE_MAPPING = {
    "COVID-19": "COVID-19",
    "SARS": "pneumonia",
    "MERS": "pneumonia",
    "Streptococcus": "pneumonia",
    "Klebsiella": "pneumonia",
    "Chlamydophila": "pneumonia",
    "Legionella": "pneumonia",
    "E.Coli": "pneumonia",
    "Normal": "normal",
    "Lung Opacity": "pneumonia",
    "1": "pneumonia",
}
REFERENCE_OTHER_SOURCE_URLS = ("eurorad.org", "ml-workgroup", "sirm.org")  # COVID-19 rows only, as there
OTHER_SOURCE = "reaches COVIDx through another source"


def read(root: Path, source: str = NAME, views: tuple[str, ...] = FRONTAL_VIEWS, rules: str = "ours") -> SourceData:
    if rules not in RULES:
        raise UsageError(f"cohen rules {rules!r}: expected one of {', '.join(RULES)}")
    root = require_dir(root, source)
    meta = root / "metadata.csv"
    rows = read_table(meta, source, ("patientid", "finding", "view", "modality", "filename"))
    out = SourceData()
    indexes: dict[str, ImageIndex] = {}
    wanted = {v.lower() for v in views}
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        line = f"{meta}:{i}"
        folder = root / (row.get("folder") or "images").strip()
        if str(folder) not in indexes:
            indexes[str(folder)] = ImageIndex(folder)
        index = indexes[str(folder)]
        name = row["filename"].strip()
        path = index.find(name) if name else None
        # a row left out is named by its image where it names one on disk, with its line in the detail
        item, at = (line, "") if path is None else (str(path), f"{line}: ")

        if row["modality"].strip().lower() not in ("x-ray", "xray", "cr", "dx"):
            out.exclude(source, item, "not an X-ray", at + f"modality {row['modality']!r}")
            continue
        view = row["view"].strip()
        frontal = row["view"] in views if rules == "reference" else view.lower() in wanted  # the reference: exact
        if not frontal:
            reason = "lateral view" if view.upper().startswith("L") else "view not frontal or unknown"
            out.exclude(source, item, reason, at + f"view {view!r}")
            continue
        finding = row["finding"].strip()
        if rules == "reference":
            last = row["finding"].split("/")[-1]  # the reference's lookup key
            label = REFERENCE_MAPPING.get(last)
            url = row.get("url") or ""
            if label == "COVID-19" and any(u in url for u in REFERENCE_OTHER_SOURCE_URLS):
                out.exclude(
                    source,
                    item,
                    OTHER_SOURCE,
                    f"{at}url {url!r}: the reference takes these from the COVID-19 Radiography Database",
                )
                continue
        else:
            label = map_finding(finding)
        if label is None:
            reason = "unlabelled" if finding.lower() in ("", "todo") else "finding not in COVIDx classes"
            detail = f"finding {finding!r}" + (" (not in the reference's mapping)" if rules == "reference" else "")
            out.exclude(source, item, reason, at + detail)
            continue
        if path is None:
            out.exclude(source, item, "image missing", at + f"{one_line(str(folder / name))} not found")
            continue
        extra = {k: row[k] for k in ("finding", "offset", "date", "location", "url", "license") if row.get(k)}
        extra.update({k: v for k, v in row.items() if k.startswith("phantom_") and v})
        out.records.append(
            Record(
                patient_id=row["patientid"].strip(),
                path=path,
                label=label,
                source=source,
                view=view,
                age=parse_age(row.get("age")),
                sex=parse_sex(row.get("sex")),
                extra=extra,
                site=site_name(row.get("location")),
            )
        )
    one_spelling(out.records)
    return out
