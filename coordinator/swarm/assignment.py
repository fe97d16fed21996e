"""The `assign` message that tells a worker which layers to load: their files (name, size,
sha256, URL), each layer's graphs in the cluster's compute format, and the model facts the
tab checks its shards against.

Pure: built from the manifest and the stage; sends nothing.
"""

from __future__ import annotations

from coordinator.swarm.planner import Stage
from protocol.control import Assign
from protocol.frames import VERSION
from shards.manifest import Manifest

CODEC = {"key_interval": 64}   # with delta coding: a key row at least every this many rows


def assign_message(manifest: Manifest, compute: str, worker: str, role: str, stage: Stage) -> Assign:
    """Layers [stage.layer_start, stage.layer_end) for `worker` (a stage or a standby)."""
    files, layers = [], []
    for index in range(stage.layer_start, stage.layer_end):
        for name in manifest.layer_files(index, compute):
            entry = manifest.files[name]
            files.append({"name": name, "size": entry.size, "sha256": entry.sha256, "url": f"/shards/{name}"})
        layer = manifest.layers[index]
        graph, kv_graph = layer.graphs(compute)
        layers.append({"index": index, "graph": graph, "kv_graph": kv_graph, "weights": layer.weights})
    model = manifest.model
    return Assign(worker=worker, layer_start=stage.layer_start, layer_end=stage.layer_end, files=files,
                  layers=layers, compute=compute, protocol=VERSION, role=role,
                  model={"name": model.name, "hidden": model.hidden, "heads": model.heads,
                         "kv_heads": model.kv_heads, "head_dim": model.head_dim, "layers": model.layers,
                         "shard_sha256": manifest.source["sha256"],
                         "converter": manifest.source.get("converter", "")},
                  codec=dict(CODEC))
