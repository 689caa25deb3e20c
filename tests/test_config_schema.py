"""vmjax.configs_check: every shipped config validates; each bad value names its key."""

import importlib

import ml_collections
import pytest

from vmjax import configs
from vmjax.configs_check import (
    MAX_LINES,
    RULES,
    ConfigError,
    dotted_keys,
    nearest_key,
    unknown_key,
    validate,
)
from vmjax.configs_check.keys import leaves, lookup
from vmjax.configs_check.rules import Float, Names, Seq, Template
from vmjax.configs_check.table import TASK_RULES

# What a run must be told that no config can know: the runs to start from, the K400 CSVs.
REQUIRED = {
    "probe": {"init_from.workdir": "/runs/pretrain"},
    "finetune": {"init_from.workdir": "/runs/pretrain"},
    "ptq": {"compress.source_workdir": "/runs/float"},
    "distill": {"compress.teacher_workdir": "/runs/teacher"},
    "vivit_k400": {
        "data.train_pattern": "k400/train.csv",
        "data.eval_pattern": "k400/val.csv",
        "data.video_root": "k400",
    },
}


def _module(name: str):
    return importlib.import_module(f"vmjax.configs.{name}")


def _shipped_specs() -> list[str]:
    """Every preset of every shipped config (alone and with `smoke` where it has one)."""
    yt8m, av = _module("yt8m"), _module("audiovisual")
    specs = ["yt8m", *(f"yt8m:{p}" for p in yt8m.PRESETS), "yt8m:frame,smoke"]
    specs += [f"yt8m:{m},smoke" for m in yt8m.MODEL_PRESETS]
    specs += ["retrieval", "retrieval:smoke", "audiovisual", "audiovisual:smoke"]
    specs += [f"audiovisual:{s}{extra}" for s in av.STAGES for extra in ("", ",smoke")]
    for method in _module("compress").METHOD_PRESETS:
        specs += [f"compress:{method}{extra}" for extra in ("", ",smoke", ",frame,smoke")]
    specs += ["vivit_k400", *(f"vivit_k400:{p}" for p in _module("vivit_k400").PRESETS)]
    specs += ["vivit_pixels", "vivit_pixels:smoke", "vivit_pixels:cnn_lstm"]
    specs += ["vivit_pixels:smoke,cnn_lstm"]
    return specs


