"""The helper every graph of the converter is built with: nodes and initializers collected
under unique names, weight matrices inline or external (a layer's compact weights file fills
them at load), and the linear layer in each compute format (a float32 MatMul, or int8 codes
with exact integer sums per group).

Owns the opset and how a linear layer is expressed; knows nothing of which layer or model
it builds. Never reads GGUF or writes files.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from shards.compact_weights import external_location
from shards.int8 import COMPUTE_FORMATS, INT8_CODES, INT8_SCALES, int8_group, quantize_int8

OPSET = 23
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


class GraphBuilder:
    """Small helper that collects nodes and initializers with unique names."""

    def __init__(self, external_stem: str | None = None, compute: str = "float32") -> None:
        if compute not in COMPUTE_FORMATS:
            raise ValueError(f"compute format {compute!r} is not one of {', '.join(COMPUTE_FORMATS)}")
        self.external_stem = external_stem   # set: weight matrices are external (compact weights file)
        self.compute = compute
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._quantized: dict[tuple[str, int], tuple[str, str]] = {}   # (source, group) -> (codes, scales)

    def constant(self, name: str, values: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(values, name))
        return name

    def matrix(self, name: str, values: np.ndarray) -> str:
        """A weight matrix (in, out): inline, or an external float32 initializer that the
        layer's weights file fills when the graph is loaded."""
        if self.external_stem is None:
            return self.constant(name, values)
        self.initializers.append(external_tensor(name, values.shape, external_location(self.external_stem, name)))
        return name

    def linear(self, source: str, name: str, weight: np.ndarray, output: str,
               bias: np.ndarray | None = None) -> str:
        """output = source @ weight.T (+ bias), weight (out, in) as the GGUF stores it: a float32
        MatMul, or in the int8 format an integer matmul over groups (see int8_linear)."""
        matrix = np.ascontiguousarray(weight.T)                        # (in, out)
        group = int8_group(matrix.shape[0]) if self.compute == "int8" else None
        product = f"{output}_unbiased" if bias is not None else output
        if group is None:
            self.matrix(name, matrix)
            self.op("MatMul", [source, name], product)
        else:
            self._int8_linear(source, name, matrix, product, group)
        if bias is not None:
            self.constant(f"{name}_bias", np.asarray(bias, dtype=np.float32))
            self.op("Add", [product, f"{name}_bias"], output)
        return output

    def _int8_linear(self, source: str, name: str, matrix: np.ndarray, output: str, group: int) -> None:
        """(batch, seq, in) @ (in, out) with int8 codes on both sides, exact integer sums per group.

        Each row's activations are quantized per group of `group` inputs (symmetric, 127
        levels, as uint8 with zero point 128: the WASM SIMD kernels' fast path), the
        weights per (group, output column) (`quantize_int8`); MatMulInteger sums each
        group exactly in int32, and the groups are scaled and added in float32. A row's
        result depends on that row alone, bitwise, however many rows share the call.
        """
        inputs, outputs = matrix.shape
        blocks = inputs // group
        codes_name, scales_name = self._quantized_activations(source, inputs, group)
        if self.external_stem is None:
            codes, scales = quantize_int8(matrix, group)
            self.constant(f"{name}_codes", codes)
            self.constant(f"{name}_scales", scales)
        else:
            location = external_location(self.external_stem, name)
            self.initializers.append(external_tensor(f"{name}_codes", (blocks, group, outputs),
                                                     f"{location}{INT8_CODES}", TensorProto.INT8))
            self.initializers.append(external_tensor(f"{name}_scales", (blocks, 1, outputs),
                                                     f"{location}{INT8_SCALES}"))
        self.op("MatMulInteger", [codes_name, f"{name}_codes", "int8_zero_point"], f"{output}_sums")   # (blocks, rows, out)
        self.op("Cast", [f"{output}_sums"], f"{output}_sums_float", to=FLOAT)
        self.op("Mul", [f"{output}_sums_float", f"{name}_scales"], f"{output}_weight_scaled")
        self.op("Mul", [f"{output}_weight_scaled", scales_name], f"{output}_scaled")
        self.op("ReduceSum", [f"{output}_scaled", "int8_block_axis"], f"{output}_rows", keepdims=0)  # (rows, out)
        self.op("Shape", [source], f"{output}_leading", start=0, end=2)             # (batch, seq)
        self.constant(f"{output}_columns", np.array([outputs], dtype=np.int64))
        self.op("Concat", [f"{output}_leading", f"{output}_columns"], f"{output}_shape", axis=0)
        self.op("Reshape", [f"{output}_rows", f"{output}_shape"], output)           # (batch, seq, out)

    def _quantized_activations(self, source: str, inputs: int, group: int) -> tuple[str, str]:
        """uint8 codes (blocks, rows, group) and scales (blocks, rows, 1) of `source`, once per source."""
        key = (source, group)
        if key in self._quantized:
            return self._quantized[key]
        if not self._quantized:
            self.constant("int8_levels", np.array(127.0, dtype=np.float32))
            self.constant("int8_smallest_scale", np.array(1e-30, dtype=np.float32))
            self.constant("int8_zero_point", np.array(128, dtype=np.uint8))
            self.constant("int8_zero_point_wide", np.array(128, dtype=np.int32))
            self.constant("int8_last_axis", np.array([-1], dtype=np.int64))
            self.constant("int8_block_axis", np.array([0], dtype=np.int64))
        prefix = f"{source}_g{group}"
        self.constant(f"{prefix}_shape", np.array([-1, inputs // group, group], dtype=np.int64))
        self.op("Reshape", [source, f"{prefix}_shape"], f"{prefix}_by_row")          # (rows, blocks, group)
        self.op("Transpose", [f"{prefix}_by_row"], f"{prefix}_blocks", perm=[1, 0, 2])   # (blocks, rows, group)
        self.op("Abs", [f"{prefix}_blocks"], f"{prefix}_magnitude")
        self.op("ReduceMax", [f"{prefix}_magnitude", "int8_last_axis"], f"{prefix}_largest", keepdims=1)
        self.op("Div", [f"{prefix}_largest", "int8_levels"], f"{prefix}_step")
        self.op("Max", [f"{prefix}_step", "int8_smallest_scale"], f"{prefix}_scales")     # (blocks, rows, 1)
        self.op("Div", [f"{prefix}_blocks", f"{prefix}_scales"], f"{prefix}_steps")
        self.op("Round", [f"{prefix}_steps"], f"{prefix}_rounded")
        self.op("Cast", [f"{prefix}_rounded"], f"{prefix}_signed", to=TensorProto.INT32)
        self.op("Add", [f"{prefix}_signed", "int8_zero_point_wide"], f"{prefix}_shifted")
        self.op("Cast", [f"{prefix}_shifted"], f"{prefix}_codes", to=TensorProto.UINT8)
        self._quantized[key] = (f"{prefix}_codes", f"{prefix}_scales")
        return self._quantized[key]

    def op(self, op_type: str, inputs: list[str], outputs: list[str] | str, **attributes) -> str:
        names = [outputs] if isinstance(outputs, str) else outputs
        self.nodes.append(helper.make_node(op_type, inputs, names, name=names[0], **attributes))
        return names[0]

    def model(self, name: str, inputs, outputs) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tabswarm"
        )
        model.ir_version = 10
        return model


def external_tensor(name: str, shape: tuple[int, ...], location: str, data_type: int = FLOAT,
                    offset: int = 0) -> onnx.TensorProto:
    """A float32 (or 8-bit) initializer whose bytes live in `location` (shared between graphs)."""
    tensor = onnx.TensorProto()
    tensor.name = name
    tensor.data_type = data_type
    tensor.dims.extend(shape)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    length = int(np.prod(shape)) * (1 if data_type in (TensorProto.INT8, TensorProto.UINT8) else 4)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor
