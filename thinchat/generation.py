"""Generation settings and the streaming / stopping helpers the chat engine runs ``generate()`` with.

Why a module of its own: the CLI, the web demo sliders and the OpenAI server all expose the same knobs
(``max_new_tokens``, ``temperature``, ``top_p``, ``repetition_penalty``, ``seed``). One validated dataclass
turns them into ``generate()`` arguments the same way everywhere, so "temperature 0" means greedy in
every front end and a bad value is refused with one message instead of a stack trace from deep inside
transformers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from thinchat.errors import ConfigError
from thinchat.model.chat_templates import choose_template, end_of_turn_token


@dataclass(frozen=True)
class GenerationSettings:
    """User-overridable decoding defaults.

    ``temperature == 0`` means greedy decoding (``top_p`` and ``seed`` are then ignored);
    ``repetition_penalty`` 1.1 keeps small models from looping on mineral lists.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (
                isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
                "max_new_tokens",
                "an integer >= 1",
            ),
            (
                _is_number(self.temperature) and 0 <= self.temperature <= 5,
                "temperature",
                "a number in [0, 5]",
            ),
            (_is_number(self.top_p) and 0 < self.top_p <= 1, "top_p", "a number in (0, 1]"),
            (
                _is_number(self.repetition_penalty) and 0 < self.repetition_penalty <= 10,
                "repetition_penalty",
                "a number in (0, 10] (1 = off)",
            ),
            (self.seed is None or isinstance(self.seed, int), "seed", "an integer or null"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ConfigError(f"generation setting {name}={getattr(self, name)!r}: expected {expected}")

    def with_overrides(self, **overrides: Any) -> GenerationSettings:
        """A copy with ``overrides`` applied; ``None`` values keep the current setting."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(
                f"unknown generation setting(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}"
            )
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def generate_kwargs(self) -> dict[str, Any]:
        """Arguments for ``model.generate`` (stop tokens and streamer are added by the engine)."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "repetition_penalty": self.repetition_penalty,
            "do_sample": not self.greedy,
        }
        if self.greedy:
            # Set explicitly so a checkpoint's generation_config (e.g. top_k=50) cannot warn or interfere.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=None)
        return kwargs


def last_position_logits(model) -> dict[str, Any]:
    """``generate`` arguments that compute each step's logits for the last position only, from a
    contiguous hidden state (empty for a model whose ``forward`` takes no ``logits_to_keep``).

    Why not generate's own ``logits_to_keep=1``: it slices ``hidden[:, -1:, :]``, a view whose batch
    stride spans the whole prompt, which ``torch.matmul`` cannot fold into one matrix product; it runs
    a batched product against the LM head's weight expanded per row, and on a CPU the bf16 kernel
    copies that weight first. A Gemma3 prefill's LM head (262k x 640, 8 rows) then takes 4.3 s instead
    of 0.018 s, a SmolLM2 one 0.28 s instead of 0.003 s (``bench/bench_lm_head.py``; docs/experiments.md,
    "Evaluation speed"). An index tensor keeps the same position through advanced indexing, which
    returns a contiguous copy.
    """
    import inspect

    import torch

    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return {}
    return {"logits_to_keep": torch.tensor([-1], device=model.device)}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def stop_token_ids(model, tokenizer) -> list[int]:
    """Token ids that end an answer: the checkpoint's EOS ids plus the chat template's end-of-turn token.

    ``thinchat build`` already writes both into ``generation_config.eos_token_id``; adding the end-of-turn
    token again here keeps checkpoints from other tools (whose config only names EOS) from running on
    into a hallucinated next user turn.
    """
    ids: set[int] = set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(i) for i in eos)
    turn_end = end_of_turn_token(choose_template(tokenizer), tokenizer)
    if turn_end is not None:
        turn_id = tokenizer.convert_tokens_to_ids(turn_end)
        if isinstance(turn_id, int) and turn_id != tokenizer.unk_token_id:
            ids.add(turn_id)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def decode_attention(device: Any):
    """A context in which ``generate`` runs attention without cuDNN on a GPU (a no-op elsewhere).

    Why: torch's cuDNN attention builds an execution graph for every new shape and caches it per
    thread. Every decode step has a new key length, so each token would pay a graph build (figures:
    docs/performance.md, GPU), and the streaming thread is new for every answer. Flash and memory-efficient
    attention have no per-shape set-up. The flags are process-wide while it is entered; the engine
    runs one generation at a time.
    """
    import contextlib

    if getattr(device, "type", str(device).split(":")[0]) != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def cancel_criteria(event: threading.Event):
    """A ``StoppingCriteria`` that ends generation once ``event`` is set (a client went away, Ctrl-C).

    Why the answer tensors are made once: this runs after every decoded token, and building a tensor
    from a Python bool on the GPU each step is a fill kernel plus allocator work per token. The
    all-False tensor is made on the first step and returned until the event is set.
    """
    import torch
    from transformers import StoppingCriteria

    class _Cancel(StoppingCriteria):
        def __init__(self) -> None:
            self._answers: dict[tuple, torch.Tensor] = {}

        def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
            stop = event.is_set()
            key = (input_ids.shape[0], input_ids.device, stop)
            if key not in self._answers:
                self._answers[key] = torch.full((key[0],), stop, dtype=torch.bool, device=key[1])
            return self._answers[key]

    return _Cancel()


def stream_in_thread(
    generate: Callable[..., Any], kwargs: dict[str, Any], tokenizer, *, timeout: float | None = None
) -> Iterator[str]:
    """Run ``generate(**kwargs)`` in a thread and yield decoded text pieces as they are produced.

    Why a thread: ``TextIteratorStreamer`` is fed from inside ``generate``, so the caller iterates while
    the model decodes. If the caller stops iterating early (client disconnect, Ctrl-C, ``close()``), the
    ``finally`` sets a cancel event that the stopping criteria check each step, and joins the thread, so
    no orphan generation keeps the CPU busy or holds the engine lock. Exceptions raised inside
    ``generate`` are re-raised here instead of leaving the caller waiting forever.
    """
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout)
    cancel = threading.Event()
    criteria = StoppingCriteriaList(kwargs.pop("stopping_criteria", None) or [])
    criteria.append(cancel_criteria(cancel))
    errors: list[BaseException] = []

    def target() -> None:
        try:
            generate(**kwargs, streamer=streamer, stopping_criteria=criteria)
        except BaseException as exc:  # re-raised in the consumer below
            errors.append(exc)
            streamer.end()

    thread = threading.Thread(target=target, name="thinchat-generate", daemon=True)
    thread.start()
    try:
        yield from streamer
    finally:
        cancel.set()
        thread.join()
    if errors:
        raise errors[0]
