"""Text-to-video retrieval: the JointEmbedding two-tower model trained with symmetric InfoNCE.

Trains on the embedded dataset's frame-level features and captions (vmjax.data.captions).

  python -m vmjax.main --config configs/retrieval.py --workdir DIR
  python -m vmjax.main --config configs/retrieval.py:smoke --workdir DIR    # a few CPU minutes
  python -m vmjax.main --config configs/retrieval.py --workdir DIR --mode retrieve \\
      --query "guitar solo on stage" --top_k 10
"""

import ml_collections

PRESETS = ("smoke",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    presets = [p for p in (arg or "").split(",") if p]
    unknown = sorted(set(presets) - set(PRESETS))
    if unknown:
        raise ValueError(f"unknown preset(s) {unknown}; choose from {PRESETS}")

    c = ml_collections.ConfigDict()
    c.task = "retrieval"  # vmjax.main routes training to vmjax.train.retrieval
    c.seed = 0  # parameter init, data order and per-step RNG
    c.batch_size = 256  # global batch: each pair's negatives are the other 255 of it
    c.eval_batch_size = 256  # global batch for embedding the validate videos and captions
    c.num_train_steps = 2000  # total optimizer steps
    c.eval_every = 500  # retrieval + zero-shot evaluation every N steps (and at the end)
    c.checkpoint_every = 500  # save a checkpoint every N steps (and at the end)
    c.keep_checkpoints = 3  # how many checkpoints orbax keeps
    c.log_every = 50  # train loss to the progress bar and TensorBoard every N steps
    c.on_nonfinite_loss = "stop"  # NaN/Inf loss: 'stop' (name the step) or 'skip' the update
    c.divergence_factor = 100.0  # train loss above this x the first step's loss = diverged
    # diverged: 'stop' (name the step and last good checkpoint), 'skip' the update (a step whose
    # loss is above the limit keeps the old parameters), or 'off'
    c.on_divergence = "stop"
    c.divergence_max_skips = 10  # on_divergence='skip': stop after this many consecutive skips

    c.mesh = ml_collections.ConfigDict()
    c.mesh.fsdp = 1  # shard parameters and optimizer state over this many devices
    c.dtype = "float32"  # compute dtype: float32 or bfloat16 (parameters stay float32)

    c.data = ml_collections.ConfigDict()
    c.data.level = "frame"  # the video tower reads frame sequences (only 'frame' is supported)
    c.data.num_classes = 3862  # the embedded dataset's vocabulary (2018)
    c.data.max_frames = 48  # frames kept per video (padded, with a mask)
    c.data.frame_sampling = "first"  # train: first | uniform (even stride) | window (random)
    c.data.seed = c.get_ref("seed")  # random frame windows
    c.data.max_text_tokens = 32  # the records' own text_tokens (read, not used by this model)
    c.data.text_vocab_size = 8192  # the records' text_tokens ids must be < this
    c.data.max_caption_tokens = 24  # caption token ids kept per video (minilm: up to a bucket)
    c.data.caption_vocab_size = 4096  # most caption vocabulary ids ([PAD] and [UNK] included)
    c.data.shuffle_buffer = 4096  # examples in the shuffle window
    c.data.cycle_length = 8  # files read concurrently (interleaved)
    c.data.prefetch = 2  # batches prepared ahead in a thread
    # reader processes (grain mp_prefetch): 'auto' one per core, fewer for few files or
    # cores (vmjax.data.pipeline.worker_count); 0 reads in this process. Int or 'auto'.
    c.data.workers = ml_collections.FieldReference("auto", field_type=object)
    c.data.cache_dir = "~/.cache/vmjax"  # where the embedded dataset is generated once
    c.data.synthetic = ml_collections.ConfigDict()  # the dataset (vmjax.data.synthetic.Spec)
    c.data.synthetic.seed = 0  # generator seed (separate from training seed)
    c.data.synthetic.num_train = 20_000  # train videos (and captions)
    c.data.synthetic.num_validate = 4_000  # validate videos: the retrieval gallery
    c.data.synthetic.min_frames = 8  # typical video length range, in frames (1 per second)
    c.data.synthetic.max_frames = 48

    c.model = ml_collections.ConfigDict()  # vmjax.models.retrieval.JointEmbedding fields
    c.model.embed_dim = 256  # the joint space's width
    c.model.hidden_size = 256  # audio/text LSTM width and the video fusion width
    c.model.text_embed_dim = 128  # caption token embedding width (lstm text tower)
    c.model.text_tower = "lstm"  # lstm (caption vocabulary) | minilm (pretrained, WordPiece)
    c.model.minilm_checkpoint = ""  # minilm: sentence-transformers folder; '' = the installed one
    c.model.freeze_text_tower = True  # minilm: keep the checkpoint's weights; False fine-tunes
    c.model.fusion = "concat"  # video tower: concat | gated | bottleneck (MBT)
    c.model.modalities = "rgb,audio"  # video tower inputs (drop one to ablate)
    c.model.fusion_layers = 2  # bottleneck: transformer layers per modality
    c.model.fusion_layer = 0  # bottleneck: first layer with bottlenecks; mixing needs <= layers-2
    c.model.num_bottlenecks = 4  # bottleneck: shared bottleneck tokens
    c.model.vivit = ml_collections.ConfigDict()  # the rgb encoder (vmjax.models.vivit)
    c.model.vivit.variant = "spatio_temporal"  # or factorised_encoder / _self_attention / ...
    c.model.vivit.hidden_size = 256  # token width
    c.model.vivit.num_layers = 2  # transformer blocks
    c.model.vivit.num_heads = 4  # attention heads
    c.model.vivit.mlp_dim = 512  # MLP width inside each block
    c.model.vivit.num_temporal_layers = 1  # factorised_encoder: temporal encoder blocks
    c.model.vivit.pooling = "cls"  # cls or mean
    c.model.vivit.tokens_per_frame = 1  # spatial tokens made from each frame's features
    c.model.vivit.posemb_init = "sincos"  # learned positions from sinusoids, or 'normal'
    c.model.vivit.dropout = 0.0  # dropout inside the blocks

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 1e-3  # peak AdamW learning rate
    c.optimizer.warmup_steps = 100  # linear warmup from 0
    c.optimizer.end_learning_rate_factor = 0.01  # cosine decay ends at this fraction of the peak
    c.optimizer.weight_decay = 1e-4  # decoupled (AdamW) weight decay
    c.optimizer.clip_norm = 1.0  # global-norm gradient clipping; 0 disables

    c.zero_shot_template = "a video of {name}"  # query text per class for zero-shot evaluation
    c.index_split = "validate"  # --mode retrieve searches this split's videos (train|validate)
    c.index_metric = "cosine"  # --mode retrieve: cosine | euclidean (same order: unit vectors)

    if "smoke" in presets:
        c.batch_size = 64
        c.eval_batch_size = 128
        c.num_train_steps = 400
        c.eval_every = 100
        c.checkpoint_every = 100
        c.log_every = 20
        c.data.max_frames = 32
        c.data.shuffle_buffer = 512
        c.data.synthetic.num_train = 4096
        c.data.synthetic.num_validate = 512
        c.model.embed_dim = 64
        c.model.hidden_size = 64
        c.model.text_embed_dim = 32
        c.model.vivit.hidden_size = 64
        c.model.vivit.num_layers = 1
        c.model.vivit.num_heads = 2
        c.model.vivit.mlp_dim = 128
        c.optimizer.learning_rate = 3e-3
        c.optimizer.warmup_steps = 30
    return c
