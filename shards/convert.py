"""`tabswarm convert`: a GGUF file -> a shard directory (ONNX graphs, tokenizer, manifest).

Owns the conversion pipeline and its cache: a converted model lives under the cache
root keyed by the GGUF's sha256 and the converter version, so set-up converts once.
Writes into a temporary directory and renames it, so a killed conversion never
leaves a half-written shard directory behind.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from shards.compact_weights import BLOCK_TYPES, decode_rows, write_weights
from shards.gguf_model import GGUFModel
from shards.graphs import (
    HEAD_ACCURACY_LEVEL,
    HEAD_BLOCK_TYPES,
    OPSET,
    build_compact_head,
    build_embedding,
    build_head,
    build_kv_only,
    build_layer,
)
from shards.manifest import (
    FORMAT_VERSION,
    TOKEN_TABLE,
    FileEntry,
    LayerEntry,
    Manifest,
    load_manifest,
    sha256_of,
    verify_files,
)
from shards.tokenizer import build_tokenizer

CONVERTER_VERSION = "6"   # 3: row-invariant attention (speculative verify passes); 4: model families; 5: no Identity mask node; 6: compact weights
WEIGHT_FORMATS = ("gguf", "float32")   # gguf: the GGUF's blocks in layer_NN.weights; float32: inside the graphs
# graph initializer -> GGUF tensor role, for the matrices a compact shard keeps as blocks
MATRIX_ROLES = {"q_weight": "attn_q", "k_weight": "attn_k", "v_weight": "attn_v", "o_weight": "attn_output",
                "gate_weight": "ffn_gate", "up_weight": "ffn_up", "down_weight": "ffn_down"}
FLOAT_HEAD = "head.float32.onnx"   # the float32 head next to a compact one (`--head float32`)
log = logging.getLogger(__name__)


def default_cache_root() -> Path:
    root = os.environ.get("TABSWARM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tabswarm"
    )
    return Path(root) / "shards"


def _source_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def cached_shard_dir(gguf_path: Path, cache_root: Path | None = None,
                     weights: str = "gguf") -> tuple[Path, str]:
    source_sha = _source_digest(gguf_path)
    root = cache_root or default_cache_root()
    suffix = "" if weights == "gguf" else f"-{weights}"
    return root / f"{gguf_path.stem}-{source_sha[:16]}-v{CONVERTER_VERSION}{suffix}", source_sha


def convert(gguf_path: Path, out_dir: Path | None = None, progress: bool = True,
            force: bool = False, weights: str = "gguf") -> tuple[Path, Manifest]:
    """Convert (or reuse the cached conversion of) a GGUF model; returns (directory, manifest).
    `weights`: "gguf" keeps the GGUF's quantized blocks (what tabs download), "float32"
    puts dequantized weights inside the graphs (the format before compact weights)."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weight format {weights!r} is not one of {', '.join(WEIGHT_FORMATS)}")
    gguf_path = Path(gguf_path)
    model = GGUFModel(gguf_path)  # validates the file before anything is hashed or written
    cache_dir, source_sha = cached_shard_dir(gguf_path, weights=weights)
    target = Path(out_dir) if out_dir else cache_dir
    if not force and (target / "manifest.json").is_file():
        manifest = load_manifest(target)
        if manifest.source.get("sha256") == source_sha and manifest.weight_format.get("stored") == _stored(weights):
            verify_files(target, manifest, check_hash=False)
            log.info("using cached shards in %s", target)
            return target, manifest
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        manifest = _write_shards(model, work, source_sha, progress, weights)
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return target, manifest


def _stored(weights: str) -> str:
    return "gguf-blocks" if weights == "gguf" else "float32"


def _write_compact_layer(model: GGUFModel, index: int, weights: dict, path: Path) -> dict[str, str]:
    """layer_NN.weights: each matrix as the GGUF stores it, or as F32 where the GGUF's type is
    not kept or the family's preparation is not a row move; returns {initializer: type}."""
    raw = model.layer_raw_matrices(index, tuple(MATRIX_ROLES.values()))
    tensors = []
    for name, role in MATRIX_ROLES.items():
        kind, rows, cols = raw[role]
        if kind not in BLOCK_TYPES or not np.array_equal(decode_rows(kind, rows, cols), weights[role]):
            kind, rows = "F32", np.ascontiguousarray(weights[role], dtype=np.float32).view(np.uint8)
        tensors.append((name, kind, rows, cols, True))
    return {entry.name: entry.type for entry in write_weights(path, tensors)}


