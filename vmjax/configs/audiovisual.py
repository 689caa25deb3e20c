"""Unsupervised audio-visual fusion: contrastive pretraining of the rgb and audio encoders
without labels, then a head on their fused (concatenated) embedding.

  python -m vmjax.main --config configs/audiovisual.py --workdir PRE         # pretrain, no labels
  python -m vmjax.main --config configs/audiovisual.py:probe --workdir P \\
      --config.init_from.workdir=PRE                                          # linear probe
  python -m vmjax.main --config configs/audiovisual.py:finetune --workdir F \\
      --config.init_from.workdir=PRE                                          # fine-tune it all
  python -m vmjax.main --config configs/audiovisual.py:random_probe --workdir R  # the baseline

One stage preset at most (none = pretrain); add `smoke` for a tiny CPU run. Every stage is
configs/yt8m.py's multimodal model on rgb and audio with concat fusion, so the encoders have
the same shapes in all of them (override config.model.* alike in each stage). Pretraining
(vmjax.train.audiovisual) adds the `pretrain` block; the probes are the normal classifier
trainer with a logistic head (model.head), the encoders taken from the pretraining run
(init_from) and kept fixed (freeze) or trained on (finetune). benchmarks/zoo.py runs all four
as rows of the comparative study.
"""

import ml_collections

# An absolute import: this file works as vmjax.configs.audiovisual and when loaded by path.
from vmjax.configs import yt8m

STAGES = ("probe", "finetune", "random_probe")  # none of them: pretraining
PRESETS = STAGES + ("smoke",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    presets = [p for p in (arg or "").split(",") if p]
    unknown = sorted(set(presets) - set(PRESETS))
    if unknown:
        raise ValueError(f"unknown preset(s) {unknown}; choose from {PRESETS}")
    stages = [p for p in presets if p in STAGES]
    if len(stages) > 1:
        raise ValueError(f"choose one stage preset of {STAGES} (or none: pretrain), got {stages}")
    stage = stages[0] if stages else "pretrain"

    smoke = "smoke" in presets
    c = yt8m.get_config("multimodal,smoke" if smoke else "multimodal")  # smoke: its sizes
    c.model.modalities = "rgb,audio"  # the two streams the pretraining pairs
    c.model.fusion = "concat"  # the probes read the encoders' embeddings side by side
    c.data.max_frames = 48  # the embedded videos have 8-48 frames

    if stage == "pretrain":
        c.task = "audiovisual"  # vmjax.main routes it to vmjax.train.audiovisual
        c.pretrain = ml_collections.ConfigDict()
        c.pretrain.embed_dim = 256  # the shared rgb/audio space the InfoNCE compares in
        # Each modality's own view of a video (vmjax.train.audiovisual.views), so rgb and audio
        # match by content, not by frame count or timing: a random window of this many frames
        c.pretrain.crop_frames = 16
        c.pretrain.frame_dropout = 0.25  # then each frame dropped with this probability
        # Also contrast two views of the same modality (rgb-rgb, audio-audio), this weight times
        # their mean InfoNCE, to keep what only one modality shows (0: cross-modal only). On the
        # zoo's budget the linear probe reads 0.691 GAP with it and 0.592 without (random
        # encoders: 0.612); see docs/results.md.
        c.pretrain.within_modal = 1.0
        c.optimizer.learning_rate = 1e-3  # AdamW peak
        c.optimizer.weight_decay = 1e-4  # on kernels only (not biases or the temperature)
        if not smoke:
            c.num_train_steps = 2000
            c.eval_every = 500  # audio<->rgb retrieval on the eval split (labels never read)
            c.checkpoint_every = 500
    else:
        c.model.head = "logistic"  # a linear map of the fused embedding
        if stage in ("probe", "finetune"):
            # Required: the pretraining run (None is an error naming the flag).
            c.init_from.workdir = ml_collections.config_dict.placeholder(str)
        if stage in ("probe", "random_probe"):
            c.freeze = "rgb,audio"  # only the head trains
        if stage == "finetune":  # LP-FT: the head alone first, then everything
            c.freeze = "rgb,audio"
            c.freeze_steps = c.get_ref("num_train_steps") // 2  # follows overrides

    if smoke:  # configs/yt8m.py's smoke budget and data, with small encoders
        c.model.hidden_size = 32
        c.model.vivit.hidden_size = 32
        c.model.vivit.num_layers = 1
        c.model.vivit.num_heads = 2
        c.model.vivit.mlp_dim = 64
        if stage == "pretrain":
            c.pretrain.embed_dim = 32
            c.optimizer.learning_rate = 3e-3
            c.optimizer.warmup_steps = 10
    return c
