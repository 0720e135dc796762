"""``bench/bench_caption.py``: batched captioning timed per batch size and weights dtype (tiny model)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_each_dtype_and_batch_size_is_timed_against_its_own_batch_of_one(capsys):
    spec = importlib.util.spec_from_file_location("bench_caption", ROOT / "bench" / "bench_caption.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--n-slides", "3", "--batch-sizes", "1,3", "--max-new-tokens", "2", "--dtypes", "fp32,bf16"]
    assert module.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    rows = [(r["dtype"], r["batch_size"], r["captions"]) for r in out["results"]]
    assert rows == [("float32", 1, 3), ("float32", 3, 3), ("bfloat16", 1, 3), ("bfloat16", 3, 3)]
    assert all(r["speedup_vs_bs1"] == 1.0 for r in out["results"] if r["batch_size"] == 1)
    assert out["precision"]["dtype"] in ("float32", "bfloat16") and out["precision"]["bf16_gflops"] > 0