def _write_shards(model: GGUFModel, work: Path, source_sha: str, progress: bool,
                  weight_format: str = "gguf") -> Manifest:
    config = model.config
    steps = config.layers + 2
    bar = tqdm(total=steps, desc=f"converting {model.path.name}", unit="part", disable=not progress)
    layers: list[LayerEntry] = []
    kept_types: collections.Counter[str] = collections.Counter()
    for index, weights in model.iter_layers():
        stem = f"layer_{index:02d}"
        graph, kv_graph = f"{stem}.onnx", f"{stem}.kv.onnx"
        weights_file, external = None, None
        if weight_format == "gguf":
            weights_file, external = f"{stem}.weights", stem
            kept_types.update(_write_compact_layer(model, index, weights, work / weights_file).values())
        onnx.save_model(build_layer(config, weights, index, external), str(work / graph))
        onnx.save_model(build_kv_only(config, weights, index, external), str(work / kv_graph))
        layers.append(LayerEntry(index=index, graph=graph, kv_graph=kv_graph, weights=weights_file))
        bar.update(1)
    bar.set_postfix_str("embedding and head")
    norm, matrix = model.output_weights()
    (work / TOKEN_TABLE).write_bytes(model.embedding().tobytes())
    if not config.tied_embeddings:
        raise NotImplementedError("untied output matrices are not converted yet")
    del matrix
    onnx.save_model(build_embedding(config, TOKEN_TABLE), str(work / "embedding.onnx"))
    table_kind, table_rows, _ = model.raw_rows("token_embd.weight")
    if weight_format == "gguf" and table_kind in HEAD_BLOCK_TYPES:
        head_format = f"{table_kind} blocks, MatMulNBits with int8 activations (accuracy level {HEAD_ACCURACY_LEVEL})"
        onnx.save_model(build_compact_head(config, norm, table_kind, table_rows), str(work / "head.onnx"))
        onnx.save_model(build_head(config, norm, TOKEN_TABLE), str(work / FLOAT_HEAD))
    else:
        head_format = "float32 MatMul"
        onnx.save_model(build_head(config, norm, TOKEN_TABLE), str(work / "head.onnx"))
    bar.update(1)
    bar.set_postfix_str("tokenizer")
    token_data = model.tokenizer_data()
    build_tokenizer(token_data).save(str(work / "tokenizer.json"))
    template_name = None
    if token_data.chat_template:
        template_name = "chat_template.jinja"
        (work / template_name).write_text(token_data.chat_template)
    bar.update(1)
    bar.close()

    type_counts = collections.Counter(model.tensor_types().values())
    files = {
        path.name: FileEntry(size=path.stat().st_size, sha256=sha256_of(path))
        for path in sorted(work.iterdir()) if path.is_file()
    }
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        model=config,
        source={"file": model.path.name, "sha256": source_sha, "converter": CONVERTER_VERSION},
        weight_format={
            "stored": _stored(weight_format),
            "gguf_tensor_types": dict(sorted(type_counts.items())),
            "layer_matrix_types": dict(sorted(kept_types.items())),
            "head": head_format,
            "exact": True,
            "note": ("layer matrices kept as the GGUF's blocks (layer_NN.weights), decoded to float32 "
                     "where they run; norms and tables float32 in the graphs; no re-quantization"
                     if weight_format == "gguf" else
                     "every GGUF block dequantized exactly to float32 (Q4_1: d*q+m); "
                     "no re-quantization, so the graphs compute the GGUF's own weights"),
        },
        opset=OPSET,
        layers=tuple(layers),
        embedding="embedding.onnx",
        head="head.onnx",
        tokenizer="tokenizer.json",
        chat_template=template_name,
        eos_id=token_data.eos_id,
        bos_id=token_data.bos_id,
        files=files,
        stop_ids=tuple(token_data.tokens.index(token) for token in token_data.stop_tokens),
        add_bos=token_data.add_bos and token_data.bos_id is not None,
        float_head=FLOAT_HEAD if (work / FLOAT_HEAD).is_file() else None,
    )
    manifest.write(work)
    return manifest
