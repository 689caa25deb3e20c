"""RULES: every config field's rule, one line per dotted key (configs/*.py say what they mean).

A field missing here is not checked (tests/test_config_schema.py fails for shipped configs);
a rule whose key a config lacks is skipped. 'module:NAME' names the code that reads a field.
"""

from __future__ import annotations

from vmjax.configs_check.rules import (
    AnyOf,
    Bool,
    Float,
    Int,
    Names,
    OneOf,
    Regex,
    Rule,
    Seq,
    Str,
    Template,
)

TASKS = ("classify", "retrieval", "audiovisual")  # vmjax.main's trainers; no `task` = classify
# The data formats and CSV layouts of the classifier loop's inputs (vmjax.train.inputs).
FORMATS = ("tfrecord", "array_record", "video_files")
CSV_LAYOUTS = ("labels", "kinetics")
ON_NONFINITE = ("stop", "skip")  # vmjax.train.loop's NaN/Inf guard
VIVIT = "vmjax.models.vivit"

COUNT = Int(1)  # steps, sizes, widths: at least one
NONNEG = Int(0)
RATE = Float(0.0, 1.0, hi_open=True)  # dropout-like probabilities
POSITIVE = Float(0.0, lo_open=True)
PIXEL_MEAN = Seq(Float(), 3)
PIXEL_STD = Seq(POSITIVE, 3)
RUN = Str(what="a run directory")

# ViViT's fields, nested (model.vivit: frame features) or flat (model.*: vivit_pixels).
_VIVIT_FIELDS: dict[str, Rule] = {
    "variant": OneOf(f"{VIVIT}:VARIANTS"),
    "pooling": OneOf(f"{VIVIT}:POOLINGS"),  # 'cls' needs a CLS variant (checks.py)
    "posemb_init": OneOf(f"{VIVIT}:POSEMB_INITS"),
    "posemb_layout": OneOf(f"{VIVIT}:POSEMB_LAYOUTS"),
    "hidden_size": COUNT,  # a multiple of num_heads (checks.py)
    "num_layers": COUNT,
    "num_heads": COUNT,
    "mlp_dim": COUNT,
    "num_temporal_layers": NONNEG,  # >= 1 for factorised_encoder (checks.py)
    "dropout": RATE,
    "attention_dropout": RATE,
    "tokens_per_frame": COUNT,
}

