"""Who may call the API and who may join as a worker (pure decisions)."""

from __future__ import annotations

from pathlib import Path

from coordinator.trust.access import (
    AccessConfig,
    api_keys_from,
    client_decision,
    is_loopback,
    worker_decision,
)

KEYED = AccessConfig(api_keys=("k-one", "k-two"), join_secret="s3cret")


def test_without_keys_only_loopback_clients_reach_the_api():
    open_config = AccessConfig()
    assert client_decision(open_config, "/v1/chat/completions", "127.0.0.1", None) is None
    assert client_decision(open_config, "/v1/status", "::1", None) is None
    refused = client_decision(open_config, "/v1/status", "192.168.1.7", None)
    assert refused is not None and refused.status == 403 and "--api-key" in refused.message


def test_keys_are_checked_as_bearer_tokens_from_anywhere():
    assert client_decision(KEYED, "/v1/models", "10.0.0.2", "Bearer k-two") is None
    assert client_decision(KEYED, "/v1/models", "10.0.0.2", "bearer k-one") is None
    for header in (None, "Bearer", "Basic k-one", "Bearer k-three"):
        error = client_decision(KEYED, "/v1/models", "127.0.0.1", header)
        assert error is not None and error.status == 401 and error.code == "invalid_api_key"


def test_health_worker_page_and_static_files_stay_open():
    for path in ("/health", "/", "/worker/", "/ort/ort.wasm.min.mjs", "/shards/layer_00.onnx"):
        assert client_decision(KEYED, path, "10.0.0.2", None) is None


def test_join_tokens():
    assert worker_decision(AccessConfig(), None) is None          # no secret: open (tests, trusted LAN)
    assert "required" in (worker_decision(KEYED, None) or "")
    assert "not valid" in (worker_decision(KEYED, "guess") or "")
    assert worker_decision(KEYED, "s3cret") is None


def test_keys_from_flags_environment_and_files(tmp_path: Path):
    key_file = tmp_path / "keys"
    key_file.write_text("# team keys\nalpha\n\n beta  # laptop\nalpha\n")
    assert api_keys_from(["cli"], "env1, env2,", [key_file]) == ("cli", "env1", "env2", "alpha", "beta")


def test_loopback_parsing():
    assert is_loopback("127.0.0.5") and is_loopback("::1")
    assert not is_loopback("192.168.0.1") and not is_loopback(None) and not is_loopback("not-an-ip")
