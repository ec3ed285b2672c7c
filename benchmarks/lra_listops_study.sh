#!/usr/bin/env bash
# The LRA ListOps study (docs/studies.md): softmax and yoso with 5 seeds each, yoso-e with one, run one after the
# other with LRA's recipe (--preset lra-listops) at up to 1000 tokens and a reduced budget (600 steps).
# Departures from the preset, chosen by short softmax trials at 1000 tokens (docs/studies.md):
# lr 2e-3 with 100 warm-up steps (1e-4 barely moves in 600 steps), 4 heads of 16 and the first-token (cls) pooling
# (mean pooling and 2 heads stayed at chance for 300+ steps in those trials).
# Run it again to continue: finished runs are skipped, an interrupted run resumes from its last checkpoint.
#   nohup benchmarks/lra_listops_study.sh > runs/lra-study.log 2>&1 &
# Variants through the environment: OUT (results directory), STEPS (training steps, 600), RUNS (attention:seed
# list), EXTRA (more `yoso train` flags), e.g. the longer budget:
# yoso runs get yoso train's default tau schedule (2 -> --hash-code-len over a quarter of the steps, Gaussian
# hash); the study's earlier fixed-tau yoso rows reproduce with EXTRA="--hash-code-len-warmup-steps 0 ...".
#   OUT=runs/lra-study-1200 STEPS=1200 RUNS="softmax:0 yoso:0 softmax:1 yoso:1 softmax:2 yoso:2" \
#       nohup benchmarks/lra_listops_study.sh > runs/lra-study-1200.log 2>&1 &
set -euo pipefail
out=${OUT:-runs/lra-study}
runs=${RUNS:-softmax:0 yoso:0 softmax:1 yoso:1 softmax:2 yoso:2 yoso-e:0 softmax:3 yoso:3 softmax:4 yoso:4}
read -ra extra <<< "${EXTRA:-}"
recipe=(--preset lra-listops --max-length 1000 --train-examples 16000 --eval-examples 500 --test-examples 2000
        --num-heads 4 --pooling cls --lr 2e-3 --warmup-steps 100 --max-steps "${STEPS:-600}" --eval-every 100
        --save-every 50 "${extra[@]}")
source "$(dirname "$0")/study_runs.sh"
train_runs "$out" "$runs" "${recipe[@]}"
python3 "$(dirname "$0")/study_summary.py" "$out" "test accuracy=test_accuracy±" "first-operator rule=first_operator_baseline" \
    "majority class=majority_baseline" "tokens/s=tokens_per_second" "peak RSS (MB)=peak_memory_mb"
