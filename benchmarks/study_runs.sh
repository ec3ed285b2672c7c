# Sourced by the study scripts: train_runs OUT RUNS RECIPE... runs `yoso train RECIPE` once per attention:seed of
# RUNS into OUT/<attention>-seed<seed>, skipping finished runs and resuming interrupted ones, then plots them all.
# INIT (a directory of earlier runs with the same names): each run continues from INIT/<attention>-seed<seed>/best,
# its positions repeated up to --max-length if it had fewer.
train_runs() {
    local out=$1 runs=$2 yoso=${YOSO:-yoso}
    shift 2
    mkdir -p "$out"
    for run in $runs; do
        local attention=${run%:*} seed=${run#*:}
        local dir=$out/$attention-seed$seed
        [[ -f $dir/summary.json ]] && continue
        local resume=() init=()
        [[ -d $dir/last ]] && resume=(--resume)
        [[ -n ${INIT:-} ]] && init=(--init-from "$INIT/$attention-seed$seed/best" --repeat-positions)
        echo "$(date -u +%H:%M:%S) $attention seed $seed"
        "$yoso" train "$@" --attention "$attention" --seed "$seed" --output-dir "$dir" "${init[@]}" "${resume[@]}" > "$dir.log" 2>&1
    done
    "$yoso" plot "$out"/*-seed*/ --output "$out/curves.png"
}
