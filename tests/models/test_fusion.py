"""Fusion: concat and gated sums against numpy, MBT's fusion_layer extremes, late averaging."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.models.random_params import random_params
from vmjax.models.fusion import BottleneckFusion, ConcatFusion, GatedFusion, LateFusion

B, D = 3, 16


_params = random_params


def _embeddings() -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    # Inserted out of sorted order on purpose: modules must not depend on dict order.
    return {
        "rgb": jnp.asarray(rng.normal(size=(B, 12)), jnp.float32),
        "audio": jnp.asarray(rng.normal(size=(B, 5)), jnp.float32),
    }


def test_concat_fusion_is_sorted_concatenation():
    e = _embeddings()
    out = ConcatFusion().apply({}, e)
    np.testing.assert_array_equal(out, np.concatenate([e["audio"], e["rgb"]], axis=-1))


def test_gated_fusion_matches_its_equation():
    e = _embeddings()
    model = GatedFusion(hidden_size=8)
    params = _params(model, e)
    fused, gates = model.apply({"params": params}, e, return_gates=True)
    assert fused.shape == (B, 8) and gates.shape == (B, 2)
    np.testing.assert_allclose(np.sum(gates, axis=-1), 1.0, rtol=1e-6)

    p = jax.tree.map(np.asarray, params)
    x = {m: np.asarray(v, np.float64) for m, v in e.items()}
    h = [
        x[m] @ p[f"{m}_projection"]["kernel"] + p[f"{m}_projection"]["bias"]
        for m in ("audio", "rgb")
    ]
    logits = np.concatenate([x["audio"], x["rgb"]], -1) @ p["gates"]["kernel"] + p["gates"]["bias"]
    g = np.exp(logits - logits.max(-1, keepdims=True))
    g /= g.sum(-1, keepdims=True)
    np.testing.assert_allclose(gates, g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused, g[:, :1] * h[0] + g[:, 1:] * h[1], rtol=1e-4, atol=1e-5)


def test_late_fusion_averages_logits():
    rng = np.random.default_rng(0)
    logits = {m: jnp.asarray(rng.normal(size=(B, 7)), jnp.float32) for m in ("rgb", "audio")}
    expected = (np.asarray(logits["rgb"]) + np.asarray(logits["audio"])) / 2
    np.testing.assert_allclose(LateFusion().apply({}, logits), expected, rtol=1e-6)

    learned = LateFusion(learned_weights=True)
    params = learned.init(jax.random.key(0), logits)["params"]
    # Starts at the plain mean; softmax keeps any learned weights a convex combination.
    np.testing.assert_allclose(learned.apply({"params": params}, logits), expected, rtol=1e-6)
    w = np.array([2.0, -1.0])  # audio, rgb
    out = learned.apply({"params": {"modality_weights": jnp.asarray(w)}}, logits)
    s = np.exp(w) / np.exp(w).sum()
    expected_weighted = s[0] * np.asarray(logits["audio"]) + s[1] * np.asarray(logits["rgb"])
    np.testing.assert_allclose(out, expected_weighted, rtol=1e-5, atol=1e-6)


def _tokens(seed: int = 0) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    rng = np.random.default_rng(seed)
    tokens = {
        "rgb": jnp.asarray(rng.normal(size=(B, 6, D)), jnp.float32),
        # As many audio tokens as rgb ones (some padded): fewer shapes to compile on CPU.
        "audio": jnp.asarray(rng.normal(size=(B, 6, D)), jnp.float32),
    }
    audio_mask = np.ones((B, 6), bool)
    audio_mask[1, 2:] = False
    audio_mask[2] = False  # No audio at all: only the CLS token is left.
    return tokens, {"audio": jnp.asarray(audio_mask)}


def _mbt(fusion_layer: int) -> BottleneckFusion:
    return BottleneckFusion(
        num_layers=2, fusion_layer=fusion_layer, num_heads=2, mlp_dim=32, num_bottlenecks=3
    )


@pytest.mark.parametrize("fusion_layer", [0, 1, 2])
def test_bottleneck_fusion_exchanges_only_through_bottlenecks(fusion_layer):
    tokens, masks = _tokens()
    model = _mbt(fusion_layer)
    params = _params(model, tokens, masks, train=False)
    assert ("bottleneck" in params) == (fusion_layer < 2)
    out = model.apply({"params": params}, tokens, masks, train=False)
    assert set(out) == {"rgb", "audio"}
    assert all(v.shape == (B, D) and bool(jnp.all(jnp.isfinite(v))) for v in out.values())

    # Change only the rgb input. A bottleneck written by layer l is read by layer l + 1, so
    # audio's output moves iff two or more layers fuse; fusion_layer = 2 (late) and 1 (only the
    # last layer, whose bottleneck update nobody reads) keep the modalities apart.
    other = dict(tokens, rgb=tokens["rgb"] + 1.0 + tokens["rgb"] ** 2)
    out_other = model.apply({"params": params}, other, masks, train=False)
    assert not np.allclose(out_other["rgb"], out["rgb"], atol=1e-4)
    if fusion_layer >= 1:
        np.testing.assert_array_equal(out_other["audio"], out["audio"])
    else:
        assert not np.allclose(out_other["audio"], out["audio"], atol=1e-4)

    # Padded audio tokens, NaN included, change nothing.
    padded = dict(tokens, audio=jnp.where(masks["audio"][..., None], tokens["audio"], jnp.nan))
    out_padded = model.apply({"params": params}, padded, masks, train=False)
    for m in out:
        np.testing.assert_allclose(out_padded[m], out[m], atol=1e-5)


def test_bottleneck_fusion_rejects_bad_fusion_layer():
    tokens, masks = _tokens()
    with pytest.raises(ValueError, match="fusion_layer"):
        _params(_mbt(3), tokens, masks, train=False)
