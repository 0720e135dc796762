"""`data import-clipcap`: a real ThinGPT-style feature pickle imports; a malicious pickle is refused."""

from __future__ import annotations

import json
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from data_tools.clipcap import ForbiddenPickleError, import_clipcap, load_clipcap_pickle
from thinchat.errors import DataFormatError


def _write_features(path: Path) -> dict[str, torch.Tensor]:
    """What ThinGPT's process_flickr.py writes: pickle.dump([caption_list, image_id2embed])."""
    torch.manual_seed(0)
    embeds = {"0001": torch.randn(1, 512), "0002": torch.randn(1, 512), 3: torch.randn(1, 512).half()}
    captions = [
        ("0001", "石英约占45%。"),
        ("0001", "Quartz dominates."),
        ("0002", "长石具粘土化。"),
        (3, "x"),
        ("9", "orphan"),
    ]
    with path.open("wb") as f:
        pickle.dump([captions, embeds], f)
    return {str(k): v for k, v in embeds.items()}


def test_import_real_pickle(tmp_path: Path) -> None:
    pkl = tmp_path / "feat.pkl"
    embeds = _write_features(pkl)
    summary = import_clipcap(pkl, tmp_path / "out")
    assert summary["rows_in"] == 5 and summary["rows_out"] == 4 and summary["rows_skipped"] == 1
    assert "no embedding for image id '9'" in summary["skipped"][0]["reason"]
    tensors = load_file(str(tmp_path / "out" / "clip_embeddings.safetensors"))
    assert set(tensors) == {"0001", "0002", "3"}
    assert tensors["0001"].shape == (1, 512) and tensors["3"].dtype == torch.float32
    assert torch.equal(tensors["0002"], embeds["0002"])
    assert torch.allclose(tensors["3"], embeds["3"].float())
    rows = json.loads((tmp_path / "out" / "conversations.json").read_text(encoding="utf-8"))
    assert [r["id"] for r in rows] == ["0001_1", "0001_2", "0002_1", "3_1"]
    assert rows[0]["image_embedding"] == "0001" and "image" not in rows[0]
    assert rows[0]["conversations"][0]["value"].startswith("<image>\n") and rows[0]["lang"] == "zh"
    assert rows[1]["conversations"][1]["value"] == "Quartz dominates." and rows[1]["lang"] == "en"


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_malicious_pickle_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps([[("1", "a")], {"1": _Evil()}]))
    with pytest.raises(ForbiddenPickleError, match=r"global (posix|os)\.system"):
        load_clipcap_pickle(pkl)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()
    # code hidden in the storage bytes goes through torch.load(weights_only=True), which refuses it too
    inner = pickle.dumps(_Evil(), protocol=2)
    payload = (
        b"\x80\x02]q\x00(]q\x01}q\x02(X\x01\x00\x00\x001q\x03ctorch.storage\n_load_from_bytes\nq\x04C"
        + bytes([len(inner)])
        + inner
        + b"\x85Rq\x05ue."
    )
    (tmp_path / "sneaky.pkl").write_bytes(payload)
    with pytest.raises(ForbiddenPickleError, match="storage bytes hold more than tensor data"):
        load_clipcap_pickle(tmp_path / "sneaky.pkl")
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_wrong_structure(tmp_path: Path) -> None:
    pkl = tmp_path / "x.pkl"
    pkl.write_bytes(pickle.dumps({"not": "a list"}))
    with pytest.raises(DataFormatError, match=r"expected \[caption_list, image_id2embed\]"):
        load_clipcap_pickle(pkl)
    (tmp_path / "trunc.pkl").write_bytes(pickle.dumps([[], {}])[:-3])
    with pytest.raises(DataFormatError, match="not a readable ClipCap feature pickle"):
        load_clipcap_pickle(tmp_path / "trunc.pkl")


