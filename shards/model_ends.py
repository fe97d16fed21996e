"""The parts of a model that stay on the coordinator: embedding, output head, tokenizer.

Owns loading and running those two small graphs with native onnxruntime; the layers
live elsewhere (a LayerStack in-process, or browser tabs). Never does network I/O.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from shards.manifest import Manifest, load_manifest, verify_files
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


class ModelEnds:
    """Embedding, head and text codec of one shard directory."""

    def __init__(self, directory: Path, threads: int = 2, verify: bool = True,
                 manifest: Manifest | None = None) -> None:
        self.directory = Path(directory)
        self.manifest = manifest or load_manifest(self.directory)
        if verify:
            names = [self.manifest.embedding, self.manifest.head, self.manifest.tokenizer]
            names += [name for name in self.manifest.files if name.endswith(".bin")]
            verify_files(self.directory, self.manifest, names)
        options = session_options(threads)
        self.embedding = ort.InferenceSession(str(self.directory / self.manifest.embedding), options,
                                              providers=["CPUExecutionProvider"])
        self.head = ort.InferenceSession(str(self.directory / self.manifest.head), options,
                                         providers=["CPUExecutionProvider"])
        template = self.directory / self.manifest.chat_template if self.manifest.chat_template else None
        self.text = TextCodec.load(self.directory / self.manifest.tokenizer, template,
                                   self.manifest.eos_id, self.manifest.bos_id, self.manifest.add_bos)

    def embed(self, ids: list[int]) -> np.ndarray:
        return self.embedding.run(None, {"input_ids": np.array([ids], dtype=np.int64)})[0]  # (1, seq, hidden)

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        return self.head.run(None, {"hidden": hidden})[0]  # (1, seq, vocab)
