#!/usr/bin/env bash
# Shared launcher for the stage scripts: runs `python -m thinchat train` under the chosen launcher.
# Usage: scripts/launch.sh DEFAULT_CONFIG [CONFIG] [key=value ...]
# Every training setting lives in the YAML config; this script only picks the launcher:
#   LAUNCHER=deepspeed (default when installed) | torchrun | accelerate | python
#   NUM_GPUS (default: GPUs found by nvidia-smi, else 1), HOSTFILE (multi-node: DeepSpeed hostfile),
#   MASTER_PORT (default 29500). Multi-GPU / multi-node go through DeepSpeed's own launcher.
set -euo pipefail
CONFIG="$1"; shift
if [[ $# -gt 0 && "$1" != *=* ]]; then CONFIG="$1"; shift; fi
if [[ -z "${NUM_GPUS:-}" ]]; then
  NUM_GPUS=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
  [[ "$NUM_GPUS" -gt 0 ]] || NUM_GPUS=1
fi
LAUNCHER="${LAUNCHER:-$(command -v deepspeed >/dev/null 2>&1 && echo deepspeed || echo python)}"
PORT="${MASTER_PORT:-29500}"
case "$LAUNCHER" in
  deepspeed)
    HOSTS=()
    [[ -n "${HOSTFILE:-}" ]] && HOSTS=(--hostfile "$HOSTFILE")
    exec deepspeed "${HOSTS[@]}" --num_gpus "$NUM_GPUS" --master_port "$PORT" --module thinchat train --config "$CONFIG" "$@" ;;
  torchrun)
    exec torchrun --nproc_per_node "$NUM_GPUS" --master_port "$PORT" -m thinchat train --config "$CONFIG" "$@" ;;
  accelerate)
    exec accelerate launch --num_processes "$NUM_GPUS" --main_process_port "$PORT" -m thinchat train --config "$CONFIG" "$@" ;;
  python)
    exec python -m thinchat train --config "$CONFIG" "$@" ;;
  *)
    echo "LAUNCHER must be deepspeed, torchrun, accelerate or python (got '$LAUNCHER')" >&2; exit 2 ;;
esac
