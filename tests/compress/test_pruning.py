"""Gradual magnitude pruning: the Zhu & Gupta schedule by hand, exact zero counts, training."""

import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vmjax.compress import pruning
from vmjax.models import build_model
from vmjax.train import setup
from vmjax.train import state as state_lib
from vmjax.train.step import train_step

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _zhu_gupta(t, s_f, t0, n, dt):
    """Eq. 1 of Zhu & Gupta (s_i = 0) at an update step t = t0 + k dt, k <= n."""
    return s_f + (0.0 - s_f) * (1 - (t - t0) / (n * dt)) ** 3


@pytest.mark.parametrize(
    "step, want",
    [
        (0, 0.0),  # before begin_step
        (9, 0.0),
        (10, 0.0),  # the first update: (1 - 0)^3 = 1
        (15, 0.0),  # masks held until the next update
        (20, 0.8 * (1 - 0.75**3)),  # 0.4625
        (35, 0.8 * (1 - 0.5**3)),  # the update at 30: 0.7
        (50, 0.8),
        (1000, 0.8),
    ],
)
def test_schedule_matches_the_formula_by_hand(step, want):
    got = float(pruning.sparsity_at(step, 0.8, 10, 50, 10))
    assert got == pytest.approx(want, abs=1e-6)


def test_schedule_updates_at_t0_plus_k_dt_and_at_the_end():
    updates = [t for t in range(80) if pruning.is_update_step(t, 0, 25, 10)]
    assert updates == [0, 10, 20, 25]
    # Between 20 and 25 the masks are the ones set at 20.
    assert float(pruning.sparsity_at(24, 0.8, 0, 25, 10)) == pytest.approx(0.8 * (1 - 0.2**3))
    for t in (0, 10, 20):
        want = _zhu_gupta(t, 0.8, 0, 1, 25)
        assert float(pruning.sparsity_at(t, 0.8, 0, 25, 10)) == pytest.approx(want)


def test_a_schedule_of_one_update_goes_straight_to_the_target():
    assert [bool(pruning.is_update_step(t, 3, 3, 1)) for t in range(6)] == [0, 0, 0, 1, 0, 0]
    assert [float(pruning.sparsity_at(t, 0.5, 3, 3, 1)) for t in (2, 3, 9)] == [0, 0.5, 0.5]


def test_masks_follow_the_schedule_prune_the_smallest_and_stay_zero():
    rng = np.random.default_rng(0)
    params = {
        "dense": {"kernel": jnp.asarray(rng.normal(size=(40, 25)), jnp.float32)},
        "norm": {"scale": jnp.ones(25), "bias": jnp.zeros(25)},
    }
    s_f, t0, end, dt = 0.75, 2, 8, 3
    tx = optax.chain(optax.sgd(0.01), pruning.magnitude_pruning(s_f, t0, end, dt))
    opt_state = tx.init(params)
    assert len(pruning.masks_of(opt_state)) == 1  # the kernel only

    @jax.jit
    def step(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    zeros_before = np.zeros((40, 25), bool)
    for t in range(12):
        before = np.asarray(params["dense"]["kernel"])
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        params, opt_state = step(params, opt_state, grads)
        kernel = np.asarray(params["dense"]["kernel"])
        last_update = max([u for u in (2, 5, 8) if u <= t], default=None)
        want = 0.0 if last_update is None else _zhu_gupta(last_update, s_f, t0, 2, dt)
        zeros = kernel == 0
        assert zeros.sum() == round(want * kernel.size), t
        assert zeros[zeros_before].all(), t  # pruned weights stay at exactly 0
        if t in (2, 5, 8):  # the newly pruned are the smallest |w| before this update
            k = round(want * kernel.size)
            smallest = np.argsort(np.abs(before).ravel(), kind="stable")[:k]
            np.testing.assert_array_equal(np.flatnonzero(zeros.ravel()), np.sort(smallest))
        zeros_before = zeros
    assert np.asarray(params["norm"]["scale"]).min() > 0  # norms are not pruned
    assert (np.asarray(params["norm"]["bias"]) != 0).all()  # sgd moved every bias


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77, 0.99])
def test_magnitude_mask_counts_exactly_even_with_ties(sparsity):
    w = np.random.default_rng(3).integers(-3, 4, (20, 10)).astype(np.float32)  # many ties
    mask = np.asarray(pruning.magnitude_mask(jnp.asarray(w), sparsity))
    k = round(sparsity * w.size)
    want = np.ones(w.size, bool)
    want[np.argsort(np.abs(w).ravel(), kind="stable")[:k]] = False  # ties: first by position
    np.testing.assert_array_equal(mask.ravel(), want)


