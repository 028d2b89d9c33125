#!/usr/bin/env bash
# Real-data check of issues 4-6 on the lent GPU machine: the published recipe on the ../shared build,
# its test-split evaluation with bootstrap CIs, and the shortcut audit of the same checkpoint.
# Carried: .devdata/ (a copy of ../shared/data/sources) and .whl/ (pydicom, imagehash, pywavelets).
source "$(dirname "$0")/gpu_env.sh"
stamp build
covidnet data build --quiet --source cohen=$S/cohen --source figure1=$S/figure1 --source nih=$S/nih \
  --source kermany=$S/kermany --out /tmp/real_ds > "$OUT/real_build.txt"
stamp train
covidnet train --data /tmp/real_ds --out /tmp/real_run --compile off --no-progress 2> "$OUT/train.log" | tail -2
cp /tmp/real_run/log.csv "$OUT/real_log.csv"
stamp eval
covidnet eval --checkpoint /tmp/real_run/best.pt --data /tmp/real_ds --split test --resamples 300 --quiet \
  --json "$OUT/real_eval.json" | tee "$OUT/real_eval.txt"
stamp audit
covidnet audit --checkpoint /tmp/real_run/best.pt --data /tmp/real_ds --json "$OUT/real_audit.json" | tee "$OUT/real_audit.txt"
stamp done
