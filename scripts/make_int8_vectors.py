"""Generate shards/vectors/int8.json: what int8 compute makes of a weights file, pinned for
both runners. A small compact weights file (Q4_1, Q8_0 and F32 matrices; groups of 64, of
32, and one matrix no group divides, which stays float32) and, per external-data location,
the bytes `shards.compact_weights.layer_initializers` gives for float32 and int8 compute.
The tab (worker_web/int8_weights.js) must produce the same bytes. A hand-made matrix with
exact .5 steps and an all-zero group checks the rounding rule. Run once; the file is committed."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from scripts.make_weight_vectors import random_rows
from shards.compact_weights import layer_initializers, write_weights
from shards.int8 import quantize_int8

OUT = Path(__file__).resolve().parent.parent / "shards" / "vectors" / "int8.json"
STEM = "layer_07"


def main() -> None:
    rng = np.random.default_rng(20261206)
    tensors = [("q_weight", "Q4_1", random_rows("Q4_1", 24, 128, rng), 128, True),    # inputs 128: group 64
               ("up_weight", "Q8_0", random_rows("Q8_0", 16, 96, rng), 96, True),     # inputs 96: group 32
               ("odd_weight", "F32", random_rows("F32", 8, 40, rng), 40, True)]       # inputs 40: float32
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vectors.weights"
        write_weights(path, tensors)
        data = path.read_bytes()
    expected = {compute: {location: value.hex() for location, value in layer_initializers(data, STEM, compute).items()}
                for compute in ("float32", "int8")}
    steps = np.zeros((64, 3), dtype=np.float32)
    steps[:, 0] = np.linspace(-2.5, 2.5, 64)
    steps[0, 0], steps[1, 0] = -127.0, 0.5           # scale 1: codes at exact .5 steps round away from 0
    steps[2:6, 0] = [1.5, -1.5, 2.5, -0.5]
    steps[:, 1] = rng.standard_normal(64).astype(np.float32) * 1e-3
    codes, scales = quantize_int8(steps, 64)          # column 2: an all-zero group
    OUT.write_text(json.dumps({
        "stem": STEM, "file": data.hex(), "expected": expected,
        "matrix": {"values": steps.tobytes().hex(), "inputs": 64, "outputs": 3, "group": 64,
                   "codes": codes.tobytes().hex(), "scales": scales.tobytes().hex()},
        "graph": int8_graph(data, rng),
    }, indent=1) + "\n")
    print(f"wrote {OUT}")


def int8_graph(data: bytes, rng: np.random.Generator) -> dict:
    """An int8 projection as the layer graphs build it (y = x @ q_weight.T + bias; the codes and
    scales external, made from the weights file), an input of 3 rows, and native onnxruntime's
    output once the codes are put inside: the tab's path must run it to the same numbers."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from shards.compact_weights import decode_weights, initializer_values
    from shards.graph_builder import GraphBuilder

    weight = decode_weights(data)["q_weight"].T                   # (out 24, in 128) as the GGUF stores it
    builder = GraphBuilder(STEM, "int8")
    builder.linear("x", "q_weight", weight, "y", rng.standard_normal(weight.shape[0]).astype(np.float32))
    model = builder.model("int8_projection", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 128])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, weight.shape[0]])])
    filled = type(model)()
    filled.CopyFrom(model)
    values = initializer_values(filled, {"q_weight": np.ascontiguousarray(weight.T)})
    for initializer in filled.graph.initializer:
        if initializer.name in values:
            del initializer.external_data[:]
            initializer.data_location = 0
            initializer.raw_data = values[initializer.name].tobytes()
    x = (rng.standard_normal((1, 3, 128)) * 2).astype(np.float32)
    y = ort.InferenceSession(filled.SerializeToString()).run(None, {"x": x})[0]
    return {"model": model.SerializeToString().hex(), "x": x.ravel().tolist(), "y": y.ravel().tolist()}


if __name__ == "__main__":
    main()
