"""Prompts that cannot fit the LM's positions are refused before any heavy work."""

from __future__ import annotations

import pytest

from thinchat.errors import PromptTooLongError
from thinchat.model.compose import check_fits, compose_llava, max_positions
from thinchat.testing import tiny_lm, tiny_tokenizer, tiny_tower


def test_gpt2_position_limit_is_read_from_config():
    lm = tiny_lm("gpt2", vocab_size=100)
    assert max_positions(lm.config) == 256


def test_check_fits_message_names_the_numbers():
    check_fits(2, 256, 400, 1024)
    with pytest.raises(
        PromptTooLongError, match=r"2 image\(s\) x 576 tokens \+ 10 text tokens = 1162 > .*1024"
    ):
        check_fits(2, 576, 10, 1024)


def test_compose_refuses_a_tower_whose_image_tokens_exceed_gpt2_positions():
    tokenizer = tiny_tokenizer("gpt2")
    lm = tiny_lm("gpt2", vocab_size=len(tokenizer) + 1)  # 256 positions
    tower, image_processor = tiny_tower("dinov2", image_size=224)  # 16 x 16 = 256 image tokens
    with pytest.raises(PromptTooLongError, match="smaller --image-size"):
        compose_llava(tower, image_processor, lm, tokenizer)
