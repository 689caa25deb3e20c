"""numpy float64 helpers shared by test_pooling and test_reference_equations."""

import jax
import numpy as np


def to_numpy(tree: dict) -> dict:
    """Every leaf of a parameter tree as a float64 numpy array."""
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def l2n(v: np.ndarray) -> np.ndarray:
    """tf.nn.l2_normalize over the last axis: a zero vector stays zero."""
    return v / np.sqrt(np.maximum(np.sum(v**2, axis=-1, keepdims=True), 1e-12))
