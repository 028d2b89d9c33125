"""Within-site discrimination (``covidnet.metrics.within``): the pooled AUC of the class pairs taken within one site,
within (site, view) strata, and of the view alone; its site-stratified patient bootstrap; where it shows (eval's
terminal, JSON and report; the audit's first test). Known answers: a hand-counted example, scikit-learn where
there is one site, and models that read the hospital or the positioning instead of the disease."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from covidnet.audit import within_source_discrimination
from covidnet.cli.common import print_evaluation
from covidnet.files import write_json
from covidnet.metrics.bootstrap import resample_patients
from covidnet.metrics.classification import compute_metrics, within_source_auc
from covidnet.metrics.within import stratified_auc, stratum_pair_counts, within_site_auc
from covidnet.report import write_report

CLASSES = ["normal", "pneumonia", "COVID-19"]


def probs_of(s) -> np.ndarray:
    """Probabilities whose pairwise score P(normal) / (P(normal) + P(COVID-19)) is ``s``, P(pneumonia) 0.2."""
    s = np.asarray(s, float)
    return np.stack([0.8 * s, np.full(len(s), 0.2), 0.8 * (1 - s)], 1)


# The hand-counted example: normal (0) and COVID-19 (2) films at two sites of one source, one film per patient.
#   site A: normal s = 0.9 (PA), 0.4 (AP);   COVID-19 s = 0.6 (AP), 0.2 (AP supine)
#   site B: normal s = 0.5 (AP);             COVID-19 s = 0.5 (PA), 0.7 (AP), 0.1 (view unknown)
#   site unknown: normal s = 0.99 (PA)
HAND = [  # (class, s, site, view)
    (0, 0.9, "A", "PA"),
    (0, 0.4, "A", "AP"),
    (2, 0.6, "A", "AP"),
    (2, 0.2, "A", "AP supine"),
    (0, 0.5, "B", "AP"),
    (2, 0.5, "B", "PA"),
    (2, 0.7, "B", "AP"),
    (2, 0.1, "B", ""),
    (0, 0.99, "", "PA"),
]


def hand(resamples: int = 0) -> dict:
    y, s, sites, views = (np.array(c) for c in zip(*HAND))
    patients = [f"cohen:{k}" for k in range(len(y))]
    return within_site_auc(
        y.astype(int), probs_of(s.astype(float)), CLASSES, patients, ["cohen"] * len(y), sites, views, resamples
    )


def test_hand_counted_pooled_within_site_auc():
    # normal is class a: a pair is ordered correctly when the normal film has the higher s.
    # A: (0.9, 0.6) yes, (0.9, 0.2) yes, (0.4, 0.6) no, (0.4, 0.2) yes: 3 of 4.
    # B: (0.5, 0.5) a tie, a half; (0.5, 0.7) no; (0.5, 0.1) yes: 1.5 of 3.
    # pooled: (3 + 1.5) / (4 + 3) = 9 / 14; the unknown-site film (0.99) takes no part
    ws = hand()
    site = ws["pooled"]["site"]
    assert site["all"]["value"] == pytest.approx(9 / 14)
    assert site["covid"]["value"] == pytest.approx(9 / 14)  # the only class pair with pairs holds COVID-19
    assert (site["all"]["image_pairs"], site["all"]["strata"]) == (7, 2)
    by_pair = {tuple(p["classes"]): p for p in site["by_pair"]}
    assert by_pair["normal", "COVID-19"]["value"] == pytest.approx(9 / 14)
    assert by_pair["normal", "pneumonia"]["image_pairs"] == 0 and np.isnan(by_pair["normal", "pneumonia"]["value"])
    assert ws["unknown_site"] == {"images": 1, "patients": 1}
    # pooling all films regardless of site would give 9.5 / 15: the cross-site pairs are what is left out
    assert site["all"]["value"] != pytest.approx(9.5 / 15)


def test_hand_counted_site_view_and_view_alone_figures():
    ws = hand()
    # (site, view) strata with both classes: A-AP (0.4 vs 0.6: no) and B-AP (0.5 vs 0.7: no): 0 of 2
    sv = ws["pooled"]["site_view"]["all"]
    assert (sv["value"], sv["image_pairs"], sv["strata"]) == (0.0, 2, 2)
    assert ws["unknown_view"] == {"images": 1}  # B's COVID-19 film of unknown view
    # the view alone, "is AP" as the score for COVID-19 (the later class), films of known view:
    # A: COVID-19 AP, AP supine (1, 1) vs normal PA, AP (0, 1): 1 + 0.5 + 1 + 0.5 = 3 of 4
    # B: COVID-19 PA, AP (0, 1) vs normal AP (1): 0 + 0.5 = 0.5 of 2 (there AP goes with normal)
    view = ws["pooled"]["view_alone"]["all"]
    assert view["value"] == pytest.approx(3.5 / 6) and view["image_pairs"] == 6
    # each site's better orientation: A 3 of 4, B 1.5 of 2
    assert ws["pooled"]["view_alone_best"]["all"]["value"] == pytest.approx(4.5 / 6)


def test_one_site_agrees_with_scikit_learn_roc_auc_score_ties_included():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    p = np.round(rng.dirichlet([1, 1, 1], 300) + 0.5 * np.eye(3)[y], 1)  # rounded: many ties
    p /= p.sum(1, keepdims=True)
    ws = within_site_auc(y, p, CLASSES, None, None, ["one hospital"] * 300, None, resamples=0)
    for pair in ws["pooled"]["site"]["by_pair"]:
        a, b = (CLASSES.index(c) for c in pair["classes"])
        m = (y == a) | (y == b)
        expected = roc_auc_score(y[m] == a, p[m, a] / (p[m, a] + p[m, b]))
        assert pair["value"] == pytest.approx(expected, abs=1e-12)
    binary = within_site_auc(
        y > 0, np.stack([p[:, 0], 1 - p[:, 0]], 1), ["negative", "positive"], None, None, ["h"] * 300
    )
    assert binary["pooled"]["site"]["all"]["value"] == pytest.approx(roc_auc_score(y == 0, p[:, 0]), abs=1e-12)
    assert binary["pooled"]["site"]["covid"]["value"] == binary["pooled"]["site"]["all"]["value"]


def test_stratified_auc_is_the_pair_weighted_mean_of_each_strata_auc():
    rng = np.random.default_rng(2)
    strata = rng.choice(["a", "b", "c", "d"], 400)
    positive = rng.random(400) < np.where(strata == "a", 0.9, 0.3)
    score = np.round(rng.random(400) + 0.3 * positive, 2)
    keys, u, pairs = stratum_pair_counts(positive, score, strata)
    assert list(keys) == ["a", "b", "c", "d"]
    for k, key in enumerate(keys):
        m = strata == key
        assert u[k] / pairs[k] == pytest.approx(roc_auc_score(positive[m], score[m]))
        assert pairs[k] == positive[m].sum() * (~positive[m]).sum()
    weighted = sum(roc_auc_score(positive[strata == k], score[strata == k]) * n for k, n in zip(keys, pairs))
    assert stratified_auc(positive, score, strata) == pytest.approx(weighted / pairs.sum())


def test_the_bootstrap_resamples_each_sites_patients_among_themselves():
    # one film per patient, 3 patients at A and 5 at B; patient x has a film at each site
    patients = np.array(["a1", "a2", "x", "b1", "b2", "b3", "b4", "x"])
    sites = np.array(["A", "A", "A", "B", "B", "B", "B", "B"])
    counts = []
    for idx in resample_patients(patients, 300, seed=0, strata=sites):
        drawn = sites[idx]
        assert (drawn == "A").sum() == 3 and (drawn == "B").sum() == 5  # every site keeps its own patients' number
        assert set(patients[idx][drawn == "A"]) <= {"a1", "a2", "x"} and set(patients[idx][drawn == "B"]) <= {
            "b1", "b2", "b3", "b4", "x"
        }  # fmt: skip
        counts.append((drawn == "A").sum())
    assert set(counts) == {3}
    unstratified = [(sites[idx] == "A").sum() for idx in resample_patients(patients, 300, seed=0)]
    assert len(set(unstratified)) > 1  # the plain patient bootstrap lets a site's share wander


def test_a_hospital_detector_scores_high_within_source_and_one_half_within_every_site():
    # one source of two hospitals: A sends 40 COVID-19 films and 4 normal, B 4 COVID-19 and 40 normal; the model
    # outputs the same probabilities for every film of a hospital
    y = np.array([2] * 40 + [0] * 4 + [2] * 4 + [0] * 40)
    sites = np.array(["A"] * 44 + ["B"] * 44)
    patients = [f"p{k // 2}" for k in range(len(y))]
    p = np.where((sites == "A")[:, None], [0.1, 0.1, 0.8], [0.8, 0.1, 0.1])
    source = within_source_auc(y, p, CLASSES, patients, ["cohen"] * len(y), resamples=0)
    assert source["pairs"][0]["auc"]["value"] > 0.9  # the source figure is fooled by the hospitals
    ws = within_site_auc(y, p, CLASSES, patients, ["cohen"] * len(y), sites, None, resamples=200)
    f = ws["pooled"]["site"]["covid"]
    assert f["value"] == 0.5 and f["ci95"] == [0.5, 0.5] and f["image_pairs"] == 40 * 4 * 2
    assert [(q["site"], q["auc"]["value"]) for q in ws["pairs"]] == [("A", 0.5), ("B", 0.5)]


def test_a_positioning_reader_loses_its_figure_within_site_and_view():
    # within each site COVID-19 films are mostly AP and normal ones mostly PA; the model reads AP as COVID-19
    rng = np.random.default_rng(3)
    n = 400
    y = rng.choice([0, 2], n)
    ap = rng.random(n) < np.where(y == 2, 0.8, 0.2)
    views = np.where(ap, "AP", "PA")
    sites = rng.choice(["A", "B"], n)
    p = probs_of(np.where(ap, 0.3, 0.7) + 0.01 * rng.random(n))  # s: high for PA, whatever the class
    ws = within_site_auc(y, p, CLASSES, None, None, sites, views, resamples=100)
    pooled = ws["pooled"]
    assert pooled["site"]["all"]["value"] > 0.75  # looks good within site ...
    assert abs(pooled["site_view"]["all"]["value"] - 0.5) < 0.1  # ... and is nothing within site and view
    assert pooled["view_alone"]["all"]["value"] > 0.75  # the view alone explains it
    assert pooled["view_alone"]["all"]["ci95"][0] > 0.5


def test_unknown_sites_are_left_out_whatever_their_scores_and_counted():
    before = hand()
    y, s, sites, views = (list(c) for c in zip(*HAND))
    y += [0, 2, 2]
    s += [0.0, 1.0, 1.0]  # would be wrongly ordered against everything
    sites += ["", "", ""]
    views += ["PA", "AP", ""]
    patients = [f"p{k}" for k in range(len(y))]
    ws = within_site_auc(np.array(y), probs_of(s), CLASSES, patients, None, sites, views, resamples=0)
    assert ws["pooled"]["site"]["all"]["value"] == before["pooled"]["site"]["all"]["value"]
    assert ws["unknown_site"] == {"images": 4, "patients": 4}


def test_no_site_or_no_site_with_two_classes_is_a_note():
    y = np.array([0, 0, 2, 2])
    p = probs_of([0.2, 0.4, 0.6, 0.8])
    assert "no image has a known site" in within_site_auc(y, p, CLASSES, None, None, [""] * 4)["note"]
    assert "carry no site" in within_site_auc(y, p, CLASSES, None, None, None)["note"]
    one_class_each = within_site_auc(y, p, CLASSES, None, None, ["A", "A", "B", "B"], resamples=5)
    assert (
        "no site holds two classes" in one_class_each["note"]
        and one_class_each["pooled"]["site"]["all"]["image_pairs"] == 0
    )


def cohort():
    """Two sources; cohen's films from two hospitals and from nowhere said; nih from one hospital."""
    rng = np.random.default_rng(4)
    y = np.array([2] * 30 + [0] * 6 + [2] * 6 + [0] * 6 + [2] * 5 + [0] * 30 + [1] * 30)
    sources = np.array(["cohen"] * 53 + ["nih"] * 60)
    sites = np.array(["Hannover"] * 36 + ["Tokyo"] * 12 + [""] * 5 + ["NIH Clinical Center"] * 60)
    views = rng.choice(["PA", "AP", "AP supine", ""], len(y))
    patients = np.array([f"{s}:{k // 2}" for k, s in enumerate(sources)])
    alpha = np.ones((len(y), 3)) + 1.5 * np.eye(3)[y]
    probs = np.array([rng.dirichlet(a) for a in alpha])
    return y, probs, patients, sources, sites, views


