"""The in-process reference executor: the whole model from a shard directory, native onnxruntime.

Owns running shard graphs in one process: `LayerStack` runs a contiguous range of
layers with a per-stream KV cache (the same unit a browser node runs), and
`ReferenceExecutor` chains embedding -> all layers -> head -> sampling. It is the
yardstick the distributed pipeline is held to. It never does network I/O.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shards.footprint import prefill_rows
from shards.layer_stack import (
    CacheMismatch,
    LayerCache,
    LayerReport,
    LayerStack,
    StreamState,
    layer_graph_source,
    layer_session,
    native_graph_file,
)
from shards.manifest import load_manifest, verify_files
from shards.model_ends import ModelEnds, session_options
from shards.sampling import SamplingParams, make_rng, sample_token

__all__ = ["CacheMismatch", "GenerationStep", "LayerCache", "LayerReport", "LayerStack", "ReferenceExecutor",
           "StreamState", "layer_graph_source", "layer_session", "native_graph_file", "session_options"]


@dataclass(frozen=True)
class GenerationStep:
    token: int
    logits: np.ndarray      # (vocab,) the logits the token was sampled from
    seconds: float


class ReferenceExecutor:
    """Embedding, every layer and the head of one model, in this process."""

    def __init__(self, directory: Path, threads: int = 2, verify: bool = True, head: str = "compact",
                 compute: str | None = None) -> None:
        self.directory = Path(directory)
        self.manifest = load_manifest(self.directory)
        if verify:
            verify_files(self.directory, self.manifest)
        self.ends = ModelEnds(self.directory, threads, verify=False, manifest=self.manifest, head=head)
        self.text = self.ends.text
        self.stack = LayerStack(self.directory, self.manifest, 0, self.manifest.model.layers, threads, compute)
        self.compute = self.stack.compute
        self.prefill_rows = prefill_rows(self.manifest.model, self.compute)   # rows per pass, as the tabs run them
        self._next_stream = 0

    def with_head(self, head: str) -> ReferenceExecutor:
        """The same layers (shared, not reloaded) with another head ("compact" or "float32")."""
        other = copy.copy(self)
        other.ends = ModelEnds(self.directory, self.ends.threads, verify=False, manifest=self.manifest, head=head)
        return other

    def embed(self, ids: list[int]) -> np.ndarray:
        return self.ends.embed(ids)  # (1, seq, hidden)

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        return self.ends.logits(hidden)  # (1, seq, vocab)

    def prompt_logits(self, ids: list[int], chunk: int = 256) -> np.ndarray:
        """Logits at every position of `ids` (chunked prefill with the KV cache): (len, vocab)."""
        chunk = min(chunk, self.prefill_rows)
        stream = self._new_stream()
        try:
            rows = []
            for start in range(0, len(ids), chunk):
                piece = ids[start:start + chunk]
                positions = np.arange(start, start + len(piece), dtype=np.int64)[None]
                hidden = self.stack.forward(stream, self.embed(piece), positions)
                rows.append(self.logits(hidden)[0])
            return np.concatenate(rows)
        finally:
            self.stack.release(stream)

    def _new_stream(self) -> int:
        self._next_stream += 1
        return self._next_stream

    def generate(self, prompt_ids: list[int], params: SamplingParams,
                 stop_ids: frozenset[int] | None = None) -> Iterator[GenerationStep]:
        """Yield sampled tokens one by one; stops at EOS (or a stop id) or max_tokens."""
        if not prompt_ids:
            raise ValueError("the prompt has no tokens")
        stop = stop_ids if stop_ids is not None else self.manifest.stop_set
        rng = make_rng(params)
        stream = self._new_stream()
        try:
            started = time.perf_counter()
            for start in range(0, len(prompt_ids), self.prefill_rows):   # the prompt in chunks, as the tabs get it
                piece = prompt_ids[start:start + self.prefill_rows]
                positions = np.arange(start, start + len(piece), dtype=np.int64)[None]
                hidden = self.stack.forward(stream, self.embed(piece), positions)
            position = len(prompt_ids)
            for _ in range(params.max_tokens):
                logits = self.logits(hidden[:, -1:])[0, -1]
                token = sample_token(logits, params, rng)
                now = time.perf_counter()
                yield GenerationStep(token, logits, now - started)
                started = now
                if token in stop:
                    return
                hidden = self.stack.forward(stream, self.embed([token]),
                                            np.array([[position]], dtype=np.int64))
                position += 1
        finally:
            self.stack.release(stream)

    def chat(self, messages: list[dict[str, str]], params: SamplingParams) -> str:
        ids = self.text.encode_chat(messages)
        tokens = [step.token for step in self.generate(ids, params)]
        return self.text.decode(tokens)
