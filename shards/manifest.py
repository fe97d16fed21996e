"""The shard directory's manifest: what files exist, their sizes and sha256, the model config.

Owns `manifest.json` (reading, writing, verifying). A manifest is a frozen dataclass;
verification raises ShardIntegrityError naming the file that is missing or wrong.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shards.errors import ShardIntegrityError
from shards.model_config import ModelConfig

FORMAT_VERSION = 3
MANIFEST_NAME = "manifest.json"
TOKEN_TABLE = "token_table.weights"     # the GGUF's token table as its own blocks (embedding; tied head)
OUTPUT_TABLE = "output_table.weights"   # a separate output matrix as its own blocks (untied head)


def native_cache_dir(directory: Path) -> Path:
    """Where self-contained layer graphs made from a shard directory are kept for native runs
    (next to it, never inside: the shard directory is the converter's, checked by its manifest)."""
    directory = Path(directory).resolve()
    return directory.parent / ".native" / directory.name


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclass(frozen=True)
class LayerEntry:
    index: int
    graph: str      # full layer, float32 compute
    kv_graph: str   # K/V-only computation, for a skipped layer (float32 compute)
    weights: str | None = None   # compact weights file every graph takes its matrices from
    int8_graph: str | None = None      # the same two graphs computing with int8 matrices
    int8_kv_graph: str | None = None

    def graphs(self, compute: str) -> tuple[str, str]:
        """(full graph, K/V-only graph) of a compute format ("float32" or "int8")."""
        if compute == "int8":
            if self.int8_graph is None or self.int8_kv_graph is None:
                raise ShardIntegrityError(f"layer {self.index} has no int8 graphs: re-run `tabswarm convert`")
            return self.int8_graph, self.int8_kv_graph
        return self.graph, self.kv_graph


@dataclass(frozen=True)
class Manifest:
    format_version: int
    model: ModelConfig
    source: dict[str, Any]
    weight_format: dict[str, Any]
    opset: int
    layers: tuple[LayerEntry, ...]
    token_table: str                 # compact weights file: the token table's GGUF blocks
    head: str                        # the head graph (compact: MatMulNBits blocks; see compact_head)
    tokenizer: str
    chat_template: str | None        # None: a base model (its GGUF has no chat template)
    eos_id: int
    bos_id: int | None
    files: dict[str, FileEntry] = field(default_factory=dict)
    stop_ids: tuple[int, ...] = ()   # besides EOS: tokens that end an answer (Gemma: <end_of_turn>)
    add_bos: bool = False            # plain prompts start with BOS (chat templates write their own)
    output_table: str | None = None  # a separate output matrix's blocks (None: tied to the token table)
    head_weight_error: str | None = None   # (vocab, blocks) float32 bound of |table - head blocks|, when re-quantized
    compute_formats: tuple[str, ...] = ("float32",)

    @property
    def stop_set(self) -> frozenset[int]:
        """Every token id that ends generation."""
        return frozenset({self.eos_id, *self.stop_ids})

    @property
    def default_compute(self) -> str:
        """The compute format tabs use unless told otherwise: the family's measured choice
        (a policy, read now rather than frozen into shards converted earlier)."""
        from shards.families import family_for

        wanted = family_for(self.model.architecture).default_compute
        return wanted if wanted in self.compute_formats else "float32"

    @property
    def base_model(self) -> bool:
        return self.chat_template is None

    def layer_files(self, index: int, compute: str | None = None) -> list[str]:
        """Every file a node holding this layer needs (in the default compute format)."""
        entry = self.layers[index]
        return [*entry.graphs(compute or self.default_compute)] + ([entry.weights] if entry.weights else [])

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "model": self.model.to_json(),
            "source": self.source,
            "weight_format": self.weight_format,
            "opset": self.opset,
            "layers": [vars(entry) for entry in self.layers],
            "token_table": self.token_table,
            "head": self.head,
            "tokenizer": self.tokenizer,
            "chat_template": self.chat_template,
            "eos_id": self.eos_id,
            "bos_id": self.bos_id,
            "files": {name: vars(entry) for name, entry in sorted(self.files.items())},
            "stop_ids": list(self.stop_ids),
            "add_bos": self.add_bos,
            "output_table": self.output_table,
            "head_weight_error": self.head_weight_error,
            "compute_formats": list(self.compute_formats),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ShardIntegrityError(
                f"manifest format version {version!r} is not supported (expected {FORMAT_VERSION}); "
                "re-run `tabswarm convert`"
            )
        return cls(
            format_version=version,
            model=ModelConfig.from_json(data["model"]),
            source=data["source"],
            weight_format=data["weight_format"],
            opset=data["opset"],
            layers=tuple(LayerEntry(**entry) for entry in data["layers"]),
            token_table=data["token_table"],
            head=data["head"],
            tokenizer=data["tokenizer"],
            chat_template=data.get("chat_template"),
            eos_id=data["eos_id"],
            bos_id=data.get("bos_id"),
            files={name: FileEntry(**entry) for name, entry in data["files"].items()},
            stop_ids=tuple(data.get("stop_ids", ())),
            add_bos=bool(data.get("add_bos", False)),
            output_table=data.get("output_table"),
            head_weight_error=data.get("head_weight_error"),
            compute_formats=tuple(data.get("compute_formats", ("float32",))),
        )

    def write(self, directory: Path) -> None:
        (directory / MANIFEST_NAME).write_text(json.dumps(self.to_json(), indent=1) + "\n")


def load_manifest(directory: Path) -> Manifest:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ShardIntegrityError(f"{directory} has no {MANIFEST_NAME}: run `tabswarm convert` first")
    try:
        data = json.loads(path.read_text())
        return Manifest.from_json(data)
    except (json.JSONDecodeError, KeyError, TypeError) as error:  # hand-edited or half-written manifest
        raise ShardIntegrityError(f"{path} is not a valid manifest: {error}") from error


def verify_files(directory: Path, manifest: Manifest, names: list[str] | None = None,
                 check_hash: bool = True) -> None:
    """Check each listed file's size (and sha256) against the manifest."""
    for name in names if names is not None else list(manifest.files):
        entry = manifest.files.get(name)
        if entry is None:
            raise ShardIntegrityError(f"{name} is not listed in {directory / MANIFEST_NAME}")
        path = Path(directory) / name
        if not path.is_file():
            raise ShardIntegrityError(f"shard file missing: {path}")
        size = path.stat().st_size
        if size != entry.size:
            raise ShardIntegrityError(
                f"shard file {path} has {size} bytes, the manifest says {entry.size} (truncated or replaced)"
            )
        if check_hash and sha256_of(path) != entry.sha256:
            raise ShardIntegrityError(f"shard file {path} fails its sha256 check (corrupt or replaced)")
