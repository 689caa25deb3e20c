"""Distillation loss against numpy; a student and an int8 copy made from a trained teacher run."""

import functools
import importlib.util
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.train.test_loop import NUM_CLASSES
from vmjax.compress import distillation, pruning
from vmjax.train import loop, setup
from vmjax.train.checkpoint import restore_checkpoint
from vmjax.train.step import train_step, weighted_loss

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _np_bce(logits, targets):
    p = 1 / (1 + np.exp(-logits))
    return -(targets * np.log(p) + (1 - targets) * np.log(1 - p))


def test_distillation_loss_matches_numpy():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(5, 7)) * 3
    t = rng.normal(size=(5, 7)) * 3
    y = (rng.random((5, 7)) < 0.3).astype(np.float64)
    w = np.array([1, 1, 0, 1, 0.5])
    T, alpha = 2.5, 0.3
    soft = 1 / (1 + np.exp(-t / T))
    per_video = alpha * T**2 * _np_bce(s / T, soft).sum(1) + (1 - alpha) * _np_bce(s, y).sum(1)
    total, count = distillation.distillation_loss(
        jnp.asarray(s, jnp.float32),
        jnp.asarray(t, jnp.float32),
        jnp.asarray(y.astype(np.uint8)),
        jnp.asarray(w, jnp.float32),
        T,
        alpha,
    )
    np.testing.assert_allclose(float(total), (per_video * w).sum(), rtol=1e-5)
    assert float(count) == pytest.approx(3.5)
    # alpha = 0 is the label loss alone; alpha = 1, T = 1 with the labels as "teacher" too.
    labels_only = distillation.distillation_loss(
        jnp.asarray(s), jnp.asarray(t), jnp.asarray(y), jnp.asarray(w), T, 0.0
    )[0]
    np.testing.assert_allclose(labels_only, weighted_loss(jnp.asarray(s), y, w)[0], rtol=1e-6)


