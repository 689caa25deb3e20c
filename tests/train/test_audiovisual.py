"""Audio-visual pretraining and the probes of its encoders (configs/audiovisual.py).

One module-scoped pretraining run (tiny embedded dataset, 30 steps) and a linear probe of it.
References: numpy InfoNCE on the model's own outputs, numpy retrieval ranks on embeddings
recomputed from the restored checkpoint, a numpy linear head on the pretrained features, and
the checkpoints' bytes (frozen encoders must stay bit-identical).
"""

import json
import os
import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.models.test_retrieval import VIVIT, ref_infonce
from tests.train import kill_resume
from vmjax import metrics
from vmjax.data import pipeline, synthetic
from vmjax.data.device import model_inputs
from vmjax.models import build_model
from vmjax.models.audiovisual import AudioVisual
from vmjax.tools import configs
from vmjax.train import audiovisual, inputs, loop, pretrained, setup
from vmjax.train.checkpoint import restore_checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[2]
SYNTHETIC = dict(seed=0, num_train=256, num_validate=128, min_frames=4, max_frames=12)
SHARDS = dict(num_train_shards=2, num_validate_shards=1)
STEPS = 30


def get_config(preset: str, cache_dir: str):
    c = configs.get_config(
        ROOT / "configs" / "audiovisual.py", ",".join(p for p in (preset, "smoke") if p)
    )
    c.data.cache_dir = cache_dir
    c.data.synthetic.update(SYNTHETIC)
    c.data.synthetic.update(SHARDS)
    c.data.max_frames = 12
    c.data.shuffle_buffer = 64
    c.batch_size = 32
    c.eval_batch_size = 32
    c.model.hidden_size = 16
    c.model.vivit.hidden_size = 16
    c.model.vivit.mlp_dim = 32
    if not preset:  # pretraining
        c.num_train_steps = STEPS
        c.eval_every = STEPS
        c.checkpoint_every = STEPS
        c.pretrain.embed_dim = 16
        c.optimizer.learning_rate = 1e-2
        c.optimizer.warmup_steps = 4
    else:
        c.num_train_steps = 8
        c.eval_every = 8
        c.checkpoint_every = 8
    return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("audiovisual")
    cache = str(root / "cache")
    config = get_config("", cache)
    spec = synthetic.Spec(num_classes=config.data.num_classes, **config.data.synthetic.to_dict())
    synthetic.generate(os.path.join(cache, spec.key()), spec, workers=1, log=lambda *_: None)
    workdir = str(root / "pre")
    result = audiovisual.train_and_evaluate(config, workdir)
    return types.SimpleNamespace(config=config, workdir=workdir, result=result, cache=cache)


def _restore(workdir: str, config):
    if config.get("task") == "audiovisual":
        like = jax.eval_shape(audiovisual.setup(config)[2].init)
    else:
        like = jax.eval_shape(lambda: setup.init_run(config)[2])
    state, _ = restore_checkpoint(os.path.join(workdir, "checkpoints"), like)
    return jax.device_get(state.params)


def _eval_batches(config):
    _, eval_files, _ = inputs.resolve_data(config)
    spec = pipeline.BatchSpec.from_config(config.data)
    return list(inputs.eval_stream(config, spec, eval_files, config.eval_batch_size))


# --- the model.


