"""`tabswarm convert`: a GGUF file -> a shard directory (ONNX graphs, compact weights, tokenizer, manifest).

Owns the conversion pipeline and its cache. A converted model lives under the cache root
keyed by the GGUF's sha256 (remembered per path, size and mtime, so a cached model is not
hashed again) and the converter version, so set-up converts once. An unsupported GGUF is
refused from its header before anything is hashed. Conversion streams: one layer's float32
weights at a time (to check its blocks and build its graphs), the output table a slice of
rows at a time, so peak memory is about one layer plus one slice, whatever the model's
size; a progress bar counts layers. Writes into a temporary directory and renames it, so
a killed conversion never leaves a half-written shard directory behind.
"""

from __future__ import annotations

import collections
import gc
import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from shards.compact_weights import BLOCK_TYPES, decode_rows, write_weights
from shards.gguf_model import GGUFModel, check_supported
from shards.graphs import COMPUTE_FORMATS, OPSET, build_kv_only, build_layer
from shards.head_graph import HEAD_ACCURACY_LEVEL, build_compact_head, head_blocks
from shards.manifest import (
    FORMAT_VERSION,
    OUTPUT_TABLE,
    TOKEN_TABLE,
    FileEntry,
    LayerEntry,
    Manifest,
    load_manifest,
    native_cache_dir,
    sha256_of,
    verify_files,
)
from shards.tokenizer import build_tokenizer

# 3: row-invariant attention; 4: model families; 5: no Identity mask node; 6: compact weights;
# 7: int8 compute graphs, compact token/output tables (no float32 table), Qwen2; 8: one stream per batch
# entry (new K/V rows written at each entry's positions, so streams with caches of different lengths share a pass)
CONVERTER_VERSION = "10"
WEIGHT_FORMATS = ("gguf", "float32")   # gguf: the GGUF's blocks in layer_NN.weights; float32: inside the graphs
# graph initializer -> GGUF tensor role, for the matrices a compact shard keeps as blocks
MATRIX_ROLES = {"q_weight": "attn_q", "k_weight": "attn_k", "v_weight": "attn_v", "o_weight": "attn_output",
                "gate_weight": "ffn_gate", "up_weight": "ffn_up", "down_weight": "ffn_down"}
HEAD_BOUNDS = "head_bounds.npy"
HEAD_BLOCKS = "head.blocks"   # the head graph's 8-bit codes and scales (external data)
log = logging.getLogger(__name__)


def source_digest(path: Path, cache_root: Path, progress: bool = False) -> str:
    """The GGUF's sha256, remembered in the cache by (path, size, mtime): hashing a 1 GB
    file takes seconds, and a file that changed gets a new entry."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    known_file = cache_root / "digests.json"
    try:
        known = json.loads(known_file.read_text())
    except (OSError, ValueError):   # no cache yet, or a damaged one: hash again
        known = {}
    if key in known:
        return str(known[key])
    digest = hashlib.sha256()
    with path.open("rb") as handle, tqdm(total=stat.st_size, unit="B", unit_scale=True, disable=not progress,
                                         desc=f"hashing {path.name}") as bar:
        while block := handle.read(1 << 22):
            digest.update(block)
            bar.update(len(block))
    known[key] = digest.hexdigest()
    cache_root.mkdir(parents=True, exist_ok=True)
    temporary = known_file.with_suffix(".tmp")
    temporary.write_text(json.dumps(known, indent=1))
    temporary.replace(known_file)
    return known[key]


def cached_shard_dir(gguf_path: Path, cache_root: Path, weights: str = "gguf",
                     progress: bool = False) -> tuple[Path, str]:
    """The shard folder for this GGUF under `cache_root` (the shard cache: see cache_location)."""
    root = cache_root
    source_sha = source_digest(gguf_path, root, progress)
    suffix = "" if weights == "gguf" else f"-{weights}"
    return root / f"{gguf_path.stem}-{source_sha[:16]}-v{CONVERTER_VERSION}{suffix}", source_sha


def convert(gguf_path: Path, out_dir: Path | None = None, progress: bool = True,
            force: bool = False, weights: str = "gguf", *, cache_root: Path) -> tuple[Path, Manifest]:
    """Convert (or reuse the cached conversion of) a GGUF model; returns (directory, manifest).
    `weights`: "gguf" keeps the GGUF's quantized blocks (what tabs download), "float32"
    puts dequantized weights inside the graphs (the format before compact weights).
    `cache_root`: the shard cache (`cache_location.shards_dir`), from the caller's configuration."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weight format {weights!r} is not one of {', '.join(WEIGHT_FORMATS)}")
    gguf_path = Path(gguf_path)
    check_supported(gguf_path)   # from the header alone: an unsupported file is refused at once
    cache_dir, source_sha = cached_shard_dir(gguf_path, cache_root, weights, progress)
    target = Path(out_dir) if out_dir else cache_dir
    if not force and (target / "manifest.json").is_file():
        manifest = load_manifest(target)
        if manifest.source.get("sha256") == source_sha and manifest.weight_format.get("stored") == _stored(weights):
            verify_files(target, manifest, check_hash=False)
            log.info("using cached shards in %s", target)
            return target, manifest
    model = GGUFModel(gguf_path)
    model.tokenizer_data()   # read the vocabulary now, and let the reader's copy go
    gc.collect()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        manifest = _write_shards(model, work, source_sha, progress, weights)
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
        shutil.rmtree(native_cache_dir(target), ignore_errors=True)   # graphs made from the old shards
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


