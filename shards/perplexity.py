"""Perplexity of a model on a text window: the quality yardstick for formats, codecs, skipping.

Owns the arithmetic (log-softmax, mean negative log-likelihood). Takes a function
that returns logits for a list of token ids, so any executor can be measured the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PerplexityResult:
    tokens: int            # tokens scored (window - 1)
    perplexity: float
    mean_nll: float


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def perplexity(ids: list[int], logits_for: Callable[[list[int]], np.ndarray]) -> PerplexityResult:
    """Score ids[1:] given the prefix; logits_for(ids) returns (len(ids), vocab)."""
    if len(ids) < 2:
        raise ValueError("perplexity needs at least two tokens")
    logits = logits_for(ids)
    log_probs = log_softmax(logits[:-1])
    targets = np.asarray(ids[1:])
    nll = -log_probs[np.arange(len(targets)), targets]
    mean = float(nll.mean())
    return PerplexityResult(tokens=len(targets), perplexity=math.exp(mean), mean_nll=mean)
