"""Data tools: captions in many formats -> LLaVA conversation data; synthetic thin sections."""