def _numpy_mask(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Magnitude pruning by hand: drop the round(s n) smallest |w|, ties by position."""
    keep = np.ones(w.size, bool)
    keep[np.argsort(np.abs(w).ravel(), kind="stable")[: round(sparsity * w.size)]] = False
    return keep.reshape(w.shape)


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9])
def test_magnitude_mask_matches_numpy_across_magnitudes_signs_zeros_and_denormals(sparsity):
    rng = np.random.default_rng(4)
    w = (10.0 ** rng.uniform(-30, 30, (48, 25))) * rng.choice([-1.0, 1.0], (48, 25))
    w = w.astype(np.float32)
    w.flat[:40] = 0.0
    w.flat[40:80] = -0.0
    w.flat[80:120] = rng.choice([-1.0, 1.0], 40) * np.float32(1e-40)  # float32 denormals
    w.flat[120:400] = rng.choice([-3.0, -2.0, 2.0, 3.0], 280)  # ties far from the zeros
    w = rng.permutation(w.ravel()).reshape(w.shape)
    mask = np.asarray(jax.jit(pruning.magnitude_mask)(jnp.asarray(w), sparsity))
    np.testing.assert_array_equal(mask, _numpy_mask(w, sparsity))


def test_state_masks_match_numpy_at_updates_hold_between_and_pruned_stay_zero():
    """Masks read from the optimizer state, step by step, against numpy on the same weights."""
    rng = np.random.default_rng(5)
    dense = rng.normal(size=(30, 20)).astype(np.float32)
    dense[15:] = rng.integers(-3, 4, (15, 20))  # these rows get no gradient: their ties persist
    params = {
        "dense": {"kernel": jnp.asarray(dense), "bias": jnp.ones(20)},
        "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32)},
    }
    s_f, t0, end, dt = 0.7, 1, 9, 3  # updates at 1, 4, 7 and 9 (the end)
    tx = optax.chain(optax.sgd(0.05), pruning.magnitude_pruning(s_f, t0, end, dt))

    @jax.jit
    def step(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    masks = [np.ones((3, 4, 5), bool), np.ones((30, 20), bool)]  # conv, dense: tree order
    for t in range(12):
        grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
        grads["dense"]["kernel"][15:] = 0
        before = [np.asarray(params["conv"]["kernel"]), np.asarray(params["dense"]["kernel"])]
        params, opt_state = step(params, opt_state, grads)
        got = [np.asarray(m) for m in pruning.masks_of(opt_state)]
        if t in (1, 4, 7, 9):
            s_t = _zhu_gupta(t, s_f, t0, 1, end - t0)
            masks = [_numpy_mask(w, s_t) for w in before]
            # The schedule is not degenerate here: every update prunes more, and ties matter.
            assert all((~m).sum() == round(s_t * m.size) for m in masks)
        for m_got, m_want in zip(got, masks, strict=True):
            np.testing.assert_array_equal(m_got, m_want, err_msg=f"step {t}")
        after = [np.asarray(params["conv"]["kernel"]), np.asarray(params["dense"]["kernel"])]
        for w, w_before, m in zip(after, before, masks, strict=True):
            assert (w[~m] == 0).all() and (np.signbit(w[~m]) == 0).all(), t  # exactly +0
            moved = ~np.isclose(w, w_before)
            assert moved[m].any(), t  # kept weights still train
    assert (~masks[1][15:]).sum() > 0  # the tied rows were pruned too


def _primitives(jaxpr, inside_cond: bool, found: dict) -> None:
    """Adds each primitive's name under found[inside a lax.cond branch or not]."""
    for eqn in jaxpr.eqns:
        found[inside_cond].add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    _primitives(inner, inside_cond or eqn.primitive.name == "cond", found)


def test_mask_computation_runs_only_inside_the_update_cond():
    """The threshold search and the tie-breaking sum are traced only inside lax.cond branches,
    so steps between mask updates do none of that work."""
    params = {"dense": {"kernel": jnp.ones((8, 6))}}
    tx = optax.chain(optax.sgd(0.1), pruning.magnitude_pruning(0.5, 0, 10, 5))
    state = tx.init(params)
    jaxpr = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p))(params, state, params).jaxpr
    found = {False: set(), True: set()}
    _primitives(jaxpr, False, found)
    loops = {"while", "scan"}  # the bisection (a fori_loop) traces as either
    assert "cumsum" in found[True] and loops & found[True]
    assert not (loops | {"cumsum", "sort", "reduce_sum"}) & found[False]


