"""Classification heads mapping a feature vector to per-class log-odds.

Sources: the mixture of experts is the YouTube-8M starter's MoeModel (Abu-El-Haija et al. 2016,
arXiv:1609.08675, Sec. 4, "Mixture of Experts": softmax gates over sigmoid experts, after
Jordan & Jacobs 1994), written out in MoEHead's docstring; context gating is Miech et al. 2017
("Learnable pooling with Context Gating", arXiv:1706.06905, Sec. "Context Gating").
"""

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp


class LogisticHead(nn.Module):
    """One linear layer: logits = x W + b."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(self.num_classes, name="logits")(x)


class MoEHead(nn.Module):
    """Mixture of logistic experts per class (YouTube-8M starter MoeModel), as log-odds.

    With gate activations g[c, 0..M] (m = M is the dummy expert that always says 0) and
    expert activations e[c, 0..M-1]:
      p = sum_{m<M} softmax(g)_m * sigmoid(e_m)
      log p     = logsumexp_{m<M}(log_softmax(g)_m + log_sigmoid(e_m))
      log (1-p) = logsumexp(log_softmax(g)_M, {log_softmax(g)_m + log_sigmoid(-e_m)}_{m<M})
      logits    = log p - log (1-p)
    The second line holds because the gates sum to 1 and 1 - sigmoid(e) = sigmoid(-e); working
    in log space keeps logits finite and exact where p rounds to 0 or 1 in float32.
    """

    num_classes: int
    num_mixtures: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, m = self.num_classes, self.num_mixtures
        # The starter's gate layer has no bias; its expert layer has one.
        gates = nn.Dense(c * (m + 1), use_bias=False, name="gates")(x)
        experts = nn.Dense(c * m, name="experts")(x)
        gates = einops.rearrange(gates, "b (c m) -> b c m", c=c, m=m + 1)
        experts = einops.rearrange(experts, "b (c m) -> b c m", c=c, m=m)

        log_gates = jax.nn.log_softmax(gates, axis=-1)
        log_expert_gates, log_dummy_gate = log_gates[..., :m], log_gates[..., m:]
        log_p = jax.nn.logsumexp(log_expert_gates + jax.nn.log_sigmoid(experts), axis=-1)
        log_not_p = jax.nn.logsumexp(
            jnp.concatenate(
                [log_dummy_gate, log_expert_gates + jax.nn.log_sigmoid(-experts)], axis=-1
            ),
            axis=-1,
        )
        return log_p - log_not_p


class ContextGating(nn.Module):
    """Context gating (Miech et al. 2017): y = sigmoid(W x + b) * x, same dimension as x.

    With use_bn, as the starter's gating_batch_norm, b is replaced by batch norm on W x.
    """

    use_bn: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        gates = nn.Dense(x.shape[-1], use_bias=not self.use_bn, name="gates")(x)
        if self.use_bn:
            gates = nn.BatchNorm(use_running_average=not train, name="gates_bn")(gates)
        return jax.nn.sigmoid(gates) * x
