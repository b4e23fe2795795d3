"""Shared test setup: tiny models run fastest on one thread (and other processes may share the cores)."""

import os

import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)
