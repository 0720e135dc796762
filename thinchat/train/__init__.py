"""Training: projector alignment (stage 1), LoRA / QLoRA / full instruction tuning (stage 2), export.

Public API: ``thinchat.train.config.load_train_config(yaml, overrides)`` and
``thinchat.train.run.train(config, resume=None)``; ``python -m thinchat train`` is the launcher entry
(``deepspeed --module thinchat train``, ``torchrun -m thinchat train``, ``accelerate launch -m thinchat train``).
"""
