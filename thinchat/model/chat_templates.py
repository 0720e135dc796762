"""Processor-level chat templates for the three turn formats thinchat's language models speak.

Why our own: a Llava processor renders messages whose content is a list of ``{"type": "image"}`` and
``{"type": "text"}`` parts, which the LMs' own tokenizer templates do not understand, and base LMs
(Gemma 3 base, GPT-2) have no template at all. Each assistant turn is wrapped in
``{% generation %}...{% endgeneration %}`` *including* its end-of-turn token, so
``apply_chat_template(..., return_assistant_tokens_mask=True)`` yields exactly the tokens to supervise,
and a fine-tuned model learns to stop. The same template is used for training and inference.
"""

from __future__ import annotations

from typing import Literal

TemplateName = Literal["chatml", "gemma", "plain"]

_CONTENT = (
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<image>\\n' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
)

CHATML = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}{{ '<|im_start|>assistant\\n' }}"
    "{%- generation -%}" + _CONTENT + "{{ '<|im_end|>' }}{%- endgeneration -%}{{ '\\n' }}"
    "{%- else -%}{{ '<|im_start|>' + message['role'] + '\\n' }}" + _CONTENT + "{{ '<|im_end|>\\n' }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Gemma has no system role: a system message is prefixed to the first user turn, as Gemma's own template does.
GEMMA = (
    "{{ bos_token }}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- set ns.system = (message['content'] if message['content'] is string else message['content'][0]['text']) + '\\n\\n' -%}"
    "{%- elif message['role'] == 'assistant' -%}{{ '<start_of_turn>model\\n' }}"
    "{%- generation -%}" + _CONTENT + "{{ '<end_of_turn>' }}{%- endgeneration -%}{{ '\\n' }}"
    "{%- else -%}{{ '<start_of_turn>user\\n' + ns.system }}{%- set ns.system = '' -%}"
    + _CONTENT
    + "{{ '<end_of_turn>\\n' }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

# For LMs without chat tokens (GPT-2, Chinese GPT-2): role prefixes, and the EOS token ends each answer.
PLAIN = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}{{ 'Assistant: ' }}"
    "{%- generation -%}" + _CONTENT + "{{ eos_token }}{%- endgeneration -%}{{ '\\n' }}"
    "{%- elif message['role'] == 'system' -%}" + _CONTENT + "{{ '\\n' }}"
    "{%- else -%}{{ 'User: ' }}" + _CONTENT + "{{ '\\n' }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant: ' }}{%- endif -%}"
)

TEMPLATES: dict[str, str] = {"chatml": CHATML, "gemma": GEMMA, "plain": PLAIN}

#: The token that closes an assistant turn in each format (``None``: the tokenizer's EOS token).
END_OF_TURN: dict[str, str | None] = {"chatml": "<|im_end|>", "gemma": "<end_of_turn>", "plain": None}


def choose_template(tokenizer) -> TemplateName:
    """Pick the turn format the LM was trained with, from the special tokens its vocabulary has."""
    vocab = tokenizer.get_vocab()
    if "<|im_start|>" in vocab and "<|im_end|>" in vocab:
        return "chatml"
    if "<start_of_turn>" in vocab and "<end_of_turn>" in vocab:
        return "gemma"
    return "plain"


def end_of_turn_token(name: str, tokenizer) -> str:
    """The text of the token that ends an assistant turn (used as an extra stop token)."""
    token = END_OF_TURN[name]
    return token if token is not None else tokenizer.eos_token
