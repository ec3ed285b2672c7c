#!/usr/bin/env bash
# The MQAR study (docs/studies.md): softmax, yoso and yoso-e on multi-query associative recall, run
# one after the other. Run it again to continue: finished runs are skipped, an interrupted run resumes.
#   nohup benchmarks/mqar_study.sh > runs/mqar-study.log 2>&1 &
# Variants through the environment: OUT (results directory), LENGTH (tokens, 128), PAIRS (8), VOCAB (256),
# STEPS (1200), RUNS (attention:seed list), EXTRA (more `yoso train` flags, e.g. "--hash-code-len 8"), INIT (a
# study directory whose runs these continue, e.g. at a longer LENGTH: positions are repeated, as yoso extend does).
# yoso runs get yoso train's default tau schedule (2 -> --hash-code-len over a quarter of the steps, Gaussian
# hash); the study's earlier fixed-tau yoso rows reproduce with EXTRA="--hash-code-len-warmup-steps 0 ...".
# Recipe, from short softmax trials at 128 tokens and 8 pairs (docs/studies.md): width 64, 2 layers of 2 heads, no dropout,
# a width-3 convolution over the values for every attention (a key's value is its right neighbour), lr 3e-3;
# a vocabulary of 8192 (Zoology's) stayed at 1/4095 for 600 steps, without the convolution or at lr 1e-3 softmax
# stayed at chance for 1200 steps.
set -euo pipefail
out=${OUT:-runs/mqar-study}
runs=${RUNS:-softmax:0 yoso:0 yoso-e:0}
read -ra extra <<< "${EXTRA:-}"
recipe=(--task mqar --max-length "${LENGTH:-128}" --mqar-pairs "${PAIRS:-8}" --mqar-vocab-size "${VOCAB:-256}"
        --train-examples 40000 --eval-examples 500 --test-examples 500 --hidden-size 64 --num-layers 2 --num-heads 2
        --intermediate-size 128 --dropout 0 --batch-size 32 --conv-window 3 --lr 3e-3 --warmup-steps 100
        --max-steps "${STEPS:-1200}" --eval-every 200 --save-every 200 "${extra[@]}")
source "$(dirname "$0")/study_runs.sh"
train_runs "$out" "$runs" "${recipe[@]}"
python3 "$(dirname "$0")/study_summary.py" "$out" "query accuracy=test_accuracy" "sequence accuracy=test_sequence_accuracy" \
    "chance (query)=chance_baseline" "tokens/s=tokens_per_second" "peak RSS (MB)=peak_memory_mb"
