"""JointEmbedding and InfoNCE against numpy, and the all-gathered loss on 8 fake CPU devices."""

import functools
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.models.random_params import random_params
from vmjax.models.retrieval import JointEmbedding, infonce_loss, l2_normalize

ROOT = pathlib.Path(__file__).resolve().parents[2]
B, T, L = 4, 5, 6


# --- numpy references, written from the equations.


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def ref_infonce(video: np.ndarray, text: np.ndarray, log_scale: float) -> float:
    """0.5 * (CE of each video over all texts + CE of each text over all videos), float64."""
    scale = min(np.exp(log_scale), 100.0)
    logits = scale * video.astype(np.float64) @ text.astype(np.float64).T
    video_to_text = -np.mean(np.diag(_log_softmax(logits)))
    text_to_video = -np.mean(np.diag(_log_softmax(logits.T)))
    return 0.5 * (video_to_text + text_to_video)


def ref_infonce_grads(video, text, log_scale):
    """d loss / d (video, text, log_scale) by hand: d loss / d logits = (P - I) / n, averaged."""
    video, text = video.astype(np.float64), text.astype(np.float64)
    n = len(video)
    scale = np.exp(log_scale)
    logits = scale * video @ text.T
    eye = np.eye(n)
    d_logits = 0.5 * (
        (np.exp(_log_softmax(logits)) - eye) / n + ((np.exp(_log_softmax(logits.T)) - eye) / n).T
    )
    return scale * d_logits @ text, scale * d_logits.T @ video, float(np.sum(d_logits * logits))


# Jitted once: eager op-by-op dispatch of the loss and its gradient costs seconds on CPU.
_loss = jax.jit(infonce_loss)
_loss_grads = jax.jit(jax.grad(infonce_loss, argnums=(0, 1, 2)))
_weighted_loss = jax.jit(lambda v, t, s, w: infonce_loss(v, t, s, weights=w))
_weighted_grads = jax.jit(jax.grad(lambda v, t, s, w: infonce_loss(v, t, s, weights=w), (0, 1, 2)))


def _unit_rows(rng, n, d):
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# --- InfoNCE.


@pytest.mark.parametrize("temperature", [1.0, 0.07, 0.02, 0.005])
def test_infonce_matches_numpy(temperature):
    rng = np.random.default_rng(0)
    video, text = _unit_rows(rng, 7, 5), _unit_rows(rng, 7, 5)
    log_scale = np.float32(np.log(1 / temperature))
    got = float(_loss(video, text, log_scale))
    # 0.005 -> scale 200, clipped at 100.
    np.testing.assert_allclose(got, ref_infonce(video, text, float(log_scale)), rtol=1e-5)


def test_infonce_is_symmetric_and_perfect_pairs_score_low():
    rng = np.random.default_rng(1)
    video, text = _unit_rows(rng, 6, 8), _unit_rows(rng, 6, 8)
    log_scale = np.float32(np.log(1 / 0.07))
    np.testing.assert_allclose(
        _loss(video, text, log_scale), _loss(text, video, log_scale), rtol=1e-6
    )
    # Orthogonal matched pairs at scale 2: positive logit 2, all negatives 0.
    eye = np.eye(6, 8, dtype=np.float32)
    expected = np.log(1 + 5 * np.exp(-2.0))
    np.testing.assert_allclose(_loss(eye, eye, np.log(2.0)), expected, rtol=1e-6)


def test_infonce_gradients_match_numpy_and_stop_at_the_clip():
    rng = np.random.default_rng(2)
    video, text = _unit_rows(rng, 5, 4), _unit_rows(rng, 5, 4)
    log_scale = np.float32(np.log(10.0))
    grads = _loss_grads(video, text, log_scale)
    for got, want in zip(grads, ref_infonce_grads(video, text, float(log_scale)), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # Above the clip at 100 the scale is constant, so log_scale gets no gradient.
    assert float(_loss_grads(video, text, np.float32(5.0))[2]) == 0.0


def test_infonce_masks_padding_rows():
    # Rows with weight 0 are neither queries nor negatives: the loss is the plain InfoNCE of
    # the real rows alone, whatever the padding rows hold, and they get no gradient.
    rng = np.random.default_rng(3)
    video, text = _unit_rows(rng, 7, 5), _unit_rows(rng, 7, 5)
    weights = np.array([1, 0, 1, 1, 0, 1, 1], np.float32)
    real = weights > 0
    log_scale = np.float32(np.log(10.0))
    got = float(_weighted_loss(video, text, log_scale, weights))
    np.testing.assert_allclose(
        got, ref_infonce(video[real], text[real], float(log_scale)), rtol=1e-5
    )
    other = video.copy()
    other[~real] = _unit_rows(rng, 2, 5)  # different padding content: the same loss
    np.testing.assert_allclose(_weighted_loss(other, text, log_scale, weights), got, rtol=1e-6)
    grads = _weighted_grads(video, text, log_scale, weights)
    want = ref_infonce_grads(video[real], text[real], float(log_scale))
    for g, w in zip(grads[:2], want[:2], strict=True):
        np.testing.assert_allclose(g[real], w, rtol=1e-4, atol=1e-6)
        assert np.all(np.asarray(g)[~real] == 0.0)
    np.testing.assert_allclose(grads[2], want[2], rtol=1e-4, atol=1e-6)
    # All-ones weights are the unweighted loss; no real row at all is a loss of 0.
    np.testing.assert_allclose(
        _weighted_loss(video, text, log_scale, np.ones(7, np.float32)),
        _loss(video, text, log_scale),
        rtol=1e-6,
    )
    assert float(_weighted_loss(video, text, log_scale, np.zeros(7, np.float32))) == 0.0


def test_infonce_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="infonce_loss: video_emb and text_emb"):
        infonce_loss(np.zeros((4, 3)), np.zeros((5, 3)), 0.0)


