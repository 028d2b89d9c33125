"""Metrics against scikit-learn on the same predictions; the bootstrap resamples patients."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

from covidnet.metrics.calibration import choose_operating_point, expected_calibration_error, fit_temperature
from covidnet.metrics.classification import compute_metrics, point_metrics

CLASSES = ("normal", "pneumonia", "COVID-19")


def fake_predictions(n=90, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    alpha = np.ones((n, 3))
    alpha[np.arange(n), y] += 3
    probs = np.array([rng.dirichlet(a) for a in alpha])
    patients = [f"p{i // 3}" for i in range(n)]  # three images per patient
    return y, probs, patients


def test_point_metrics_agree_with_scikit_learn():
    y, probs, _ = fake_predictions()
    m = point_metrics(y, probs, CLASSES)
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    for c, name in enumerate(CLASSES):
        pc = m["per_class"][name]
        assert pc["sensitivity"] == pytest.approx(recall_score(y == c, pred == c))
        assert pc["ppv"] == pytest.approx(precision_score(y == c, pred == c))
        assert pc["f1"] == pytest.approx(f1_score(y == c, pred == c))
        assert pc["specificity"] == pytest.approx(recall_score(y != c, pred != c))
        # NPV is the precision of "not this class": of the images called another class, the share that are
        assert pc["npv"] == pytest.approx(precision_score(y != c, pred != c))
        tn, fp, fn, tp = confusion_matrix(y == c, pred == c).ravel()
        assert pc["npv"] == pytest.approx(tn / (tn + fn))
        assert pc["auc"] == pytest.approx(roc_auc_score(y == c, probs[:, c]))
    assert m["macro"]["f1"] == pytest.approx(f1_score(y, pred, average="macro"))


def test_npv_known_answer_differs_from_specificity():
    # COVID-19 (class 2): 4 true, 2 found; 6 others, 1 of them called COVID-19. Called "not COVID-19": 7 images,
    # 5 truly not -> NPV 5/7; specificity 5/6 (the margin the reference's users mistake for NPV)
    y = np.array([2, 2, 2, 2, 0, 0, 0, 1, 1, 1])
    pred = np.array([2, 2, 0, 1, 0, 0, 2, 1, 1, 1])
    probs = np.eye(3)[pred] * 0.8 + 0.2 / 3
    pc = point_metrics(y, probs, CLASSES)["per_class"]["COVID-19"]
    assert pc["npv"] == pytest.approx(5 / 7) and pc["specificity"] == pytest.approx(5 / 6)


def test_json_layout_and_cis_bracket_the_values():
    y, probs, patients = fake_predictions()
    m = compute_metrics(y, probs, CLASSES, patients, sources=["a"] * 45 + ["b"] * 45, resamples=200)
    assert m["n"] == 90 and m["n_patients"] == 30 and m["bootstrap"]["unit"] == "patient"
    lo, hi = m["accuracy"]["ci95"]
    assert lo <= m["accuracy"]["value"] <= hi and hi - lo > 0
    for c in CLASSES:
        assert set(m["per_class"][c]) == {"sensitivity", "ppv", "npv", "specificity", "f1", "auc"}
        assert all(set(v) == {"value", "ci95"} for v in m["per_class"][c].values())
    assert m["confusion_matrix"]["labels"] == list(CLASSES)
    assert set(m["per_source"]) == {"a", "b"} and m["per_source"]["a"]["n"] == 45
    assert 0 <= m["ece"] <= 1


def test_bootstrap_over_patients_is_wider_than_over_images_when_patients_repeat():
    # each patient's images share one outcome: resampling images would pretend they are independent
    rng = np.random.default_rng(1)
    per_patient_correct = rng.random(20) < 0.7
    y = np.zeros(200, int)
    probs = np.tile([[0.1, 0.1, 0.8]], (200, 1))
    correct = np.repeat(per_patient_correct, 10)
    probs[correct] = [0.8, 0.1, 0.1]
    patients = np.repeat([f"p{i}" for i in range(20)], 10)
    by_patient = compute_metrics(y, probs, CLASSES, patients, resamples=500)["accuracy"]["ci95"]
    by_image = compute_metrics(y, probs, CLASSES, None, resamples=500)["accuracy"]["ci95"]
    assert (by_patient[1] - by_patient[0]) > 2 * (by_image[1] - by_image[0])


def test_absent_class_gives_undefined_not_zero():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    m = point_metrics(y, probs, CLASSES)
    assert np.isnan(m["per_class"]["COVID-19"]["sensitivity"]) and np.isnan(m["per_class"]["COVID-19"]["auc"])
    assert m["per_class"]["COVID-19"]["specificity"] == 1.0


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident():
    y = np.array([0] * 8 + [1] * 2)
    calibrated = np.tile([[0.8, 0.2, 0.0]], (10, 1))  # 80 % confident, 80 % right
    assert expected_calibration_error(y, calibrated) == pytest.approx(0.0, abs=1e-9)
    over = np.tile([[0.99, 0.01, 0.0]], (10, 1))
    assert expected_calibration_error(y, over) == pytest.approx(0.19, abs=1e-6)


def test_temperature_scaling_cools_overconfident_logits():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    logits = torch.tensor(rng.normal(0, 1, (300, 3)), dtype=torch.float32)
    logits[torch.arange(300), torch.as_tensor(y)] += 1.0
    t = fit_temperature(logits * 5, y)  # five times too confident
    assert 3.5 < t < 7


def test_operating_point_meets_the_sensitivity_on_validation():
    y, probs, _ = fake_predictions(300)
    op = choose_operating_point(y, probs, CLASSES, "sensitivity=0.95")
    pos = y == 2
    assert (probs[pos, 2] >= op["threshold"]).mean() >= 0.95 and op["class"] == "COVID-19"
    op2 = choose_operating_point(y, probs, CLASSES, "specificity=0.9")
    assert (probs[~pos, 2] < op2["threshold"]).mean() >= 0.9


def test_average_precision_is_scikit_learns_with_ties():
    from sklearn.metrics import average_precision_score

    from covidnet.metrics.classification import average_precision

    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 60))
        y, score = rng.random(n) < 0.3, np.round(rng.random(n), 1)  # rounded: many ties
        if y.any():
            assert average_precision(y, score) == pytest.approx(average_precision_score(y, score), abs=1e-12)
    assert np.isnan(average_precision(np.zeros(5, bool), np.arange(5.0)))
