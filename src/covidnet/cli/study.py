"""``covidnet study shortcuts``: the baseline and each shortcut mitigation on the same split and seeds."""

from __future__ import annotations

from pathlib import Path

from .flags import add_config_flags, config_class, config_from_args


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser(
        "study",
        help="studies that train and compare several models (shortcuts: which mitigation helps)",
        description="Studies that train several models on one dataset and compare them.",
    )
    ssub = p.add_subparsers(dest="study_command", required=True, metavar="STUDY")
    s = ssub.add_parser(
        "shortcuts",
        help="train the baseline and each shortcut mitigation with the same seeds; compare within-source AUC and audit",
        description="Train the baseline and each mitigation (lung-field input, intensity standardisation, "
        "source-adversarial training, source-balanced sampling, acquisition augmentation) on the same split "
        "with the same seeds; evaluate "
        "each on the test split (accuracy, sensitivity, PPV, within-source pairwise AUC), audit each checkpoint, "
        "and compare every variant with the baseline: seed means with patient-bootstrap intervals, spread over "
        "seeds, paired differences. Writes study.json, table.md and index.html; --resume continues a stopped "
        "study. Research tool, not a diagnosis.",
    )
    s.set_defaults(func=run)
    if flags and (cls := config_class(s, "study", "StudyConfig")):  # None without the [torch] extra
        add_config_flags(s, cls)
    t = ssub.add_parser(
        "transfer",
        help="does pretraining help? ImageNet, chest-X-ray self-supervised and random initialisation compared",
        description="Train efficientnet-lite0 from random, ImageNet, mean-var and self-supervised (SimSiam on the "
        "training films) initialisation, and covidnet-cxr3b from random and self-supervised, each with all and "
        "with a tenth of the training labels, with the same seeds on the same split or folds; evaluate and audit "
        "each, and compare each with random initialisation of the same architecture: accuracy, sensitivity, PPV, "
        "AUROC, AUPRC, within-source AUC, occlusion, convergence. Writes study.json, table.md and index.html; "
        "--resume continues a stopped study. Research tool, not a diagnosis.",
    )
    t.set_defaults(func=run_transfer)
    if flags and (cls := config_class(t, "study", "TransferConfig")):  # None without the [torch] extra
        add_config_flags(t, cls)


def run(args) -> int:
    from ..study import StudyConfig, markdown_table, run_study, summary_rows

    cfg = config_from_args(StudyConfig, args)
    s = run_study(cfg)["summary"]
    print(markdown_table(*summary_rows(s)))
    for f in s["findings"]:
        print(f"- {f}")
    out = Path(cfg.out)
    print(f"study: {out / 'study.json'}, table: {out / 'table.md'}, page: {out / 'index.html'}")
    return 0


def run_transfer(args) -> int:
    from ..study import TransferConfig, markdown_table, run_transfer
    from ..study.transfer import transfer_rows

    cfg = config_from_args(TransferConfig, args)
    s = run_transfer(cfg)["summary"]
    print(markdown_table(*transfer_rows(s)))
    out = Path(cfg.out)
    print(f"study: {out / 'study.json'}, table: {out / 'table.md'}, page: {out / 'index.html'}")
    return 0
