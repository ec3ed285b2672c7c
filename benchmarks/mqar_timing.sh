#!/usr/bin/env bash
# Training throughput and peak RSS of the MQAR model (docs/studies.md, "Longer sequences"): 20 training steps of
# 32 768 tokens each for softmax, sampled yoso (m = 32, tau 8, Gaussian hash), sampled yoso with the tau and the
# fewest hashes the length rule gives a 128-token model at this length (yoso-rule) and YOSO-E at 1024, 2048 and
# 4096 tokens (LENGTHS), one run at a time; ONLY keeps the named ones (e.g. ONLY="softmax yoso-rule"). Run it with
# nothing else on the machine; tokens/s count the training steps only.
#   PATH=.venv/bin:$PATH [LENGTHS="1024 8192"] [ONLY=...] benchmarks/mqar_timing.sh [OUT]   (default OUT: runs/mqar-timing)
set -euo pipefail
out=${1:-runs/mqar-timing}
mkdir -p "$out"
for length in ${LENGTHS:-1024 2048 4096}; do
    batch=$((32768 / length))
    read -r tau m < <(python3 -c "from yoso_attention.models.yoso.convert import hashing_for_length as rule
print(*rule(8, 1, 128, $length))")
    for attention in "softmax" "yoso --num-hash 32 --hash-code-len 8 --hash gaussian --hash-code-len-warmup-steps 0" \
                     "yoso --num-hash $m --hash-code-len $tau --hash gaussian --hash-code-len-warmup-steps 0" \
                     "yoso-e --hash-code-len-warmup-steps 0"; do
        name=${attention%% *}-$length
        [[ $attention == *"--num-hash $m "* ]] && name=yoso-rule-$length
        [[ -z ${ONLY:-} || " $ONLY " == *" ${name%-*} "* ]] || continue
        read -ra flags <<< "$attention"
        yoso train --preset mqar --max-length "$length" --batch-size "$batch" --attention "${flags[@]}" --max-steps 20 \
            --warmup-steps 2 --train-examples 640 --eval-examples 8 --test-examples 8 --eval-every 1000 \
            --output-dir "$out/$name" > "$out/$name.log" 2>&1
    done
done
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path

for path in sorted(Path(sys.argv[1]).glob("*/summary.json")):
    s = json.loads(path.read_text())
    print(f"{path.parent.name}: {s['tokens_per_second']:,.0f} tokens/s, peak RSS {s['peak_memory_mb']:,.0f} MB")
PY
