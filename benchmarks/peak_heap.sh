#!/usr/bin/env bash
# Peak RSS and the heap's bytes in use / free at that peak (benchmarks/peak_heap.py) for the MQAR model's 20-step
# runs of benchmarks/mqar_timing.sh: softmax, sampled yoso at the length rule's tau and m (Gaussian hash) and the
# same with --recompute-hash-codes, RUNS times each, alternating, at each of LENGTHS. One JSON line a run in OUT.
#   PATH=.venv/bin:$PATH [LENGTHS="1024 4096"] [RUNS=3] benchmarks/peak_heap.sh [OUT]   (default OUT: runs/peak-heap.jsonl)
set -euo pipefail
out=${1:-runs/peak-heap.jsonl}
mkdir -p "$(dirname "$out")"
for length in ${LENGTHS:-1024 4096}; do
    batch=$((32768 / length))
    read -r tau m < <(python3 -c "from yoso_attention.models.yoso.convert import hashing_for_length as rule
print(*rule(8, 1, 128, $length))")
    yoso="--attention yoso --num-hash $m --hash-code-len $tau --hash gaussian --hash-code-len-warmup-steps 0"
    for run in $(seq "${RUNS:-3}"); do
        for variant in "softmax|--attention softmax" "yoso-rule|$yoso" "yoso-rule-recompute|$yoso --recompute-hash-codes"; do
            read -ra flags <<< "${variant#*|}"
            python3 benchmarks/peak_heap.py "${variant%%|*}-$length" -- train --preset mqar --max-length "$length" \
                --batch-size "$batch" "${flags[@]}" --max-steps 20 --warmup-steps 2 --train-examples 640 \
                --eval-examples 8 --test-examples 8 --eval-every 1000 --output-dir "runs/peak-heap/run" 2>/dev/null \
                | tail -1 >> "$out"
        done
    done
done
cat "$out"
