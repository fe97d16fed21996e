"""Generate shards/vectors/weights.json: one compact weights file holding random blocks of
every kept GGUF type, and the float32 values the gguf package's reference dequantizer gives
them. The Python reader and the tab's decoder (worker_web/compact_weights.js) must both
reproduce those values bit for bit. Run once; the file is committed."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from shards.compact_weights import BLOCK_TYPES, decode_weights, write_weights

OUT = Path(__file__).resolve().parent.parent / "shards" / "vectors" / "weights.json"
# byte offsets of the float16 fields in each type's block (random bits there could be NaN)
HALF_FIELDS = {"F16": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
               "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def random_rows(kind: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    per_block, size = BLOCK_TYPES[kind]
    blocks = rng.integers(0, 256, size=(rows, cols // per_block, size), dtype=np.uint8)
    if kind == "F32":
        blocks = rng.standard_normal((rows, cols, 1)).astype(np.float32).view(np.uint8)
    elif kind == "BF16":
        blocks = (rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint32) >> 16).astype(
            np.uint16).view(np.uint8).reshape(rows, cols, 2)
    for offset in HALF_FIELDS.get(kind, ()):
        values = (rng.standard_normal(blocks.shape[:2]) * 0.02).astype(np.float16)
        values[0, 0] = np.float16(6.1e-5 / 7)   # a subnormal scale too
        blocks[:, :, offset:offset + 2] = values.view(np.uint8).reshape(*blocks.shape[:2], 2)
    return blocks.reshape(rows, -1)


def main() -> None:
    rng = np.random.default_rng(20261202)
    tensors = []
    for index, kind in enumerate(BLOCK_TYPES):
        rows, cols = 3, 512
        tensors.append((f"t_{kind}", kind, random_rows(kind, rows, cols, rng), cols, index % 2 == 0))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vectors.weights"
        write_weights(path, tensors)
        data = path.read_bytes()
    decoded = decode_weights(data)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "file": data.hex(),
        "stem": "layer_00",
        "expected": {name: {"shape": list(values.shape), "float32": values.astype("<f4").tobytes().hex()}
                     for name, values in decoded.items()},
    }) + "\n")
    print(f"wrote {OUT} ({len(data)} bytes of weights, {len(decoded)} tensors)")
    write_inline_vector(rng)


def write_inline_vector(rng: np.random.Generator) -> None:
    """A tiny graph y = x @ W + b whose W is external (as a layer graph's matrices are), W's
    data, an input and the output native onnxruntime gives once W is put inside the graph."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from shards.compact_weights import graph_with_weights
    from shards.graph_builder import external_tensor

    weight = rng.standard_normal((6, 5)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])], "inline",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(bias, "b"), external_tensor("w", weight.shape, "layer_00.w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    x = rng.standard_normal((1, 6)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "inline.onnx"
        path.write_bytes(model.SerializeToString())
        filled = graph_with_weights(path, {"w": weight})
    y = ort.InferenceSession(filled).run(None, {"x": x})[0]
    out = OUT.parent / "inline_graph.json"
    out.write_text(json.dumps({"model": model.SerializeToString().hex(), "location": "layer_00.w",
                               "weights": weight.tobytes().hex(), "x": x.ravel().tolist(),
                               "y": y.ravel().tolist()}) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