def _config(arg, tmp_path, **overrides):
    spec = importlib.util.spec_from_file_location("compress_config", ROOT / "configs/compress.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg)
    c.data.cache_dir = str(tmp_path / "cache")
    c.data.num_classes = NUM_CLASSES  # not 3,862 (see tests/train/test_loop.py)
    c.data.synthetic.num_train = 96
    c.data.synthetic.num_validate = 40
    c.batch_size = c.eval_batch_size = 16
    c.num_train_steps = 6
    c.eval_every = c.checkpoint_every = 6
    c.log_every = 3
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        target = c
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A trained logistic run pruned to 50% at step 3 (checkpoints at 3 and 6): the teacher of
    the student, the source of the int8 copy, and the pruning config's run through the loop."""
    tmp = tmp_path_factory.mktemp("teacher")
    overrides = {"compress.sparsity": 0.5, "checkpoint_every": 3}
    c = _config("prune,smoke,logistic", tmp, **overrides)
    c.compress.begin_step, c.compress.end_step, c.compress.update_every = 3, 3, 1
    workdir = str(tmp / "teacher")
    result = loop.train_and_evaluate(c, workdir)
    return workdir, result, tmp


def test_the_pruned_run_saves_exactly_half_zero_kernels_and_its_masks(teacher):
    workdir, result, _ = teacher
    assert result["step"] == 6
    config = loop_config(workdir)
    _, _, like = setup.init_run(config)
    for step, sparsity in ((3, 0.0), (6, 0.5)):  # the one mask update is the 4th update
        state, _ = restore_checkpoint(os.path.join(workdir, "checkpoints"), like, step)
        kernel = np.asarray(state.params["head"]["logits"]["kernel"])
        assert (kernel == 0).sum() == round(sparsity * kernel.size), step
        assert (np.asarray(state.params["head"]["logits"]["bias"]) != 0).all()
        (mask,) = pruning.masks_of(state.opt_state)
        assert mask.dtype == bool and (~mask).sum() == (kernel == 0).sum()


def test_student_trains_from_the_teacher_workdir(teacher):
    teacher_dir, teacher_result, tmp = teacher
    c = _config(
        "distill,smoke",
        tmp,
        **{
            "compress.teacher_workdir": teacher_dir,
            "compress.alpha": 1.0,  # soft targets only: the student's optimum is the teacher
            "seed": 1,  # the student starts elsewhere than the teacher did
            "optimizer.warmup_steps": 0,
            "optimizer.end_learning_rate_factor": 1.0,
        },
    )
    assert c.model.name == "logistic" and c.compress.method == "distill"
    t = distillation.load_teacher(c)
    t_config = json.load(open(os.path.join(teacher_dir, "config.json")))["config"]
    assert t_config["compress"]["method"] == "prune" and (t.temperature, t.alpha) == (2.0, 1.0)

    # The student's train step on one batch: its distillation loss falls towards its floor and
    # its scores move towards the teacher's, whose parameters stay as restored.
    model, tx, state = setup.init_run(c)
    assert distillation.find(state.opt_state) is not None
    rng = np.random.default_rng(0)
    batch = {
        "rgb": rng.integers(0, 256, (16, 1024), dtype=np.uint8),
        "audio": rng.integers(0, 256, (16, 128), dtype=np.uint8),
        "labels": (rng.random((16, c.data.num_classes)) < 0.002).astype(np.uint8),
        "weights": np.ones(16, np.float32),
    }
    step = jax.jit(functools.partial(train_step, model=model, tx=tx))
    from vmjax.data.device import model_inputs

    def gap_to_teacher(state):
        inputs = model_inputs(batch)
        s = jax.nn.sigmoid(model.apply({"params": state.params}, inputs, train=False))
        q = jax.nn.sigmoid(t.logits(inputs, lambda p: p))
        return float(jnp.abs(s - q).mean())

    before, losses = gap_to_teacher(state), []
    for _ in range(15):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    # The soft term cannot go below alpha T^2 sum_c H(q_c), the soft targets' entropy.
    q = np.asarray(jax.nn.sigmoid(t.logits(model_inputs(batch), lambda p: p) / 2.0), np.float64)
    entropy = -(q * np.log(q) + (1 - q) * np.log1p(-q)).sum(1).mean()
    floor = t.alpha * t.temperature**2 * entropy
    assert floor < losses[-1] and losses[-1] - floor < 0.7 * (losses[0] - floor)
    assert gap_to_teacher(state) < 0.7 * before
    held = distillation.find(state.opt_state).variables
    for a, b in zip(jax.tree.leaves(held), jax.tree.leaves(t.variables), strict=True):
        np.testing.assert_array_equal(a, b)

    # The same config through the normal training loop.
    result = loop.train_and_evaluate(c, str(tmp / "student"))
    assert result["step"] == 6 and 0 < result["gap"] <= 1


def test_ptq_of_the_teacher_run_stores_int8_and_keeps_its_gap(teacher):
    teacher_dir, teacher_result, tmp = teacher
    c = _config("ptq,smoke", tmp, **{"compress.source_workdir": teacher_dir})
    workdir = str(tmp / "ptq")
    result = loop.train_and_evaluate(c, workdir)
    assert result["step"] == teacher_result["step"] == 6
    assert result["num_videos"] == teacher_result["num_videos"] == 40
    # 40 videos, 6 steps of training: int8 rounding moves the GAP by well under 0.02.
    assert abs(result["gap"] - teacher_result["gap"]) < 0.02
    lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [x["step"] for x in lines] == [6]
    stored = np.load(os.path.join(workdir, "quantized.npz"))
    assert stored["head/logits/kernel.qvalue"].dtype == np.int8
    assert stored["head/logits/bias"].dtype == np.float32
    # The int8 values are the teacher's kernel / its per-class scale, rounded; pruned stay 0.
    _, _, like = setup.init_run(loop_config(teacher_dir))
    float_state, _ = restore_checkpoint(os.path.join(teacher_dir, "checkpoints"), like)
    w = np.asarray(float_state.params["head"]["logits"]["kernel"])
    scale = stored["head/logits/kernel.scale"]
    np.testing.assert_allclose(scale, np.abs(w).max(0, keepdims=True) / 127.5, rtol=1e-6)
    q = stored["head/logits/kernel.qvalue"].astype(np.int64)
    assert np.abs(q - np.round(w / scale)).max() <= 1
    assert (q[w == 0] == 0).all()


def loop_config(workdir):
    from vmjax import run

    return run.Run.open(workdir).config