# --- All-gathered loss on 8 fake devices (a subprocess: the device count is fixed at startup).


@pytest.fixture(scope="module")
def report():
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.train.retrieval_worker"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("REPORT ")][-1]
    return json.loads(line[len("REPORT ") :])


@pytest.mark.parametrize("run", ["shard_map_outside", "shard_map_inside", "shard_map_2d", "pmap"])
def test_all_gathered_loss_and_gradients_equal_one_device(report, run):
    r = report[run]
    np.testing.assert_allclose(r["loss"], report["loss"], rtol=1e-6)
    # Gradients w.r.t. the projections, the log scale and every input row.
    params, rows = r["grads"]
    want_params, want_rows = report["grads"]
    assert sorted(params) == ["log_scale", "text_w", "video_w"]
    assert sorted(rows) == ["text_features", "video_features"]
    for got, want in ((params, want_params), (rows, want_rows)):
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_padding_rows_are_masked_across_devices(report):
    # One device holds only padding rows; the gathered loss still equals one device's.
    r, want = report["weighted_shard_map"], report["weighted_reference"]
    np.testing.assert_allclose(r["loss"], want["loss"], rtol=1e-6)
    for got, ref in zip(r["grads"], want["grads"], strict=True):
        for key in ref:
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)
    from tests.train import retrieval_worker as w

    rows = want["grads"][1]["video_features"]
    assert all(not any(rows[i]) for i in w.PADDING_ROWS)
    assert want["loss"] != report["loss"]  # the padding did change the batch's loss


def test_without_the_gather_the_loss_would_differ(report):
    # Each device contrasting only its 3 rows is a different (smaller) loss: the test above
    # can tell a gathered loss from a local one.
    assert report["local_only"] < 0.8 * report["loss"]


