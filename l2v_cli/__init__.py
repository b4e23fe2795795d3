"""l2v: turn decoder-only LLMs into text encoders (LLM2Vec method)."""

__version__ = "0.1.0"
