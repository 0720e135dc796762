"""Chat latency on CPU: time to first token, decode tokens/s, and how close decoding gets to memory bandwidth.

Decoding one token reads every language-model weight once (plus the KV cache), so on a CPU the rate is
bounded by ``read bandwidth / bytes read per token``. This bench measures the read bandwidth on the
spot (a large tensor sum), counts the bytes (LM weights, the tied embedding / lm_head matrix once, the
KV cache at the average decode length) and reports achieved / ceiling for each dtype.

It runs the engine's real path (chat template, image-feature cache, ``generate`` with the engine's
stop tokens and repetition penalty); only ``min_new_tokens`` is added so every run decodes exactly
``--new-tokens`` tokens. The first question of a conversation encodes the slide (cold TTFT); a
follow-up about the same slide reuses the cached image features and the KV cache of the first exchange,
so only the new question is prefilled (warm TTFT).

    python bench/bench_chat.py [--from_pretrained DIR] [--new-tokens 128] [--dtypes float32,bfloat16] [--out FILE]

Without ``--from_pretrained`` it builds the offline default (dinov2-small + smollm2-135m-instruct, 112 px)
into ``~/.cache/thinchat/bench/base112`` once (about a minute).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import emit_report

DEFAULT_BASE = Path.home() / ".cache" / "thinchat" / "bench" / "base112"
QUESTIONS = ("Describe this thin section.", "What accessory minerals are present?")


class Bandwidth:
    """Read bandwidth of a large fp32 sum with the current torch threads.

    Measured right before and right after each timed decode (median of a few sums each), so the ceiling
    reflects the machine's state during the decode: on a shared machine other processes take bandwidth.
    """

    def __init__(self, n_bytes: int = 1 << 28) -> None:
        import torch

        self.n_bytes = n_bytes
        self.buffer = torch.ones(n_bytes // 4, dtype=torch.float32)
        self.buffer.sum()  # fault the pages in
        self.samples: list[float] = []

    def measure(self, repeats: int = 3) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.buffer.sum()
            times.append(time.perf_counter() - start)
        rate = self.n_bytes / statistics.median(times)
        self.samples.append(rate)
        return rate


def weight_bytes_per_token(model) -> int:
    """Bytes of LM weights one decode step reads: every matrix once, the input embedding only if tied.

    An untied input embedding costs one row per token (negligible); a tied one is read in full as
    ``lm_head``, so it is counted once.
    """
    lm = model.model.language_model
    embed = lm.get_input_embeddings().weight
    seen: set[int] = set()
    total = 0
    for param in [*lm.parameters(), model.lm_head.weight]:
        if param.data_ptr() in seen:
            continue
        seen.add(param.data_ptr())
        if param is embed and embed.data_ptr() != model.lm_head.weight.data_ptr():
            continue
        total += param.numel() * param.element_size()
    return total


def kv_bytes_per_token(config, context: float, element_size: int) -> float:
    """KV-cache bytes read per decode step at an average ``context`` length."""
    text = config.text_config
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * heads * head_dim * context * element_size


def log(message: str) -> None:
    print(f"[bench_chat {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class TokenClock:
    """A streamer that only records when each batch of token ids arrives (first call: the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def timed_turn(engine, session_turns, question, image, new_tokens: int, bandwidth: Bandwidth) -> dict:
    """One question through the engine's prompt path; returns TTFT, decode rate, prompt length and the
    read bandwidth around it."""
    from thinchat.chat.history import Turn

    before = bandwidth.measure()
    start = time.perf_counter()
    settings = engine.resolve(max_new_tokens=new_tokens)
    turn = Turn(question=question, images=[image] if not session_turns else [])
    messages, images, _ = engine.fit_turns([*session_turns, turn], None, settings)
    inputs = engine._inputs(messages, images, settings)
    clock = TokenClock()
    with engine._lock:
        kwargs = engine._generate_kwargs(inputs, settings)  # encodes the image unless cached
        output = engine._run_generate(**kwargs, min_new_tokens=new_tokens, streamer=clock).sequences
    prompt_len = int(inputs["input_ids"].shape[1])
    generated = int(output.shape[1]) - prompt_len
    after = bandwidth.measure()
    tokens = clock.times[1:]
    turn.answer = engine.tokenizer.decode(output[0, prompt_len:], skip_special_tokens=True).strip()
    session_turns.append(turn)
    return {
        "prompt_tokens": prompt_len,
        "prompt_tokens_from_cache": engine.last_reused_tokens,
        "new_tokens": generated,
        "ttft_s": round(tokens[0] - start, 4),
        "decode_tokens_per_s": round((len(tokens) - 1) / (tokens[-1] - tokens[0]), 2),
        "read_bandwidth_GBps": round((before + after) / 2e9, 2),
    }


def bench_dtype(path: Path, dtype: str, new_tokens: int, bandwidth: Bandwidth) -> dict:
    import torch

    from thinchat.engine import ChatEngine
    from thinchat.testing import tiny_image

    log(f"{dtype}: loading {path}")
    load_start = time.perf_counter()
    engine = ChatEngine.from_pretrained(path, dtype=dtype)
    load_s = time.perf_counter() - load_start
    image = tiny_image(seed=1, size=256)
    engine.describe(
        [tiny_image(seed=2, size=256)], "Hello.", max_new_tokens=4
    )  # warm-up (allocator, kernels)
    turns: list = []
    log(f"{dtype}: first turn ({new_tokens} tokens)")
    cold = timed_turn(engine, turns, QUESTIONS[0], image, new_tokens, bandwidth)
    log(f"{dtype}: {cold}; follow-up turn")
    warm = timed_turn(engine, turns, QUESTIONS[1], image, new_tokens, bandwidth)
    log(f"{dtype}: {warm}")
    element = torch.empty((), dtype=engine.model.dtype).element_size()
    weights = weight_bytes_per_token(engine.model)
    context = warm["prompt_tokens"] + new_tokens / 2
    per_token = weights + kv_bytes_per_token(engine.model.config, context, element)
    ceiling = warm["read_bandwidth_GBps"] * 1e9 / per_token
    rate = warm["decode_tokens_per_s"]
    return {
        "dtype": dtype,
        "load_s": round(load_s, 2),
        "first_turn": cold,
        "follow_up_turn": warm,
        "lm_weight_bytes_per_token": weights,
        "bytes_per_token": int(per_token),
        "ceiling_tokens_per_s": round(ceiling, 2),
        "achieved_fraction_of_ceiling": round(rate / ceiling, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--from_pretrained",
        "--from-pretrained",
        dest="from_pretrained",
        default=None,
        help=f"checkpoint dir (default: build the offline default into {DEFAULT_BASE})",
    )
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens decoded per turn (greedy)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated weight dtypes")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine more threads spin-wait and decode up to 8x slower; "
        "0 = torch's choice)",
    )
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    import torch

    torch.set_flush_denormal(True)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    path = Path(args.from_pretrained) if args.from_pretrained else DEFAULT_BASE
    if not args.from_pretrained and not (path / "config.json").is_file():
        from thinchat.model.compose import build

        build("dinov2-small", "smollm2-135m-instruct", path, image_size=112)
    bandwidth = Bandwidth()
    results = [
        bench_dtype(path, d.strip(), args.new_tokens, bandwidth) for d in args.dtypes.split(",") if d.strip()
    ]
    report = {
        "bench": "chat",
        "checkpoint": str(path),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
        "read_bandwidth_GBps_samples": [round(b / 1e9, 2) for b in bandwidth.samples],
        "new_tokens": args.new_tokens,
        "results": results,
        "best": max(results, key=lambda r: r["follow_up_turn"]["decode_tokens_per_s"])["dtype"]
        if results
        else None,
    }
    emit_report(report, args.out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
