"""thinchat: train and use a LLaVA-style chat model on rock thin-section images."""

__version__ = "0.1.0"
