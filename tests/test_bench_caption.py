"""``bench/bench_caption.py``: batched captioning timed per batch size and weights dtype (tiny model)."""

from __future__ import annotations

import json

from bench_scripts import load_bench


def test_each_dtype_and_batch_size_is_timed_against_its_own_batch_of_one(capsys):
    module = load_bench("bench_caption.py")
    argv = ["--n-slides", "3", "--batch-sizes", "1,3", "--max-new-tokens", "2", "--dtypes", "fp32,bf16"]
    assert module.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    rows = [(r["dtype"], r["batch_size"], r["captions"]) for r in out["results"]]
    assert rows == [("float32", 1, 3), ("float32", 3, 3), ("bfloat16", 1, 3), ("bfloat16", 3, 3)]
    assert all(r["speedup_vs_bs1"] == 1.0 for r in out["results"] if r["batch_size"] == 1)
    assert out["precision"]["dtype"] in ("float32", "bfloat16") and out["precision"]["bf16_gflops"] > 0
