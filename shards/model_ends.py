"""The parts of a model that stay on the coordinator: embedding, output head, tokenizer.

Owns loading and running those two small graphs with native onnxruntime; the layers
live elsewhere (a LayerStack in-process, or browser tabs). Never does network I/O.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from shards.compact_head import CompactHead
from shards.manifest import TOKEN_TABLE, Manifest, load_manifest, verify_files
from shards.tokenizer import TextCodec


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Many sessions (one per layer) each own a thread pool; spinning pools starve each
    # other on few cores (measured: 4.2 ms vs 0.24 ms per layer on 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


HEAD_KINDS = ("compact", "float32")


class ModelEnds:
    """Embedding, head and text codec of one shard directory. `head`: "compact" runs the
    manifest's head (the GGUF's Q8_0 blocks where the converter could keep them),
    "float32" the dequantized table as a MatMul (the same weights, float activations)."""

    def __init__(self, directory: Path, threads: int = 2, verify: bool = True,
                 manifest: Manifest | None = None, head: str = "compact") -> None:
        self.directory, self.threads = Path(directory), threads
        self.manifest = manifest or load_manifest(self.directory)
        if head not in HEAD_KINDS:
            raise ValueError(f"head {head!r} is not one of {', '.join(HEAD_KINDS)}")
        head_graph = self.manifest.float_head if head == "float32" and self.manifest.float_head else self.manifest.head
        if verify:
            names = [self.manifest.embedding, head_graph, self.manifest.tokenizer]
            names += [name for name in self.manifest.files if name.endswith(".bin")]
            verify_files(self.directory, self.manifest, names)
        options = session_options(threads)
        self.embedding = ort.InferenceSession(str(self.directory / self.manifest.embedding), options,
                                              providers=["CPUExecutionProvider"])
        self.head = ort.InferenceSession(str(self.directory / head_graph), options,
                                         providers=["CPUExecutionProvider"])
        self._compact_head = None
        if len(self.head.get_outputs()) > 1:   # a compact head: make its near-top logits exact
            table = np.memmap(self.directory / TOKEN_TABLE, dtype=np.float32, mode="r",
                              shape=(self.manifest.model.vocab, self.manifest.model.hidden))
            self._compact_head = CompactHead(self.head, table)
        template = self.directory / self.manifest.chat_template if self.manifest.chat_template else None
        self.text = TextCodec.load(self.directory / self.manifest.tokenizer, template,
                                   self.manifest.eos_id, self.manifest.bos_id, self.manifest.add_bos)

    def embed(self, ids: list[int]) -> np.ndarray:
        return self.embedding.run(None, {"input_ids": np.array([ids], dtype=np.int64)})[0]  # (1, seq, hidden)

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        if self._compact_head is not None:
            return self._compact_head(hidden)           # (1, seq, vocab)
        return self.head.run(None, {"hidden": hidden})[0]  # (1, seq, vocab)
