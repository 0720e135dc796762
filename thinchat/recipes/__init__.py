"""The recipes: whole runs made of the library's steps (the top layer, beside ``thinchat/commands/``).

``recipe.py`` is the shared build -> replay -> stage 1 -> stage 2 -> report sequence, ``quickstart.py`` runs
it on synthetic slides (``thinchat quickstart``), ``finetune.py`` on the user's captions or dataset
(``thinchat finetune``).
"""
