"""Fit a training config to the machine before anything loads: a GPU recipe on a host without a GPU.

Why: the GPU recipes (``configs/finetune_lora.yaml``, ``finetune_qlora.yaml``, ``finetune_full.yaml``,
``pretrain_projector.yaml``) say ``bf16: true`` and name a DeepSpeed config. On a machine without a GPU,
transformers used to stop inside ``TrainingArguments`` with a traceback ("Your setup doesn't support
bf16/gpu ...") after the data had been checked and the model loaded, and DeepSpeed without its launcher
stopped on a missing ``mpi4py``. Here every such case is decided from the config and the host alone:

* precision: a config written for a GPU (``cpu: false``) runs on the CPU when there is no GPU, with
  ``bf16: auto`` in place of ``bf16: true`` / ``fp16: true`` (the faster precision, measured), and says so
  in one log line. A config that says ``cpu: true`` keeps its own precision.
* DeepSpeed: ZeRO shards the optimizer over GPUs; without one the run stops with one line that names
  ``deepspeed`` and ``cpu=true``. An offload config on the CPU (nothing to offload to) and a DeepSpeed run
  started without a launcher stop with one line too.
* ``bf16: true`` on a GPU without bf16 (older than Ampere) stops with one line naming ``bf16``.
* ``torch_compile: true`` on a CPU where inductor cannot build its kernels (no C++ compiler) trains
  uncompiled and says why in one log line, instead of failing at the first step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinchat.errors import ConfigError

log = logging.getLogger(__name__)

#: What DeepSpeed's ``init_distributed`` reads from the environment; without them it looks for MPI.
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: Set by ``mpirun`` (Open MPI), DeepSpeed's other way of finding its ranks.
MPI_ENV = "OMPI_COMM_WORLD_SIZE"
#: The CPU recipe the refusals point to.
CPU_RECIPE = "configs/finetune_lora_cpu.yaml"


@dataclass(frozen=True)
class Host:
    """What the machine offers training: a CUDA GPU, bf16 on it, and a distributed launcher's environment."""

    gpu: bool
    bf16_gpu: bool
    launched: bool

    @classmethod
    def current(cls, environ: Mapping[str, str] = os.environ) -> Host:
        import torch

        gpu = torch.cuda.is_available()
        return cls(
            gpu=gpu,
            bf16_gpu=gpu and torch.cuda.is_bf16_supported(),
            launched=all(key in environ for key in LAUNCHER_ENV) or MPI_ENV in environ,
        )


def _deepspeed_json(path: str) -> dict[str, Any]:
    """The DeepSpeed config as a dict, or a ``ConfigError`` naming ``deepspeed`` (missing, not JSON)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"deepspeed={path}: file not found (paths are relative to the working directory)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"deepspeed={path}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"deepspeed={path}: expected a JSON object")
    return data


def _offloads(data: dict[str, Any]) -> bool:
    zero = data.get("zero_optimization") or {}
    return any(
        isinstance(zero.get(key), dict) and zero[key].get("device") not in (None, "none")
        for key in ("offload_optimizer", "offload_param")
    )


def check_deepspeed(config: Any, host: Host) -> None:
    """Refuse a DeepSpeed setting this machine or this way of starting cannot run, in one line."""
    path = config.deepspeed
    data = _deepspeed_json(path)
    if not host.gpu and not config.cpu:
        raise ConfigError(
            f"deepspeed: {path} shards training over GPUs and this machine has none; to train on the "
            f"CPU add cpu=true deepspeed=null ({CPU_RECIPE} is the CPU recipe)"
        )
    on_cpu = config.cpu or not host.gpu
    if on_cpu and _offloads(data):
        raise ConfigError(
            f"deepspeed: {path} offloads GPU memory to the CPU; with cpu=true there is nothing to "
            "offload: set deepspeed=null"
        )
    if not host.launched:
        raise ConfigError(
            f"deepspeed: {path} needs DeepSpeed's launcher (scripts/pretrain_projector.sh, "
            "finetune_lora.sh, finetune_full.sh with LAUNCHER=deepspeed); with `thinchat train` alone "
            "set deepspeed=null"
        )


def cpu_compiler() -> str | None:
    """The C++ compiler inductor's CPU backend builds its kernels with (``$CXX``, else g++ / c++ / clang++)."""
    import shutil

    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _fit_compile(config: Any, on_cpu: bool) -> Any:
    """``torch_compile`` off, with one log line, where inductor cannot build CPU kernels."""
    if not getattr(config, "torch_compile", False) or not on_cpu or cpu_compiler():
        return config
    log.warning(
        "torch_compile: no C++ compiler found ($CXX, g++, c++, clang++), which torch.compile needs on "
        "the CPU: training uncompiled (install g++ to compile)"
    )
    return dataclasses.replace(config, torch_compile=False)


def fit_to_host(config: Any, host: Host | None = None) -> Any:
    """``config`` as it can run here: see the module docstring. Raises ``ConfigError`` (one line) or
    returns the config, with ``cpu: true`` and ``bf16: auto`` where a GPU recipe falls back to the CPU."""
    host = host or Host.current()
    config = _fit_compile(config, on_cpu=config.cpu or not host.gpu)
    if config.deepspeed:
        check_deepspeed(config, host)
    if host.gpu and not config.cpu:
        if config.bf16 is True and not host.bf16_gpu:
            raise ConfigError(
                "bf16: true needs a GPU with bf16 (Ampere or newer) and this one has none: set "
                "bf16=auto (fp32) or bf16=false fp16=true"
            )
        return config
    if config.cpu:
        return config
    changes = ["cpu: true"]
    if config.bf16 is True or config.fp16:
        asked = "fp16: true" if config.fp16 else "bf16: true"
        changes.append(f"bf16: auto instead of {asked}")
        config = dataclasses.replace(config, bf16="auto", fp16=False)
    log.warning(
        "no GPU on this machine: training on the CPU (%s); %s is the recipe sized for a CPU",
        ", ".join(changes),
        CPU_RECIPE,
    )
    return dataclasses.replace(config, cpu=True)
