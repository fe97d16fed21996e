"""Compact layer weights: the GGUF's own quantized blocks, in one file per layer.

Owns the `.weights` file format (spec: docs/weight_format.md), writing it, decoding it
to float32 and putting the decoded matrices into a layer graph whose big initializers
are external. The decoder is the `gguf` package's reference dequantizer, so a compact
shard computes exactly the weights a float32 shard holds; the browser's decoder
(worker_web/compact_weights.js) is pinned to it by shared vectors (tests/vectors).
Never opens a GGUF file and never builds graphs.

File: b"TSWQ", u32 version, u32 header length, a JSON header
{"tensors": [{"name", "type", "rows", "cols", "offset", "length", "transpose"}]},
zero padding to a multiple of 16, then the tensors' bytes (offsets from there).
A tensor is `rows` rows of `cols` values stored as GGUF blocks of `type` along each row;
`transpose` says the graph wants it as (cols, rows).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from shards.errors import ShardIntegrityError
from shards.int8 import INT8_CODES, INT8_SCALES, int8_group, quantize_int8

MAGIC = b"TSWQ"
VERSION = 1
ALIGNMENT = 16
# GGUF block types kept as they are (elements per block, bytes per block); any other
# type is stored as F32 (dequantized by the gguf package at conversion).
BLOCK_TYPES = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2),
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
    "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
}


@dataclass(frozen=True)
class CompactTensor:
    name: str        # the graph initializer it fills
    type: str        # a BLOCK_TYPES key
    rows: int
    cols: int        # values per row (the GGUF's fastest dimension)
    offset: int      # from the start of the data section
    length: int
    transpose: bool  # the graph wants (cols, rows)


def row_bytes(kind: str, cols: int) -> int:
    elements, size = BLOCK_TYPES[kind]
    if cols % elements:
        raise ValueError(f"a {kind} row of {cols} values is not a whole number of blocks")
    return cols // elements * size


def write_weights(path: Path, tensors: list[tuple[str, str, np.ndarray, int, bool]]) -> list[CompactTensor]:
    """Write (name, type, raw rows (rows, row bytes) uint8, cols, transpose) tensors."""
    entries, chunks, offset = [], [], 0
    for name, kind, raw, cols, transpose in tensors:
        data = np.ascontiguousarray(raw, dtype=np.uint8)
        if data.shape[1] != row_bytes(kind, cols):
            raise ValueError(f"{name}: {data.shape[1]} bytes per row, a {kind} row of {cols} needs "
                             f"{row_bytes(kind, cols)}")
        entries.append(CompactTensor(name, kind, data.shape[0], cols, offset, data.nbytes, transpose))
        chunks.append(data.tobytes())
        padding = -data.nbytes % ALIGNMENT
        chunks.append(b"\0" * padding)
        offset += data.nbytes + padding
    header = json.dumps({"tensors": [asdict(entry) for entry in entries]}).encode()
    prefix = MAGIC + struct.pack("<II", VERSION, len(header)) + header
    prefix += b"\0" * (-len(prefix) % ALIGNMENT)
    with Path(path).open("wb") as handle:
        handle.write(prefix)
        for chunk in chunks:
            handle.write(chunk)
    return entries


def read_header(data: bytes | memoryview | np.ndarray) -> tuple[list[CompactTensor], int]:
    """(tensors, start of the data section); ShardIntegrityError on anything malformed."""
    if len(data) < 12 or bytes(data[:4]) != MAGIC:
        raise ShardIntegrityError("not a tabswarm weights file (bad magic)")
    version, length = struct.unpack("<II", bytes(data[4:12]))
    if version != VERSION:
        raise ShardIntegrityError(f"weights file version {version} is not supported (expected {VERSION})")
    try:
        header = json.loads(bytes(data[12:12 + length]))
        tensors = [CompactTensor(**entry) for entry in header["tensors"]]
    except (ValueError, KeyError, TypeError) as error:   # a truncated or hand-edited header
        raise ShardIntegrityError(f"weights file header is malformed: {error}") from error
    start = 12 + length + (-(12 + length) % ALIGNMENT)
    for tensor in tensors:
        if tensor.type not in BLOCK_TYPES or tensor.length != tensor.rows * row_bytes(tensor.type, tensor.cols) \
                or start + tensor.offset + tensor.length > len(data):
            raise ShardIntegrityError(f"weights file entry {tensor.name} does not fit its type or the file")
    return tensors, start


def decode_rows(kind: str, raw: np.ndarray, cols: int) -> np.ndarray:
    """(rows, row bytes) uint8 blocks -> (rows, cols) float32, by the gguf reference decoder."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    if kind == "F32":
        return raw.view(np.float32).reshape(raw.shape[0], cols).copy()
    values = dequantize(raw, GGMLQuantizationType[kind])
    return np.ascontiguousarray(values.reshape(raw.shape[0], cols), dtype=np.float32)


