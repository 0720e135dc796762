"""Evaluation and batch captioning: metrics, domain score, report, chart (see docs/evaluation.md).

``evaluate`` is the Python entry point (the quickstart calls it); heavy libraries load inside it.
"""

from thinchat.eval.runner import evaluate

__all__ = ["evaluate"]
