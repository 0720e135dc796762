"""ClipCap checkpoints as first-class thinchat models (ThinGPT data end to end).

A ClipCap checkpoint is a Llava checkpoint (a LoRA adapter on the base, or the base itself with a
frozen LM) plus a prefix mapping from one pooled image embedding to ``k`` LM input embeddings:

* :mod:`thinchat.clipcap.prefix`: the prefix MLP and its files (``clipcap_prefix.safetensors/.json``);
* :mod:`thinchat.clipcap.data`: the directory ``thinchat data import-clipcap`` writes, tokenisation;
* :mod:`thinchat.clipcap.encoder`: the tower that turns a new image into the pooled embedding;
* :mod:`thinchat.clipcap.model`: the adapter that presents the whole as a Llava + processor pair, so
  ``thinchat.model.loading.load_pretrained`` returns it and the chat engine, ``thinchat eval`` and
  ``thinchat caption`` drive it through their one generation path;
* :mod:`thinchat.clipcap.train`: the ``clipcap`` training stage (``thinchat train``), which the stage
  dispatch (``thinchat.train.stages``) reaches with one import. It alone builds on ``thinchat.train``
  (the shared trainer, checkpoints, LoRA targets), so the layer table places it with training; nothing
  else here imports it.
"""

from thinchat.clipcap.prefix import PREFIX_CONFIG, PREFIX_WEIGHTS, ClipCapPrefix, is_clipcap_dir

__all__ = ["PREFIX_CONFIG", "PREFIX_WEIGHTS", "ClipCapPrefix", "is_clipcap_dir"]
