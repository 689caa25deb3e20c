"""Whole models written out in numpy float64 from their papers and reference code.

test_pooling.py checks the NeXtVLAD layer and test_fusion.py MBT's exchange pattern; these
tests check what is built around them: NeXtVLADModel as the NeXtVLAD paper's Fig. 3 (one
NeXtVLAD per modality, concat, FC, BN, gating, MoE), BottleneckFusion end to end as MBT's
eqs. 8-9 over pre-LN transformer blocks with padded keys, and late fusion averaging the
per-modality heads' log-odds, not their probabilities.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tests.models.numpy_reference import l2n as _l2n
from tests.models.numpy_reference import sigmoid as _sigmoid
from tests.models.numpy_reference import softmax as _softmax
from tests.models.numpy_reference import to_numpy as _np
from tests.models.random_params import random_params
from vmjax.models.classifiers import Multimodal, NeXtVLADModel
from vmjax.models.fusion import BottleneckFusion

EPS_BN = 1e-5  # flax BatchNorm's default epsilon.
EPS_LN = 1e-6  # flax LayerNorm's default epsilon.


def _dense(x: np.ndarray, p: dict) -> np.ndarray:
    return x @ p["kernel"] + p.get("bias", 0.0)


def _moe_probability(x: np.ndarray, p: dict, classes: int, mixtures: int) -> np.ndarray:
    """The starter's MoeModel: p = sum_m softmax(gates)_m sigmoid(experts_m), dummy expert last."""
    gates = _softmax((x @ p["gates"]["kernel"]).reshape(-1, classes, mixtures + 1))
    experts = _sigmoid(_dense(x, p["experts"]).reshape(-1, classes, mixtures))
    return np.sum(gates[..., :mixtures] * experts, axis=-1)


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


# ---------------------------------------------------------------- NeXtVLADModel


def _nextvlad(x: np.ndarray, mask: np.ndarray, p: dict, groups: int) -> np.ndarray:
    """NeXtVLAD eqs. 5-8 (ECCV numbering) with eq. 18's mask, residuals kept explicit."""
    x = np.where(mask[..., None], x, 0)  # eq. 18 multiplies by the mask; 0 * garbage may be NaN
    x_dot = _dense(x, p["expand"])  # [b, t, lambda N]
    b, t, _ = x_dot.shape
    k, n = p["centers"].shape
    alpha_g = _sigmoid(_dense(x_dot, p["group_attention"]))  # [b, t, G]
    alpha_gk = _softmax(_dense(x_dot, p["assign"]).reshape(b, t, groups, k))  # [b, t, G, K]
    x_tilde = x_dot.reshape(b, t, groups, n)
    residuals = x_tilde[:, :, :, None, :] - p["centers"]  # [b, t, G, K, n]
    weight = mask[:, :, None, None] * alpha_g[..., None] * alpha_gk  # [b, t, G, K]
    v = np.sum(weight[..., None] * residuals, axis=(1, 2))  # [b, K, n]
    return _l2n(_l2n(v).reshape(b, k * n))


