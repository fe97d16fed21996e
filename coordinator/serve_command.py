"""The long-running commands: `serve` (the coordinator: HTTP API, pages, worker endpoint,
TLS, optional headless tabs, console lines as the swarm forms) and `workers` (headless tabs
joining a coordinator elsewhere). Each runs until SIGINT or SIGTERM, then cleans up.

Owns starting and stopping the servers and browsers; the config tree comes built from the
command line (`cli.py`), and the work itself from `app.py` and `coordinator/`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from coordinator.config import AppConfig


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


def command_serve(shard_dir_of: Callable[[AppConfig], Path], config: AppConfig, args: argparse.Namespace) -> int:
    """`tabswarm serve`: the shards from `shard_dir_of(config)` (converted first if need be)."""
    from coordinator.swarm.allocator import keep_memory_returnable

    keep_memory_returnable()   # before the model's buffers are made (see coordinator/swarm/allocator.py)
    return asyncio.run(_serve(config, shard_dir_of(config)))


async def _serve(config: AppConfig, shard_dir: Path) -> int:
    from aiohttp import web

    from coordinator.app import API, CLUSTER, create_app
    from coordinator.serve_log import describe
    from coordinator.swarm.headless import HeadlessWorkers, worker_url

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
    _print_addresses(config, app[API].model_ids[0], local, scheme, certificate)
    headless = None
    try:
        if server.headless_workers:
            # its own tabs on this machine trust its own (self-signed) certificate
            headless = HeadlessWorkers(server.chromium, ignore_certificate_errors=certificate is not None)
            await headless.start()
            for index in range(server.headless_workers):
                await headless.open(worker_url(local, f"headless-{index + 1}", server.worker_threads,
                                               token=config.access.join_secret))
            print(f"  started {server.headless_workers} headless Chromium worker tab(s)", flush=True)
        await until_stopped()
    finally:
        if headless is not None:
            await headless.stop()
        await runner.cleanup()
    return 0


def _print_addresses(config: AppConfig, model: str, local: str, scheme: str, certificate) -> None:
    """What a person needs to use the coordinator: its pages, its API, how to join it."""
    server, access = config.server, config.access
    join = f"/worker/?token={access.join_secret}" if access.join_secret else "/worker/"
    print(f"tabswarm coordinator serving {model} on {server.host}:{server.port}")
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


async def until_stopped() -> None:
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
        await until_stopped()
    finally:
        await headless.stop()
    return 0
