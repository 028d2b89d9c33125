"""Within-source discrimination: the pairwise AUC of each class pair inside each source, in ``eval`` (JSON,
terminal, report) and as the audit's first test. Known answers on a cohort confounded the way COVIDx is
(hospital A sends mostly COVID-19, hospital B mostly controls): probabilities that follow the source
score well overall and 0.5 within every source; probabilities that follow the class score 1."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from covidnet.audit import WITHIN_FAIL, WITHIN_WARN, AuditConfig, run_audit, within_source_discrimination
from covidnet.cli.common import print_evaluation
from covidnet.files import write_json
from covidnet.metrics.classification import MIN_IMAGES_PER_CLASS, NO_WITHIN_SOURCE, compute_metrics, within_source_auc
from covidnet.report import write_report

CLASSES = ["normal", "pneumonia", "COVID-19"]


def confounded_cohort(seed: int = 0):
    """Labels, patients (two images each) and sources: hosp-a 40 COVID-19 + 10 normal, hosp-b 5 COVID-19 +
    25 normal + 30 pneumonia. The source alone tells COVID-19 apart well."""
    y = np.array([2] * 40 + [0] * 10 + [2] * 6 + [0] * 24 + [1] * 30)
    sources = np.array(["hosp-a"] * 50 + ["hosp-b"] * 60)
    patients = np.array([f"{s}-{i // 2}" for i, s in enumerate(sources)])
    return y, patients, sources


def source_only_probs(sources, noise: float = 0.0, seed: int = 0):
    """What a source detector outputs: the same probabilities for every image of a source (plus noise
    that knows nothing of the class)."""
    base = {"hosp-a": [0.1, 0.1, 0.8], "hosp-b": [0.45, 0.45, 0.1]}
    p = np.array([base[s] for s in sources]) + noise * np.random.default_rng(seed).random((len(sources), 3))
    return p / p.sum(1, keepdims=True)


def separating_probs(y, seed: int = 0):
    """What a model that sees the disease outputs: most of the probability on the true class."""
    rng = np.random.default_rng(seed)
    p = rng.random((len(y), 3)) * 0.2
    p[np.arange(len(y)), y] += 0.8
    return p / p.sum(1, keepdims=True)


def noisy_probs(y, seed: int = 0):
    rng = np.random.default_rng(seed)
    alpha = np.ones((len(y), 3)) + 1.5 * np.eye(3)[y]
    return np.array([rng.dirichlet(a) for a in alpha])


def test_json_layout_of_compute_metrics_holds_every_pair_of_every_two_class_source():
    y, patients, sources = confounded_cohort()
    m = compute_metrics(y, noisy_probs(y), CLASSES, patients, sources, resamples=100)
    ws = json.loads(json.dumps(m["within_source"]))  # plain JSON
    assert set(ws) == {"metric", "min_images_per_class", "pairs", "skipped", "per_source", "note"}
    assert ws["note"] is None and ws["skipped"] == [] and ws["min_images_per_class"] == MIN_IMAGES_PER_CLASS
    assert [(p["source"], p["classes"]) for p in ws["pairs"]] == [
        ("hosp-a", ["normal", "COVID-19"]),
        ("hosp-b", ["normal", "pneumonia"]),
        ("hosp-b", ["normal", "COVID-19"]),
        ("hosp-b", ["pneumonia", "COVID-19"]),
    ]
    first = ws["pairs"][0]
    assert set(first) == {"source", "classes", "auc", "hand_till_auc", "counts"}
    assert set(first["auc"]) == {"value", "ci95"}
    assert first["counts"] == {"normal": {"images": 10, "patients": 5}, "COVID-19": {"images": 40, "patients": 20}}
    assert ws["per_source"]["hosp-a"] == {
        "classes": ["normal", "COVID-19"],
        "pairs": 1,
        "macro_auc": ws["per_source"]["hosp-a"]["macro_auc"],
    }
    b = ws["per_source"]["hosp-b"]
    assert b["pairs"] == 3
    assert b["macro_auc"]["value"] == pytest.approx(np.mean([p["auc"]["value"] for p in ws["pairs"][1:]]))


def test_pairwise_auc_agrees_with_scikit_learn_on_the_restricted_subset():
    y, patients, sources = confounded_cohort()
    probs = noisy_probs(y, seed=3)
    ws = within_source_auc(y, probs, CLASSES, patients, sources, resamples=0)
    for p in ws["pairs"]:
        a, b = (CLASSES.index(c) for c in p["classes"])
        keep = (sources == p["source"]) & np.isin(y, [a, b])
        score = probs[keep, a] / (probs[keep, a] + probs[keep, b])
        assert p["auc"]["value"] == pytest.approx(roc_auc_score(y[keep] == a, score), abs=1e-12)
        # symmetric: class b as the positive, scored by P(b) / (P(a) + P(b)), gives the same AUC
        assert p["auc"]["value"] == pytest.approx(roc_auc_score(y[keep] == b, 1 - score), abs=1e-12)
        hand_till = (roc_auc_score(y[keep] == a, probs[keep, a]) + roc_auc_score(y[keep] == b, probs[keep, b])) / 2
        assert p["hand_till_auc"] == pytest.approx(hand_till, abs=1e-12)
    # Hand & Till's figure averaged over hosp-b's three pairs is scikit-learn's one-vs-one macro AUC
    inb = sources == "hosp-b"
    ovo = roc_auc_score(y[inb], probs[inb], multi_class="ovo")
    assert np.mean([p["hand_till_auc"] for p in ws["pairs"] if p["source"] == "hosp-b"]) == pytest.approx(ovo)


def test_the_intervals_bracket_the_values():
    y, patients, sources = confounded_cohort()
    ws = within_source_auc(y, noisy_probs(y, seed=1), CLASSES, patients, sources, resamples=200, seed=4)
    intervals = [p["auc"] for p in ws["pairs"]] + [s["macro_auc"] for s in ws["per_source"].values()]
    for m in intervals:
        lo, hi = m["ci95"]
        assert lo <= m["value"] <= hi and hi - lo > 0


def test_a_pair_with_too_few_images_of_a_class_is_skipped_with_its_counts():
    y, patients, sources = confounded_cohort()
    y[40:49] = 2  # hosp-a keeps one normal image
    ws = within_source_auc(y, noisy_probs(y), CLASSES, patients, sources, resamples=20)
    assert [p["source"] for p in ws["pairs"]] == ["hosp-b"] * 3 and "hosp-a" not in ws["per_source"]
    assert ws["skipped"] == [
        {
            "source": "hosp-a",
            "classes": ["normal", "COVID-19"],
            "counts": {"normal": {"images": 1, "patients": 1}, "COVID-19": {"images": 49, "patients": 25}},
            "reason": f"fewer than {MIN_IMAGES_PER_CLASS} images of normal",
        }
    ]


def test_without_a_two_class_source_there_is_an_empty_list_and_a_note():
    y = np.array([2] * 20 + [0] * 20)
    sources = np.array(["hosp-a"] * 20 + ["hosp-b"] * 20)
    probs = source_only_probs(sources)
    m = compute_metrics(y, probs, CLASSES, None, sources, resamples=20)
    assert m["macro"]["auc"]["value"] == 1.0  # perfect overall, and meaningless
    ws = m["within_source"]
    assert ws["pairs"] == [] and ws["skipped"] == [] and ws["note"] == NO_WITHIN_SOURCE
    assert "no confound-resistant figure exists" in NO_WITHIN_SOURCE
    y[:1] = 0  # hosp-a holds two classes, but one image of normal
    ws = within_source_auc(y, probs, CLASSES, None, sources, resamples=20)
    assert ws["pairs"] == [] and len(ws["skipped"]) == 1 and "no confound-resistant figure exists" in ws["note"]
    assert "no source" in within_source_auc(y, probs, CLASSES, None, None)["note"]


def test_known_answer_source_only_probabilities_score_high_overall_and_chance_within_every_source():
    y, patients, sources = confounded_cohort()
    m = compute_metrics(y, source_only_probs(sources), CLASSES, patients, sources, resamples=100)
    assert m["per_class"]["COVID-19"]["auc"]["value"] > 0.85  # the source gives COVID-19 away
    pairs = m["within_source"]["pairs"]
    assert len(pairs) == 4 and all(p["auc"]["value"] == 0.5 for p in pairs)  # within a source: nothing
    # with noise that ignores the class, each pair's AUC scatters around chance: 0.5 on average over draws
    draws = [
        [p["auc"]["value"] for p in within_source_auc(y, noisy, CLASSES, patients, sources, resamples=0)["pairs"]]
        for noisy in (source_only_probs(sources, 0.3, seed) for seed in range(60))
    ]
    assert np.abs(np.mean(draws, axis=0) - 0.5).max() < 0.05


def test_known_answer_probabilities_that_follow_the_class_score_one_within_each_hospital():
    y, patients, sources = confounded_cohort()
    ws = within_source_auc(y, separating_probs(y), CLASSES, patients, sources, resamples=100)
    assert all(p["auc"]["value"] == 1.0 for p in ws["pairs"])
    assert all(s["macro_auc"]["value"] == 1.0 for s in ws["per_source"].values())


def test_audit_test_verdicts_follow_the_worst_pair_and_state_their_thresholds():
    y, patients, sources = confounded_cohort()
    source_detector = within_source_discrimination(y, source_only_probs(sources), CLASSES, patients, sources)
    assert source_detector["test"] == "within-source discrimination" and source_detector["verdict"] == "fail"
    assert source_detector["thresholds"] == {"upper_ci_below_fail": WITHIN_FAIL, "value_below_warning": WITHIN_WARN}
    assert f"{WITHIN_FAIL:.2f}" in source_detector["reading"] and f"{WITHIN_WARN:.2f}" in source_detector["reading"]
    assert source_detector["worst"]["auc"]["ci95"][1] < WITHIN_FAIL
    good = within_source_discrimination(y, separating_probs(y), CLASSES, patients, sources, resamples=100)
    assert good["verdict"] == "ok" and "1.000" in good["reading"]
    # one pair weak: within hosp-b, pneumonia vs COVID-19 scored by s = P(COVID-19) / (P(pneumonia) + P(COVID-19)),
    # pneumonia's s evenly over [0, 1], COVID-19's about 0.63 on average: AUC near 0.63, between the thresholds
    probs = separating_probs(y)
    pneumonia, covid = (np.flatnonzero((sources == "hosp-b") & (y == c)) for c in (1, 2))
    for rows, s in ((pneumonia, np.linspace(0, 1, len(pneumonia))), (covid, [0.3, 0.5, 0.6, 0.7, 0.8, 0.9])):
        probs[rows] = np.stack([np.zeros(len(rows)), 1 - np.asarray(s), s], 1)
    w = within_source_discrimination(y, probs, CLASSES, patients, sources, resamples=200)
    assert w["worst"]["classes"] == ["pneumonia", "COVID-19"] and w["worst"]["source"] == "hosp-b"
    assert WITHIN_FAIL < w["worst"]["auc"]["value"] < WITHIN_WARN and w["verdict"] == "warning"
    assert "Within hosp-b, pneumonia vs COVID-19 (30 and 6 images)" in w["reading"]
    one_class = within_source_discrimination(
        np.array([2] * 6 + [0] * 6), np.full((12, 3), 1 / 3), CLASSES, None, np.array(["a"] * 6 + ["b"] * 6)
    )
    assert one_class["verdict"] == "skipped" and one_class["reading"] == NO_WITHIN_SOURCE


def test_eval_terminal_prints_the_pairs_their_counts_the_skipped_and_the_note(capsys):
    y, patients, sources = confounded_cohort()
    y[40:49] = 2
    m = compute_metrics(y, noisy_probs(y), CLASSES, patients, sources, resamples=20)
    m.update(task="classification", task_meta={"task": "classification", "classes": CLASSES}, temperature=None)
    print_evaluation(m)
    out = capsys.readouterr().out
    assert "within source" in out and "the figure the source cannot give away" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("hosp-b") and "pneumonia vs COVID-19" in ln)
    p = m["within_source"]["pairs"][2]
    assert p["classes"] == ["pneumonia", "COVID-19"] and line.split()[4] == f"{p['auc']['value']:.3f}"
    assert "30 / 6" in line and "15 / 3" in line  # images and patients of each class
    assert "hosp-b  macro over 3 pairs" in out
    assert "skipped: hosp-a normal vs COVID-19 (fewer than 2 images of normal; images: normal 1, COVID-19 49)" in out
    m["within_source"] = within_source_auc(y, noisy_probs(y), CLASSES, patients, np.array(["x"] * 49 + ["y"] * 61))
    m["within_source"]["pairs"], m["within_source"]["note"] = [], NO_WITHIN_SOURCE
    print_evaluation(m)
    assert NO_WITHIN_SOURCE in capsys.readouterr().out


def test_report_shows_the_within_source_section_or_its_note(tmp_path):
    y, patients, sources = confounded_cohort()
    probs = noisy_probs(y)
    m = compute_metrics(y, probs, CLASSES, patients, sources, resamples=20)
    write_json(tmp_path / "m.json", m)  # strict JSON, as eval writes it
    page = write_report(tmp_path / "r", m, y, probs, CLASSES).read_text()
    section = page[page.index('id="within-source"') : page.index("</section>", page.index('id="within-source"'))]
    assert "the source cannot give the class away" in section and "P(a) / (P(a) + P(b))" in section
    assert section.count("<tr>") == 1 + 4 + 1  # header, four pairs, hosp-b's macro
    assert "normal vs COVID-19" in section and "10 / 40" in section and "5 / 20" in section
    one = np.array(["hosp-a"] * 50 + ["hosp-b"] * 60)
    y2 = np.where(one == "hosp-a", 2, 0)
    m2 = compute_metrics(y2, probs, CLASSES, patients, one, resamples=5)
    page = write_report(tmp_path / "r2", m2, y2, probs, CLASSES).read_text()
    assert 'id="within-source-note"' in page and NO_WITHIN_SOURCE in page


def test_audit_lists_within_source_discrimination_first(trained, tmp_path):
    _, ds, ckpt = trained
    a = run_audit(AuditConfig(str(ckpt), str(ds), report=str(tmp_path / "rep")))
    assert a["summary"][0]["test"] == "within-source discrimination" and list(a["tests"])[0] == "within_source"
    ws = a["tests"]["within_source"]
    assert ws["verdict"] in ("ok", "warning", "fail") and ws["pairs"]  # one source, phantoms of three classes
    assert all(p["source"] == "cohen" and 0 <= p["auc"]["value"] <= 1 for p in ws["pairs"])
    page = (tmp_path / "rep" / "index.html").read_text()
    assert page.index("within-source discrimination") < page.index("source predictability")