def test_worker_reference_matches_numpy():
    from tests.train import retrieval_worker as w

    params, batch = w.params(), w.batch()
    video = batch["video_features"] @ params["video_w"]
    text = batch["text_features"] @ params["text_w"]
    video /= np.linalg.norm(video, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    loss, _ = w.reference()
    np.testing.assert_allclose(loss, ref_infonce(video, text, params["log_scale"]), rtol=1e-5)


# --- JointEmbedding.

VIVIT = dict(
    variant="spatio_temporal",
    num_layers=1,
    hidden_size=16,
    num_heads=2,
    mlp_dim=16,
    num_temporal_layers=1,
    pooling="cls",
    tokens_per_frame=1,
    posemb_init="sincos",
    dropout=0.0,
)


def _model(**overrides) -> JointEmbedding:
    fields = dict(
        embed_dim=8,
        hidden_size=16,
        vivit=VIVIT,
        text_vocab_size=50,
        text_embed_dim=8,
        fusion="concat",
        modalities="rgb,audio",
        fusion_layers=1,
        fusion_layer=0,
        num_bottlenecks=2,
    )
    return JointEmbedding(**(fields | overrides))


def _inputs(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    mask = np.arange(T)[None] < np.array([T, 2, 3, 1])[:, None]
    return {
        "rgb": (rng.normal(size=(B, T, 1024)) * mask[..., None]).astype(np.float32),
        "audio": (rng.normal(size=(B, T, 128)) * mask[..., None]).astype(np.float32),
        "mask": mask,
        "text_tokens": rng.integers(1, 50, (B, L)).astype(np.int32),
        "text_mask": np.arange(L)[None] < np.array([L, 3, 1, 2])[:, None],
    }


def test_init_log_scale_is_clips_temperature():
    model = _model()
    # `scale` touches only the log scale, so this init builds no tower.
    variables = model.init(jax.random.key(0), method=JointEmbedding.scale)
    assert jax.tree.map(np.shape, variables) == {"params": {"log_scale": ()}}
    np.testing.assert_allclose(variables["params"]["log_scale"], np.log(1 / 0.07), rtol=1e-6)
    np.testing.assert_allclose(model.apply(variables, method=JointEmbedding.scale), 1 / 0.07)
    clipped = {"params": {"log_scale": np.float32(np.log(150.0))}}
    np.testing.assert_allclose(model.apply(clipped, method=JointEmbedding.scale), 100, rtol=1e-6)


@pytest.mark.parametrize("fusion", ["concat", "gated", "bottleneck"])
def test_joint_embedding_towers(fusion):
    model = _model(fusion=fusion)
    inputs = _inputs()
    variables = {"params": random_params(model, inputs, train=False)}

    @jax.jit  # one compile for the joint call and both single-tower methods
    def run(inputs):
        video_only = {k: inputs[k] for k in ("rgb", "audio", "mask")}  # no text needed
        return (
            model.apply(variables, inputs, train=False),
            model.apply(variables, video_only, train=False, method=JointEmbedding.embed_video),
            model.apply(
                variables,
                inputs["text_tokens"],
                inputs["text_mask"],
                train=False,
                method=JointEmbedding.embed_text,
            ),
        )

    out, videos, texts = run(inputs)
    assert out["video"].shape == out["text"].shape == (B, 8)
    assert out["video"].dtype == out["text"].dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(out["video"], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["text"], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(videos, out["video"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(texts, out["text"], rtol=1e-5, atol=1e-6)
    # The towers are separate: other text changes only texts, other audio only videos.
    other_text = dict(inputs, text_tokens=(inputs["text_tokens"] + 7) % 50)
    other_audio = dict(inputs, audio=inputs["audio"][:, ::-1] * inputs["mask"][..., None])
    out_text, out_audio = run(other_text)[0], run(other_audio)[0]
    assert not np.allclose(out_text["text"], out["text"])
    np.testing.assert_array_equal(out_text["video"], out["video"])
    assert not np.allclose(out_audio["video"], out["video"])
    np.testing.assert_array_equal(out_audio["text"], out["text"])


def test_joint_embedding_rejects_text_in_the_video_tower_and_unknown_fusion():
    for overrides, match in (
        ({"modalities": "rgb,text"}, "modalities"),
        ({"fusion": "late"}, "fusion"),
    ):
        model = _model(**overrides)
        with pytest.raises(ValueError, match=f"JointEmbedding {match}="):
            jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), _inputs())


def test_l2_normalize_keeps_zero_rows_zero():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)


# --- a MiniLM text tower (tiny random BERT sizes; the checkpoint path is tested in train/).

TINY_MINILM = dict(
    vocab_size=40, dim=8, num_layers=1, num_heads=2, intermediate=16, max_positions=16
)


def test_minilm_text_tower_is_the_minilm_module_then_projection():
    from vmjax.models.minilm import MiniLM

    model = _model(text_tower_kind="minilm", minilm=TINY_MINILM)
    inputs = _inputs()
    params = random_params(model, inputs, train=False)
    tokens, mask = inputs["text_tokens"] % 40, inputs["text_mask"]
    tower = MiniLM(**TINY_MINILM).apply({"params": params["text_tower"]}, tokens, mask, train=False)
    got = model.apply(
        {"params": params}, tokens, mask, train=False, method=JointEmbedding.embed_text
    )
    # The reference in numpy: the standalone module's sentence vector, projected and normalised.
    w, b = params["text_projection"]["kernel"], params["text_projection"]["bias"]
    want = np.asarray(tower, np.float64) @ np.asarray(w, np.float64) + np.asarray(b)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_minilm_tower_gets_no_gradient(freeze):
    model = _model(text_tower_kind="minilm", minilm=TINY_MINILM, freeze_text_tower=freeze)
    inputs = _inputs()
    inputs["text_tokens"] = inputs["text_tokens"] % 40
    params = random_params(model, inputs, train=False)

    direction = np.linspace(-1.0, 1.0, 8, dtype=np.float32)

    def loss(params):  # the text tower alone: its gradient is what freezing decides
        texts = model.apply(
            {"params": params},
            inputs["text_tokens"],
            inputs["text_mask"],
            train=True,
            rngs={"dropout": jax.random.key(1)},
            method=JointEmbedding.embed_text,
        )
        return jnp.sum(texts @ direction)

    grads = jax.jit(jax.grad(loss))(params)
    tower = [np.abs(g).max() for g in jax.tree.leaves(grads["text_tower"])]
    assert (max(tower) == 0) == freeze, max(tower)
    assert np.abs(grads["text_projection"]["kernel"]).max() > 0


def test_joint_embedding_rejects_an_unknown_text_tower():
    with pytest.raises(ValueError, match="JointEmbedding text_tower_kind="):
        jax.eval_shape(
            functools.partial(_model(text_tower_kind="bow").init, train=False),
            jax.random.key(0),
            _inputs(),
        )
