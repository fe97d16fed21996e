"""Token sampling: greedy, temperature, top-k, top-p, seeded. Pure numpy, no I/O.

Shared by the reference executor and the coordinator, so both pick the same token
from the same logits and seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0     # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0               # 0 means no top-k cut
    seed: int | None = None
    max_tokens: int = 128

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:
            raise ValueError("temperature must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")


def make_rng(params: SamplingParams) -> np.random.Generator:
    return np.random.default_rng(params.seed)


def token_distribution(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """The sampler's distribution for one position's logits (vocab,) at temperature > 0:
    (token ids, probabilities), most likely first, after top-k and top-p. Tokens left out
    have probability 0 (what speculative acceptance needs to match plain sampling)."""
    if params.temperature == 0.0:
        raise ValueError("greedy decoding has no distribution to sample from")
    scaled = logits.astype(np.float64) / params.temperature
    order = np.argsort(-scaled, kind="stable")
    if params.top_k:
        order = order[: params.top_k]
    chosen = scaled[order]
    probabilities = np.exp(chosen - chosen[0])
    probabilities /= probabilities.sum()
    if params.top_p < 1.0:
        cumulative = np.cumsum(probabilities)
        keep = int(np.searchsorted(cumulative, params.top_p) + 1)
        order, probabilities = order[:keep], probabilities[:keep] / probabilities[:keep].sum()
    return order, probabilities


def sample_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Pick the next token from one position's logits (vocab,)."""
    if params.temperature == 0.0:
        return int(np.argmax(logits))
    order, probabilities = token_distribution(logits, params)
    return int(order[rng.choice(len(order), p=probabilities)])
