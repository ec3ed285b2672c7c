# Sourced by the study scripts: train_runs OUT RUNS RECIPE... runs `yoso train RECIPE` once per attention:seed of
# RUNS into OUT/<attention>-seed<seed>, skipping finished runs and resuming interrupted ones, then plots them all.
train_runs() {
    local out=$1 runs=$2 yoso=${YOSO:-yoso}
    shift 2
    mkdir -p "$out"
    for run in $runs; do
        local attention=${run%:*} seed=${run#*:}
        local dir=$out/$attention-seed$seed
        [[ -f $dir/summary.json ]] && continue
        local resume=()
        [[ -d $dir/last ]] && resume=(--resume)
        echo "$(date -u +%H:%M:%S) $attention seed $seed"
        "$yoso" train "$@" --attention "$attention" --seed "$seed" --output-dir "$dir" "${resume[@]}" > "$dir.log" 2>&1
    done
    "$yoso" plot "$out"/*-seed*/ --output "$out/curves.png"
}
