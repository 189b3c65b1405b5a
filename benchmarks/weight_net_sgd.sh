#!/usr/bin/env bash
# MW-Net with the paper's noisy-label weight-net optimiser (SGD 1e-3, momentum 0.9, Nesterov, wd 5e-4) instead of
# the protocol's Adam, on the uniform-noise settings: the check issue 6 asks for where MW-Net misses a target.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/mwnet compare --settings fmnist-uniform-60,fmnist-uniform-40 --methods mwnet --seeds 1 --jobs 1 --quiet \
    --set meta_optimizer=sgd --set meta_lr=0.001 --set meta_momentum=0.9 --set meta_nesterov=true \
    --set meta_weight_decay=0.0005 --out benchmarks/weight-net-sgd
