"""Models: the name -> class tables and `build_model`.

No paper of its own: each model module's docstring names the paper (and equation, table or
figure) it implements, and tests/models/ checks a defining property of each against an
independent computation (here: tests/models/test_classifiers.py, the fields reach the model).
"""

import dataclasses

import flax.linen as nn
import ml_collections

from vmjax.models.classifiers import (
    CnnLstm,
    DBoFModel,
    FrameLogistic,
    FrameMoE,
    LSTMModel,
    Multimodal,
    NetVLADModel,
    NeXtVLADModel,
    VideoLogistic,
    VideoMoE,
    ViViTModel,
    ViViTPixels,
)
from vmjax.models.videomae import VideoMAEPixels

MODELS: dict[str, type[nn.Module]] = {
    "logistic": VideoLogistic,
    "moe": VideoMoE,
    "frame_moe": FrameMoE,
    "frame_logistic": FrameLogistic,
    "dbof": DBoFModel,
    "lstm": LSTMModel,
    "netvlad": NetVLADModel,
    "nextvlad": NeXtVLADModel,
    "vivit": ViViTModel,
    "multimodal": Multimodal,
}
# The input each model reads: video-level means or frame-level sequences (config.data.level).
LEVEL = {name: "video" if name in ("logistic", "moe") else "frame" for name in MODELS}
# Models on raw pixels `inputs["pixels"]: [batch, time, H, W, 3]`. Kept apart from MODELS, whose
# members all read YT8M features (the zoo tests and yt8m.py presets build each one on them).
PIXEL_MODELS: dict[str, type[nn.Module]] = {
    "cnn_lstm": CnnLstm,
    "vivit_pixels": ViViTPixels,
    "videomae_pixels": VideoMAEPixels,  # transformers' VideoMAE (vmjax.tools.from_transformers)
}

# Dataclass fields every Linen module has that are not model hyper-parameters.
_NOT_HPARAMS = ("parent", "name", "num_classes")


def _has_default(field: dataclasses.Field) -> bool:
    return (
        field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
    )


def build_model(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """Builds the model `model_config.name` (MODELS or PIXEL_MODELS) with the fields it declares."""
    models = MODELS | PIXEL_MODELS
    if model_config.name not in models:
        raise ValueError(
            f"model_config.name={model_config.name!r} is unknown; expected one of {sorted(models)}"
        )
    cls = models[model_config.name]
    fields = [f for f in dataclasses.fields(cls) if f.name not in _NOT_HPARAMS]
    # A field with a default may be absent (a run saved before the field existed).
    wanted = [f.name for f in fields if f.name in model_config or not _has_default(f)]
    missing = [k for k in wanted if k not in model_config]
    if missing:
        raise ValueError(
            f"model {model_config.name!r} ({cls.__name__}) needs model_config fields {missing}; "
            f"got {sorted(model_config.keys())}"
        )
    kwargs = {k: model_config[k] for k in wanted}
    # Nested sub-configs (e.g. model.vivit) become plain dicts for the module's fields.
    kwargs = {
        k: v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v for k, v in kwargs.items()
    }
    return cls(num_classes=num_classes, **kwargs)
