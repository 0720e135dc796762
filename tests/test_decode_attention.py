"""``decode_attention``: generation on a GPU runs attention without cuDNN (no graph build per decode step)."""

from __future__ import annotations

import pytest
import torch

from thinchat.generation import decode_attention


def test_on_cuda_cudnn_attention_is_off_inside_and_restored_after():
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with decode_attention(torch.device("cuda", 0)):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "meta"])
def test_elsewhere_nothing_changes(device):
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with decode_attention(device):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before
