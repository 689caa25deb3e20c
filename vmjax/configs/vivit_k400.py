"""ViViT-B on Kinetics-400 pixels (Arnab et al. 2021): the paper's base setup.

  python -m vmjax.main --config configs/vivit_k400.py --workdir DIR \\
      --config.data.train_pattern=k400/annotations/train.csv \\
      --config.data.eval_pattern=k400/annotations/val.csv --config.data.video_root=k400
  python -m vmjax.main --config configs/vivit_k400.py:fe ...    # factorised encoder

Clips are read with vmjax.data.video_files.read_kinetics_csv: video_root/train/ holds the clips
of train.csv and video_root/val/ those of val.csv (the layout of the common downloaders; clips
straight in video_root also work), as <label>/<youtube_id>_<start>_<end>.mp4 or without the
label folder. Clips missing from disk are counted in one warning.

The paper's ViViT-B model comparison on K400 (Table 4) ranks spatio_temporal (Model 1) first
(80.0 top-1, vs 78.8 for the factorised encoder, 77.4 and 76.3 for Models 3 and 4), so it is
the default; the factorised encoder (Model 2) is the cheaper one the paper scales up for its
state-of-the-art tables. Training runs through the normal trainer (vmjax.train.loop) with
data.format='video_files'; configs/vivit_pixels.py has the same model at CPU sizes.
"""

import ml_collections

