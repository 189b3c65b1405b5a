#!/usr/bin/env bash
# L2RW diverges in the first epoch at the protocol's lr 0.1 (benchmarks/fashion-mnist): its per-batch weights sum
# to 1 and concentrate the step on the few samples most aligned with the meta gradient. This runs it, and CE for
# reference, at lr 0.02 (and MW-Net at the same lr) (everything else as the protocol) to show what the method does when it can train.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/mwnet compare --settings fmnist-uniform-60,fmnist-uniform-40 --methods ce,l2rw,mwnet --seeds 1 --jobs 2 --quiet \
    --set lr=0.02 --out benchmarks/l2rw-lr-0.02
