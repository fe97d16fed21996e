"""What `tabswarm serve` prints as the swarm forms: one line per tab joining, holding its
layers, leaving, and when a plan can serve. Pure: an event (as the cluster records it) in,
a line or None out; the CLI does the printing.
"""

from __future__ import annotations

from typing import Any


def describe(event: dict[str, Any], layers: int) -> str | None:
    kind = event["event"]
    if kind == "join":
        return f"  tab {event['name']} ({event['worker']}, {event.get('backend', '?')}) joined from " \
               f"{event.get('remote', '?')}; planning"
    if kind == "ready":
        start, end = event["layers"]
        cached = " from its browser cache" if event.get("cached") else ""
        return f"  tab {event.get('name', event['worker'])} ready: layers [{start}, {end}) loaded in " \
               f"{event['load_ms'] / 1000:.1f} s{cached}"
    if kind == "plan":
        names = event.get("names") or [stage[0] for stage in event["stages"]]
        route = " -> ".join(f"{name}[{start},{end})" for name, (_, start, end) in zip(names, event["stages"],
                                                                                      strict=True))
        return f"  swarm can serve: {len(names)} tab(s) hold all {layers} layers (plan v{event['version']}: {route})"
    if kind in ("leave", "evict"):
        verb = "left" if kind == "leave" else "was evicted"
        return f"  tab {event.get('name', event['worker'])} {verb}: {event.get('reason', '')}"
    return None
