"""``bench/bench_gpu.py --tiny``: the GPU benchmark's code paths, on CPU with a tiny model, in seconds."""

from __future__ import annotations

import importlib.util
import json

from bench_scripts import load_bench


def _bench():
    return load_bench("bench_gpu.py")


def test_tiny_mode_measures_every_part_and_writes_the_json(tmp_path):
    out = tmp_path / "gpu_tiny.json"
    assert _bench().main(["--tiny", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["mode"] == "tiny"
    assert results["matmul"]["bf16_gflops"] > 0 and results["matmul"]["fp32_gflops"] > 0
    assert results["precompute"]["images"] == 16 and results["precompute"]["images_per_s"] > 0
    train = results["train"]
    expected = {"lora", "lora_no_checkpointing", "plain_loop"}
    if importlib.util.find_spec("bitsandbytes"):
        expected.add("qlora")
    assert expected <= set(train)
    for name in expected:
        assert train[name]["tokens_per_s"] > 0 and 0 < train[name]["mfu"] < 1, name
    assert {"zero2", "zero3", "zero3_tuned"} <= set(results["skipped"])  # DeepSpeed only on a GPU
    assert results["ratios"]["lora_vs_plain_loop"] > 0
    decode = results["decode"]
    for case in ("raw_generate", "engine_describe", "engine_stream"):
        assert decode[case]["forwards"] >= 2 and decode[case]["ms_per_token"] > 0, case
    assert decode["engine_default"]["device"] == "cpu"
    assert "engine_describe" in (tmp_path / "gpu_tiny_decode_profile.txt").read_text()
