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

import onnx
from tqdm import tqdm

from shards.gguf_model import GGUFModel
from shards.graphs import OPSET, build_embedding, build_head, build_kv_only, build_layer
from shards.manifest import (
    FORMAT_VERSION,
    FileEntry,
    LayerEntry,
    Manifest,
    load_manifest,
    sha256_of,
    verify_files,
)
from shards.tokenizer import build_tokenizer

CONVERTER_VERSION = "5"   # 3: row-invariant attention (speculative verify passes); 4: model families; 5: no Identity mask node
TOKEN_TABLE = "token_embedding.bin"
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


def cached_shard_dir(gguf_path: Path, cache_root: Path | None = None) -> tuple[Path, str]:
    source_sha = _source_digest(gguf_path)
    root = cache_root or default_cache_root()
    return root / f"{gguf_path.stem}-{source_sha[:16]}-v{CONVERTER_VERSION}", source_sha


def convert(gguf_path: Path, out_dir: Path | None = None, progress: bool = True,
            force: bool = False) -> tuple[Path, Manifest]:
    """Convert (or reuse the cached conversion of) a GGUF model; returns (directory, manifest)."""
    gguf_path = Path(gguf_path)
    model = GGUFModel(gguf_path)  # validates the file before anything is hashed or written
    cache_dir, source_sha = cached_shard_dir(gguf_path)
    target = Path(out_dir) if out_dir else cache_dir
    if not force and (target / "manifest.json").is_file():
        manifest = load_manifest(target)
        if manifest.source.get("sha256") == source_sha:
            verify_files(target, manifest, check_hash=False)
            log.info("using cached shards in %s", target)
            return target, manifest
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        manifest = _write_shards(model, work, source_sha, progress)
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return target, manifest


def _write_shards(model: GGUFModel, work: Path, source_sha: str, progress: bool) -> Manifest:
    config = model.config
    steps = config.layers + 2
    bar = tqdm(total=steps, desc=f"converting {model.path.name}", unit="part", disable=not progress)
    layers = []
    for index, weights in model.iter_layers():
        graph, kv_graph = f"layer_{index:02d}.onnx", f"layer_{index:02d}.kv.onnx"
        onnx.save_model(build_layer(config, weights, index), str(work / graph))
        onnx.save_model(build_kv_only(config, weights, index), str(work / kv_graph))
        layers.append(LayerEntry(index=index, graph=graph, kv_graph=kv_graph))
        bar.update(1)
    bar.set_postfix_str("embedding and head")
    norm, matrix = model.output_weights()
    (work / TOKEN_TABLE).write_bytes(model.embedding().tobytes())
    if not config.tied_embeddings:
        raise NotImplementedError("untied output matrices are not converted yet")
    del matrix
    onnx.save_model(build_embedding(config, TOKEN_TABLE), str(work / "embedding.onnx"))
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
            "stored": "float32",
            "gguf_tensor_types": dict(sorted(type_counts.items())),
            "exact": True,
            "note": "every GGUF block dequantized exactly to float32 (Q4_1: d*q+m); "
                    "no re-quantization, so the graphs compute the GGUF's own weights",
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
    )
    manifest.write(work)
    return manifest
