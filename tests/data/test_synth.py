"""The phantom generator: deterministic, in the real cohen layout, anatomically and radiologically
plausible, with severity truth measured on what was drawn and a shortcut planted only where asked."""

import csv
import hashlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidnet.data import synth
from covidnet.data.synth import SynthConfig, contact_sheet, draw_radiograph, sample_anatomy, write_phantom_dataset
from covidnet.errors import ConfigError

SIZE = 128


def rows_of(root: Path) -> list[dict]:
    with open(root / "metadata.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def pixels(root: Path, row: dict) -> np.ndarray:
    return np.asarray(Image.open(root / row["folder"] / row["filename"]))


@pytest.fixture(scope="module")
def marked(tmp_path_factory) -> Path:
    """24 phantoms, 2 hospitals, a marker planted on hospital A's COVID-19 images."""
    return write_phantom_dataset(
        tmp_path_factory.mktemp("ph") / "cohen", SynthConfig(n=24, seed=2, size=SIZE, shortcut="marker"), progress=False
    )


def pair(label: str, seed: int, severity: float | None = 0.7, **kw):
    """The same patient on the same film, once normal and once with ``label``."""
    anatomy = sample_anatomy(np.random.default_rng([seed, 99]))
    normal = draw_radiograph(np.random.default_rng(seed), SIZE, "normal", anatomy=anatomy, **kw)
    sick = draw_radiograph(np.random.default_rng(seed), SIZE, label, anatomy=anatomy, severity=severity, **kw)
    return normal, sick


def zone(mask: np.ndarray, lower: bool, outer: bool, side: str) -> np.ndarray:
    """Lower/upper half by rows and outer/inner half by columns of one lung's bounding box."""
    rows, cols = np.nonzero(mask)
    r_mid, c_mid = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
    rr, cc = np.indices(mask.shape)
    vertical = rr >= r_mid if lower else rr < r_mid
    lateral_is_left = side == "right"  # the patient's right lung is on the image's left
    horizontal = (cc < c_mid) if (outer == lateral_is_left) else (cc >= c_mid)
    return mask & vertical & horizontal


# --- determinism and layout -------------------------------------------------------------------------


def test_same_config_gives_identical_bytes_and_another_seed_does_not(tmp_path):
    config = SynthConfig(n=8, seed=5, size=SIZE)
    a = digest(write_phantom_dataset(tmp_path / "a", config, progress=False))
    b = digest(write_phantom_dataset(tmp_path / "b", config, progress=False))
    c = digest(write_phantom_dataset(tmp_path / "c", SynthConfig(n=8, seed=6, size=SIZE), progress=False))
    assert a == b and len(a) == 17  # metadata.csv, 8 images and their 8 lung masks
    assert a["metadata.csv"] != c["metadata.csv"]
    assert not set(a.values()) & set(c.values())


def test_draw_is_a_function_of_its_rng():
    a, _ = draw_radiograph(np.random.default_rng(3), SIZE, "COVID-19")
    b, _ = draw_radiograph(np.random.default_rng(3), SIZE, "COVID-19")
    c, _ = draw_radiograph(np.random.default_rng(4), SIZE, "COVID-19")
    assert a.dtype == np.uint8 and a.shape == (SIZE, SIZE)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_contrast_scales_the_drawn_disease_and_nothing_else():
    """The same draw with the disease at 0.3 of its opacity: the opacity map scaled, the film changed, and
    the severity measured on what is drawn; an image of no disease does not move."""
    full, t_full = draw_radiograph(np.random.default_rng(9), SIZE, "COVID-19", severity=0.6)
    faint, t_faint = draw_radiograph(np.random.default_rng(9), SIZE, "COVID-19", severity=0.6, contrast=0.3)
    assert np.allclose(t_faint["opacity_map"], 0.3 * t_full["opacity_map"], atol=1e-6)
    normal, _ = draw_radiograph(np.random.default_rng(9), SIZE, "normal")
    same, _ = draw_radiograph(np.random.default_rng(9), SIZE, "normal", contrast=0.3)
    assert np.array_equal(normal, same)
    assert not np.array_equal(faint, full) and t_faint["opacity"] <= t_full["opacity"]


def test_metadata_has_the_cohen_columns_and_hierarchical_findings(marked):
    rows = rows_of(marked)
    assert len(rows) == 24
    required = (
        "patientid offset sex age finding view modality date location folder filename doi url license "
        "clinical_notes other_notes"
    ).split()
    assert set(required) | set(synth.PHANTOM_COLUMNS) <= set(rows[0])
    findings = {r["finding"] for r in rows}
    assert "Pneumonia/Viral/COVID-19" in findings and "No Finding" in findings
    assert any(f.startswith("Pneumonia/Bacterial/") for f in findings)
    assert findings <= {
        "No Finding",
        "Pneumonia/Viral/COVID-19",
        "Pneumonia/Bacterial/Streptococcus",
        "Pneumonia/Bacterial/Klebsiella",
    }
    counts = defaultdict(int)
    for r in rows:
        counts[r["finding"].split("/")[-1] if r["finding"] != "No Finding" else "normal"] += 1
        assert r["view"] in ("PA", "AP") and r["modality"] == "X-ray" and r["folder"] == "images"
        assert r["location"] in ("Phantom Hospital A", "Phantom Hospital B")
        assert 20 <= int(r["age"]) <= 90 and r["sex"] in ("M", "F")
        image = Image.open(marked / "images" / r["filename"])
        assert image.mode == "L" and image.size == (SIZE, SIZE) and r["filename"].endswith(".png")
    assert counts["normal"] == counts["COVID-19"] == 8  # equal thirds of 24


def test_patients_have_follow_ups_with_one_anatomy(marked):
    by_patient = defaultdict(list)
    for r in rows_of(marked):
        by_patient[r["patientid"]].append(r)
    assert any(len(v) >= 2 for v in by_patient.values())
    assert all(len(v) <= 3 for v in by_patient.values())
    same, other = [], []
    firsts = [v[0] for v in by_patient.values()]
    for rows in by_patient.values():
        assert [int(r["offset"]) for r in rows][0] == 0
        assert [int(r["offset"]) for r in rows] == sorted({int(r["offset"]) for r in rows})
        assert len({(r["finding"], r["location"], r["sex"], r["age"], r["view"]) for r in rows}) == 1
        for r in rows[1:]:
            same.append(np.abs(pixels(marked, r).astype(int) - pixels(marked, rows[0])).mean())
    for a, b in zip(firsts, firsts[1:]):
        other.append(np.abs(pixels(marked, a).astype(int) - pixels(marked, b)).mean())
    assert np.mean(same) < 0.7 * np.mean(other)  # a follow-up looks like its patient, not like another


def test_the_cohen_reader_reads_it_like_a_download(marked):
    cohen = pytest.importorskip("covidnet.data.sources.cohen")
    data = cohen.read(marked)
    assert len(data.records) == 24 and not data.exclusions
    assert {r.label for r in data.records} == {"normal", "pneumonia", "COVID-19"}
    assert all("phantom_geographic" in r.extra for r in data.records)


# --- anatomy -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_lungs_are_darker_than_mediastinum_and_diaphragm(seed):
    img, t = draw_radiograph(np.random.default_rng(seed), SIZE, "normal")
    right, left = t["lung_right"], t["lung_left"]
    lungs = img[right | left].mean()
    rows = np.nonzero(right.any(axis=1) & left.any(axis=1))[0]
    rows = rows[: len(rows) // 2]  # upper half: above the heart
    r_edge = max(np.nonzero(right[r])[0].max() for r in rows)
    l_edge = min(np.nonzero(left[r])[0].min() for r in rows)
    mediastinum = img[rows.min() : rows.max(), r_edge + 2 : l_edge - 1].mean()
    bottom = np.nonzero((right | left).any(axis=1))[0].max()
    cols = np.nonzero((right | left).any(axis=0))[0]
    below = img[bottom + 3 : bottom + 13, cols.min() : cols.max()].mean()
    assert lungs + 60 < mediastinum and lungs + 60 < below, (lungs, mediastinum, below)
    # the heart hides part of the patient's left lung (image right), so it is the smaller field
    assert left.sum() < right.sum()


# --- disease -----------------------------------------------------------------------------------------


def test_severity_truth_is_zero_for_normal_and_positive_for_covid(marked):
    for r in rows_of(marked):
        g, o = int(r["phantom_geographic"]), int(r["phantom_opacity"])
        assert 0 <= g <= 8 and 0 <= o <= 8
        if r["finding"] == "No Finding":
            assert g == o == 0 and r["phantom_extent_right"] == r["phantom_extent_left"] == "0.000"
        elif "COVID-19" in r["finding"]:
            assert g > 0 and o > 0


@pytest.mark.parametrize("seed", range(4))
def test_severity_truth_is_measured_on_the_drawn_masks(seed):
    _, (_, mild) = pair("COVID-19", seed, 0.2)
    _, (_, severe) = pair("COVID-19", seed, 0.95)
    for t in (mild, severe):
        for side in ("right", "left"):
            lung = t[f"lung_{side}"]
            frac = ((t["opacity_map"] >= synth.INVOLVED) & lung).sum() / lung.sum()
            assert t["extent"][side] == pytest.approx(frac)
            expected = 0 if frac < 0.01 else 1 + (frac >= 0.25) + (frac >= 0.5) + (frac >= 0.75)
            assert t["geographic_per_lung"][side] == expected
        assert t["geographic"] == sum(t["geographic_per_lung"].values())
        assert t["opacity"] == sum(t["opacity_per_lung"].values())
    assert severe["geographic"] >= mild["geographic"] and severe["opacity"] >= mild["opacity"]
    assert sum(severe["extent"].values()) > sum(mild["extent"].values())
    assert (severe["opacity_map"] >= synth.INVOLVED).sum() > (mild["opacity_map"] >= synth.INVOLVED).sum()


def test_more_geographic_extent_means_more_opaque_lung():
    truths = [draw_radiograph(np.random.default_rng(s), SIZE, "COVID-19")[1] for s in range(12)]
    g = np.array([t["geographic"] for t in truths])
    area = np.array([((t["opacity_map"] >= synth.INVOLVED) & (t["lung_right"] | t["lung_left"])).sum() for t in truths])
    assert np.corrcoef(g, area)[0, 1] > 0.8


def test_covid_is_bilateral_peripheral_and_basal():
    gain_lower_outer, gain_upper_inner = [], []
    for seed in range(6):
        (normal, t), (covid, tc) = pair("COVID-19", seed)
        assert tc["extent"]["right"] > 0.05 and tc["extent"]["left"] > 0.05  # bilateral
        diff = covid.astype(float) - normal
        for side in ("right", "left"):
            lung = t[f"lung_{side}"]
            gain_lower_outer.append(diff[zone(lung, True, True, side)].mean())
            gain_upper_inner.append(diff[zone(lung, False, False, side)].mean())
    assert np.mean(gain_lower_outer) > 15  # grey levels brighter than the same lung without disease
    assert np.mean(gain_lower_outer) > 2 * np.mean(gain_upper_inner)


def test_covid_images_are_brighter_in_the_lower_peripheral_zones_than_normal_ones():
    def lower_outer(label, seed):
        img, t = draw_radiograph(np.random.default_rng(seed), SIZE, label)
        return np.mean([img[zone(t[f"lung_{s}"], True, True, s)].mean() for s in ("right", "left")])

    covid = [lower_outer("COVID-19", s) for s in range(10)]
    normal = [lower_outer("normal", s) for s in range(10, 20)]
    assert np.mean(covid) > np.mean(normal) + 10


@pytest.mark.parametrize("seed", range(6))
def test_lobar_pneumonia_is_one_sided_and_dense(seed):
    (normal, t), (sick, ts) = pair("pneumonia", seed)
    assert ts["lobe"] in ("RUL", "RML", "RLL", "LUL", "LLL")
    sick_side = "right" if ts["lobe"][0] == "R" else "left"
    clear_side = "left" if sick_side == "right" else "right"
    assert ts["extent"][sick_side] > 0.1 and ts["extent"][clear_side] == 0
    assert ts["opacity_per_lung"][sick_side] >= 2  # consolidation, not ground glass
    diff = sick.astype(float) - normal
    assert diff[t[f"lung_{sick_side}"]].mean() > 3 * abs(diff[t[f"lung_{clear_side}"]].mean()) + 5


# --- shortcuts ---------------------------------------------------------------------------------------


def marker_seen(img: np.ndarray) -> bool:
    s = img.shape[0]
    corner = img[: s // 6, -(s // 6) :]
    return (corner >= 245).mean() > 0.2


def test_marker_is_planted_only_on_the_shortcut_hospitals_covid_images(marked):
    planted = unplanted_covid = 0
    for r in rows_of(marked):
        expected = r["location"] == "Phantom Hospital A" and "COVID-19" in r["finding"]
        assert marker_seen(pixels(marked, r)) == expected, r["filename"]
        assert r["phantom_shortcut"] == ("marker" if expected else "none")
        assert r["phantom_hospital"] == ("0" if r["location"] == "Phantom Hospital A" else "1")
        planted += expected
        unplanted_covid += (not expected) and "COVID-19" in r["finding"]
    assert planted and unplanted_covid  # both kinds present, or the test proves nothing


def test_offset_shortcut_brightens_every_pixel_by_25_levels():
    plain, _ = draw_radiograph(np.random.default_rng(1), SIZE, "COVID-19")
    shifted, t = draw_radiograph(np.random.default_rng(1), SIZE, "COVID-19", shortcut="offset")
    assert t["shortcut"] == "offset"
    assert np.array_equal(shifted, np.minimum(plain.astype(int) + 25, 255))


# --- refusals and atomicity ----------------------------------------------------------------------------


def test_existing_non_empty_out_dir_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "cohen"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty folder") as e:
        write_phantom_dataset(out, SynthConfig(n=2, size=64), progress=False)
    assert "\n" not in str(e.value)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (write_phantom_dataset(empty, SynthConfig(n=2, size=64), progress=False) / "metadata.csv").is_file()


def test_an_interrupted_run_leaves_nothing_behind(tmp_path, monkeypatch):
    real, calls = synth._render, []

    def failing(task):
        calls.append(task)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(synth, "_render", failing)
    with pytest.raises(KeyboardInterrupt):
        write_phantom_dataset(tmp_path / "cohen", SynthConfig(n=6, size=64), progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "bad",
    [
        dict(n=0),
        dict(size=32),
        dict(seed=-1),
        dict(shortcut="watermark"),
        dict(shortcut_label="flu"),
        dict(hospitals=2, shortcut_hospital=2),
        dict(images_per_patient=(3, 1)),
        dict(class_mix={"SARS": 1.0}),
        dict(class_mix={"normal": 0.0}),
        dict(ap_fraction=1.5),
        dict(hospitals=0),
        dict(contrast=0.0),
        dict(contrast=1.5),
        dict(severity=(0.8, 0.3)),
    ],
)
def test_bad_arguments_are_config_errors(tmp_path, bad):
    with pytest.raises(ConfigError) as e:
        write_phantom_dataset(tmp_path / "out", SynthConfig(**bad), progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_draw_refuses_unknown_label_shortcut_and_tiny_size():
    for kw in (dict(label="flu"), dict(shortcut="stamp"), dict(size=16)):
        with pytest.raises(ConfigError):
            draw_radiograph(np.random.default_rng(0), **{"size": SIZE, "label": "normal", **kw})


# --- contact sheet -------------------------------------------------------------------------------------


def test_contact_sheet_is_a_grid_with_labels(tmp_path):
    images = [draw_radiograph(np.random.default_rng(s), 64, "normal")[0] for s in range(5)]
    path = contact_sheet(images, [f"image {s}" for s in range(5)], tmp_path / "sheet.png", cols=3)
    sheet = Image.open(path)
    assert sheet.width > 3 * 64 and sheet.height > 2 * 64 and sheet.mode == "L"
    with pytest.raises(ConfigError):
        contact_sheet(images, ["one label"], tmp_path / "bad.png")
