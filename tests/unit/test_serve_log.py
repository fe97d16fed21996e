"""The lines `tabswarm serve` prints while the swarm forms (from the cluster's events)."""

from __future__ import annotations

from coordinator.serve_log import describe


def test_a_person_sees_each_tab_join_load_and_the_swarm_become_able_to_serve():
    join = describe({"event": "join", "worker": "w1", "name": "laptop", "backend": "wasm", "remote": "10.0.0.7"}, 30)
    assert join is not None and "laptop" in join and "10.0.0.7" in join and "wasm" in join
    ready = describe({"event": "ready", "worker": "w1", "name": "laptop", "layers": [0, 15], "load_ms": 14250,
                      "cached": True}, 30)
    assert ready == "  tab laptop ready: layers [0, 15) loaded in 14.2 s from its browser cache"
    plan = describe({"event": "plan", "version": 2, "stages": [["w1", 0, 15], ["w2", 15, 30]],
                     "names": ["laptop", "phone"]}, 30)
    assert plan == "  swarm can serve: 2 tab(s) hold all 30 layers (plan v2: laptop[0,15) -> phone[15,30))"
    left = describe({"event": "leave", "worker": "w2", "name": "phone", "reason": "connection closed"}, 30)
    assert left == "  tab phone left: connection closed"
    assert describe({"event": "replan", "stages": [], "standbys": []}, 30) is None   # internal detail: not printed
