"""Flagship config: YouTube-8M classification, on the embedded dataset by default.

  python -m vmjax.main --config configs/yt8m.py --workdir DIR
  python -m vmjax.main --config configs/yt8m.py:smoke --workdir DIR        # tiny, ~1 minute
  python -m vmjax.main --config configs/yt8m.py:frame --workdir DIR        # frame-level features
  python -m vmjax.main --config configs/yt8m.py --workdir DIR \\
      --config.data.train_pattern='/data/yt8m/2/video/train*.tfrecord' \\
      --config.data.eval_pattern='/data/yt8m/2/video/validate*.tfrecord'

Presets after the colon combine with commas: `configs/yt8m.py:frame,smoke`.
"""

import ml_collections

PRESETS = ("smoke", "frame")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    presets = [p for p in (arg or "").split(",") if p]
    unknown = sorted(set(presets) - set(PRESETS))
    if unknown:
        raise ValueError(f"unknown preset(s) {unknown}; choose from {PRESETS}")

    c = ml_collections.ConfigDict()
    c.seed = 0  # parameter init, data order and per-step RNG
    c.batch_size = 256  # global batch (split over processes)
    c.eval_batch_size = 512  # global eval batch
    c.num_train_steps = 600  # total optimizer steps (~8 epochs of the embedded data)
    c.eval_every = 200  # evaluate on the whole eval split every N steps (and at the end)
    c.checkpoint_every = 200  # save a checkpoint every N steps (and at the end)
    c.keep_checkpoints = 3  # how many checkpoints orbax keeps
    c.log_every = 50  # train loss to the progress bar and TensorBoard every N steps

    c.data = ml_collections.ConfigDict()
    c.data.train_pattern = ""  # glob(s), comma-separated, of YT8M TFRecords; '' = embedded data
    c.data.eval_pattern = ""  # glob(s) of the eval split; '' = embedded data
    c.data.level = "video"  # 'video' (mean_rgb/mean_audio Examples) or 'frame' (SequenceExamples)
    c.data.max_frames = 300  # frames kept per video (the official reader's 300)
    c.data.num_classes = 3862  # 2018 vocabulary; 4716 for the 2017 data
    c.data.max_text_tokens = 32  # text_tokens kept per video (a YT8M-style extension)
    c.data.text_vocab_size = 8192  # token ids must be < this (the embedded data's vocabulary)
    c.data.shuffle_buffer = 4096  # examples in the shuffle window
    c.data.cycle_length = 8  # files read concurrently (interleaved)
    c.data.prefetch = 2  # batches prepared ahead in a thread
    c.data.cache_dir = "~/.cache/vmjax"  # where the embedded dataset is generated once
    c.data.synthetic = (
        ml_collections.ConfigDict()
    )  # the embedded dataset (vmjax.data.synthetic.Spec)
    c.data.synthetic.seed = 0  # generator seed (separate from training seed)
    c.data.synthetic.num_train = 20_000  # train videos
    c.data.synthetic.num_validate = 4_000  # validate videos
    c.data.synthetic.min_frames = 8  # typical video length range, in frames (1 per second)
    c.data.synthetic.max_frames = 48

    c.model = ml_collections.ConfigDict()
    c.model.name = "moe"  # 'logistic' | 'moe' (video level) | 'frame_moe' (frame level)
    c.model.num_mixtures = 2  # MoE experts per class (plus the dummy expert)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 0.01  # peak Adam learning rate
    c.optimizer.warmup_steps = 100  # linear warmup from 0
    c.optimizer.end_learning_rate_factor = 0.01  # cosine decay ends at this fraction of the peak
    c.optimizer.weight_decay = 0.0  # decoupled (AdamW) weight decay
    c.optimizer.clip_norm = 1.0  # global-norm gradient clipping; 0 disables

    if "frame" in presets:
        c.data.level = "frame"
        c.model.name = "frame_moe"
    if "smoke" in presets:
        c.batch_size = 32
        c.eval_batch_size = 64
        c.num_train_steps = 40
        c.eval_every = 20
        c.checkpoint_every = 20
        c.log_every = 10
        c.data.shuffle_buffer = 64
        c.data.max_frames = 64
        c.data.synthetic.num_train = 640
        c.data.synthetic.num_validate = 128
    return c
