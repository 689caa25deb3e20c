"""The fused clip + AdamW against optax's own chain: params and moments, masks, jit, freezing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vmjax.train import state as state_lib
from vmjax.train.optimizer import ClipAdamWState, clip_adamw

# Float32 ulps of reordered arithmetic, accumulated over a few steps; a wrong formula (no bias
# correction, decay on a masked leaf, no clipping) is off by 1e-3 or more.
TOL = {"rtol": 2e-5, "atol": 1e-7}
CLIP = 1.0
STEPS = 6


def _params(seed: int = 0) -> dict:
    """Mixed shapes: kernels, biases, a norm scale, a 3-d embedding and a scalar."""
    rng = np.random.default_rng(seed)
    shapes = {
        "dense": {"kernel": (5, 7), "bias": (7,)},
        "norm": {"scale": (7,)},
        "embed": {"embedding": (3, 4, 2)},
        "temperature": (),
    }
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s), jnp.float32),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def _grads(params, step: int) -> dict:
    """Random gradients (numpy) with a global norm above CLIP on even steps, below on odd ones."""
    rng = np.random.default_rng(100 + step)
    g = jax.tree.map(lambda p: rng.normal(size=np.shape(p)).astype(np.float32), params)
    norm = np.sqrt(sum(float(np.sum(x.astype(np.float64) ** 2)) for x in jax.tree.leaves(g)))
    target = 3.0 * CLIP if step % 2 == 0 else 0.5 * CLIP
    return jax.tree.map(lambda x: x * np.float32(target / norm), g)


SCHEDULE = optax.warmup_cosine_decay_schedule(
    0.0, 0.05, warmup_steps=2, decay_steps=STEPS, end_value=0.005
)


def _optax_chain(mask, clip_norm=CLIP, weight_decay=0.3):
    adam = optax.adamw(SCHEDULE, weight_decay=weight_decay, mask=mask)
    return optax.chain(optax.clip_by_global_norm(clip_norm), adam) if clip_norm > 0 else adam


def _run(tx, params, steps=STEPS, jit_kwargs=None):
    """[(params, opt_state)] after each step; the step jitted with `jit_kwargs`."""

    def step(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    step = jax.jit(step, **(jit_kwargs or {}))
    opt_state = tx.init(params)
    out = []
    for t in range(steps):
        params, opt_state = step(params, opt_state, _grads(params, t))
        out.append(jax.tree.map(np.asarray, (params, opt_state)))
    return out


def _adam_state(opt_state) -> optax.ScaleByAdamState:
    return next(
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
        if isinstance(s, optax.ScaleByAdamState)
    )


def _assert_trees_close(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **TOL)


@pytest.mark.parametrize(
    "mask",
    [
        None,
        state_lib.decay_mask,  # a callable: the repo's matrices-only decay
        {"dense": True, "norm": False, "embed": {"embedding": True}, "temperature": False},
        {
            "dense": {"kernel": False, "bias": True},
            "norm": True,
            "embed": False,
            "temperature": True,
        },
    ],
    ids=["all", "callable", "prefix_tree", "full_tree"],
)
def test_matches_optax_clip_and_adamw_step_by_step(mask):
    params = _params()
    ours = _run(clip_adamw(SCHEDULE, clip_norm=CLIP, weight_decay=0.3, mask=mask), params)
    want = _run(_optax_chain(mask), params)
    for t, ((p, s), (p_ref, s_ref)) in enumerate(zip(ours, want, strict=True)):
        _assert_trees_close(p, p_ref)
        adam = _adam_state(s_ref)
        assert isinstance(s, ClipAdamWState) and int(s.count) == int(adam.count) == t + 1
        _assert_trees_close(s.mu, adam.mu)
        _assert_trees_close(s.nu, adam.nu)


def test_the_comparison_sees_clipping_decay_and_the_mask():
    """The reference differs clearly when clipping, decay or the mask is left out."""
    params = _params()
    ours = _run(
        clip_adamw(SCHEDULE, clip_norm=CLIP, weight_decay=0.3, mask=state_lib.decay_mask), params
    )[-1][0]
    for other in (
        _optax_chain(state_lib.decay_mask, clip_norm=0.0),
        _optax_chain(state_lib.decay_mask, weight_decay=0.0),
        _optax_chain(None),
    ):
        theirs = _run(other, params)[-1][0]
        gap = max(
            float(np.abs(a - b).max())
            for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True)
        )
        assert gap > 1e-4


def test_without_clipping_or_decay_it_needs_no_params():
    params = _params(1)
    tx = clip_adamw(0.01, clip_norm=0.0, weight_decay=0.0)
    ref = optax.adamw(0.01, weight_decay=0.0)
    state, ref_state = tx.init(params), ref.init(params)
    update, ref_update = jax.jit(tx.update), jax.jit(ref.update)  # ours without params
    for t in range(3):
        g = _grads(params, t)  # norm 3 on even steps: no clipping must leave it
        u, state = update(g, state)
        u_ref, ref_state = ref_update(g, ref_state, params)
        _assert_trees_close(u, u_ref)
    with pytest.raises(ValueError, match="needs the parameters"):
        clip_adamw(0.01, clip_norm=1.0, weight_decay=0.1).update(g, state)


def test_jit_with_donated_params_and_state():
    params = _params(2)
    tx = clip_adamw(SCHEDULE, clip_norm=CLIP, weight_decay=0.3, mask=state_lib.decay_mask)
    ours = _run(tx, jax.tree.map(jnp.copy, params), jit_kwargs={"donate_argnums": (0, 1)})
    want = _run(_optax_chain(state_lib.decay_mask), params)
    _assert_trees_close(ours[-1][0], want[-1][0])
    # The donation takes: the inputs' buffers are consumed.
    step = jax.jit(lambda p, s, g: tx.update(g, s, p), donate_argnums=(1,))
    state = tx.init(params)
    step(params, state, _grads(params, 0))
    assert all(x.is_deleted() for x in jax.tree.leaves(state.mu))


def _frozen(tx):
    """pretrained.freeze's wrapping: set_to_zero on the 'norm' and 'embed' subtrees."""

    def labels(params):
        return {
            k: jax.tree.map(lambda _, k=k: "frozen" if k in ("norm", "embed") else "train", v)
            for k, v in params.items()
        }

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def test_under_multi_transform_with_frozen_subtrees():
    params = _params(3)
    mask = state_lib.decay_mask
    ours = _run(_frozen(clip_adamw(SCHEDULE, clip_norm=CLIP, weight_decay=0.3, mask=mask)), params)
    want = _run(_frozen(_optax_chain(mask)), params)
    for (p, s), (p_ref, s_ref) in zip(ours, want, strict=True):
        _assert_trees_close(p, p_ref)
        inner = next(
            x
            for x in jax.tree.leaves(s, is_leaf=lambda x: isinstance(x, ClipAdamWState))
            if isinstance(x, ClipAdamWState)
        )
        adam = _adam_state(s_ref)
        _assert_trees_close(inner.mu, adam.mu)  # frozen leaves are MaskedNodes in both
    final = ours[-1][0]
    for frozen in ("norm", "embed"):
        for a, b in zip(
            jax.tree.leaves(final[frozen]), jax.tree.leaves(params[frozen]), strict=True
        ):
            np.testing.assert_array_equal(a, b)
    assert not np.allclose(final["dense"]["kernel"], params["dense"]["kernel"])


def test_state_round_trips_through_an_orbax_checkpoint(tmp_path):
    """A TrainState holding the state saves and restores into its own structure (a template
    of shapes, as vmjax.train.checkpoint restores): plain arrays in a NamedTuple."""
    import orbax.checkpoint as ocp

    params = _params(4)
    tx = clip_adamw(SCHEDULE, clip_norm=CLIP, weight_decay=0.3, mask=state_lib.decay_mask)
    params, opt_state = jax.tree.map(jnp.asarray, _run(tx, params, steps=2)[-1])
    assert isinstance(opt_state, ClipAdamWState)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(opt_state))
    state = state_lib.TrainState(
        step=jnp.asarray(2, jnp.int32),
        params=params,
        opt_state=opt_state,
        model_state={},
        rng=jax.random.PRNGKey(0),
    )
    path = tmp_path / "state"
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path, state)
        ckpt.wait_until_finished()
        like = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = ckpt.restore(path, like)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    assert isinstance(restored.opt_state, ClipAdamWState)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
