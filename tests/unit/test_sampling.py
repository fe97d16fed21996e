from __future__ import annotations

import numpy as np
import pytest

from shards.sampling import SamplingParams, make_rng, sample_token


def test_greedy_takes_argmax():
    logits = np.array([0.1, 3.0, 2.9, -1.0], dtype=np.float32)
    assert sample_token(logits, SamplingParams(), make_rng(SamplingParams())) == 1


def test_top_k_one_is_greedy_even_when_hot():
    logits = np.array([0.1, 3.0, 2.9, -1.0], dtype=np.float32)
    params = SamplingParams(temperature=5.0, top_k=1, seed=0)
    rng = make_rng(params)
    assert {sample_token(logits, params, rng) for _ in range(50)} == {1}


def test_top_p_keeps_only_the_nucleus():
    logits = np.log(np.array([0.6, 0.3, 0.05, 0.05]))
    params = SamplingParams(temperature=1.0, top_p=0.8, seed=1)
    rng = make_rng(params)
    assert {sample_token(logits, params, rng) for _ in range(300)} == {0, 1}


def test_same_seed_same_tokens():
    logits = np.random.default_rng(0).standard_normal(100)
    params = SamplingParams(temperature=1.0, seed=42)
    first, second = make_rng(params), make_rng(params)
    assert [sample_token(logits, params, first) for _ in range(20)] == \
        [sample_token(logits, params, second) for _ in range(20)]


@pytest.mark.parametrize("bad", [{"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -2},
                                 {"max_tokens": 0}])
def test_invalid_parameters_are_rejected(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)