PRESETS = ("fe",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    presets = [p for p in (arg or "").split(",") if p]
    unknown = sorted(set(presets) - set(PRESETS))
    if unknown:
        raise ValueError(f"unknown preset(s) {unknown}; choose from {PRESETS}")

    c = ml_collections.ConfigDict()
    c.seed = 0  # parameter init, data order and per-step RNG
    c.batch_size = 64  # global batch of clips (the paper's)
    c.eval_batch_size = 64  # global eval batch of clips
    c.num_train_steps = 100_680  # 30 epochs of ~214.8k K400 train clips at batch 64
    c.eval_every = 3_356  # about one epoch
    c.checkpoint_every = 1_000  # save a checkpoint every N steps (and at the end)
    c.keep_checkpoints = 3  # how many checkpoints orbax keeps
    c.log_every = 100  # train loss to the progress bar and TensorBoard every N steps

    c.parallelism = "mesh"  # 'mesh': jit over a device Mesh (default); 'pmap': replicated state
    c.mesh = ml_collections.ConfigDict()
    c.mesh.fsdp = 1  # mesh: shard parameters and optimizer state over this many devices
    c.dtype = "float32"  # or bfloat16 (parameters stay float32): half the activation memory
    c.grad_accum = 1  # split each batch into this many micro-batches (sums their gradients)
    c.on_nonfinite_loss = "stop"  # NaN/Inf loss: 'stop' (name the step) or 'skip' the update
    c.divergence_factor = 100.0  # train loss above this x the first step's loss = diverged
    # diverged: 'stop' (name the step and last good checkpoint), 'skip' the update, or 'off'
    c.on_divergence = "stop"
    c.divergence_max_skips = 10  # on_divergence='skip': stop after this many consecutive skips
    c.log_batches = False  # write a hash of every train batch to workdir/batches.jsonl

    c.data = ml_collections.ConfigDict()
    c.data.format = "video_files"  # raw videos listed in CSVs (vmjax.data.video_files)
    c.data.train_pattern = ""  # Kinetics train annotation CSV (label,youtube_id,time_start,...)
    c.data.eval_pattern = ""  # Kinetics validation annotation CSV
    c.data.csv_layout = "kinetics"  # 'kinetics' annotations, or 'labels' (path,labels rows)
    c.data.video_root = ""  # folder of the clips, or of one folder per CSV name (train/, val/)
    c.data.vocabulary = ""  # labels layout only: CSV of Index,Name; '' = integer labels
    c.data.num_classes = 400  # Kinetics-400 labels (the train CSV's sorted label names)
    c.data.num_frames = 32  # frames per clip (sampled with frame_stride from the video)
    c.data.image_size = 224  # square crop side (scaled so the short side covers it, cropped)
    c.data.sampling = "stride"  # uniform | stride (every frame_stride-th frame) | fps
    c.data.frame_stride = 2  # temporal stride between sampled frames
    c.data.fps = 1.0  # sampling='fps': frames per second sampled
    c.data.seed = c.get_ref("seed")  # data order and random crops
    c.data.prefetch = 2  # batches decoded ahead (by read_threads threads, or per worker)
    c.data.read_threads = 4  # threads decoding videos in this process
    c.data.workers = 8  # decoding processes for training (grain mp_prefetch)
    c.data.on_error = "skip"  # K400 downloads hold some broken clips: skip (and count) them
    c.data.cache_dir = "~/.cache/vmjax"  # unused unless the patterns are '' (synthetic videos)
    c.data.synthetic_video = ml_collections.ConfigDict()  # unused here (vivit_pixels.py)

    # Test views of --mode eval / predict (vmjax.data.views); evaluations during training read 1.
    c.eval = ml_collections.ConfigDict()
    # The ViViT paper tests K400 on 4 clips x 3 crops (then eval_batch_size a multiple of 12).
    c.eval.num_clips = 1  # clips per video, evenly spaced; eval_batch_size counts clips x crops
    c.eval.num_crops = 1  # 1: centre crop; 3: start, centre and end of the long side (ThreeCrop)
    c.eval.average = "prob"  # 'prob': mean of the views' sigmoids; 'score': sigmoid of mean logit

    c.model = ml_collections.ConfigDict()
    c.model.name = "vivit_pixels"  # vmjax.models.classifiers.ViViTPixels
    # 'spatio_temporal' | 'factorised_encoder' | 'factorised_self_attention' |
    # 'factorised_dot_product' (Models 1-4 of the paper)
    c.model.variant = "spatio_temporal"
    c.model.pooling = "auto"  # 'auto' (CLS for the first two variants, else mean) | 'cls' | 'mean'
    c.model.patch_size = (2, 16, 16)  # tubelet (time, height, width): ViViT-B/16x2
    c.model.posemb_init = "normal"  # learned positions from N(0, 0.02), as in ViT and the paper
    # 'auto': the paper's tables (one per token; a space and a time table for factorised_encoder)
    c.model.posemb_layout = "auto"  # or 'factorised' (time + space tables) | 'joint'
    c.model.hidden_size = 768  # token width D (ViT-Base)
    c.model.num_layers = 12  # encoder blocks; the spatial encoder's for factorised_encoder
    c.model.num_temporal_layers = 4  # temporal encoder blocks (factorised_encoder only)
    c.model.num_heads = 12  # attention heads per block
    c.model.mlp_dim = 3072  # hidden width of each block's MLP
    c.model.dropout = 0.0  # dropout on embeddings, attention output and MLP
    c.model.attention_dropout = 0.0  # dropout on the attention weights
    c.model.pixel_mean = (0.5, 0.5, 0.5)  # per-channel mean of [0, 1] pixels (ViT's [-1, 1])
    c.model.pixel_std = (0.5, 0.5, 0.5)  # per-channel std

    # Train-time augmentation inside the jitted step (vmjax.data.augment); 0 / False = off.
    c.augment = ml_collections.ConfigDict()
    c.augment.temporal_crop = 0  # frames: keep a random window of this many valid frames
    c.augment.temporal_jitter = 0  # frames: drop up to this many leading valid frames
    c.augment.frame_dropout = 0.0  # frames: mask out this fraction of valid frames (never all)
    c.augment.feature_noise = 0.0  # rgb/audio only: no effect on pixels
    c.augment.mixup_alpha = 0.0  # mix pairs of videos (and labels) by Beta(alpha, alpha)
    c.augment.flip = True  # pixels: flip each video left-right with probability 1/2
    c.augment.crop_scale = 0.0  # pixels: smallest random crop area / frame area, resized back
    c.augment.crop_ratio = (3 / 4, 4 / 3)  # pixels: range of crop aspect ratios (w / h)
    c.augment.brightness = 0.0  # pixels: scale by a factor in [1 - b, 1 + b] per video
    c.augment.contrast = 0.0  # pixels: blend with the video's mean gray by [1 - c, 1 + c]

    c.optimizer = ml_collections.ConfigDict()
    # The paper trains with SGD + momentum from ImageNet-21k ViT weights (peak rate 0.05);
    # our trainer is AdamW, so these are a starting point for the pixel-training issue.
    c.optimizer.learning_rate = 1e-4  # peak AdamW learning rate
    c.optimizer.warmup_steps = 8_390  # linear warmup from 0 (2.5 epochs, as in the paper)
    c.optimizer.end_learning_rate_factor = 0.0  # cosine decay ends at this fraction of the peak
    c.optimizer.weight_decay = 0.0  # decoupled (AdamW) weight decay
    c.optimizer.clip_norm = 1.0  # global-norm gradient clipping; 0 disables

    if "fe" in presets:
        c.model.variant = "factorised_encoder"
    return c
