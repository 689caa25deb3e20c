"""Rules between config fields: each check returns the ConfigError of its first mistake, or None.

A check applies only where the config has its fields (configs differ: retrieval has no
model.name, the pixel configs no data.level). `num_devices` is None before JAX knows them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import ml_collections

from vmjax.configs_check.errors import ConfigError
from vmjax.configs_check.keys import ABSENT, lookup
from vmjax.configs_check.rules import code, names_in, quoted
from vmjax.configs_check.table import VIVIT

Config = ml_collections.ConfigDict
Check = Callable[[Config, "int | None"], "ConfigError | None"]
CHECKS: list[Check] = []


def check(fn: Check) -> Check:
    CHECKS.append(fn)
    return fn


def _task(c: Config) -> str:
    return c.get("task", "classify")


def _format(c: Config) -> str:
    return lookup(c, "data.format", "tfrecord")


@check
def patterns_together(c: Config, _) -> ConfigError | None:
    train, evals = lookup(c, "data.train_pattern", ""), lookup(c, "data.eval_pattern", "")
    if bool(train) != bool(evals):
        key, value = ("data.eval_pattern", evals) if train else ("data.train_pattern", train)
        return ConfigError(
            key,
            value,
            "data.train_pattern and data.eval_pattern both set, or neither (the embedded dataset)",
        )
    if _format(c) == "array_record" and not train:
        return ConfigError(
            "data.train_pattern",
            train,
            "DIR:SPLIT for data.format='array_record'",
            "write the dataset with `python -m vmjax.data.convert`",
        )
    return None


@check
def kinetics_needs_clips(c: Config, _) -> ConfigError | None:
    layout, root = lookup(c, "data.csv_layout", "labels"), lookup(c, "data.video_root", "")
    train = lookup(c, "data.train_pattern", "")
    if _format(c) == "video_files" and layout == "kinetics" and train and not root:
        return ConfigError("data.video_root", root, "the clips' folder (csv_layout='kinetics')")
    return None


@check
def synthetic_video_classes(c: Config, _) -> ConfigError | None:
    if _format(c) != "video_files" or lookup(c, "data.train_pattern", ""):
        return None
    classes = names_in("vmjax.data.synthetic_video:CLASSES")
    if c.data.num_classes != len(classes):
        return ConfigError(
            "data.num_classes",
            c.data.num_classes,
            f"{len(classes)}, the synthetic videos' classes, while data.train_pattern is ''",
            "or set data.train_pattern and data.eval_pattern to your CSVs",
        )
    return None


@check
def model_reads_the_data(c: Config, _) -> ConfigError | None:
    name = lookup(c, "model.name")
    if name is ABSENT or _task(c) != "classify":
        return None
    pixels = names_in("vmjax.models:PIXEL_MODELS")
    if _format(c) == "video_files":
        if name in pixels:
            return None
        return ConfigError(
            "model.name",
            name,
            f"a pixel model ({quoted(pixels)}) for data.format='video_files'",
            "the other models read YT8M features",
        )
    if name in pixels:
        return ConfigError(
            "model.name",
            name,
            f"a feature model for data.format={_format(c)!r}",
            "pixel models read data.format='video_files' (vivit_pixels config)",
        )
    level = code("vmjax.models:LEVEL")[name]
    if lookup(c, "data.level") != level:
        preset = " (the yt8m:frame preset)" if level == "frame" else ""
        return ConfigError(
            "data.level",
            lookup(c, "data.level"),
            f"{level!r} for model.name={name!r}",
            f"it reads {level}-level features: --config.data.level={level}{preset}",
        )
    return None


@check
def trainer_reads_frames(c: Config, _) -> ConfigError | None:
    task = _task(c)
    if task == "classify":
        return None
    if lookup(c, "data.level", "frame") != "frame":
        return ConfigError("data.level", c.data.level, f"'frame' (the {task} trainer)")
    if task == "audiovisual" and _format(c) == "video_files":
        return ConfigError("data.format", "video_files", "YT8M features for pretraining")
    return None


def _vivit_prefixes(c: Config) -> Iterator[str]:
    if lookup(c, "model.vivit.variant") is not ABSENT:
        yield "model.vivit."
    if lookup(c, "model.name") == "vivit_pixels":
        yield "model."


@check
def vivit_variant_fits(c: Config, _) -> ConfigError | None:
    for p in _vivit_prefixes(c):
        variant = lookup(c, p + "variant")
        pooling, layout = lookup(c, p + "pooling", "auto"), lookup(c, p + "posemb_layout", "auto")
        if pooling == "cls" and variant in names_in(f"{VIVIT}:_NO_CLS_VARIANTS"):
            return ConfigError(
                p + "pooling",
                pooling,
                f"'auto' or 'mean' for variant={variant!r}",
                "this variant has no CLS token (as in the paper)",
            )
        if layout == "joint" and variant == "factorised_encoder":
            return ConfigError(
                p + "posemb_layout",
                layout,
                "'factorised' or 'auto' for "
                "variant='factorised_encoder' (time and space added apart)",
            )
        temporal = lookup(c, p + "num_temporal_layers", 1)
        if variant == "factorised_encoder" and temporal < 1:
            return ConfigError(
                p + "num_temporal_layers", temporal, "an int >= 1 for variant='factorised_encoder'"
            )
        width, heads = lookup(c, p + "hidden_size", 1), lookup(c, p + "num_heads", 1)
        if width % heads:
            return ConfigError(p + "num_heads", heads, f"a divisor of {p}hidden_size={width}")
    return None


@check
def tubelets_fit(c: Config, _) -> ConfigError | None:
    if lookup(c, "model.name") != "vivit_pixels":
        return None
    pt, ph, pw = c.model.patch_size
    if c.data.num_frames % pt:
        return ConfigError(
            "data.num_frames", c.data.num_frames, f"a multiple of model.patch_size[0]={pt}"
        )
    if c.data.image_size % ph or c.data.image_size % pw:
        return ConfigError(
            "data.image_size", c.data.image_size, f"a multiple of model.patch_size's {ph} and {pw}"
        )
    return None


@check
def cnn_groups_fit(c: Config, _) -> ConfigError | None:
    if lookup(c, "model.name") != "cnn_lstm" or c.model.cnn.norm != "group":
        return None
    cnn = c.model.cnn
    for stage in range(len(cnn.stage_sizes)):  # GroupNorm(min(num_groups, channels))
        channels = cnn.width * 2**stage
        if channels % min(cnn.num_groups, channels):
            return ConfigError(
                "model.cnn.num_groups",
                cnn.num_groups,
                f"a divisor of every stage's channels ({channels} in stage {stage})",
            )
    return None


@check
def bottleneck_layers(c: Config, _) -> ConfigError | None:
    layer, layers = lookup(c, "model.fusion_layer"), lookup(c, "model.fusion_layers")
    if ABSENT not in (layer, layers) and layer > layers:
        return ConfigError("model.fusion_layer", layer, f"an int in [0, {layers}] (fusion_layers)")
    names = [m for m in str(lookup(c, "model.modalities", "")).split(",") if m.strip()]
    bottleneck = lookup(c, "model.fusion", None) == "bottleneck" and len(names) > 1
    if bottleneck and ABSENT not in (layer, layers) and layers >= 1 and layer == layers - 1:
        # A bottleneck written by layer l is first read by layer l + 1 (fusion.BottleneckFusion).
        return ConfigError(
            "model.fusion_layer",
            layer,
            f"an int in [0, {layers - 2}] for modalities that exchange through the bottlenecks, "
            f"or {layers} for late fusion",
            f"with fusion_layers={layers} the bottlenecks written by layer {layer} are read by "
            "no later layer: they would carry nothing between modalities",
        )
    return None


@check
def late_fusion_settings(c: Config, _) -> ConfigError | None:
    fusion = lookup(c, "model.fusion", None)
    for key, plain in (("model.late_weights", "mean"), ("model.modality_loss", 0.0)):
        value = lookup(c, key)
        if fusion not in (None, "late") and value not in (ABSENT, plain):
            return ConfigError(
                key,
                value,
                f"{plain!r} with model.fusion={fusion!r}",
                f"{key} applies to late fusion only: add --config.model.fusion=late",
            )
    return None


@check
def devices_split_batches(c: Config, num_devices: int | None) -> ConfigError | None:
    fsdp = lookup(c, "mesh.fsdp", 1)
    if fsdp != 1 and lookup(c, "parallelism", "mesh") != "mesh":
        return ConfigError(
            "mesh.fsdp",
            fsdp,
            "1 with parallelism='pmap'",
            "fsdp shards parameters over a device mesh: parallelism='mesh'",
        )
    devices = num_devices or 1
    for key in ("batch_size", "eval_batch_size"):
        if lookup(c, key, devices) % devices:
            return ConfigError(key, c[key], f"a multiple of the {devices} devices")
    if num_devices and num_devices % fsdp:
        return ConfigError("mesh.fsdp", fsdp, f"a divisor of the {num_devices} devices")
    accum, per_device = lookup(c, "grad_accum", 1), lookup(c, "batch_size", 1) // devices
    if per_device % accum:
        return ConfigError(
            "grad_accum",
            accum,
            f"a divisor of the per-device batch {per_device}",
            f"batch_size={c.batch_size} over {devices} device(s)",
        )
    return None


@check
def synthetic_sizes(c: Config, _) -> ConfigError | None:
    lo, hi = lookup(c, "data.synthetic.min_frames"), lookup(c, "data.synthetic.max_frames")
    if ABSENT not in (lo, hi) and lo > hi:
        return ConfigError("data.synthetic.min_frames", lo, f"<= data.synthetic.max_frames={hi}")
    size = lookup(c, "data.synthetic_video.size", 16)
    if size % 2:
        return ConfigError("data.synthetic_video.size", size, "an even int >= 16 (yuv420p)")
    return None


@check
def compression_inputs(c: Config, _) -> ConfigError | None:
    method = lookup(c, "compress.method", "none")
    key = {"ptq": "compress.source_workdir", "distill": "compress.teacher_workdir"}.get(method)
    if key and not lookup(c, key, ""):
        return ConfigError(
            key,
            lookup(c, key, ""),
            f"a trained run for compress.method={method!r}",
            f"pass --config.{key}=RUN_DIRECTORY",
        )
    if method == "prune" and c.compress.begin_step > c.compress.end_step:
        return ConfigError(
            "compress.end_step",
            c.compress.end_step,
            f"an int >= compress.begin_step={c.compress.begin_step}",
        )
    return None


@check
def init_from_names_modules(c: Config, _) -> ConfigError | None:
    if lookup(c, "init_from.workdir", "") and not lookup(c, "init_from.modules", "x").strip():
        return ConfigError(
            "init_from.modules",
            c.init_from.modules,
            "the parameter subtrees taken from init_from.workdir, e.g. 'rgb,audio'",
        )
    return None


@check
def augmentations_have_inputs(c: Config, _) -> ConfigError | None:
    a = lookup(c, "augment")
    if a is ABSENT or _task(c) != "classify":
        return None
    video = _format(c) == "video_files"
    if not video and lookup(c, "data.level", "frame") == "video":
        for key in ("temporal_crop", "temporal_jitter", "frame_dropout"):
            if a.get(key):
                return ConfigError(
                    f"augment.{key}",
                    a[key],
                    "0 with data.level='video'",
                    "it works on frames: frame-level features or video files",
                )
    for key in ("crop_scale", "flip", "brightness", "contrast"):
        if a.get(key) and not video:
            return ConfigError(
                f"augment.{key}",
                a[key],
                f"{a[key].__class__(0)!r} here",
                "a pixel augmentation: it needs data.format='video_files'",
            )
    if a.get("feature_noise") and video:
        return ConfigError(
            "augment.feature_noise",
            a.feature_noise,
            "0 with video files",
            "it adds noise to rgb/audio features, not to pixels",
        )
    return None
