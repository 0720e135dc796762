"""Feature-cache precompute: where the tower runs, in which precision, and the per-rank shards."""

from __future__ import annotations

import pytest
import torch

from thinchat.testing import tiny_image, tiny_llava
from thinchat.train import feature_cache as fc
from thinchat.train.embeds import tower_features
from thinchat.train.feature_cache import FeatureCache


def _frozen():
    model, processor = tiny_llava("llama", "clip", image_size=28)
    model.requires_grad_(False)
    return model, processor


def _images(tmp_path, n: int) -> list:
    paths = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        tiny_image(seed=i, size=40).save(path)
        paths.append(path)
    return paths


def test_cpu_keeps_fp32_in_order_and_its_old_key(tmp_path):
    model, processor = _frozen()
    plain = FeatureCache(tmp_path / "c", model, processor, dtype="float32")
    on_cpu = FeatureCache(
        tmp_path / "c", model, processor, dtype="float32", device="cpu", compute_dtype=torch.bfloat16
    )
    assert on_cpu.compute_dtype == torch.float32 and on_cpu.batch_size == 16
    assert on_cpu.tower_key == plain.tower_key  # CPU entries written before stay valid
    paths = _images(tmp_path, 3)
    on_cpu.precompute(paths)
    pixel_values = on_cpu._pixels(paths)
    with torch.no_grad():
        expected = tower_features(model, pixel_values)
    torch.testing.assert_close(on_cpu.features_for(paths), expected)


def test_an_accelerator_runs_the_training_dtype_in_bigger_batches_under_its_own_key(tmp_path):
    model, processor = _frozen()
    plain = FeatureCache(tmp_path / "c", model, processor)
    gpu = FeatureCache(tmp_path / "c", model, processor, device="meta", compute_dtype=torch.bfloat16)
    assert gpu.device == torch.device("meta")
    assert gpu.compute_dtype == torch.bfloat16 and gpu.batch_size == 64
    assert gpu.tower_key != plain.tower_key  # bf16-computed entries never mix with fp32 ones


def test_each_rank_computes_its_shard_then_waits_at_the_barrier(tmp_path, monkeypatch):
    model, processor = _frozen()
    paths = _images(tmp_path, 7)
    world = 3
    waited: list[int] = []
    computed: dict[int, set] = {}
    for rank in range(world):  # ranks run at the same time: each sees all 7 missing (own root here)
        monkeypatch.setattr(fc, "rank_and_world", lambda rank=rank: (rank, world))
        monkeypatch.setattr(fc, "barrier", lambda rank=rank: waited.append(rank))
        cache = FeatureCache(tmp_path / f"rank{rank}", model, processor, batch_size=2)
        cache.precompute(paths + paths[:2])  # duplicates are computed once
        computed[rank] = {p for p in paths if cache.path_for(cache.image_key(p)).is_file()}
        assert computed[rank] == set(paths[rank::world])
        assert cache.stats.misses == len(computed[rank])
    assert waited == [0, 1, 2]
    assert set().union(*computed.values()) == set(paths)
    assert sum(len(v) for v in computed.values()) == len(paths)  # no image computed twice


def test_a_single_process_never_waits(tmp_path, monkeypatch):
    model, processor = _frozen()
    monkeypatch.setattr(fc, "barrier", lambda: pytest.fail("barrier in a single process"))
    cache = FeatureCache(tmp_path / "c", model, processor)
    cache.precompute(_images(tmp_path, 2))
    assert cache.stats.misses == 2


def test_the_prefetch_keeps_order_and_bounds_what_is_ahead():
    started: list[int] = []
    out = fc._prefetch(lambda x: started.append(x) or x * 10, list(range(9)), 2)
    assert next(out) == 0 and len(started) <= 5
    assert list(out) == [10 * i for i in range(1, 9)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_tower_moves_there_and_runs_bf16(tmp_path):
    model, processor = _frozen()
    paths = _images(tmp_path, 5)
    reference = FeatureCache(tmp_path / "ref", model, processor, dtype="float32").features_for(paths)
    cache = FeatureCache(tmp_path / "c", model, processor, device="cuda", compute_dtype=torch.bfloat16)
    cache.precompute(paths)
    assert next(model.model.vision_tower.parameters()).device.type == "cuda"
    got = cache.features_for(paths).float()
    assert got.device.type == "cpu"
    torch.testing.assert_close(got, reference, rtol=0.05, atol=0.05)