def test_stride0_tensor_is_refused_before_expanding(tmp_path: Path) -> None:
    """#16 item 10: a few hundred bytes must not describe (and write) a 1 GB tensor."""
    for numel in (2**28, 2**40):
        pkl = tmp_path / f"stride0_{numel}.pkl"
        pkl.write_bytes(pickle.dumps([[("1", "quartz")], {"1": torch.zeros(1).expand(numel)}]))
        assert pkl.stat().st_size < 1000
        with pytest.raises(DataFormatError, match="stride-0 or overlapping view"):
            import_clipcap(pkl, tmp_path / "out")
        assert not (tmp_path / "out" / "clip_embeddings.safetensors").exists()
    # many views of one stored storage (pickled once): each fits it, together they exceed the file
    storage = torch.zeros(64).storage()

    class _View:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, (storage, 0, (64,), (1,), False, OrderedDict()))

    views = {str(i): _View() for i in range(200)}
    pkl = tmp_path / "shared.pkl"
    pkl.write_bytes(pickle.dumps([[(k, "quartz") for k in views], views]))
    with pytest.raises(DataFormatError, match="more than the .*-byte file can hold"):
        load_clipcap_pickle(pkl)


def test_bad_embedding_sets(tmp_path: Path) -> None:
    pkl = tmp_path / "widths.pkl"
    pkl.write_bytes(
        pickle.dumps([[("a", "x"), ("b", "y")], {"a": torch.zeros(1, 512), "b": torch.zeros(1, 768)}])
    )
    with pytest.raises(DataFormatError, match=r"different widths 512 \(e.g. 'a'\), 768 \(e.g. 'b'\)"):
        import_clipcap(pkl, tmp_path / "out")
    pkl.write_bytes(pickle.dumps([[("x1", "quartz")], {"a": torch.zeros(1, 8)}]))
    with pytest.raises(DataFormatError, match="none of the 1 captions has an embedding"):
        import_clipcap(pkl, tmp_path / "out")
    pkl.write_bytes(pickle.dumps([[("a", "quartz")], {"a": torch.zeros(1, 8), "b": torch.ones(1, 8)}]))
    summary = import_clipcap(pkl, tmp_path / "out")
    assert summary["embeddings_without_captions"] == 1 and summary["uncaptioned_examples"] == ["b"]
    assert set(load_file(str(tmp_path / "out" / "clip_embeddings.safetensors"))) == {"a"}


def test_split_and_test_ids(tmp_path: Path) -> None:
    embeds = {f"{i:03d}": torch.randn(1, 16) for i in range(40)}
    captions = [(k, f"quartz {k}") for k in embeds] + [("000", "second caption of 000")]
    pkl = tmp_path / "f.pkl"
    pkl.write_bytes(pickle.dumps([captions, embeds]))
    summary = import_clipcap(pkl, tmp_path / "s", split="0.8,0.1,0.1", seed=3)
    parts = {
        p: json.loads((tmp_path / "s" / p / "conversations.json").read_text())
        for p in ("train", "val", "test")
    }
    ids = {p: {e["image_embedding"] for e in rows} for p, rows in parts.items()}
    assert [len(ids[p]) for p in ("train", "val", "test")] == [32, 4, 4]
    assert not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert sum(len(r) for r in parts.values()) == summary["rows_out"] == 41  # both captions of 000 together
    for p in parts:
        stored = load_file(str(tmp_path / "s" / p / "clip_embeddings.safetensors"))
        assert set(stored) == ids[p]
        assert json.loads((tmp_path / "s" / p / "clipcap_import.json").read_text())["encoder"] == (
            "openai/clip-vit-base-patch32"
        )
    (tmp_path / "held.txt").write_text("003\n007  # noted\n")
    import_clipcap(pkl, tmp_path / "t", test_ids=tmp_path / "held.txt", encoder="some/tower")
    test = json.loads((tmp_path / "t" / "test" / "conversations.json").read_text())
    assert {e["image_embedding"] for e in test} == {"003", "007"}
    assert not (tmp_path / "t" / "val").exists()
    import_clipcap(pkl, tmp_path / "v", test_ids="003,007", split="0.9,0.1")  # the rest: train,val
    val = json.loads((tmp_path / "v" / "val" / "conversations.json").read_text())
    assert len({e["image_embedding"] for e in val}) == 4  # 10% of the 38 others
    with pytest.raises(DataFormatError, match="no captioned embedding"):
        import_clipcap(pkl, tmp_path / "u", test_ids="003,999")
