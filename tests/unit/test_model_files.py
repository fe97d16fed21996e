"""Bad model input gets a clear error naming the problem; manifests round-trip and verify."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shards.errors import ModelFileError, ShardIntegrityError, UnsupportedModelError
from shards.gguf_model import GGUFModel
from shards.manifest import (
    FORMAT_VERSION,
    FileEntry,
    LayerEntry,
    Manifest,
    load_manifest,
    sha256_of,
    verify_files,
)
from tests.unit.test_graphs import CONFIG


def write_gguf(path: Path, architecture: str, with_tensors: bool = True) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_embedding_length(32)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_feed_forward_length(48)
    writer.add_context_length(128)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b"])
    if with_tensors:
        writer.add_tensor("token_embd.weight", np.zeros((2, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ModelFileError, match=r"not found: .*nope\.gguf"):
        GGUFModel(tmp_path / "nope.gguf")


def test_corrupt_file_is_reported(tmp_path):
    path = tmp_path / "garbage.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    with pytest.raises(ModelFileError, match="not a readable GGUF"):
        GGUFModel(path)


def test_unsupported_architecture_is_named(tmp_path):
    path = tmp_path / "other.gguf"
    write_gguf(path, "mamba")
    with pytest.raises(UnsupportedModelError, match="'mamba' is not supported"):
        GGUFModel(path)


def test_unsupported_architecture_is_refused_from_the_header_before_hashing(tmp_path, monkeypatch):
    """`tabswarm convert` on an unsupported GGUF answers at once: nothing is hashed or parsed."""
    import shards.convert as convert_module

    path = tmp_path / "other.gguf"
    write_gguf(path, "mamba")

    def no_hashing(*args, **kwargs):
        raise AssertionError("the file was hashed before its architecture was checked")

    monkeypatch.setattr(convert_module, "source_digest", no_hashing)
    monkeypatch.setattr(convert_module, "GGUFModel", no_hashing)
    with pytest.raises(UnsupportedModelError, match=r"'mamba' is not supported \(supported: gemma3, llama, qwen2\)"):
        convert_module.convert(path, tmp_path / "out", progress=False, cache_root=tmp_path / "cache")


def test_llama_file_without_layer_tensors_is_rejected(tmp_path):
    path = tmp_path / "hollow.gguf"
    write_gguf(path, "llama")
    with pytest.raises(UnsupportedModelError, match=r"tensors missing.*blk\.0\.attn_q\.weight"):
        GGUFModel(path)


def make_manifest(directory: Path) -> Manifest:
    (directory / "layer_00.onnx").write_bytes(b"x" * 100)
    (directory / "layer_00.kv.onnx").write_bytes(b"y" * 10)
    files = {name: FileEntry(size=(directory / name).stat().st_size, sha256=sha256_of(directory / name))
             for name in ("layer_00.onnx", "layer_00.kv.onnx")}
    manifest = Manifest(format_version=FORMAT_VERSION, model=CONFIG, source={"sha256": "0"}, weight_format={},
                        opset=23, layers=(LayerEntry(0, "layer_00.onnx", "layer_00.kv.onnx"),),
                        token_table="token_table.weights", head="head.onnx", tokenizer="tokenizer.json",
                        chat_template=None, eos_id=2, bos_id=None, files=files)
    manifest.write(directory)
    return manifest


def test_manifest_round_trip(tmp_path):
    manifest = make_manifest(tmp_path)
    assert load_manifest(tmp_path) == manifest
    verify_files(tmp_path, manifest)


def test_truncated_file_names_file_and_sizes(tmp_path):
    manifest = make_manifest(tmp_path)
    (tmp_path / "layer_00.onnx").write_bytes(b"x" * 99)
    with pytest.raises(ShardIntegrityError, match=r"layer_00\.onnx has 99 bytes, the manifest says 100"):
        verify_files(tmp_path, manifest)


def test_changed_bytes_fail_sha256(tmp_path):
    manifest = make_manifest(tmp_path)
    (tmp_path / "layer_00.kv.onnx").write_bytes(b"z" * 10)
    with pytest.raises(ShardIntegrityError, match=r"layer_00\.kv\.onnx fails its sha256"):
        verify_files(tmp_path, manifest)


def test_missing_manifest_and_wrong_version(tmp_path):
    with pytest.raises(ShardIntegrityError, match="run `tabswarm convert`"):
        load_manifest(tmp_path)
    make_manifest(tmp_path)
    text = (tmp_path / "manifest.json").read_text().replace(f'"format_version": {FORMAT_VERSION}', '"format_version": 99')
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ShardIntegrityError, match="format version 99"):
        load_manifest(tmp_path)


def test_the_cache_folder_follows_the_environment_given():
    from shards.cache_location import cache_root_from, models_dir, shards_dir

    assert cache_root_from({"TABSWARM_CACHE": "/data/tw", "XDG_CACHE_HOME": "/x"}) == Path("/data/tw")
    assert cache_root_from({"XDG_CACHE_HOME": "/x", "HOME": "/home/u"}) == Path("/x/tabswarm")
    assert cache_root_from({"HOME": "/home/u"}) == Path("/home/u/.cache/tabswarm")
    assert shards_dir(Path("/c")) == Path("/c/shards") and models_dir(Path("/c")) == Path("/c/models")