RULES: dict[str, Rule] = {
    "task": OneOf(TASKS),
    "seed": NONNEG,
    "batch_size": COUNT,  # and eval_batch_size: multiples of the devices (checks.py)
    "eval_batch_size": COUNT,
    "num_train_steps": COUNT,
    "eval_every": COUNT,
    "checkpoint_every": COUNT,
    "keep_checkpoints": COUNT,
    "log_every": COUNT,
    "parallelism": OneOf("vmjax.train.parallel:PARALLELISMS"),
    "mesh.fsdp": COUNT,
    "dtype": OneOf("vmjax.train.step:DTYPES"),
    "grad_accum": COUNT,  # divides the per-device batch (checks.py)
    "on_nonfinite_loss": OneOf(ON_NONFINITE),
    "divergence_factor": AnyOf(Float(0.0, 0.0), Float(1.0, lo_open=True)),  # 0: off
    "on_divergence": OneOf("vmjax.train.guards:DIVERGENCE_MODES"),
    "divergence_max_skips": COUNT,
    "log_batches": Bool(),
    "data.format": OneOf(FORMATS),
    "data.train_pattern": Str(),
    "data.eval_pattern": Str(),
    "data.level": OneOf("vmjax.data.pipeline:LEVELS"),  # the model's (checks.py)
    "data.max_frames": COUNT,
    "data.frame_sampling": OneOf("vmjax.data.pipeline:FRAME_SAMPLINGS"),
    "data.seed": NONNEG,
    "data.num_classes": COUNT,
    "data.max_text_tokens": COUNT,
    "data.text_vocab_size": COUNT,
    "data.max_caption_tokens": COUNT,
    "data.caption_vocab_size": Int(3),  # [PAD], [UNK] and a word
    "data.shuffle_buffer": NONNEG,  # 0 or 1: no shuffling
    "data.cycle_length": COUNT,
    "data.prefetch": NONNEG,
    "data.workers": AnyOf(NONNEG, OneOf(("auto",))),  # vmjax.data.pipeline.worker_count
    "data.read_threads": COUNT,
    "data.segment_classes": Str(),
    "data.segment_pad_past_end": Bool(),
    "data.on_error": OneOf("vmjax.data.pipeline:ON_ERROR"),
    "data.cache_dir": Str(nonempty=True),
    "data.csv_layout": OneOf(CSV_LAYOUTS),
    "data.video_root": Str(),
    "data.vocabulary": Str(),
    "data.num_frames": COUNT,
    "data.image_size": COUNT,
    "data.sampling": OneOf("vmjax.data.video:SAMPLINGS"),
    "data.frame_stride": COUNT,
    "data.fps": POSITIVE,
    "data.synthetic.seed": NONNEG,
    "data.synthetic.num_train": COUNT,
    "data.synthetic.num_validate": COUNT,
    "data.synthetic.min_frames": NONNEG,
    "data.synthetic.max_frames": COUNT,
    "data.synthetic_video.num_videos": COUNT,
    "data.synthetic_video.seconds": POSITIVE,
    "data.synthetic_video.size": Int(16),  # and even (checks.py)
    "data.synthetic_video.fps": POSITIVE,
    "data.synthetic_video.seed": NONNEG,
    "data.synthetic_video.validate_fraction": Float(0.0, 1.0),
    "model.name": OneOf("vmjax.models:MODELS", "vmjax.models:PIXEL_MODELS"),
    "model.num_mixtures": COUNT,
    "model.hidden_size": COUNT,
    "model.num_layers": COUNT,
    "model.cluster_size": COUNT,
    "model.num_clusters": COUNT,
    "model.audio_clusters": COUNT,
    "model.expansion": COUNT,
    "model.groups": COUNT,
    "model.dropout": RATE,
    "model.text_vocab_size": COUNT,
    "model.text_embed_dim": COUNT,
    "model.fusion": OneOf("vmjax.models.classifiers:FUSIONS"),
    "model.modalities": Names("vmjax.models.classifiers:MODALITIES"),
    "model.fusion_layers": COUNT,
    "model.fusion_layer": NONNEG,  # <= fusion_layers (checks.py)
    "model.num_bottlenecks": COUNT,
    "model.head": OneOf("vmjax.models.classifiers:HEADS"),
    "model.late_weights": OneOf("vmjax.models.fusion:LATE_WEIGHTS"),  # fusion='late' (checks.py)
    "model.modality_loss": Float(0.0),  # fusion='late' (checks.py)
    "model.embed_dim": COUNT,
    "model.text_tower": OneOf("vmjax.models.retrieval:TEXT_TOWERS"),
    "model.minilm_checkpoint": Str(),
    "model.freeze_text_tower": Bool(),
    **{f"model.vivit.{k}": rule for k, rule in _VIVIT_FIELDS.items()},
    **{f"model.{k}": rule for k, rule in _VIVIT_FIELDS.items()},
    "model.patch_size": Seq(COUNT, 3),  # divides the clip (checks.py)
    "model.pixel_mean": PIXEL_MEAN,
    "model.pixel_std": PIXEL_STD,
    # videomae_pixels (vmjax.models.videomae: VideoMAE's fields; vmjax.tools.from_transformers)
    "model.videomae.num_layers": COUNT,
    "model.videomae.hidden_size": COUNT,  # a multiple of num_heads
    "model.videomae.num_heads": COUNT,
    "model.videomae.mlp_dim": COUNT,
    "model.videomae.patch_size": Seq(COUNT, 3),  # tubelet (time, height, width)
    "model.videomae.pooling": OneOf("vmjax.models.videomae:POOLINGS"),
    "model.videomae.layer_norm_epsilon": POSITIVE,
    "model.videomae.fc_norm_epsilon": POSITIVE,
    "model.videomae.approximate_gelu": Bool(),
    "model.videomae.dropout": RATE,
    "model.videomae.attention_dropout": RATE,
    "model.cnn.stage_sizes": Seq(COUNT),
    "model.cnn.width": COUNT,
    "model.cnn.norm": OneOf("vmjax.models.cnn:NORMS"),
    "model.cnn.num_groups": COUNT,  # divides every stage's width (checks.py)
    "model.cnn.pixel_mean": PIXEL_MEAN,
    "model.cnn.pixel_std": PIXEL_STD,
    "eval.num_clips": COUNT,  # x eval.num_crops divides eval_batch_size (vmjax.data.views)
    "eval.num_crops": AnyOf(Float(1, 1), Float(3, 3)),  # ints (the config types them)
    "eval.average": OneOf("vmjax.data.views:AVERAGES"),
    "augment.temporal_crop": NONNEG,  # each augmentation: 0 / False is off
    "augment.temporal_jitter": NONNEG,
    "augment.frame_dropout": RATE,
    "augment.feature_noise": Float(0.0),
    "augment.mixup_alpha": Float(0.0),
    "augment.flip": Bool(),
    "augment.crop_scale": Float(0.0, 1.0),
    "augment.crop_ratio": Seq(POSITIVE, 2, increasing=True),
    "augment.brightness": Float(0.0),
    "augment.contrast": Float(0.0),
    "optimizer.learning_rate": Float(0.0),
    "optimizer.warmup_steps": NONNEG,
    "optimizer.end_learning_rate_factor": Float(0.0),
    "optimizer.weight_decay": Float(0.0),
    "optimizer.clip_norm": Float(0.0),  # 0: no clipping
    "init_from.workdir": RUN,
    "init_from.modules": Str(),
    "freeze": Str(),
    "freeze_steps": NONNEG,
    "compress.method": OneOf("vmjax.compress:METHODS"),
    "compress.sparsity": Float(0.0, 1.0, hi_open=True),
    "compress.begin_step": NONNEG,
    "compress.end_step": NONNEG,
    "compress.update_every": COUNT,
    "compress.prune_regex": Regex(),
    "compress.quantize_regex": Regex(),
    "compress.weight_dtype": OneOf("vmjax.compress.quantization:QTYPES"),
    "compress.act_dtype": OneOf(("",), "vmjax.compress.quantization:QTYPES"),
    "compress.source_workdir": RUN,  # ptq needs it, distill needs teacher_workdir (checks.py)
    "compress.teacher_workdir": RUN,
    "compress.temperature": POSITIVE,
    "compress.alpha": Float(0.0, 1.0),
    "zero_shot_template": Template("name"),
    "index_split": OneOf("vmjax.data.synthetic:SPLITS"),
    "index_metric": OneOf("vmjax.search:METRICS"),
    "pretrain.embed_dim": COUNT,
    "pretrain.crop_frames": NONNEG,  # 0: no crop
    "pretrain.frame_dropout": RATE,
    "pretrain.within_modal": Float(0.0),
}

# Where a trainer reads a field differently: the retrieval video tower fuses rgb and audio only.
TASK_RULES: dict[str, dict[str, Rule]] = {
    "retrieval": {
        "model.fusion": OneOf("vmjax.models.retrieval:VIDEO_FUSIONS"),
        "model.modalities": Names("vmjax.models.retrieval:VIDEO_MODALITIES"),
    },
}
