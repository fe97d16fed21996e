"""Which drafted tokens a verify pass accepts. Pure: logits and drafts in, tokens out.

A verify pass ran rows [last token, d1 .. dk] and produced logits (k + 1, vocab): row j
is the model's prediction for the token after row j's id, i.e. for draft d(j+1), and
row k predicts the token after the last draft (the "bonus" token).

- **Greedy**: accept d(j+1) while it is row j's argmax; the first disagreement is
  replaced by that argmax (the token plain decoding would have produced). With row-
  invariant layer graphs (`shards/graphs.py`) the logits are bitwise the ones one-row
  decoding gives, so the output is identical token for token.
- **Sampled** (temperature > 0): the drafts are deterministic, so draft x is accepted
  with probability p(x) under the sampler's own distribution (temperature, top-k, top-p);
  on rejection the token is drawn from p with x removed, renormalised. Each emitted token
  is then distributed exactly as plain sampling would draw it (the speculative sampling
  rule of Leviathan et al. / Chen et al. for a point-mass draft distribution).

Never touches sockets or the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shards.sampling import SamplingParams, sample_token, token_distribution


@dataclass(frozen=True)
class Verdict:
    accepted: int               # drafts accepted (a prefix of them)
    tokens: tuple[int, ...]     # accepted drafts, then the corrected or bonus token


def accept_drafts(logits: np.ndarray, drafts: tuple[int, ...], params: SamplingParams,
                  rng: np.random.Generator) -> Verdict:
    """logits: (len(drafts) + 1, vocab), the verify pass's last rows."""
    if logits.shape[0] != len(drafts) + 1:
        raise ValueError(f"{logits.shape[0]} logit rows for {len(drafts)} drafts")
    for index, draft in enumerate(drafts):
        row = logits[index]
        if params.temperature == 0.0:
            choice = int(np.argmax(row))
            if choice != draft:
                return Verdict(index, (*drafts[:index], choice))
            continue
        ids, probabilities = token_distribution(row, params)
        where = np.flatnonzero(ids == draft)
        p_draft = float(probabilities[where[0]]) if where.size else 0.0
        if rng.random() < p_draft:
            continue
        # Rejected: draw from p without the draft (renormalised); p_draft < 1 here.
        rest = probabilities.copy()
        if where.size:
            rest[where[0]] = 0.0
        rest /= rest.sum()
        return Verdict(index, (*drafts[:index], int(ids[rng.choice(len(ids), p=rest)])))
    return Verdict(len(drafts), (*drafts, sample_token(logits[-1], params, rng)))