class LazyWeights(Mapping[str, np.ndarray]):
    """A weights file's tensors as float32 (in the layout its graph wants), each decoded when
    first read, so a caller that turns them into something smaller one at a time (int8
    codes) never holds a whole large layer as float32."""

    def __init__(self, data: bytes) -> None:
        self._tensors, self._start = read_header(data)
        self._buffer = np.frombuffer(data, dtype=np.uint8)
        self._by_name = {tensor.name: tensor for tensor in self._tensors}

    def __getitem__(self, name: str) -> np.ndarray:
        tensor = self._by_name[name]
        raw = self._buffer[self._start + tensor.offset:self._start + tensor.offset + tensor.length]
        values = decode_rows(tensor.type, raw.reshape(tensor.rows, -1), tensor.cols)
        return np.ascontiguousarray(values.T) if tensor.transpose else values

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)


def decode_weights(data: bytes) -> dict[str, np.ndarray]:
    """Every tensor of a weights file as float32, in the layout its graph wants."""
    return dict(LazyWeights(data))


def external_location(graph_stem: str, name: str) -> str:
    """The external-data location a layer graph gives a compact tensor ('layer_03.q_weight')."""
    return f"{graph_stem}.{name}"


def layer_initializers(data: bytes, stem: str, compute: str) -> dict[str, bytes]:
    """A weights file -> {external-data location: bytes} for graphs computing in `compute`:
    what a tab builds (worker_web/int8_weights.js `layerInitializers`, pinned to this by
    shards/vectors/int8.json). int8: 'stem.name#int8' codes and 'stem.name#scales' per matrix
    whose inputs a group divides; every other matrix 'stem.name' as float32."""
    out = {}
    for name, matrix in LazyWeights(data).items():
        location = external_location(stem, name)
        group = int8_group(matrix.shape[0]) if compute == "int8" else None
        if group is None:
            out[location] = matrix.tobytes()
            continue
        codes, scales = quantize_int8(matrix, group)
        out[location + INT8_CODES] = codes.tobytes()
        out[location + INT8_SCALES] = scales.tobytes()
    return out


def initializer_values(model: onnx.ModelProto, weights: Mapping[str, np.ndarray], graph_name: str = "graph"
                       ) -> dict[str, np.ndarray]:
    """The values of a graph's external initializers, from its layer's decoded weights:
    a float32 matrix as it is (location 'layer_NN.q_weight'), or its int8 codes and scales
    ('…#int8', '…#scales', by shards.int8's rule; each matrix quantized once)."""
    values: dict[str, np.ndarray] = {}
    quantized: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for initializer in model.graph.initializer:
        if initializer.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next(entry.value for entry in initializer.external_data if entry.key == "location")
        matrix, _, variant = location.split(".", 1)[-1].partition("#")
        if matrix not in weights:
            raise ShardIntegrityError(f"{graph_name} needs {matrix}, which its weights file lacks")
        if variant:
            if matrix not in quantized:
                floats = weights[matrix]   # decoded here (LazyWeights), dropped once quantized
                quantized[matrix] = quantize_int8(floats, int8_group(floats.shape[0]) or 0)
                del floats
            value = quantized[matrix][0 if f"#{variant}" == INT8_CODES else 1]
        else:
            value = weights[matrix]
        if tuple(value.shape) != tuple(initializer.dims):
            raise ShardIntegrityError(f"{initializer.name}: weights file gives {value.shape}, {graph_name} wants "
                                      f"{tuple(initializer.dims)}")
        values[initializer.name] = value
    return values


def graph_with_weights(graph_path: Path, weights: Mapping[str, np.ndarray]) -> bytes:
    """A layer graph's bytes with its external initializers filled from decoded weights."""
    model = onnx.load(str(graph_path), load_external_data=False)
    values = initializer_values(model, weights, graph_path.name)
    for initializer in model.graph.initializer:
        if initializer.name in values:
            del initializer.external_data[:]
            initializer.data_location = onnx.TensorProto.DEFAULT
            initializer.raw_data = values[initializer.name].tobytes()
    return model.SerializeToString()


class CompactRows:
    """One tensor of a weights file (e.g. the token table), memory-mapped as its GGUF
    blocks; rows are decoded on demand by the gguf reference decoder, so a lookup gives
    exactly the values a float32 table would hold without ever holding that table."""

    def __init__(self, path: Path, name: str | None = None) -> None:
        mapped = np.memmap(path, dtype=np.uint8, mode="r")
        tensors, start = read_header(mapped)
        tensor = next((entry for entry in tensors if name is None or entry.name == name), None)
        if tensor is None:
            raise ShardIntegrityError(f"{Path(path).name} has no tensor {name!r}")
        self.kind, self.rows, self.cols = tensor.type, tensor.rows, tensor.cols
        self.raw = mapped[start + tensor.offset:start + tensor.offset + tensor.length].reshape(tensor.rows, -1)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.cols

    def __call__(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """(n,) row ids -> (n, cols) float32."""
        index = np.asarray(ids, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= self.rows):
            raise IndexError(f"row ids must lie in [0, {self.rows})")
        return decode_rows(self.kind, np.ascontiguousarray(self.raw[index]), self.cols)

    def decode_all(self, slice_rows: int = 8192) -> np.ndarray:
        """The whole table as float32 (vocab, cols): for `--head float32` and tools only."""
        return np.concatenate([decode_rows(self.kind, np.ascontiguousarray(self.raw[start:start + slice_rows]),
                                           self.cols) for start in range(0, self.rows, slice_rows)])
