"""The `serve` command's options and the parts of the config tree they set: network,
headless tabs, limits, access and TLS, churn, the router's and speculation's defaults.

Owns parsing these options into frozen config values (a bad value is a usage error: one
line, exit status 2, via SystemExit); the command line builds the one config tree from
them. Runs nothing.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from coordinator.config import CodecPresets, ServerConfig, TlsConfig
from coordinator.engine.drafting import METHODS, SpeculationConfig
from coordinator.engine.router import RouterConfig
from coordinator.trust.access import AccessConfig, api_keys_from, new_secret


def router_option(text: str) -> RouterConfig:
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


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
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


def serve_settings(args: argparse.Namespace) -> tuple[ServerConfig, CodecPresets, AccessConfig, TlsConfig,
                                                      RouterConfig, SpeculationConfig]:
    """The config parts the serve options set (see `add_serve_arguments`)."""
    server = ServerConfig(host=args.host, port=args.port, max_active=args.max_active,
                          max_queue=args.max_queue, headless_workers=args.headless_workers,
                          worker_threads=args.worker_threads, chromium=args.chromium,
                          standby_workers=args.standby, recovery_seconds=args.recovery_seconds,
                          metrics=not args.no_metrics)
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
        router = replace(router_option(args.router), prune_heads=args.prune_heads)
        speculation = replace(SpeculationConfig(), method=args.speculation, max_draft=args.max_draft,
                              pipelined=args.pipelined_speculation)
    except ValueError as error:  # a knob out of range: a usage error, not a crash
        raise SystemExit(f"tabswarm: {error}") from error
    return server, CodecPresets(default=args.codec), access, tls, router, speculation
