"""What moving the KV cache through onnxruntime-web costs per token, apart from attention.

Every layer graph takes the whole past_key/past_value and returns the whole present_*:
onnxruntime-web's public API copies the inputs into its WASM heap, the graph concatenates,
and the outputs are copied back out, every step, in every layer. This runs a graph that
does only that (two Concats, the model's K/V shape) in the tabs' WASM build (under Node,
1 thread) at several cache lengths, and scales it to the model's layers: the most that a
cache kept in place (issue 21, item 4) could save per token. Writes
bench/results/kv_copy.json.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"SmolLM2-135M": (3, 64, 30), "Qwen2.5-Coder-1.5B": (2, 128, 28)}   # kv heads, head dim, layers
POSITIONS = (16, 256, 1024, 2048)


def concat_graph(path: Path, kv_heads: int, head_dim: int) -> None:
    def value(name: str, length: str | int) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, kv_heads, length, head_dim])
    nodes = [helper.make_node("Concat", ["past_key", "new_key"], ["present_key"], axis=2),
             helper.make_node("Concat", ["past_value", "new_value"], ["present_value"], axis=2)]
    graph = helper.make_graph(nodes, "kv_copy", [value("past_key", "p"), value("past_value", "p"),
                                                 value("new_key", 1), value("new_value", 1)],
                              [value("present_key", "q"), value("present_value", "q")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def main() -> int:
    report: dict = {"what": "median ms per layer and step: K and V copied in, concatenated, copied out "
                            "(onnxruntime-web WASM under Node, 1 thread)", "models": {}}
    with tempfile.TemporaryDirectory() as folder:
        for name, (kv_heads, head_dim, layers) in MODELS.items():
            path = Path(folder) / "kv.onnx"
            concat_graph(path, kv_heads, head_dim)
            output = subprocess.run(["node", str(ROOT / "bench" / "kv_copy.mjs"), str(path), str(kv_heads),
                                     str(head_dim), ",".join(map(str, POSITIONS))], cwd=ROOT, check=True,
                                    capture_output=True, text=True).stdout
            per_layer = {int(k): v for k, v in json.loads(output.strip().splitlines()[-1]).items()}
            report["models"][name] = {"layers": layers, "ms_per_layer": per_layer,
                                      "ms_per_token": {p: round(ms * layers, 1) for p, ms in per_layer.items()}}
            print(name, report["models"][name]["ms_per_token"], flush=True)
    output_path = ROOT / "bench" / "results" / "kv_copy.json"
    output_path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {output_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
