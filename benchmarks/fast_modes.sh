#!/usr/bin/env bash
# Accuracy of the approximate / amortised hypergradient modes on the Fashion-MNIST 40 % uniform protocol
# (issue 5, item 4). The exact mode's row comes from the main grid (benchmarks/fashion-mnist, mwnet seed 0).
set -euo pipefail
cd "$(dirname "$0")/.."
for mode in "hypergradient=last-layer" "hypergradient=finite-difference" "meta_interval=5" \
            "hypergradient=last-layer meta_interval=5"; do
    name=$(echo "$mode" | tr ' =' '-_')
    sets=()
    for kv in $mode; do sets+=(--set "$kv"); done
    .venv/bin/mwnet compare --settings fmnist-uniform-40 --methods mwnet --seeds 1 --jobs 1 --quiet \
        "${sets[@]}" --out "benchmarks/fast-modes/$name"
done
