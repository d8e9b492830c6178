"""lightning-asr: adapting speech foundation models to code-switching speech without forgetting."""

__version__ = "0.1.0"
