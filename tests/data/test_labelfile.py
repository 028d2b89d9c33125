"""Label files for ``covidnet eval --labels``: COVIDx's ``patientid filename label [source]`` and our two optional
columns, ``site`` and ``view``; every malformed line is one error naming the file and line."""

import pytest

from covidnet.data.labelfile import read_label_file
from covidnet.errors import CovidnetError

CLASSES = ("normal", "pneumonia", "COVID-19")


def rows(tmp_path, text: str):
    path = tmp_path / "labels.txt"
    path.write_text(text)
    return read_label_file(path, CLASSES)


def test_covidx_lines_of_three_or_four_columns_have_unknown_sites_and_views(tmp_path):
    got = rows(tmp_path, "p1 a.png normal cohen\np2 b.png COVID-19\n")
    assert [(r.patient_id, r.filename, r.label, r.source, r.site, r.view, r.line) for r in got] == [
        ("p1", "a.png", "normal", "cohen", "", "", 1),
        ("p2", "b.png", "COVID-19", "", "", "", 2),
    ]


def test_site_and_view_columns_are_read_with_underscores_as_spaces_and_views_normalised(tmp_path):
    got = rows(
        tmp_path,
        "p1 a.png normal ext Hannover_Medical_School PA\n"
        "p2 b.png COVID-19 ext Hannover_Medical_School, AP_Supine\n"
        "\n"
        "p3 c.png pneumonia - - ap\n"
        "p4 d.png COVID-19 ext PA_Hospital AP_semi_erect\n",
    )
    assert [(r.source, r.site, r.view, r.line) for r in got] == [
        ("ext", "Hannover Medical School", "PA", 1),
        ("ext", "Hannover Medical School", "AP supine", 2),
        ("", "", "AP", 4),
        ("ext", "PA Hospital", "AP", 5),  # a site with a view's letters in its name is still a site
    ]


def test_a_site_column_without_a_view_column_is_fine(tmp_path):
    got = rows(tmp_path, "p1 a.png normal ext site_1\np2 b.png COVID-19 ext -\n")
    assert [(r.site, r.view) for r in got] == [("site 1", ""), ("", "")]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("p1 a.png normal ext Hannover Medical School PA\n", ":1: expected 'patientid filename label"),
        ("p1 a.png normal ext site_a PA\np2 b.png normal ext\n", ":2: no site column, but line 1 has one"),
        ("p1 a.png normal ext\np2 b.png normal ext site_b\n", ":1: no site column, but line 2 has one"),
        ("p1 a.png normal ext site_a PA\np2 b.png normal ext site_b\n", ":2: no view column, but line 1 has one"),
        ("p1 a.png normal ext ?\n", ":1: site column '?' names no site; write '-'"),
        ("p1 a.png normal ext AP site_a\n", ":1: site column 'AP' is a view"),
        ("p1 a.png normal ext AP_supine\n", ":1: site column 'AP_supine' is a view"),
        ("p1 a.png normal ext site_a LL\n", ":1: view column 'LL' is not a frontal view"),
        ("p1 a.png normal ext site_a oblique\n", ":1: view column 'oblique' is not a frontal view"),
        ("patient one a.png normal cohen\n", ":1: unknown label 'a.png' ('normal' comes later"),
        ("p1 a.png influenza\n", ":1: unknown label 'influenza'"),
        ("", "the label file is empty"),
    ],
)
def test_malformed_lines_stop_with_the_file_and_line_named(tmp_path, text, needle):
    with pytest.raises(CovidnetError) as e:
        rows(tmp_path, text)
    message = str(e.value)
    assert needle in message and str(tmp_path / "labels.txt") in message and "\n" not in message
