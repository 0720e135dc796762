"""`data import-clipcap`: a real ThinGPT-style feature pickle imports; a malicious pickle is refused."""

from __future__ import annotations

import json
import pickle
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
