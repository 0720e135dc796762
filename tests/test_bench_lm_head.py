"""``bench/bench_lm_head.py``: the LM head on a sliced and an indexed last position (tiny shape)."""

from __future__ import annotations

import json

from bench_scripts import load_bench


def test_every_dtype_and_row_count_times_both_ways(capsys):
    module = load_bench("bench_lm_head.py")
    argv = ["--heads", "tiny", "--rows", "1,4", "--prompt", "5", "--repeats", "1"]
    assert module.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    rows = [(r["dtype"], r["rows"]) for r in out["results"]]
    assert rows == [("float32", 1), ("float32", 4), ("bfloat16", 1), ("bfloat16", 4)]
    for r in out["results"]:
        assert (
            r["slice_s"] > 0
            and r["index_s"] > 0
            and r["weight_bytes"] == 64 * 16 * (4 if r["dtype"] == "float32" else 2)
        )
