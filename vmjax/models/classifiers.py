"""Video classifiers: features dict -> per-class log-odds `[batch, num_classes]`."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from vmjax.models.heads import LogisticHead, MoEHead
from vmjax.models.pooling import masked_mean


def _concat_features(inputs: dict[str, jax.Array]) -> jax.Array:
    """Joins rgb and audio on the feature axis; dims come from the arrays, not constants."""
    return jnp.concatenate([inputs["rgb"], inputs["audio"]], axis=-1)


class VideoLogistic(nn.Module):
    """Logistic regression on the video-level mean rgb and audio features."""

    num_classes: int

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array], *, train: bool) -> jax.Array:
        del train  # No dropout or batch norm; kept for the shared model contract.
        return LogisticHead(self.num_classes, name="head")(_concat_features(inputs))


class VideoMoE(nn.Module):
    """Mixture of experts on the video-level mean rgb and audio features."""

    num_classes: int
    num_mixtures: int

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array], *, train: bool) -> jax.Array:
        del train
        head = MoEHead(self.num_classes, self.num_mixtures, name="head")
        return head(_concat_features(inputs))


class FrameMoE(nn.Module):
    """Mixture of experts on frame rgb and audio features averaged over the valid frames."""

    num_classes: int
    num_mixtures: int

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array], *, train: bool) -> jax.Array:
        del train
        pooled = masked_mean(_concat_features(inputs), inputs["mask"])
        return MoEHead(self.num_classes, self.num_mixtures, name="head")(pooled)