def _write_layers(model: GGUFModel, work: Path, weight_format: str, bar: tqdm,
                  kept_types: collections.Counter[str]) -> tuple[LayerEntry, ...]:
    """Each layer: its weights file and one pair of graphs per compute format. One layer's
    float32 weights are in memory at a time."""
    config = model.config
    formats = COMPUTE_FORMATS if weight_format == "gguf" else ("float32",)
    layers = []
    for index in range(config.layers):
        weights = model.layer_weights(index)
        stem = f"layer_{index:02d}"
        names: dict[str, str] = {}
        weights_file, external = None, None
        if weight_format == "gguf":
            weights_file, external = f"{stem}.weights", stem
            kept_types.update(_write_compact_layer(model, index, weights, work / weights_file).values())
        for compute in formats:
            infix = "" if compute == "float32" else f".{compute}"
            names[compute] = f"{stem}{infix}.onnx"
            names[f"{compute}_kv"] = f"{stem}.kv{infix}.onnx"
            onnx.save_model(build_layer(config, weights, index, external, compute), str(work / names[compute]))
            onnx.save_model(build_kv_only(config, weights, index, external, compute),
                            str(work / names[f"{compute}_kv"]))
        del weights
        layers.append(LayerEntry(index=index, graph=names["float32"], kv_graph=names["float32_kv"],
                                 weights=weights_file, int8_graph=names.get("int8"),
                                 int8_kv_graph=names.get("int8_kv")))
        bar.update(1)
    return tuple(layers)


def _write_tables(model: GGUFModel, work: Path) -> str:
    """The token table (and a separate output matrix) as their GGUF blocks, the head graph
    over 8-bit blocks and its error bounds; returns a description of the head."""
    config = model.config
    tables = [("token_embd.weight", TOKEN_TABLE)] + ([] if config.tied_embeddings
                                                     else [("output.weight", OUTPUT_TABLE)])
    for tensor, file in tables:
        kind, raw, cols = model.raw_rows(tensor)
        if kind not in BLOCK_TYPES:   # a type the tabs' and this decoder lack: keep it as float32
            kind, raw = "F32", np.ascontiguousarray(decode_rows(kind, raw, cols)).view(np.uint8)
        write_weights(work / file, [(tensor.removesuffix(".weight"), kind, raw, cols, False)])
    kind, raw, cols = model.raw_rows(model.output_table)
    codes, scales, bits, zero_point, bounds = head_blocks(kind, raw, lambda rows: decode_rows(kind, rows, cols))
    onnx.save_model(build_compact_head(config, model.output_norm(), codes, scales, bits, zero_point,
                                       work / HEAD_BLOCKS), str(work / "head.onnx"))
    del codes, scales
    np.save(work / HEAD_BOUNDS, bounds)
    exact = "the GGUF's blocks re-laid out" if not bounds[1].any() else f"re-quantized from {kind}, error bounded"
    return f"{bits}-bit blocks of 32 ({exact}), MatMulNBits with int8 activations (accuracy level {HEAD_ACCURACY_LEVEL})"


def _write_shards(model: GGUFModel, work: Path, source_sha: str, progress: bool,
                  weight_format: str = "gguf") -> Manifest:
    config = model.config
    bar = tqdm(total=config.layers + 2, desc=f"converting {model.path.name}", unit="part", disable=not progress)
    kept_types: collections.Counter[str] = collections.Counter()
    layers = _write_layers(model, work, weight_format, bar, kept_types)
    bar.set_postfix_str("token table and head")
    head_format = _write_tables(model, work)
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
    files = {path.name: FileEntry(size=path.stat().st_size, sha256=sha256_of(path))
             for path in sorted(work.iterdir()) if path.is_file()}
    formats = COMPUTE_FORMATS if weight_format == "gguf" else ("float32",)
    manifest = Manifest(
        format_version=FORMAT_VERSION, model=config,
        source={"file": model.path.name, "sha256": source_sha, "converter": CONVERTER_VERSION},
        weight_format={
            "stored": _stored(weight_format),
            "gguf_tensor_types": dict(sorted(type_counts.items())),
            "layer_matrix_types": dict(sorted(kept_types.items())),
            "head": head_format,
            "exact": True,
            "note": ("layer matrices kept as the GGUF's blocks (layer_NN.weights), decoded where they run "
                     "(float32, or int8 per group of 64 for int8 compute); norms in the graphs; no float32 tables"
                     if weight_format == "gguf" else
                     "every GGUF block dequantized exactly to float32 inside the graphs"),
        },
        opset=OPSET, layers=layers, token_table=TOKEN_TABLE, head="head.onnx", tokenizer="tokenizer.json",
        chat_template=template_name, eos_id=token_data.eos_id, bos_id=token_data.bos_id, files=files,
        stop_ids=tuple(token_data.tokens.index(token) for token in token_data.stop_tokens
                       if token in token_data.tokens),
        add_bos=token_data.add_bos and token_data.bos_id is not None,
        output_table=None if config.tied_embeddings else OUTPUT_TABLE, head_weight_error=HEAD_BOUNDS,
        compute_formats=formats,
    )
    manifest.write(work)
    return manifest
