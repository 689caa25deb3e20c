"""Random parameters of a module's shapes, for fast CPU tests."""

import jax
import jax.numpy as jnp
import numpy as np


def random_params(model, *args, **kwargs) -> dict:
    """Random params of `init`'s shapes: running the initialisers eagerly compiles one XLA
    program per parameter shape, which would dominate these CPU tests."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))["params"]
    rng = np.random.default_rng(0)

    def fill(path, s):
        gain = 1.0 if path[-1].key == "scale" else 0.0  # LayerNorm gains around 1.
        return jnp.asarray(gain + rng.normal(scale=0.2, size=s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)
