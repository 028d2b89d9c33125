"""The shortcut study's phantom known answer, one training at a time, for settings the study has no variant for
(docs/study.md, the table under "debias did not pass the same known answer").

Builds the test's phantoms once (``tests/test_study.py::marked_hospitals``: hospital A's COVID-19 training
films carry a burnt-in marker, its test films none; hospital B sends normal films and a few unmarked COVID-19
ones), trains ``covidnet train`` with the study's settings (8 epochs, lr 3e-4) plus the options given, and
prints one JSON line per run: the normal-vs-COVID-19 AUC within hospital A's unmarked test films, the COVID-19
sensitivity there, and the adversary's balanced accuracy per epoch where there is one.

    .venv/bin/python scripts/known_answer_runs.py WORK NAME SEEDS [OPTIONS_JSON]
    .venv/bin/python scripts/known_answer_runs.py /tmp/ka both 0,1,2,3 '{"balance_sources": true, "debias": "source"}'
"""

import csv
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_study import marked_hospitals  # noqa: E402

from covidnet.evaluate import predict_store  # noqa: E402
from covidnet.runtime import load  # noqa: E402
from covidnet.tasks import softmax  # noqa: E402
from covidnet.train import TrainConfig, train  # noqa: E402


def main(work: str, name: str, seeds: str, options: str = "{}") -> None:
    root = Path(work)
    if not (root / "ds").exists():
        marked_hospitals(root)
    for seed in (int(s) for s in seeds.split(",")):
        out = root / "runs" / f"{name}-s{seed}"
        train(
            TrainConfig(
                data=str(root / "ds"), out=str(out), epochs=8, lr=3e-4, seed=seed, progress=False, **json.loads(options)
            )
        )
        lm = load(out / "best.pt", "auto", tasks=("classification",), backend="torch")
        pred = predict_store(lm, str(root / "ds"), "test")
        p, y, src = softmax(pred.out), pred.y, np.array(pred.sources)
        covid = lm.classes.index("COVID-19")
        a = src == "hosp-a-clean"
        pair = a & ((y == covid) | (y == lm.classes.index("normal")))
        log = list(csv.DictReader(open(out / "log.csv")))
        print(
            json.dumps(
                {
                    "run": name,
                    "seed": seed,
                    "auc_within_a_unmarked": round(float(roc_auc_score(y[pair] == covid, p[pair, covid])), 3),
                    "covid_sensitivity_a_unmarked": round(float((p[a & (y == covid)].argmax(1) == covid).mean()), 3),
                    "adversary_acc": [round(float(r["train_adversary_acc"]), 2) for r in log]
                    if "train_adversary_acc" in log[0]
                    else None,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