def test_encoders_are_the_multimodal_classifiers(tmp_path):
    # The pretrained rgb/audio subtrees have exactly the probe classifier's shapes, and the
    # probe's logits are a linear map of AudioVisual's features (computed here in numpy).
    av_config = get_config("", str(tmp_path))
    probe_config = get_config("random_probe", str(tmp_path))
    inputs = model_inputs(pipeline.config_example_batch(probe_config.data, 3))
    rng = np.random.default_rng(0)
    inputs["rgb"] = jnp.asarray(rng.normal(size=inputs["rgb"].shape), jnp.float32)
    inputs["audio"] = jnp.asarray(rng.normal(size=inputs["audio"].shape), jnp.float32)
    inputs["mask"] = jnp.asarray(np.arange(inputs["mask"].shape[1]) < [[12], [5], [1]])
    av = audiovisual.build_model(av_config)
    # Jitted: eager initialisation compiles one program per op.
    av_params = jax.jit(lambda x: av.init(jax.random.key(1), x, train=False))(inputs)["params"]
    classifier = build_model(probe_config.model, probe_config.data.num_classes)
    params = jax.jit(lambda x: classifier.init(jax.random.key(2), x, train=False))(inputs)
    params = dict(params["params"])
    assert sorted(params) == ["audio", "head", "rgb"]
    shapes = lambda tree: jax.tree.map(lambda x: x.shape, tree)  # noqa: E731
    for m in ("rgb", "audio"):
        assert shapes(params[m]) == shapes(av_params[m])
        params[m] = av_params[m]
    features = jax.jit(lambda p, x: av.apply({"params": p}, x, train=False, features=True))
    features = np.asarray(features(av_params, inputs))
    assert features.shape == (3, 16 + 16)
    head = params["head"]["logits"]
    want = features @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
    got = jax.jit(lambda p, x: classifier.apply({"params": p}, x, train=False))(params, inputs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_train_step_is_cross_and_within_modal_infonce_and_never_sees_labels(run):
    config = run.config
    model, _, place_ = audiovisual.setup(config)
    batch = _eval_batches(config)[0]
    assert set(audiovisual.model_batch(batch)) == {"rgb", "audio", "mask", "weights"}
    state = jax.device_get(place_.init())
    rng = jax.random.PRNGKey(0)  # a raw key, as the loop passes: the compiled step is reused
    # The step's views: its key's first half crops and drops each modality's frames; the
    # within-modal term's second views come from that key folded with 1.
    p = config.pretrain
    assert p.within_modal == 1.0 and p.crop_frames and p.frame_dropout  # the preset's
    view_key = jax.random.split(rng)[0]
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
    out = []
    for key in (view_key, jax.random.fold_in(view_key, 1)):
        inputs = audiovisual.views(
            key,
            audiovisual.model_batch(batch),
            crop_frames=p.crop_frames,
            frame_dropout=p.frame_dropout,
        )
        out.append(jax.device_get(apply(state.params, model_inputs(inputs))))
    log_scale = state.params["log_scale"]
    want = ref_infonce(out[0]["rgb"], out[0]["audio"], log_scale) + 0.5 * (
        ref_infonce(out[0]["rgb"], out[1]["rgb"], log_scale)
        + ref_infonce(out[0]["audio"], out[1]["audio"], log_scale)
    )
    _, step_metrics = place_.train(
        place_.put_state(state), place_.put_batch(audiovisual.model_batch(batch)), rng
    )
    np.testing.assert_allclose(float(step_metrics["loss"]), want, rtol=1e-5)


def _window_start(frames: np.ndarray, cropped: np.ndarray, k: int) -> int | None:
    """Where the k frames `cropped` start in `frames` (None: not a run of them)."""
    starts = [s for s in range(len(frames) - k + 1) if np.array_equal(frames[s : s + k], cropped)]
    return starts[0] if starts else None


def test_views_crop_and_drop_each_modality_on_its_own():
    rng = np.random.default_rng(0)
    n = np.array([12, 7, 3, 1])
    mask = np.arange(12) < n[:, None]
    batch = {
        "rgb": rng.integers(0, 256, (4, 12, 1024), dtype=np.uint8),
        "audio": rng.integers(0, 256, (4, 12, 128), dtype=np.uint8),
        "mask": mask,
    }
    views = jax.jit(lambda k, b: audiovisual.views(k, b, crop_frames=5, frame_dropout=0.0))
    windows = set()
    for seed in range(8):
        out = jax.device_get(views(jax.random.key(seed), batch))
        for m in ("rgb", "audio"):
            # min(n, 5) frames kept, at the front: a consecutive run of the valid frames.
            k = np.minimum(n, 5)
            np.testing.assert_array_equal(out[f"{m}_mask"], np.arange(12) < k[:, None])
            for b in range(4):
                assert _window_start(batch[m][b, : n[b]], out[m][b, : k[b]], k[b]) is not None
        windows.add(tuple(_window_start(batch[m][0], out[m][0, :5], 5) for m in ("rgb", "audio")))
    # The 12-frame video's rgb and audio windows are drawn independently.
    assert any(r != a for r, a in windows), windows
    # Frame dropout clears frames per modality, never all of a video's.
    out = audiovisual.views(jax.random.key(4), batch, crop_frames=0, frame_dropout=0.5)
    for m in ("rgb", "audio"):
        got = np.asarray(out[f"{m}_mask"])
        assert not np.any(got & ~mask) and np.all(got.sum(1) >= 1)
        assert got.sum() < mask.sum()
    assert not np.array_equal(out["rgb_mask"], out["audio_mask"])


# --- the pretraining run.


def test_pretraining_metrics_match_a_recomputation_and_beat_chance(run):
    lines = [json.loads(x) for x in open(os.path.join(run.workdir, "metrics.jsonl"))]
    assert [x["step"] for x in lines] == [STEPS]
    logged = lines[-1]
    for key in audiovisual.LOGGED:
        assert key in logged
    # Recompute from the checkpoint: embed every eval video here and rank in numpy.
    params = _restore(run.workdir, run.config)
    model = audiovisual.build_model(run.config)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
    rgb, audio = [], []
    for batch in _eval_batches(run.config):
        out = apply(params, model_inputs(audiovisual.model_batch(batch)))
        real = batch["weights"] > 0
        rgb.append(np.asarray(out["rgb"])[real])
        audio.append(np.asarray(out["audio"])[real])
    rgb, audio = np.concatenate(rgb), np.concatenate(audio)
    assert len(rgb) == SYNTHETIC["num_validate"] == logged["num_videos"]
    sim = audio @ rgb.T
    ranks = np.sum(sim >= np.diag(sim)[:, None], axis=1)  # 1-based; ties count against
    np.testing.assert_allclose(logged["audio_to_rgb/r@10"], np.mean(ranks <= 10), atol=1e-6)
    np.testing.assert_allclose(logged["audio_to_rgb/median_rank"], np.median(ranks), atol=1e-6)
    np.testing.assert_allclose(
        logged["loss"], ref_infonce(rgb, audio, params["log_scale"]), rtol=1e-4
    )
    # Learned something without labels: each modality finds its own video's other one far
    # above chance (R@10 = 10/128 = 0.078, median rank 64.5).
    chance = 10 / len(rgb)
    assert logged["audio_to_rgb/r@10"] > 2 * chance, logged
    assert logged["rgb_to_audio/r@10"] > 2 * chance, logged
    assert "Final audio-visual evaluation" in audiovisual.summary(run.result)


# --- probes of the pretrained encoders.


def test_linear_probe_keeps_the_pretrained_encoders_bit_identical(run, tmp_path):
    config = get_config("probe", run.cache)
    config.init_from.workdir = run.workdir
    workdir = str(tmp_path / "probe")
    result = loop.train_and_evaluate(config, workdir)
    assert result["step"] == 8 and 0.0 <= result["gap"] <= 1.0
    pre = _restore(run.workdir, run.config)
    probe = _restore(workdir, config)
    for m in ("rgb", "audio"):
        jax.tree.map(np.testing.assert_array_equal, probe[m], pre[m])
    # The head did train: it differs from the one the seed initialises.
    fresh = jax.device_get(setup.init_run(config)[2].params)
    assert not np.allclose(probe["head"]["logits"]["bias"], fresh["head"]["logits"]["bias"])


def test_finetune_starts_from_the_pretrained_encoders(run):
    config = get_config("finetune", run.cache)
    config.init_from.workdir = run.workdir
    _, _, state = setup.init_run(config)
    # LP-FT: the encoders are held for the first half of the steps (tested below), then train.
    assert pretrained.frozen_modules(config) == ["rgb", "audio"]
    assert config.freeze_steps == config.num_train_steps // 2 == 4
    params = pretrained.initialize(config, state.params)
    pre = _restore(run.workdir, run.config)
    for m in ("rgb", "audio"):
        jax.tree.map(np.testing.assert_array_equal, params[m], pre[m])
        assert not np.array_equal(
            jax.tree.leaves(state.params[m])[0], jax.tree.leaves(pre[m])[0]
        )  # the seed's init differs: the copy is what made them equal
    jax.tree.map(np.testing.assert_array_equal, params["head"], state.params["head"])


def test_random_probe_freezes_the_seeded_encoders(run):
    config = get_config("random_probe", run.cache)
    config.optimizer.warmup_steps = 0  # a first update of the full learning rate
    assert pretrained.init_workdir(config) == ""
    model, tx, state = setup.init_run(config)
    grads = jax.tree.map(jnp.ones_like, state.params)
    updates, _ = tx.update(grads, state.opt_state, state.params)
    for m in ("rgb", "audio"):
        assert all(not np.any(x) for x in jax.tree.leaves(updates[m]))
    assert np.any(updates["head"]["logits"]["kernel"])


def test_freeze_steps_hold_the_encoders_then_let_them_train(run):
    config = get_config("finetune", run.cache)
    config.optimizer.warmup_steps = 0
    config.freeze_steps = 2
    _, tx, state = setup.init_run(config)
    grads = jax.tree.map(jnp.ones_like, state.params)
    update = jax.jit(tx.update)
    opt_state, moved = state.opt_state, []
    for _ in range(4):
        updates, opt_state = update(grads, opt_state, state.params)
        moved.append({m: any(np.any(x) for x in jax.tree.leaves(updates[m])) for m in updates})
    assert [u["rgb"] for u in moved] == [False, False, True, True]
    assert [u["audio"] for u in moved] == [False, False, True, True]
    assert all(u["head"] for u in moved)


# --- errors.


def test_probe_without_a_pretraining_run_says_which_flag(run, tmp_path):
    config = get_config("probe", run.cache)
    with pytest.raises(ValueError, match="--config.init_from.workdir=RUN"):
        loop.train_and_evaluate(config, str(tmp_path / "p"))


def test_init_from_a_run_with_other_shapes_names_the_module(run):
    config = get_config("finetune", run.cache)
    config.init_from.workdir = run.workdir
    config.model.hidden_size = 8  # the audio LSTM no longer fits
    _, _, state = setup.init_run(config)
    with pytest.raises(ValueError, match="the 'audio' parameters do not fit"):
        pretrained.initialize(config, state.params)
    config.model.hidden_size = 16
    config.init_from.modules = "rgb,text"
    with pytest.raises(ValueError, match=r"has no parameters 'text'; it has \['audio'"):
        pretrained.initialize(config, state.params)


def test_freeze_names_an_unknown_module(run):
    config = get_config("random_probe", run.cache)
    config.freeze = "rgb,video"
    with pytest.raises(ValueError, match=r"config.freeze names \['video'\]"):
        setup.init_run(config)


def test_pretraining_config_checks():
    config = get_config("", "/nonexistent")
    config.data.level = "video"
    with pytest.raises(ValueError, match="set it to 'frame'"):
        audiovisual.check_config(config)
    probe = get_config("probe", "/nonexistent")
    with pytest.raises(ValueError, match="this trainer runs 'audiovisual'"):
        audiovisual.check_config(probe)
    with pytest.raises(ValueError, match="choose one stage preset"):
        get_config("probe,finetune", "/nonexistent")


def test_audiovisual_model_outputs_unit_vectors():
    model = AudioVisual(embed_dim=8, hidden_size=8, vivit=dict(VIVIT, hidden_size=8, mlp_dim=8))
    inputs = {
        "rgb": jnp.ones((2, 3, 1024)),
        "audio": jnp.ones((2, 3, 128)),
        "mask": jnp.array([[1, 1, 0], [1, 0, 0]], bool),
    }
    params = model.init(jax.random.key(0), inputs, train=False)
    out = model.apply(params, inputs, train=False)
    for m in ("rgb", "audio"):
        np.testing.assert_allclose(np.linalg.norm(out[m], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["log_scale"], np.log(1 / 0.07), rtol=1e-6)
    assert metrics.RECALL_KS == (1, 5, 10)


def test_sigkill_mid_save_then_resume_ends_as_the_uninterrupted_run(run, tmp_path):
    config = run.config.copy_and_resolve_references()
    config.checkpoint_every = 6  # saving more often changes nothing the run computes
    workdir = str(tmp_path / "killed")
    err = kill_resume.kill_mid_save_then_resume("audiovisual", config, workdir, 12)
    assert "Resuming from checkpoint" in err
    kill_resume.assert_same_end(workdir, run.workdir, STEPS)
