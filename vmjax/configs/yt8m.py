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

MODEL_PRESETS = (
    "logistic",
    "moe",
    "frame_logistic",
    "frame_moe",
    "dbof",
    "lstm",
    "netvlad",
    "nextvlad",
    "vivit",
    "multimodal",
)
PRESETS = ("smoke", "frame") + MODEL_PRESETS


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
    c.data.format = "tfrecord"  # or 'array_record': patterns are DIR:SPLIT (vmjax.data.convert)
    c.data.train_pattern = ""  # glob(s), comma-separated, of YT8M TFRecords; '' = embedded data
    c.data.eval_pattern = ""  # glob(s) of the eval split; '' = embedded data
    c.data.level = "video"  # 'video' (mean_rgb/mean_audio Examples) or 'frame' (SequenceExamples)
    c.data.max_frames = 300  # frames kept per video (the official reader's 300)
    c.data.frame_sampling = "first"  # train: first | uniform (even stride) | window (random)
    c.data.seed = c.get_ref("seed")  # random frame windows (evaluation keeps the first frames)
    c.data.num_classes = 3862  # 2018 vocabulary; 4716 for the 2017 data
    c.data.max_text_tokens = 32  # text_tokens kept per video (a YT8M-style extension)
    c.data.text_vocab_size = 8192  # token ids must be < this (the embedded data's vocabulary)
    c.data.shuffle_buffer = 4096  # examples in the shuffle window
    c.data.cycle_length = 8  # files read concurrently (interleaved)
    c.data.prefetch = 2  # batches prepared ahead (in a thread, or per worker process)
    # reader processes (grain mp_prefetch): 'auto' one per core, fewer for few files or
    # cores (vmjax.data.pipeline.worker_count); 0 reads in this process. Int or 'auto'.
    c.data.workers = ml_collections.FieldReference("auto", field_type=object)
    c.data.segment_classes = ""  # --segments predict: CSV with an Index column; '' = 2019 vocab
    c.data.segment_pad_past_end = False  # --segments: zero-pad segments past the last frame
    c.data.on_error = "raise"  # bad records: 'raise' (name file, record, field) or 'skip' them
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
    c.model.name = "moe"  # a name in vmjax.models.MODELS (the presets below set it with the level)
    c.model.num_mixtures = 2  # MoE experts per class (plus the dummy expert)
    c.model.hidden_size = 1024  # lstm / dbof hidden / VLAD hidden layer / multimodal width
    c.model.num_layers = 2  # lstm: stacked layers (starter: 2 x 1024)
    c.model.cluster_size = 8192  # dbof: clusters (starter default)
    c.model.num_clusters = 64  # netvlad / nextvlad: clusters over rgb frames
    c.model.audio_clusters = 32  # netvlad / nextvlad: clusters over audio frames
    c.model.expansion = 2  # nextvlad: lambda, the width expansion
    c.model.groups = 8  # nextvlad: G, the number of groups
    c.model.dropout = 0.0  # netvlad / nextvlad: dropout before the hidden layer
    c.model.vivit = ml_collections.ConfigDict()  # vivit, and multimodal's rgb encoder
    c.model.vivit.variant = (
        "spatio_temporal"  # or factorised_encoder / _self_attention / _dot_product
    )
    c.model.vivit.hidden_size = 256  # token width
    c.model.vivit.num_layers = 4  # transformer blocks (spatial ones for factorised_encoder)
    c.model.vivit.num_heads = 4  # attention heads
    c.model.vivit.mlp_dim = 512  # MLP width inside each block
    c.model.vivit.num_temporal_layers = 2  # factorised_encoder: temporal encoder blocks
    c.model.vivit.pooling = "auto"  # cls if the variant has a CLS token, else mean; or cls | mean
    c.model.vivit.tokens_per_frame = 1  # spatial tokens made from each frame's features
    c.model.vivit.posemb_init = "sincos"  # learned positions from sinusoids, or 'normal' (ViT)
    c.model.vivit.dropout = 0.0  # dropout inside the blocks
    c.model.text_vocab_size = c.data.get_ref("text_vocab_size")  # multimodal: = data's vocabulary
    c.model.text_embed_dim = 128  # multimodal: token embedding width
    c.model.fusion = "concat"  # multimodal: concat | gated | bottleneck (MBT) | late
    c.model.modalities = "rgb,audio,text"  # multimodal: the inputs it uses (drop one to ablate)
    c.model.fusion_layers = 3  # multimodal bottleneck: transformer layers per modality
    c.model.fusion_layer = 1  # multimodal bottleneck: 1st layer with them; mixing needs <= layers-2
    c.model.num_bottlenecks = 4  # multimodal bottleneck: shared bottleneck tokens
    c.model.head = "moe"  # multimodal: moe | logistic (a linear probe of the fused embedding)
    c.model.late_weights = "mean"  # multimodal late: mean | modality | class (learned, convex)
    c.model.modality_loss = 0.0  # multimodal late: weight of each modality head's own loss

    # Train-time augmentation inside the jitted step (vmjax.data.augment); 0 / False = off.
    c.augment = ml_collections.ConfigDict()
    c.augment.temporal_crop = 0  # frames: keep a random window of this many valid frames
    c.augment.temporal_jitter = 0  # frames: drop up to this many leading valid frames
    c.augment.frame_dropout = 0.0  # frames: mask out this fraction of valid frames (never all)
    c.augment.feature_noise = 0.0  # rgb/audio: stddev of Gaussian noise on valid frames
    c.augment.mixup_alpha = 0.0  # mix pairs of videos (and labels) by Beta(alpha, alpha)
    c.augment.flip = False  # pixels: flip each video left-right with probability 1/2
    c.augment.crop_scale = 0.0  # pixels: smallest random crop area / frame area, resized back
    c.augment.crop_ratio = (3 / 4, 4 / 3)  # pixels: range of crop aspect ratios (w / h)
    c.augment.brightness = 0.0  # pixels: scale by a factor in [1 - b, 1 + b] per video
    c.augment.contrast = 0.0  # pixels: blend with the video's mean gray by [1 - c, 1 + c]

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 0.01  # peak Adam learning rate
    c.optimizer.warmup_steps = 100  # linear warmup from 0
    c.optimizer.end_learning_rate_factor = 0.01  # cosine decay ends at this fraction of the peak
    c.optimizer.weight_decay = 0.0  # decoupled (AdamW) weight decay
    c.optimizer.clip_norm = 1.0  # global-norm gradient clipping; 0 disables

    # Start from another run's modules, and keep modules fixed (vmjax.train.pretrained;
    # presets in configs/audiovisual.py: probes of audio-visual pretrained encoders).
    c.init_from = ml_collections.ConfigDict()
    c.init_from.workdir = ""  # a run whose latest checkpoint initialises init_from.modules
    c.init_from.modules = "rgb,audio"  # top-level parameter subtrees taken from it
    c.freeze = ""  # top-level parameter subtrees never updated, e.g. 'rgb,audio' (a probe)
    c.freeze_steps = 0  # > 0: freeze only for the first N steps, then train all (LP-FT)

    # Model compression (vmjax.compress; presets in configs/compress.py).
    c.compress = ml_collections.ConfigDict()
    c.compress.method = "none"  # none | prune | qat | ptq (from source_workdir) | distill
    c.compress.sparsity = 0.9  # prune: final fraction of zeros in each pruned kernel
    c.compress.begin_step = 0  # prune: first mask update (Zhu & Gupta t0)
    c.compress.end_step = 400  # prune: the last mask update, at the target sparsity
    c.compress.update_every = 50  # prune: steps between mask updates (Zhu & Gupta delta t)
    c.compress.prune_regex = r"(^|/)kernel$"  # prune: '/'-joined param paths that are pruned
    c.compress.quantize_regex = ".*"  # qat / ptq: module paths (qwix rule regex) quantized
    c.compress.weight_dtype = "int8"  # qat / ptq: weight type (per-channel absmax scales)
    c.compress.act_dtype = "int8"  # qat / ptq: activations (dynamic per-row scales); '' = float
    c.compress.source_workdir = ""  # ptq: the trained float run to quantize (its latest step)
    c.compress.teacher_workdir = ""  # distill: the trained teacher run (its latest step)
    c.compress.temperature = 2.0  # distill: T of the soft targets sigmoid(teacher_logits / T)
    c.compress.alpha = 0.5  # distill: weight of the soft-target loss (1 - alpha: labels)

    if "frame" in presets:  # frame-level features with the starter's frame-level MoE
        presets.append("frame_moe")
    models = [p for p in presets if p in MODEL_PRESETS]
    if len(models) > 1:
        raise ValueError(f"choose one model preset, got {models}")
    if models:
        c.model.name = models[0]
        video_level = models[0] in ("logistic", "moe")
        c.data.level = "video" if video_level else "frame"
    if "smoke" in presets:
        c.data.workers = 0  # a smoke run lasts seconds: less than starting workers takes
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
