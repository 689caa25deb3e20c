"""Fusion: concat and gated sums against numpy, MBT's exchange by gradients, late averaging."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.models.random_params import random_params
from vmjax.models.fusion import BottleneckFusion, ConcatFusion, GatedFusion, LateFusion
from vmjax.models.transformer import EncoderBlock

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

    learned = LateFusion("modality")
    params = learned.init(jax.random.key(0), logits)["params"]
    # Starts at the plain mean; softmax keeps any learned weights a convex combination.
    np.testing.assert_allclose(learned.apply({"params": params}, logits), expected, rtol=1e-6)
    w = np.array([2.0, -1.0])  # audio, rgb
    out = learned.apply({"params": {"modality_weights": jnp.asarray(w)}}, logits)
    s = np.exp(w) / np.exp(w).sum()
    expected_weighted = s[0] * np.asarray(logits["audio"]) + s[1] * np.asarray(logits["rgb"])
    np.testing.assert_allclose(out, expected_weighted, rtol=1e-5, atol=1e-6)


def test_late_fusion_class_weights_pick_a_modality_per_class():
    rng = np.random.default_rng(1)
    logits = {m: jnp.asarray(rng.normal(size=(B, 3)), jnp.float32) for m in ("rgb", "audio")}
    a, r = np.asarray(logits["audio"]), np.asarray(logits["rgb"])
    fusion = LateFusion("class")
    params = fusion.init(jax.random.key(0), logits)["params"]
    assert params["class_weights"].shape == (2, 3)  # [modality (sorted: audio, rgb), class]
    np.testing.assert_allclose(fusion.apply({"params": params}, logits), (a + r) / 2, rtol=1e-6)
    # Class 0 leans on audio, class 1 on rgb, class 2 stays the mean: by hand, per column.
    w = np.array([[30.0, -30.0, 0.0], [-30.0, 30.0, 0.0]])
    out = np.asarray(fusion.apply({"params": {"class_weights": jnp.asarray(w)}}, logits))
    np.testing.assert_allclose(out[:, 0], a[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[:, 1], r[:, 1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[:, 2], (a[:, 2] + r[:, 2]) / 2, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="weights='per_video'"):
        LateFusion("per_video").init(jax.random.key(0), logits)


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


# ------------------------------------------------- MBT's defining property, by gradients
# Three layers fusing from layer 1 (MBT's L_f = 1): layer 0 is per-modality, layer 1 is the
# first to exchange through the bottlenecks, layer 2 the first to read what layer 1 wrote.
_FUSING = BottleneckFusion(num_layers=3, fusion_layer=1, num_heads=2, mlp_dim=16, num_bottlenecks=2)


def _mbt_inputs() -> dict[str, jax.Array]:
    rng = np.random.default_rng(3)
    return {
        "rgb": jnp.asarray(rng.normal(size=(1, 4, 8)), jnp.float32),
        "audio": jnp.asarray(rng.normal(size=(1, 3, 8)), jnp.float32),
    }


_NO_CUT, _CUT_BOTTLENECK, _CUT_TOKENS = ((False, False), (True, False), (False, True))


def _traced(params: dict, tokens: dict, cut: jax.Array) -> tuple[dict, dict]:
    """(final outputs, {block name: (its input, its output)}) of _FUSING on `tokens`.

    cut: two flags. In audio's fused blocks, cut[0] stops the gradient of the input's
    bottleneck rows (the last num_bottlenecks), cut[1] that of audio's own rows. The forward
    pass is unchanged, only the paths a gradient may take into audio are cut; as traced flags
    (not Python ones) they select the paths inside one compiled program.
    """
    record = {}
    nb = _FUSING.num_bottlenecks

    def interceptor(f, args, kwargs, context):
        if not (isinstance(context.module, EncoderBlock) and context.method_name == "__call__"):
            return f(*args, **kwargs)
        x, *rest = args
        name = context.module.name
        if name.startswith("audio_") and int(name.rsplit("_", 1)[1]) >= _FUSING.fusion_layer:
            own, bottleneck = x[:, :-nb], x[:, -nb:]
            own = jnp.where(cut[1], jax.lax.stop_gradient(own), own)
            bottleneck = jnp.where(cut[0], jax.lax.stop_gradient(bottleneck), bottleneck)
            x = jnp.concatenate([own, bottleneck], axis=1)
        out = f(x, *rest, **kwargs)
        record[name] = (x, out)
        return out

    with nn.intercept_methods(interceptor):
        out = _FUSING.apply({"params": params}, tokens, train=False)
    return out, record


@jax.jit
def _jit_audio_jacobians(params: dict, tokens: dict, cut: jax.Array) -> tuple[dict, dict]:
    def audio(rgb):
        out, record = _traced(params, dict(tokens, rgb=rgb), cut)
        blocks = {name: y for name, (_, y) in record.items() if name.startswith("audio_")}
        return blocks | {"audio_cls": out["audio"]}, record

    return jax.jacrev(audio, has_aux=True)(tokens["rgb"])


def _audio_jacobians(params: dict, tokens: dict, cut=_NO_CUT) -> tuple[dict, dict]:
    """(d(audio's block outputs and final CLS) / d(rgb input) by name, `_traced`'s record)."""
    return _jit_audio_jacobians(params, tokens, jnp.asarray(cut))


def _moves(jacobian: jax.Array) -> bool:
    return bool(jnp.any(jacobian != 0))


def test_bottleneck_fusion_mixes_modalities_only_after_the_fusion_layer_via_bottlenecks():
    tokens = _mbt_inputs()
    params = _params(_FUSING, tokens, train=False)
    # Separate weights per modality (MBT's default; Scenic's share_encoder=False).
    assert {"rgb_block_0", "audio_block_0", "rgb_block_2", "audio_block_2"} <= set(params)
    n = 1 + 3  # audio's CLS and tokens; the bottleneck rows follow them from layer 1 on

    jac, _ = _audio_jacobians(params, tokens)
    # Before the fusion layer, and in it (it reads only the learned initial bottlenecks), no
    # audio token depends on the rgb input: exactly zero gradient, not just a small one.
    assert not _moves(jac["audio_block_0"])
    assert not _moves(jac["audio_block_1"])
    # After it, audio's own tokens (not only its bottleneck rows) and its output depend on rgb.
    assert _moves(jac["audio_block_2"][:, :n]) and _moves(jac["audio_cls"])

    # Only through the bottleneck rows: with their gradient cut where audio's blocks read
    # them, rgb reaches audio nowhere; cutting audio's own rows instead leaves the dependence.
    cut, _ = _audio_jacobians(params, tokens, _CUT_BOTTLENECK)
    assert not any(_moves(j) for j in cut.values())
    kept, _ = _audio_jacobians(params, tokens, _CUT_TOKENS)
    assert _moves(kept["audio_block_2"][:, :n]) and _moves(kept["audio_cls"])


def test_bottleneck_tokens_are_the_mean_of_the_modalities_updates():
    tokens = _mbt_inputs()
    params = _params(_FUSING, tokens, train=False)
    _, record = _audio_jacobians(params, tokens)  # compiled once for both tests
    nb = _FUSING.num_bottlenecks
    bottleneck_in = {name: np.asarray(x[:, -nb:]) for name, (x, _) in record.items()}
    # Layer 1 (the fusion layer) reads the learned bottleneck tokens z_fsn (MBT eq. 8) ...
    for m in ("rgb", "audio"):
        np.testing.assert_array_equal(bottleneck_in[f"{m}_block_1"], params["bottleneck"])
    # ... and layer 2 the mean over the modalities of layer 1's bottleneck rows (eq. 9).
    updates = [np.asarray(record[f"{m}_block_1"][1][:, -nb:]) for m in ("rgb", "audio")]
    for m in ("rgb", "audio"):
        np.testing.assert_allclose(bottleneck_in[f"{m}_block_2"], np.mean(updates, axis=0), 1e-6)
    assert not np.allclose(updates[0], updates[1], atol=1e-3)  # a mean of two different ones
