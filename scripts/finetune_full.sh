#!/usr/bin/env bash
# Full fine-tuning of the LM and projector (ZeRO-3 on GPUs).
# Usage: scripts/finetune_full.sh [CONFIG] [key=value ...]     (default CONFIG: configs/finetune_full.yaml)
# Launcher choice (LAUNCHER, NUM_GPUS, HOSTFILE, MASTER_PORT): see scripts/launch.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
exec bash "$ROOT/scripts/launch.sh" "$ROOT/configs/finetune_full.yaml" "$@"