def test_regex_picks_kernels_only_by_default():
    params = {
        "head": {"gates": {"kernel": 1}, "experts": {"kernel": 2, "bias": 3}},
        "embed": {"embedding": 4},
        "bn": {"scale": 5, "bias": 6},
        "kernel_bias": 7,
    }
    picked = pruning.selected(params, r"(^|/)kernel$")
    assert picked["head"]["gates"]["kernel"] and picked["head"]["experts"]["kernel"]
    assert sum(jax.tree.leaves(picked)) == 2


def _batch(rng, n=32, num_classes=10):
    labels = np.zeros((n, num_classes), np.uint8)
    labels[np.arange(n), rng.integers(0, num_classes, n)] = 1
    rgb = rng.normal(size=(n, 1024)).astype(np.float32)
    rgb += labels.argmax(1)[:, None] * 0.1
    audio = rng.normal(size=(n, 128)).astype(np.float32)
    return {"rgb": rgb, "audio": audio, "labels": labels, "weights": np.ones(n, np.float32)}


def test_pruned_moe_trains_and_reaches_exact_sparsity():
    model = build_model(ml_collections.ConfigDict({"name": "moe", "num_mixtures": 2}), 10)
    opt = ml_collections.ConfigDict(
        {
            "learning_rate": 0.02,
            "warmup_steps": 0,
            "end_learning_rate_factor": 1.0,
            "weight_decay": 0.0,
            "clip_norm": 1.0,
        }
    )
    tx = optax.chain(state_lib.make_optimizer(opt, 100), pruning.magnitude_pruning(0.8, 0, 20, 5))
    inputs = {"rgb": jnp.zeros((1, 1024)), "audio": jnp.zeros((1, 128))}
    state = state_lib.create_train_state(model, tx, inputs, jax.random.PRNGKey(0))
    step = jax.jit(functools.partial(train_step, model=model, tx=tx))
    batch = _batch(np.random.default_rng(0))
    losses = []
    for _ in range(30):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0]
    kernels = {k: np.asarray(v["kernel"]) for k, v in state.params["head"].items()}
    for name, kernel in kernels.items():
        assert (kernel == 0).sum() == round(0.8 * kernel.size), name
    assert (np.asarray(state.params["head"]["experts"]["bias"]) != 0).all()
    for _ in range(3):
        state, _ = step(state, batch)
    for name, kernel in kernels.items():
        after = np.asarray(state.params["head"][name]["kernel"])
        np.testing.assert_array_equal(after == 0, kernel == 0)
    report = pruning.sparsity_report(state.params, r"(^|/)kernel$")
    assert report["pruned_sparsity"] == pytest.approx(0.8, abs=1e-4)


def _compress_config(arg):
    spec = importlib.util.spec_from_file_location("compress_config", ROOT / "configs/compress.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_prune_preset_chains_pruning_into_the_run_and_follows_num_train_steps():
    c = _compress_config("prune,smoke")
    c.num_train_steps = 240
    assert (c.compress.begin_step, c.compress.end_step, c.compress.update_every) == (40, 160, 10)
    c.data.num_classes = 12
    _, _, state = setup.init_run(c)
    masks = pruning.masks_of(state.opt_state)
    assert [m.shape for m in masks] == [(1152, 12 * 2), (1152, 12 * 3)]  # experts, gates
