"""The parts of a model that stay on the coordinator: embedding, output head, tokenizer.

Owns looking token rows up and running the head; the layers live elsewhere (a LayerStack
in-process, or browser tabs). Holds no float32 copy of any table: the embedding decodes the
rows a step needs from the GGUF's blocks (memory-mapped), and the head multiplies 8-bit
blocks, recomputing its near-top logits exactly from decoded rows (`compact_head`).
`head="float32"` decodes the whole output table once instead (tests and comparisons).
Never does network I/O.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from shards.compact_head import CompactHead
from shards.compact_weights import CompactRows
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
    # No per-session arena: each session's arena keeps its largest pass's intermediates (an
    # int8 prefill's per-group sums are (groups, rows, outputs)), and 28 layer sessions kept
    # ~20 GB that way. Returned memory is reused by the next session; decode measured no slower.
    options.enable_cpu_mem_arena = False
    return options


HEAD_KINDS = ("compact", "float32")


class ModelEnds:
    """Embedding, head and text codec of one shard directory. `head`: "compact" runs the
    8-bit head with exact near-top logits; "float32" multiplies the decoded table."""

    def __init__(self, directory: Path, threads: int = 2, verify: bool = True,
                 manifest: Manifest | None = None, head: str = "compact") -> None:
        self.directory, self.threads = Path(directory), threads
        self.manifest = manifest or load_manifest(self.directory)
        if head not in HEAD_KINDS:
            raise ValueError(f"head {head!r} is not one of {', '.join(HEAD_KINDS)}")
        manifest = self.manifest
        output_file = manifest.output_table or manifest.token_table
        if verify:   # everything but the layers (the tabs check those they download)
            verify_files(self.directory, manifest, [name for name in manifest.files if not name.startswith("layer_")])
        self.token_rows = CompactRows(self.directory / manifest.token_table)
        self.output_rows = CompactRows(self.directory / output_file) if manifest.output_table else self.token_rows
        self.embedding_scale = np.float32(manifest.model.embedding_scale)
        self.head_kind = head
        self._float_table: np.ndarray | None = None
        self._compact_head: CompactHead | None = None
        if head == "float32":
            self._float_table = self.output_rows.decode_all()            # (vocab, hidden)
            self._norm = ort.InferenceSession(str(self.directory / manifest.head), session_options(threads),
                                              providers=["CPUExecutionProvider"])
        else:
            session = ort.InferenceSession(str(self.directory / manifest.head), session_options(threads),
                                           providers=["CPUExecutionProvider"])
            assert manifest.head_weight_error is not None
            bounds = np.load(self.directory / manifest.head_weight_error, mmap_mode="r")
            self._compact_head = CompactHead(session, bounds, self.output_rows)
        template = self.directory / manifest.chat_template if manifest.chat_template else None
        self.text = TextCodec.load(self.directory / manifest.tokenizer, template,
                                   manifest.eos_id, manifest.bos_id, manifest.add_bos)

    def embed(self, ids: list[int]) -> np.ndarray:
        rows = self.token_rows(ids)                                        # (seq, hidden)
        if self.embedding_scale != 1.0:
            rows *= self.embedding_scale
        return rows[None]                                                  # (1, seq, hidden)

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        if self._compact_head is not None:
            return self._compact_head(hidden)                              # (1, seq, vocab)
        assert self._float_table is not None
        _, normed = self._norm.run(None, {"hidden": hidden})              # the head graph's RMSNorm
        return normed @ self._float_table.T                                # (1, seq, vocab)
