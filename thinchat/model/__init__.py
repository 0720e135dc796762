"""The model concern: specs resolved and composed into a Llava checkpoint, and that checkpoint loaded.

* :mod:`thinchat.model.presets`, :mod:`thinchat.model.resolve`, :mod:`thinchat.model.dinov2_onnx`:
  offline presets and spec resolution (preset / directory / ``.gguf`` / hub id);
* :mod:`thinchat.model.compose`: vision tower + causal LM -> ``LlavaForConditionalGeneration`` +
  ``LlavaProcessor`` (``thinchat build``), with :mod:`thinchat.model.projector` (the projector
  variants) and :mod:`thinchat.model.chat_templates` (the processor's chat templates);
* :mod:`thinchat.model.checkpoint`: the Llava / LoRA checkpoint directory format;
* :mod:`thinchat.model.loading`: ``load_pretrained``, the one loader of every checkpoint;
* :mod:`thinchat.model.unwrap`: the Llava model inside peft, DDP or DeepSpeed wrappers.
"""
