"""The `usage` object of a completion: OpenAI's token counts, and under `tabswarm` what the
request cost the swarm (hops, bytes, skips, replays, speculation, the coordinator's timing,
prefill and decode speed).

Pure: reads a request's `HopStats`, returns a JSON-ready dict; never touches I/O.
"""

from __future__ import annotations

from typing import Any

from coordinator.engine.session import HopStats


def usage_report(prompt_tokens: int, completion: int, stats: HopStats) -> dict[str, Any]:
    """`usage` for a request of `prompt_tokens` that generated `completion` tokens."""
    seconds = stats.step_seconds
    decode_seconds = sum(seconds[1:])
    swarm = {"stages": stats.stages, "hops": stats.hops, "bytes_sent": stats.bytes_sent,
             "layer_executions": stats.layer_executions, "layers_skipped": stats.layers_skipped,
             "nodes_bypassed": stats.nodes_bypassed, "hops_saved": stats.hops_saved,
             "heads_pruned": stats.heads_pruned, "bytes_received": stats.bytes_received,
             "replays": stats.replays, "moves": stats.moves, "replayed_rows": stats.replayed_rows,
             "speculation": {"method": stats.speculation, "drafted": stats.drafted,
                             "accepted": stats.accepted, "verify_passes": stats.verify_passes,
                             "draft_steps": stats.draft_steps, "most_in_flight": stats.most_in_flight},
             "timing": stats.timing.as_dict(),
             "hops_per_token": round(stats.hops / completion, 3) if completion else None,
             "prefill_tokens_per_second": round(prompt_tokens / seconds[0], 1)
             if seconds and seconds[0] > 0 else None,
             # the first step (the prompt) yields one token; the others may yield several
             "decode_tokens_per_second": round((completion - 1) / decode_seconds, 2)
             if len(seconds) > 1 and decode_seconds > 0 else None}
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion, "tabswarm": swarm}