def test_nextvlad_model_is_the_papers_two_stream_pipeline():
    classes, mixtures, k_rgb, k_audio, hidden, groups = 5, 2, 3, 2, 6, 4
    model = NeXtVLADModel(
        num_classes=classes,
        num_mixtures=mixtures,
        num_clusters=k_rgb,
        audio_clusters=k_audio,
        hidden_size=hidden,
        dropout=0.5,  # eval mode: no dropout
        expansion=2,
        groups=groups,
    )
    rng = np.random.default_rng(0)
    b, t = 4, 5
    mask = np.arange(t)[None] < np.array([5, 3, 1, 0])[:, None]
    rgb = rng.normal(size=(b, t, 8)).astype(np.float32)
    audio = rng.normal(size=(b, t, 4)).astype(np.float32)
    rgb[~mask], audio[~mask] = 1e6, -1e6  # padding garbage
    inputs = {"rgb": jnp.asarray(rgb), "audio": jnp.asarray(audio), "mask": jnp.asarray(mask)}
    params = random_params(model, inputs, train=False)
    stats = {"hidden_bn": {"mean": rng.normal(size=hidden), "var": rng.uniform(0.5, 2, hidden)}}
    stats = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), stats)
    apply = jax.jit(functools.partial(model.apply, train=False))
    logits = apply({"params": params, "batch_stats": stats}, inputs)

    p, s = _np(params), _np(stats)["hidden_bn"]
    # One NeXtVLAD per modality, each with its own clusters over its own features.
    assert p["rgb_vlad"]["centers"].shape == (k_rgb, 2 * 8 // groups)
    assert p["audio_vlad"]["centers"].shape == (k_audio, 2 * 4 // groups)
    vlad = np.concatenate(
        [
            _nextvlad(rgb.astype(np.float64), mask, p["rgb_vlad"], groups),
            _nextvlad(audio.astype(np.float64), mask, p["audio_vlad"], groups),
        ],
        axis=-1,
    )
    h = _dense(vlad, p["hidden"])
    h = (h - s["mean"]) / np.sqrt(s["var"] + EPS_BN) * p["hidden_bn"]["scale"]
    h = h + p["hidden_bn"]["bias"]
    h = _sigmoid(_dense(h, p["gating"]["gates"])) * h
    want = _logit(_moe_probability(h, p["head"], classes, mixtures))
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- MBT


def _layer_norm(x: np.ndarray, p: dict) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + EPS_LN) * p["scale"] + p["bias"]


def _gelu(x: np.ndarray) -> np.ndarray:
    """flax's nn.gelu (the tanh approximation)."""
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _attention(x: np.ndarray, key_mask: np.ndarray, p: dict) -> np.ndarray:
    """Multi-head self-attention (Vaswani et al. eq. 1) whose padded keys get weight 0."""
    q, k, v = (
        np.einsum("btd,dhe->bthe", x, p[n]["kernel"]) + p[n]["bias"]
        for n in ("query", "key", "value")
    )
    scores = np.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(key_mask[:, None, None, :], scores, -np.inf)
    heads = np.einsum("bhqk,bkhe->bqhe", _softmax(scores), v)
    return np.einsum("bqhe,hed->bqd", heads, p["out"]["kernel"]) + p["out"]["bias"]


def _block(x: np.ndarray, key_mask: np.ndarray, p: dict) -> np.ndarray:
    """ViT's pre-LN block: x + MSA(LN(x)), then + MLP(LN(.))."""
    x = x + _attention(_layer_norm(x, p["ln_attention"]), key_mask, p["attention"])
    y = _gelu(_dense(_layer_norm(x, p["ln_mlp"]), p["mlp"]["Dense_0"]))
    return x + _dense(y, p["mlp"]["Dense_1"])


def _mbt(tokens: dict, masks: dict, p: dict, layers: int, fusion_layer: int) -> dict:
    """MBT (Nagrani et al. 2021) eqs. 8-9: per-modality layers, then shared bottlenecks."""
    x, key_masks = {}, {}
    for m, z in tokens.items():
        b = z.shape[0]
        z = np.where(masks[m][..., None], z, 0) + p[f"{m}_pos_embedding"]
        cls = np.broadcast_to(p[f"{m}_cls"], (b, 1, z.shape[-1]))
        x[m] = np.concatenate([cls, z], axis=1)
        key_masks[m] = np.concatenate([np.ones((b, 1), bool), masks[m]], axis=1)
    z_fsn = None
    for layer in range(layers):
        if layer < fusion_layer:
            x = {m: _block(x[m], key_masks[m], p[f"{m}_block_{layer}"]) for m in x}
            continue
        if z_fsn is None:
            z_fsn = np.broadcast_to(p["bottleneck"], (b, *p["bottleneck"].shape[1:]))
        updates = []
        for m in x:
            n = x[m].shape[1]
            mask = np.concatenate([key_masks[m], np.ones(z_fsn.shape[:2], bool)], axis=1)
            y = _block(np.concatenate([x[m], z_fsn], axis=1), mask, p[f"{m}_block_{layer}"])
            x[m], z_hat = y[:, :n], y[:, n:]  # eq. 8
            updates.append(z_hat)
        z_fsn = np.mean(updates, axis=0)  # eq. 9
    return {m: _layer_norm(x[m][:, 0], p[f"{m}_ln_final"]) for m in x}


def test_bottleneck_fusion_computes_mbt_equations_with_masks():
    model = BottleneckFusion(
        num_layers=3, fusion_layer=1, num_heads=2, mlp_dim=12, num_bottlenecks=2
    )
    rng = np.random.default_rng(1)
    b, d = 3, 8
    tokens = {"rgb": rng.normal(size=(b, 4, d)), "audio": rng.normal(size=(b, 3, d))}
    masks = {"rgb": np.ones((b, 4), bool), "audio": np.ones((b, 3), bool)}
    masks["rgb"][1, 2:] = False
    masks["audio"][0, 1:] = False
    masks["audio"][2] = False  # only the CLS token is left
    for m in tokens:
        tokens[m][~masks[m]] = np.nan  # padding may hold anything
    args = (
        {m: jnp.asarray(v, jnp.float32) for m, v in tokens.items()},
        {m: jnp.asarray(v) for m, v in masks.items()},
    )
    params = random_params(model, *args, train=False)
    out = jax.jit(functools.partial(model.apply, train=False))({"params": params}, *args)
    want = _mbt(tokens, masks, _np(params), layers=3, fusion_layer=1)
    for m in want:
        np.testing.assert_allclose(out[m], want[m], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- late fusion


def test_multimodal_late_fusion_averages_log_odds_of_each_modalitys_moe():
    classes, mixtures, hidden, b, t, length = 4, 2, 8, 3, 5, 6
    model = Multimodal(
        num_classes=classes,
        num_mixtures=mixtures,
        hidden_size=hidden,
        vivit={},  # rgb is left out, so no ViViT is built
        text_vocab_size=11,
        text_embed_dim=6,
        fusion="late",
        modalities="audio,text",
        fusion_layers=2,
        fusion_layer=0,
        num_bottlenecks=2,
    )
    rng = np.random.default_rng(2)
    inputs = {
        "rgb": jnp.asarray(rng.normal(size=(b, t, 7)), jnp.float32),
        "audio": jnp.asarray(rng.normal(size=(b, t, 4)), jnp.float32),
        "mask": jnp.asarray(np.arange(t)[None] < np.array([[5], [2], [4]])),
        "text_tokens": jnp.asarray(rng.integers(0, 11, size=(b, length))),
        "text_mask": jnp.asarray(np.arange(length)[None] < np.array([[6], [3], [1]])),
    }
    params = random_params(model, inputs, train=False)
    # Sharper heads, so that the modalities' probabilities differ and the two means below do.
    params = {
        k: jax.tree.map(lambda a: 8 * a, v) if k.endswith("_head") else v for k, v in params.items()
    }
    logits, state = model.apply({"params": params}, inputs, train=False, capture_intermediates=True)
    captured = state["intermediates"]
    p = _np(params)
    probs = {}
    for m in ("audio", "text"):
        embedding = np.asarray(captured[m]["__call__"][0][1], np.float64)  # final LSTM state
        probs[m] = _moe_probability(embedding, p[f"{m}_head"], classes, mixtures)
    want = (_logit(probs["audio"]) + _logit(probs["text"])) / 2
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)
    # Averaging probabilities would be another model; these inputs tell the two apart.
    averaged_probabilities = _logit((probs["audio"] + probs["text"]) / 2)
    assert not np.allclose(logits, averaged_probabilities, atol=1e-3)
