#!/usr/bin/env bash
# Stage 2: LoRA instruction tuning of the LM (projector with its own lr).
# Usage: scripts/finetune_lora.sh [CONFIG] [key=value ...]     (default CONFIG: configs/finetune_lora.yaml)
# Launcher choice (LAUNCHER, NUM_GPUS, HOSTFILE, MASTER_PORT): see scripts/launch.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
exec bash "$ROOT/scripts/launch.sh" "$ROOT/configs/finetune_lora.yaml" "$@"
