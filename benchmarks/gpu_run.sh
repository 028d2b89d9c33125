#!/usr/bin/env bash
# The GPU checks of issue 4, as one prepared run on the lent GPU machine (device tool), from the repo root:
#   .devdata/  a copy of ../shared/data/sources (carried; ../shared does not travel)
#   .whl/      wheels the GPU image lacks (pydicom, imagehash, pywavelets)
# Writes to $OUT: train_throughput.json, bench.log, train.log, real_log.csv, real_eval.json, real_eval.txt
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__)"
stamp "build (benchmark set: every image, children included)"
covidnet data build --quiet --paediatric include --source cohen=$S/cohen --source figure1=$S/figure1 --source nih=$S/nih \
  --source kermany=$S/kermany --out /tmp/bench_ds | tail -4
stamp "build (the real-data set, default filters)"
covidnet data build --quiet --source cohen=$S/cohen --source figure1=$S/figure1 --source nih=$S/nih \
  --source kermany=$S/kermany --out /tmp/real_ds | tee "$OUT/real_build.txt" | tail -6
stamp "benchmark"
timeout 330 python3 benchmarks/train_throughput.py --data /tmp/bench_ds --out "$OUT/train_throughput.json" 2>&1 \
  | grep -v Warning | tee "$OUT/bench.log" | grep -E '^\(|c_over|mfu'
stamp "train covidnet-cxr3b on real data, the published recipe"
timeout 200 covidnet train --data /tmp/real_ds --out /tmp/real_run --compile off 2>&1 | grep -v '%|' | tee "$OUT/train.log" | tail -12
cp /tmp/real_run/log.csv "$OUT/real_log.csv"; cp /tmp/real_run/run.json "$OUT/real_run.json"
covidnet eval --checkpoint /tmp/real_run/best.pt --data /tmp/real_ds --split test --json > "$OUT/real_eval.json"
covidnet eval --checkpoint /tmp/real_run/best.pt --data /tmp/real_ds --split test | tee "$OUT/real_eval.txt"
stamp "done"
