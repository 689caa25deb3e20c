"""Fusion of modalities: concat, gated sum, MBT attention bottlenecks, late logit averaging.

Sources: concat and late averaging are early and late fusion (Snoek et al. 2005, "Early versus
late fusion in semantic video analysis"); the gated sum is a per-modality scalar version of the
Gated Multimodal Unit (Arevalo et al. 2017, arXiv:1702.01992, Sec. 3: a softmax over M
modalities instead of a sigmoid between two, no tanh on the projections); BottleneckFusion is
MBT (Nagrani et al. 2021, arXiv:2107.00135, Sec. 3.2, eqs. 8-9; see its docstring for how it
differs from the paper and from Scenic's projects/mbt/model.py).

Modalities are dicts keyed by name (e.g. 'rgb', 'audio'); every module visits them in sorted-key
order, the order jax uses for dict pytrees, so parameters and gates line up however the dict
was built.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from vmjax.models.transformer import EncoderBlock

_POSEMB_INIT = nn.initializers.normal(stddev=0.02)


class ConcatFusion(nn.Module):
    """Modality embeddings `{m: [B, D_m]}` -> `[B, sum_m D_m]`, concatenated in sorted-key order."""

    @nn.compact
    def __call__(self, embeddings: dict[str, jax.Array]) -> jax.Array:
        return jnp.concatenate([embeddings[m] for m in sorted(embeddings)], axis=-1)


class GatedFusion(nn.Module):
    """Softmax-gated sum of projected modality embeddings `{m: [B, D_m]}` -> `[B, hidden_size]`.

    For modalities m = 1..M in sorted-key order:
      h_m = W_m x_m + b_m                       (each modality projected to hidden_size)
      g   = softmax(W_g [x_1; ...; x_M] + b_g)  (one gate per modality; sum_m g_m = 1 per example)
      y   = sum_m g_m h_m
    The gates see every modality, so one can be down-weighted when another says it is unreliable.
    """

    hidden_size: int

    @nn.compact
    def __call__(
        self, embeddings: dict[str, jax.Array], *, return_gates: bool = False
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        names = sorted(embeddings)
        projected = jnp.stack(
            [nn.Dense(self.hidden_size, name=f"{m}_projection")(embeddings[m]) for m in names],
            axis=1,
        )  # [B, M, hidden_size]
        concat = jnp.concatenate([embeddings[m] for m in names], axis=-1)
        gates = jax.nn.softmax(nn.Dense(len(names), name="gates")(concat), axis=-1)  # [B, M]
        fused = jnp.einsum("bm,bmh->bh", gates, projected)
        return (fused, gates) if return_gates else fused


LATE_WEIGHTS = ("mean", "modality", "class")


class LateFusion(nn.Module):
    """Per-modality logits `{m: [B, C]}` -> `[B, C]`: their mean, or a learned convex combination.

    weights:
      mean      y = mean_m logits_m (no parameters)
      modality  y = sum_m softmax(w)_m logits_m, one scalar w_m per modality
      class     y_c = sum_m softmax_m(w_{m,c}) logits_{m,c}, a weight per modality and class, so
                each class can rely on the modality that carries it (rgb for a class told apart
                by frame order, audio for a sound) instead of a third of each
    Learned weights start at 0 (the plain mean). Logits (log-odds) are combined, not
    probabilities, so the result stays a valid log-odds for a sigmoid cross-entropy.
    """

    weights: str = "mean"

    @nn.compact
    def __call__(self, logits: dict[str, jax.Array]) -> jax.Array:
        if self.weights not in LATE_WEIGHTS:
            raise ValueError(
                f"late fusion weights={self.weights!r}: expected one of {LATE_WEIGHTS}"
            )
        names = sorted(logits)
        stacked = jnp.stack([logits[m] for m in names], axis=0)  # [M, B, C]
        if self.weights == "mean":
            return jnp.mean(stacked, axis=0)
        if self.weights == "modality":
            w = self.param("modality_weights", nn.initializers.zeros, (len(names),))
            return jnp.einsum("m,mbc->bc", jax.nn.softmax(w), stacked)
        w = self.param("class_weights", nn.initializers.zeros, (len(names), stacked.shape[-1]))
        return jnp.einsum("mc,mbc->bc", jax.nn.softmax(w, axis=0), stacked)


class BottleneckFusion(nn.Module):
    """MBT (Nagrani et al. 2021): modality encoders that exchange information only via bottlenecks.

    Each modality m gets a learned CLS token, a learned positional embedding and its own encoder
    blocks. Layers l < fusion_layer are per-modality self-attention. From fusion_layer on, B
    shared bottleneck tokens z_fsn (learned, introduced at fusion_layer) join each modality
    (MBT eqs. 8-9):
      [z_m^{l+1} || z^_fsn,m^{l+1}] = Block_m^l([z_m^l || z_fsn^l])
      z_fsn^{l+1} = mean_m z^_fsn,m^{l+1}
    fusion_layer = 0 fuses through bottlenecks in every layer; fusion_layer = num_layers never
    exchanges anything (late fusion). A bottleneck written by layer l is first read by layer l + 1,
    so the outputs mix modalities only when fusion_layer <= num_layers - 2: with fusion_layer =
    num_layers - 1 the last layer reads the learned initial bottlenecks and its averaged update is
    discarded, which is late fusion plus extra tokens. Returns `{m: [B, D]}`, each modality's
    final CLS token after a LayerNorm; average them (or their logits) for one prediction.

    Checked against the paper and Scenic's MBT (projects/mbt/model.py):
      Same: the fusion layer (L_f: layers below it are per-modality, the ones from it on share
        bottlenecks; 0 = every layer, num_layers = late fusion); B = 4 bottleneck tokens by
        default, learned, N(0, 0.02), with no positional embedding; the shared bottleneck is
        the plain mean of the modalities' updates (eq. 9); separate weights per modality.
      Differs:
      - Weights are always separate: no option to share the per-modality blocks (Scenic's
        share_encoder), and no dense cross-modal attention mode (the paper's vanilla fusion).
      - One final LayerNorm per modality, on its CLS token; Scenic has one LayerNorm shared by
        all modalities' tokens (2 * D * (M - 1) fewer parameters).
      - Positional embeddings cover a modality's tokens, not its CLS token (Scenic adds one
        there too, which only re-parameterises the learned CLS).
      - Exactly num_bottlenecks tokens; Scenic adds one more when it pools by CLS tokens.
      - Bottlenecks are always used; Scenic can drop them at test time (test_with_bottlenecks).
      - Inputs are already-encoded tokens of any length with a padding mask (here ViViT frame
        tokens and LSTM outputs, see classifiers.fuse), not ViT patches of frames and
        spectrograms from one ImageNet-initialised ViT-B; the paper's model has no masks.
      - The paper classifies each modality's CLS with one shared linear head and averages the
        logits; classifiers.fuse averages the CLS embeddings before the head, which is the same
        for the logistic head and not for the MoE head. Scenic trains each modality's logits
        with its own loss (the mean of the per-modality losses) and averages the logits only
        at test time; here one loss is on the fused prediction. No stochastic depth (Scenic's
        droplayer).
    tests/models/test_fusion.py checks the defining property by gradients: no modality's
    tokens depend on another's input before the fusion layer, they do after it, and only
    through the bottleneck rows.
    """

    num_layers: int
    fusion_layer: int
    num_heads: int
    mlp_dim: int
    num_bottlenecks: int = 4
    dropout: float = 0.0
    attention_dropout: float = 0.0

    @nn.compact
    def __call__(
        self,
        tokens: dict[str, jax.Array],
        masks: dict[str, jax.Array] | None = None,
        *,
        train: bool,
    ) -> dict[str, jax.Array]:
        if not 0 <= self.fusion_layer <= self.num_layers:
            raise ValueError(
                f"BottleneckFusion fusion_layer={self.fusion_layer} must be in "
                f"[0, num_layers={self.num_layers}]"
            )
        names = sorted(tokens)
        shapes = {m: tokens[m].shape for m in names}
        batch, dim = shapes[names[0]][0], shapes[names[0]][-1]
        if any(len(s) != 3 or s[0] != batch or s[-1] != dim for s in shapes.values()):
            raise ValueError(
                "BottleneckFusion needs tokens [batch, tokens, dim] with one batch and dim for "
                f"all modalities; got {shapes}"
            )
        masks = masks or {}

        x, key_masks = {}, {}
        for m in names:
            n = shapes[m][1]
            mask = masks.get(m, jnp.ones((batch, n), bool))
            # Zero padding so inf/NaN there cannot reach even masked-out arithmetic.
            z = jnp.where(mask[..., None], tokens[m], 0)
            z = z + self.param(f"{m}_pos_embedding", _POSEMB_INIT, (1, n, dim))
            cls = self.param(f"{m}_cls", nn.initializers.zeros, (1, 1, dim))
            z = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, dim)), z], axis=1)
            x[m] = nn.Dropout(self.dropout)(z, deterministic=not train)
            key_masks[m] = jnp.concatenate([jnp.ones((batch, 1), bool), mask], axis=1)

        def block(m: str, layer: int) -> EncoderBlock:
            return EncoderBlock(
                self.num_heads,
                self.mlp_dim,
                self.dropout,
                self.attention_dropout,
                name=f"{m}_block_{layer}",
            )

        bottleneck = None
        bottleneck_mask = jnp.ones((batch, self.num_bottlenecks), bool)
        for layer in range(self.num_layers):
            if layer < self.fusion_layer:
                for m in names:
                    x[m] = block(m, layer)(x[m], key_masks[m], train=train)
                continue
            if bottleneck is None:
                init = self.param("bottleneck", _POSEMB_INIT, (1, self.num_bottlenecks, dim))
                bottleneck = jnp.broadcast_to(init, (batch, self.num_bottlenecks, dim))
            updates = []
            for m in names:
                n = x[m].shape[1]
                y = block(m, layer)(
                    jnp.concatenate([x[m], bottleneck], axis=1),
                    jnp.concatenate([key_masks[m], bottleneck_mask], axis=1),
                    train=train,
                )
                x[m] = y[:, :n]
                updates.append(y[:, n:])
            bottleneck = jnp.mean(jnp.stack(updates), axis=0)

        return {m: nn.LayerNorm(name=f"{m}_ln_final")(x[m][:, 0]) for m in names}
