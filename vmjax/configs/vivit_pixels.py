"""Classification on raw pixels: ViViT (or a CNN + LSTM) on decoded video clips.

  python -m vmjax.main --config configs/vivit_pixels.py --workdir DIR
  python -m vmjax.main --config configs/vivit_pixels.py:smoke --workdir DIR          # tiny, CPU
  python -m vmjax.main --config configs/vivit_pixels.py:smoke,cnn_lstm --workdir DIR
  python -m vmjax.main --config configs/vivit_pixels.py --workdir DIR \\
      --config.data.train_pattern=/data/videos/train.csv \\
      --config.data.eval_pattern=/data/videos/validate.csv --config.data.num_classes=N

With no CSVs it trains on synthetic mp4s (vmjax.data.synthetic_video), generated once into
data.cache_dir: 11 classes (shape, colour, motion direction, tone), 4 labels per video. The
tone is audio only, so a pixel model can at best get the other 3 of the 4 labels right.
Presets after the colon combine with commas: `configs/vivit_pixels.py:smoke,cnn_lstm`.
"""

import ml_collections

PRESETS = ("smoke", "cnn_lstm")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    presets = [p for p in (arg or "").split(",") if p]
    unknown = sorted(set(presets) - set(PRESETS))
    if unknown:
        raise ValueError(f"unknown preset(s) {unknown}; choose from {PRESETS}")

    c = ml_collections.ConfigDict()
    c.seed = 0  # parameter init, data order and per-step RNG
    c.batch_size = 32  # global batch of clips (split over processes)
    c.eval_batch_size = 32  # global eval batch of clips
    c.num_train_steps = 2_000  # total optimizer steps
    c.eval_every = 500  # evaluate on the whole eval split every N steps (and at the end)
    c.checkpoint_every = 500  # save a checkpoint every N steps (and at the end)
    c.keep_checkpoints = 3  # how many checkpoints orbax keeps
    c.log_every = 50  # train loss to the progress bar and TensorBoard every N steps

    c.parallelism = "mesh"  # 'mesh': jit over a device Mesh (default); 'pmap': replicated state
    c.mesh = ml_collections.ConfigDict()
    c.mesh.fsdp = 1  # mesh: shard parameters and optimizer state over this many devices
    c.dtype = "float32"  # compute dtype: float32 or bfloat16 (parameters stay float32)
    c.grad_accum = 1  # split each batch into this many micro-batches (sums their gradients)
    c.on_nonfinite_loss = "stop"  # NaN/Inf loss: 'stop' (name the step) or 'skip' the update
    c.divergence_factor = 100.0  # train loss above this x the first step's loss = diverged
    # diverged: 'stop' (name the step and last good checkpoint), 'skip' the update, or 'off'
    c.on_divergence = "stop"
    c.divergence_max_skips = 10  # on_divergence='skip': stop after this many consecutive skips
    c.log_batches = False  # write a hash of every train batch to workdir/batches.jsonl

    c.data = ml_collections.ConfigDict()
    c.data.format = "video_files"  # raw videos listed in CSVs (vmjax.data.video_files)
    c.data.train_pattern = ""  # train CSV; '' = synthetic videos generated into cache_dir
    c.data.eval_pattern = ""  # eval CSV; '' = the synthetic videos' validate split
    c.data.csv_layout = "labels"  # 'labels': path,labels rows; 'kinetics': label,youtube_id,...
    c.data.video_root = ""  # kinetics: folder of the clips (or of one folder per CSV name)
    c.data.vocabulary = ""  # labels: CSV of Index,Name to look up label names; '' = indices
    c.data.num_classes = 11  # the synthetic videos' classes; your vocabulary's size otherwise
    c.data.num_frames = 16  # frames per clip (a multiple of model.patch_size[0])
    c.data.image_size = 64  # square frame side in pixels (scaled to cover, then cropped)
    c.data.sampling = "uniform"  # uniform (spread over the video) | stride | fps
    c.data.frame_stride = 1  # sampling='stride': decoded frames between sampled ones
    c.data.fps = 1.0  # sampling='fps': frames per second sampled
    c.data.seed = c.get_ref("seed")  # data order and random crops
    c.data.prefetch = 2  # batches decoded ahead (by read_threads threads, or per worker)
    c.data.read_threads = 2  # threads decoding videos in this process
    c.data.workers = 0  # decoding processes for training (grain mp_prefetch); 0 = threads only
    c.data.on_error = "raise"  # unreadable videos: 'raise' (name the file) or 'skip' them
    c.data.cache_dir = "~/.cache/vmjax"  # where the synthetic videos are generated once
    c.data.synthetic_video = ml_collections.ConfigDict()  # vmjax.data.synthetic_video.generate
    c.data.synthetic_video.num_videos = 1_024  # videos in both splits together
    c.data.synthetic_video.seconds = 2.0  # length of each video
    c.data.synthetic_video.size = 64  # frame side of the written videos (even, >= 16)
    c.data.synthetic_video.fps = 8.0  # frame rate of the written videos
    c.data.synthetic_video.seed = 0  # generator seed (separate from training seed)
    c.data.synthetic_video.validate_fraction = 0.25  # share of videos in the validate split

    # Test views of --mode eval / predict (vmjax.data.views); evaluations during training read 1.
    c.eval = ml_collections.ConfigDict()
    c.eval.num_clips = 1  # clips per video, evenly spaced; eval_batch_size counts clips x crops
    c.eval.num_crops = 1  # 1: centre crop; 3: start, centre and end of the long side (ThreeCrop)
    c.eval.average = "prob"  # 'prob': mean of the views' sigmoids; 'score': sigmoid of mean logit

    c.model = ml_collections.ConfigDict()
    c.model.name = "vivit_pixels"  # vivit_pixels (classifiers.ViViTPixels) or cnn_lstm
    # vivit_pixels: 'spatio_temporal' | 'factorised_encoder' | 'factorised_self_attention' |
    # 'factorised_dot_product' (Models 1-4 of the paper)
    c.model.variant = "spatio_temporal"
    c.model.pooling = "auto"  # vivit_pixels: 'auto' (CLS if the variant has one) | 'cls' | 'mean'
    c.model.patch_size = (2, 8, 8)  # vivit_pixels: tubelet (time, height, width)
    c.model.posemb_init = "sincos"  # vivit_pixels: 'sincos' shows frame order from step 0
    c.model.hidden_size = 128  # vivit_pixels: token width; cnn_lstm: LSTM width
    c.model.num_layers = 4  # vivit_pixels: encoder blocks; cnn_lstm: stacked LSTM layers
    c.model.num_temporal_layers = 2  # vivit_pixels: temporal blocks (factorised_encoder only)
    c.model.num_heads = 4  # vivit_pixels: attention heads per block
    c.model.mlp_dim = 256  # vivit_pixels: hidden width of each block's MLP
    c.model.dropout = 0.0  # vivit_pixels: dropout on embeddings, attention output and MLP
    c.model.attention_dropout = 0.0  # vivit_pixels: dropout on the attention weights
    c.model.pixel_mean = (0.5, 0.5, 0.5)  # vivit_pixels: per-channel mean of [0, 1] pixels
    c.model.pixel_std = (0.5, 0.5, 0.5)  # vivit_pixels: per-channel std (so inputs in [-1, 1])
    c.model.num_mixtures = 2  # cnn_lstm: MoE experts per class
    c.model.cnn = ml_collections.ConfigDict()  # cnn_lstm: the frame ResNet (models.cnn)
    c.model.cnn.stage_sizes = (1, 1, 1, 1)  # BasicBlocks per stage
    c.model.cnn.width = 32  # channels of the first stage (doubling per stage)
    c.model.cnn.norm = "group"  # 'group' (GroupNorm) or 'batch' (BatchNorm)
    c.model.cnn.num_groups = 8  # GroupNorm groups
    c.model.cnn.pixel_mean = (0.485, 0.456, 0.406)  # ImageNet statistics of [0, 1] pixels
    c.model.cnn.pixel_std = (0.229, 0.224, 0.225)

    # Train-time augmentation inside the jitted step (vmjax.data.augment); 0 / False = off.
    c.augment = ml_collections.ConfigDict()
    c.augment.temporal_crop = 0  # frames: keep a random window of this many valid frames
    c.augment.temporal_jitter = 0  # frames: drop up to this many leading valid frames
    c.augment.frame_dropout = 0.0  # frames: mask out this fraction of valid frames (never all)
    c.augment.feature_noise = 0.0  # rgb/audio: stddev of Gaussian noise (no effect on pixels)
    c.augment.mixup_alpha = 0.0  # mix pairs of videos (and labels) by Beta(alpha, alpha)
    c.augment.flip = False  # pixels: flip left-right (off: it turns one direction class into
    # the other, so the synthetic videos' direction labels would be wrong half the time)
    c.augment.crop_scale = 0.0  # pixels: smallest random crop area / frame area, resized back
    c.augment.crop_ratio = (3 / 4, 4 / 3)  # pixels: range of crop aspect ratios (w / h)
    c.augment.brightness = 0.0  # pixels: scale by a factor in [1 - b, 1 + b] per video
    c.augment.contrast = 0.0  # pixels: blend with the video's mean gray by [1 - c, 1 + c]

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 1e-3  # peak AdamW learning rate
    c.optimizer.warmup_steps = 100  # linear warmup from 0
    c.optimizer.end_learning_rate_factor = 0.01  # cosine decay ends at this fraction of the peak
    c.optimizer.weight_decay = 1e-4  # decoupled (AdamW) weight decay
    c.optimizer.clip_norm = 1.0  # global-norm gradient clipping; 0 disables

    if "cnn_lstm" in presets:
        c.model.name = "cnn_lstm"
        c.model.hidden_size = 128
        c.model.num_layers = 1
    if "smoke" in presets:  # minutes on a laptop CPU
        c.batch_size = 16
        c.eval_batch_size = 32
        c.num_train_steps = 300
        c.eval_every = 100
        c.checkpoint_every = 100
        c.log_every = 25
        c.optimizer.warmup_steps = 30
        c.data.num_frames = 8
        c.data.image_size = 32
        c.data.synthetic_video.num_videos = 512
        c.data.synthetic_video.size = 32
        c.model.hidden_size = 64
        c.model.num_layers = 2
        c.model.mlp_dim = 128
        c.model.cnn.width = 16
        if "cnn_lstm" in presets:
            c.model.num_layers = 1
    return c