def test_eval_json_terminal_and_report_show_the_within_site_figures(tmp_path, capsys):
    y, probs, patients, sources, sites, views = cohort()
    m = compute_metrics(y, probs, CLASSES, patients, sources, resamples=50)
    m["within_site"] = within_site_auc(y, probs, CLASSES, patients, sources, sites, views, resamples=50)
    ws = json.loads(json.dumps(m["within_site"]))
    assert {(p["source"], p["site"], tuple(p["classes"])) for p in ws["pairs"]} == {
        ("cohen", "Hannover", ("normal", "COVID-19")),
        ("cohen", "Tokyo", ("normal", "COVID-19")),
        ("nih", "NIH Clinical Center", ("normal", "pneumonia")),
    }
    assert ws["unknown_site"] == {"images": 5, "patients": 3} and ws["positive_class"] == "COVID-19"
    assert ws["pooled"]["site"]["covid"]["image_pairs"] == 30 * 6 + 6 * 6
    assert ws["pooled"]["site"]["all"]["image_pairs"] == 30 * 6 + 6 * 6 + 30 * 30
    m.update(task="classification", task_meta={"task": "classification", "classes": CLASSES}, temperature=None)
    print_evaluation(m)
    out = capsys.readouterr().out
    assert "within site" in out and "5 images of unknown site left out" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("within site  "))
    assert f"{ws['pooled']['site']['all']['value']:.3f}" in line and "1116 / 216" in line
    assert any(ln.startswith("cohen") and "Tokyo" in ln and "6 / 6" in ln for ln in out.splitlines())
    write_json(tmp_path / "m.json", m)
    page = write_report(tmp_path / "r", m, y, probs, CLASSES).read_text()
    section = page[page.index('id="within-site"') : page.index("</section>", page.index('id="within-site"'))]
    assert "within site and view" in section and "1116 / 216" in section and "Tokyo" in section
    assert page.index('id="within-source"') < page.index('id="within-site"')


def test_the_audits_first_test_carries_the_within_site_figures_and_judges_the_pooled_ones():
    # within source, cohen's pair looks fine because its hospitals differ; within its sites the model is at chance
    y = np.array([2] * 40 + [0] * 4 + [2] * 4 + [0] * 40)
    sites = np.array(["A"] * 44 + ["B"] * 44)
    patients = np.array([f"p{k // 2}" for k in range(len(y))])
    p = np.where((sites == "A")[:, None], [0.1, 0.1, 0.8], [0.8, 0.1, 0.1])
    sources = np.array(["cohen"] * len(y))
    blind = within_source_discrimination(y, p, CLASSES, patients, sources, resamples=100)
    assert blind["verdict"] == "ok" and blind["within_site"]["note"]  # no sites given: the source figure alone
    seen = within_source_discrimination(y, p, CLASSES, patients, sources, resamples=100, sites=sites)
    assert seen["verdict"] == "fail" and seen["worst"]["pooled"] == "within site"
    assert "Pooled within sites" in seen["reading"] and "0.500 (0.500–0.500)" in seen["reading"]
    assert seen["within_site"]["pooled"]["site"]["all"]["image_pairs"] == 320
