"""Audio-visual contrastive pretraining: a video's rgb frames and its own audio as a pair.

The rgb encoder (a ViViT over rgb frame features) and the audio encoder (an LSTM over audio
frames) are the `Multimodal` classifier's own (`classifiers.encode_modalities`, submodules `rgb`
and `audio` with the same fields), so a pretrained run's `rgb` / `audio` parameters drop into
a classifier unchanged (vmjax.train.pretrained). Each encoder's embedding is projected to
`embed_dim` and L2-normalised; `infonce_loss(rgb, audio, log_scale)` then asks each video's rgb
to pick out its own audio among the batch's, and vice versa (no labels involved: what the two
streams share, such as events seen and heard at the same time, is what the encoders learn).

Sources: audio-visual correspondence as the training signal (Arandjelovic & Zisserman 2017,
"Look, Listen and Learn", arXiv:1705.08168); the loss is InfoNCE (van den Oord et al. 2018,
arXiv:1807.03748, eq. 4) made symmetric, with CLIP's learned temperature on unit vectors
(Radford et al. 2021, arXiv:2103.00020, Fig. 3), as vmjax.models.retrieval.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from vmjax.models.classifiers import encode_modalities
from vmjax.models.fusion import ConcatFusion
from vmjax.models.retrieval import INIT_LOG_SCALE, l2_normalize

MODALITIES = ("rgb", "audio")


class AudioVisual(nn.Module):
    """rgb and audio encoders with projections to one unit sphere, and a learned temperature.

    `__call__(inputs, train=...)` -> {'rgb': [B, E], 'audio': [B, E] (unit rows), 'log_scale': []}
    from `inputs` with rgb `[B, T, 1024]`, audio `[B, T, 128]` and mask `[B, T]`; optional
    `rgb_mask` / `audio_mask` `[B, T]` replace the mask for one modality (the trainer crops each
    modality's frames on its own, vmjax.train.audiovisual.views).
    With `features=True` -> the encoders' embeddings concatenated (audio then rgb: sorted, as
    the `Multimodal` classifier's concat fusion), `[B, hidden_size + vivit.hidden_size]`: what
    a probe reads.
    """

    embed_dim: int  # the shared space's width
    hidden_size: int  # audio LSTM width (the classifier's model.hidden_size)
    vivit: dict  # ViViTEncoder fields of the rgb encoder (the classifier's model.vivit)

    @nn.compact
    def __call__(
        self, inputs: dict[str, jax.Array], *, train: bool, features: bool = False
    ) -> dict[str, jax.Array] | jax.Array:
        embeddings = {}
        for m in MODALITIES:  # each modality with its own mask when the views differ
            view = {m: inputs[m], "mask": inputs.get(f"{m}_mask", inputs["mask"])}
            _, _, embedding = encode_modalities(
                view, [m], vivit=self.vivit, hidden_size=self.hidden_size, train=train
            )
            embeddings |= embedding
        if features:
            return ConcatFusion()(embeddings)
        out = {
            m: l2_normalize(nn.Dense(self.embed_dim, name=f"{m}_projection")(embeddings[m]))
            for m in MODALITIES
        }
        out["log_scale"] = self.param("log_scale", nn.initializers.constant(INIT_LOG_SCALE), ())
        return out