def _set(config: ml_collections.ConfigDict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value


def load(spec: str, **overrides) -> ml_collections.ConfigDict:
    """The shipped config `spec` with its required fields filled in, then `overrides`."""
    config = configs.get_config(spec)
    name, _, presets = spec.partition(":")
    for part in [name, *presets.split(",")]:
        for key, value in REQUIRED.get(part, {}).items():
            _set(config, key, value)
    for key, value in overrides.items():
        _set(config, key.replace("__", "."), value)
    return config


def untyped(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy that takes values of any type (as a config.json or a hand-built config may)."""
    return ml_collections.ConfigDict(config.to_dict(), type_safe=False)


def assert_names(error: pytest.ExceptionInfo, key: str, *words: str) -> None:
    message = str(error.value)
    assert error.value.key == key
    assert message.startswith(f"config.{key}="), message
    for word in words:
        assert word in message, message
    assert len(message.splitlines()) <= MAX_LINES


@pytest.mark.parametrize("spec", _shipped_specs())
def test_every_shipped_config_and_preset_validates(spec):
    validate(load(spec))
    validate(load(spec), num_devices=8)


@pytest.mark.parametrize(
    "spec, key",
    [
        ("audiovisual:probe", "init_from.workdir"),
        ("compress:ptq", "compress.source_workdir"),
        ("compress:distill", "compress.teacher_workdir"),
    ],
)
def test_a_run_directory_a_preset_needs_is_asked_for(spec, key):
    config = configs.get_config(spec)
    with pytest.raises(ConfigError) as error:
        validate(config)
    assert_names(error, key, f"--config.{key}=")


def test_kinetics_without_its_csvs_says_what_the_synthetic_videos_need():
    with pytest.raises(ConfigError) as error:
        validate(configs.get_config("vivit_k400"))
    assert_names(error, "data.num_classes", "=400:", "11", "data.train_pattern")


def test_every_field_of_every_shipped_config_has_a_rule():
    ruled = set(RULES).union(*TASK_RULES.values())
    fields = {key for spec in _shipped_specs() for key, _ in leaves(load(spec))}
    assert sorted(fields - ruled) == []


@pytest.mark.parametrize(
    "spec, key, value, allowed",
    [
        ("yt8m", "num_train_steps", 0, "an int >= 1"),
        ("yt8m", "num_train_steps", -3, "an int >= 1"),
        ("yt8m", "eval_every", 0, "an int >= 1"),
        ("yt8m", "checkpoint_every", 0, "an int >= 1"),
        ("yt8m", "log_every", 0, "an int >= 1"),
        ("yt8m", "keep_checkpoints", 0, "an int >= 1"),
        ("yt8m", "batch_size", -4, "an int >= 1"),
        ("yt8m", "eval_batch_size", 0, "an int >= 1"),
        ("yt8m", "grad_accum", 0, "an int >= 1"),
        ("yt8m", "data.num_classes", 0, "an int >= 1"),
        ("yt8m", "data.max_frames", 0, "an int >= 1"),
        ("yt8m", "data.shuffle_buffer", -5, "an int >= 0"),
        ("yt8m", "optimizer.learning_rate", -0.1, "a number >= 0"),
        ("yt8m", "optimizer.weight_decay", -1.0, "a number >= 0"),
        ("yt8m", "dtype", "float16", "one of 'float32', 'bfloat16'"),
        ("yt8m", "data.on_error", "ignore", "one of 'raise', 'skip'"),
        ("yt8m", "data.format", "mp4", "'tfrecord', 'array_record', 'video_files'"),
        ("yt8m", "data.level", "clip", "one of"),
        ("yt8m", "data.frame_sampling", "random", "'window'"),
        ("yt8m", "model.name", "resnet", "'nextvlad'"),
        ("yt8m", "model.vivit.variant", "model5", "'factorised_encoder'"),
        ("yt8m", "model.vivit.pooling", "max", "'mean'"),
        ("yt8m", "model.modalities", "rgb,depth", "'text'"),
        ("yt8m", "model.modalities", "rgb,rgb", "comma-separated names"),
        ("yt8m", "model.head", "mlp", "'logistic'"),
        ("yt8m", "on_nonfinite_loss", "ignore", "'stop', 'skip'"),
        ("yt8m", "parallelism", "dp", "'mesh', 'pmap'"),
        ("yt8m", "compress.method", "fp8", "'distill'"),
        ("yt8m", "compress.sparsity", 1.0, "a number in [0, 1)"),
        ("yt8m", "compress.prune_regex", "(kernel", "a Python regular expression"),
        ("yt8m", "compress.weight_dtype", "int2", "'int8'"),
        ("yt8m", "augment.frame_dropout", 1.0, "a number in [0, 1)"),
        ("yt8m", "augment.crop_ratio", (4 / 3, 3 / 4), "lo <= hi"),
        ("retrieval", "model.fusion", "late", "'concat', 'gated', 'bottleneck'"),
        ("retrieval", "model.modalities", "rgb,text", "'rgb', 'audio'"),
        ("retrieval", "model.text_tower", "bert", "'minilm'"),
        ("retrieval", "index_metric", "dot", "'cosine', 'euclidean'"),
        ("retrieval", "zero_shot_template", "a video", "{name}"),
        ("retrieval", "data.caption_vocab_size", 2, "an int >= 3"),
        ("audiovisual", "pretrain.frame_dropout", 1.5, "a number in [0, 1)"),
        ("vivit_pixels", "model.patch_size", (2, 8), "a tuple of 3 values"),
        ("vivit_pixels", "model.pixel_std", (0.5, 0.0, 0.5), "a number > 0"),
        ("vivit_pixels", "data.sampling", "random", "'stride'"),
        ("vivit_pixels", "data.synthetic_video.validate_fraction", 1.5, "[0, 1]"),
        ("vivit_pixels", "model.cnn.norm", "layer", "'group', 'batch'"),
        ("vivit_k400", "model.variant", "model5", "'spatio_temporal'"),
    ],
)
def test_a_bad_value_names_its_key_and_what_is_allowed(spec, key, value, allowed):
    config = load(spec)
    _set(config, key, value)
    with pytest.raises(ConfigError) as error:
        validate(config)
    assert_names(error, key, f"={value!r}: expected ", allowed)


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("batch_size", "32", "an int >= 1"),
        ("data.max_frames", 4.5, "an int >= 1"),
        ("log_batches", "yes", "true or false"),
        ("optimizer.learning_rate", float("nan"), "a number >= 0"),
        ("augment.flip", 1, "true or false"),
        ("init_from.workdir", None, "a run directory"),
    ],
)
def test_a_value_of_the_wrong_type_names_its_key(key, value, allowed):
    config = untyped(load("yt8m"))
    _set(config, key, value)
    with pytest.raises(ConfigError) as error:
        validate(config)
    assert_names(error, key, allowed)


@pytest.mark.parametrize(
    "spec, overrides, key, words",
    [
        # a model and the level of the features it reads
        ("yt8m", {"model.name": "lstm"}, "data.level", ["'frame' for model.name='lstm'"]),
        ("yt8m:frame", {"model.name": "moe"}, "data.level", ["'video'"]),
        ("yt8m", {"model.name": "vivit_pixels"}, "model.name", ["video_files"]),
        ("vivit_pixels", {"model.name": "moe"}, "model.name", ["'cnn_lstm'"]),
        ("retrieval", {"data.level": "video"}, "data.level", ["'frame'", "retrieval"]),
        # ViViT: pooling, positions and heads that the variant allows
        (
            "yt8m:vivit",
            {"model.vivit.variant": "factorised_self_attention", "model.vivit.pooling": "cls"},
            "model.vivit.pooling",
            ["'mean'", "no CLS token"],
        ),
        (
            "vivit_pixels",
            {"model.variant": "factorised_dot_product", "model.pooling": "cls"},
            "model.pooling",
            ["no CLS token"],
        ),
        (
            "vivit_k400",
            {"model.variant": "factorised_encoder", "model.posemb_layout": "joint"},
            "model.posemb_layout",
            ["'factorised'"],
        ),
        (
            "yt8m:vivit",
            {"model.vivit.variant": "factorised_encoder", "model.vivit.num_temporal_layers": 0},
            "model.vivit.num_temporal_layers",
            [">= 1"],
        ),
        ("yt8m:vivit", {"model.vivit.num_heads": 3}, "model.vivit.num_heads", ["hidden_size=256"]),
        ("vivit_pixels", {"data.num_frames": 7}, "data.num_frames", ["patch_size[0]=2"]),
        ("vivit_pixels:cnn_lstm", {"model.cnn.num_groups": 6}, "model.cnn.num_groups", ["(32 in"]),
        ("yt8m:multimodal", {"model.fusion_layer": 4}, "model.fusion_layer", ["[0, 3]"]),
        (  # MBT: the last layer's bottleneck update is read by no layer, so nothing is exchanged
            "yt8m:multimodal",
            {"model.fusion": "bottleneck", "model.fusion_layers": 2},
            "model.fusion_layer",
            ["[0, 0] for modalities", "or 2 for late", "carry nothing"],
        ),
        ("yt8m:multimodal", {"model.late_weights": "class"}, "model.late_weights", ["fusion=late"]),
        ("yt8m:multimodal", {"model.modality_loss": 0.5}, "model.modality_loss", ["fusion=late"]),
        (
            "retrieval",
            {"model.fusion": "bottleneck", "model.fusion_layer": 1},
            "model.fusion_layer",
            ["carry nothing"],
        ),
        # data files
        ("yt8m", {"data.train_pattern": "/d/train*"}, "data.eval_pattern", ["neither"]),
        ("yt8m", {"data.format": "array_record"}, "data.train_pattern", ["DIR:SPLIT"]),
        ("vivit_pixels", {"data.num_classes": 5}, "data.num_classes", ["11"]),
        (
            "vivit_k400",
            {"data.video_root": ""},
            "data.video_root",
            ["csv_layout='kinetics'"],
        ),
        ("yt8m", {"data.synthetic.min_frames": 60}, "data.synthetic.min_frames", ["48"]),
        ("vivit_pixels", {"data.synthetic_video.size": 33}, "data.synthetic_video.size", ["even"]),
        # training
        ("yt8m", {"parallelism": "pmap", "mesh.fsdp": 2}, "mesh.fsdp", ["pmap"]),
        ("compress:prune", {"compress.begin_step": 500}, "compress.end_step", [">= "]),
        (
            "audiovisual:probe",
            {"init_from.modules": " "},
            "init_from.modules",
            ["'rgb,audio'"],
        ),
        ("yt8m", {"augment.flip": True}, "augment.flip", ["video_files"]),
        ("yt8m", {"augment.temporal_crop": 8}, "augment.temporal_crop", ["data.level='video'"]),
        ("vivit_pixels", {"augment.feature_noise": 0.1}, "augment.feature_noise", ["pixels"]),
    ],
)
def test_fields_that_do_not_fit_together_name_a_key(spec, overrides, key, words):
    config = load(spec)
    for k, v in overrides.items():
        _set(config, k, v)
    with pytest.raises(ConfigError) as error:
        validate(config)
    assert_names(error, key, *words)


@pytest.mark.parametrize(
    "spec, variant_key",
    [("yt8m:vivit", "model.vivit.variant"), ("vivit_pixels", "model.variant")],
)
def test_auto_and_mean_pooling_fit_every_variant(spec, variant_key):
    for variant in importlib.import_module("vmjax.models.vivit").VARIANTS:
        for pooling in ("auto", "mean"):
            config = load(spec)
            _set(config, variant_key, variant)
            _set(config, variant_key.replace("variant", "pooling"), pooling)
            validate(config)


@pytest.mark.parametrize(
    "num_devices, overrides, key, words",
    [
        (6, {}, "batch_size", ["a multiple of the 6 devices"]),
        (6, {"batch_size": 258}, "eval_batch_size", ["6 devices"]),
        (8, {"mesh.fsdp": 3}, "mesh.fsdp", ["a divisor of the 8 devices"]),
        (8, {"grad_accum": 3}, "grad_accum", ["per-device batch 32"]),
        (None, {"grad_accum": 3}, "grad_accum", ["per-device batch 256"]),
    ],
)
def test_batches_must_split_over_the_devices(num_devices, overrides, key, words):
    config = load("yt8m", **{k.replace(".", "__"): v for k, v in overrides.items()})
    with pytest.raises(ConfigError) as error:
        validate(config, num_devices=num_devices)
    assert_names(error, key, *words)


def test_grad_accum_that_divides_the_per_device_batch_passes():
    validate(load("yt8m", grad_accum=4, mesh__fsdp=2), num_devices=8)  # 32 rows per device


def test_num_devices_must_be_a_count():
    with pytest.raises(ValueError, match="num_devices"):
        validate(load("yt8m"), num_devices=0)


def test_an_unknown_task_is_named():
    config = untyped(load("yt8m"))
    config.task = "segment"
    with pytest.raises(ConfigError) as error:
        validate(config)
    assert_names(error, "task", "'classify', 'retrieval', 'audiovisual'")


def test_nearest_key_finds_typos_at_any_depth():
    config = load("yt8m")
    assert nearest_key(config, "num_train_step") == "num_train_steps"
    assert nearest_key(config, "model.num_mixture") == "model.num_mixtures"
    assert nearest_key(config, "modle.num_mixtures") == "model.num_mixtures"
    assert nearest_key(config, "data.shuffle_bufer") == "data.shuffle_buffer"
    assert nearest_key(config, "hidden_size") == "model.hidden_size"
    assert nearest_key(config, "qqqq") is None
    assert nearest_key(config, "model.vivit.qqqq") is None  # not its parent, model.vivit
    assert "model.vivit" in set(dotted_keys(config))  # a sub-config is a key too


def test_unknown_key_says_the_nearest_key_or_what_the_parent_has():
    config = load("yt8m")
    assert str(unknown_key(config, "num_train_step")) == (
        "unknown config key 'num_train_step'; did you mean 'num_train_steps'?"
    )
    message = str(unknown_key(config, "model.vivit.qqqq"))
    assert message.startswith("unknown config key 'model.vivit.qqqq'")
    assert "config.model.vivit has: dropout, hidden_size, mlp_dim" in message
    assert len(message.splitlines()) <= MAX_LINES


def test_a_config_error_is_short_whatever_its_hint_and_value():
    error = ConfigError(
        "data.level", "x" * 500, "'frame'", "\n".join(f"line {i}" for i in range(9))
    )
    lines = str(error).splitlines()
    assert len(lines) == MAX_LINES
    assert lines[0].startswith("config.data.level='xxx") and len(lines[0]) < 120
    assert isinstance(error, ValueError)
    assert str(ConfigError("--config", "yt8n", "a name")) == "--config='yt8n': expected a name"


def test_rule_kinds_accept_exactly_what_they_describe():
    assert Float(0.0, 1.0, hi_open=True).describe() == "a number in [0, 1)"
    assert not Float(0.0).ok(True) and not Float(0.0).ok(float("inf")) and Float(0.0).ok(3)
    names = Names(("rgb", "audio"))
    assert names.ok("rgb, audio") and not names.ok("") and not names.ok("rgb,rgb")
    assert Seq(Float(), 2, increasing=True).ok([1, 2]) and not Seq(Float(), 2).ok(())
    assert Template("name").ok("a {name}") and not Template("name").ok("a {name} {x}")


def test_lookup_follows_dots_and_field_references():
    config = load("yt8m")
    config.seed = 7
    assert lookup(config, "data.seed") == 7  # data.seed follows seed
    assert lookup(config, "data.nothing", None) is None
