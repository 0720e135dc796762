#!/usr/bin/env bash
# Stage 1: projector alignment on captions (tower and LM frozen).
# Usage: scripts/pretrain_projector.sh [CONFIG] [key=value ...]     (default CONFIG: configs/pretrain_projector.yaml)
# Launcher choice (LAUNCHER, NUM_GPUS, HOSTFILE, MASTER_PORT): see scripts/launch.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
exec bash "$ROOT/scripts/launch.sh" "$ROOT/configs/pretrain_projector.yaml" "$@"
