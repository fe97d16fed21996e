"""The int8 check's tolerance on data (coordinator/trust/verifier.py): an honest result that drifted
as WASM and native int8 do passes; noise, flipped signs, a stale row and a large scaling fail."""

from __future__ import annotations

import numpy as np

from coordinator.trust.verifier import StageChecker, VerifyConfig
from protocol.activation_codec import LOSSLESS, Route, encode_activation
from protocol.frames import FrameKind


def checker() -> StageChecker:
    made = StageChecker.__new__(StageChecker)
    made.config = VerifyConfig()
    return made


def result(values: np.ndarray) -> bytes:
    return encode_activation(values.astype(np.float32), Route(FrameKind.RESULT, 1, 0, 0, 4), LOSSLESS)


def test_int8_rows_pass_within_their_drift_and_fail_when_lied_about():
    rng = np.random.default_rng(1)
    native = rng.standard_normal((4, 64)).astype(np.float32) * 3
    native[0, 5] = 900.0                                            # an attention sink's massive activation
    drifted = native + rng.standard_normal(native.shape).astype(np.float32) * 0.05 * np.linalg.norm(
        native, axis=1, keepdims=True) / 8
    assert checker()._compare_rows(native, result(drifted), 4).ok
    rows_before = np.roll(native, 1, axis=0)                        # each row answered with its predecessor's
    for lie in (rng.standard_normal(native.shape) * 3, -native, native * 1.4, rows_before):
        verdict = checker()._compare_rows(native, result(lie), 4)
        assert not verdict.ok and "away from the native result" in verdict.detail


def test_a_check_that_runs_after_its_stream_ended_judges_nothing():
    """A background check can start after the stream closed and its shadow was released: its
    frames then start mid-stream, where no native state stands, so it must not judge."""
    made = checker()
    made._shadows, made._lock = {}, __import__("threading").Lock()
    frame = encode_activation(np.ones((1, 64), np.float32), Route(FrameKind.FORWARD, 1, 37, 0, 4), LOSSLESS)
    assert made.check((1, 0), None, [frame], result(np.ones((1, 64)))) is None


def test_float_check_allows_rounding_at_the_rows_scale_and_fails_a_lie_at_it():
    """Gemma 3's residual rows reach RMS ~1600; a small value there drifts between WASM and
    native by ~1e-6 of the RMS (CI saw -0.3986 against -0.4002): honest. A change a lie needs
    to matter (1% of the row's scale, or one value moved by 5% of the RMS) still fails."""
    rng = np.random.default_rng(2)
    native = (rng.standard_normal((2, 640)) * 1600).astype(np.float32)
    native[0, 459] = -0.4002
    honest = native.copy()
    honest[0, 459] = -0.3986
    honest += (rng.standard_normal(native.shape) * 1600 * 2e-6).astype(np.float32)
    assert checker()._compare(native, result(honest), 2).ok
    for lie in (native * 1.01, native + (rng.standard_normal(native.shape) * 16).astype(np.float32)):
        assert not checker()._compare(native, result(lie), 2).ok
    one_value = native.copy()
    one_value[1, 7] += 80.0
    verdict = checker()._compare(native, result(one_value), 2)
    assert not verdict.ok and verdict.detail.startswith("value [1, 7]")
