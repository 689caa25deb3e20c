"""from_transformers: tiny random transformers ViViT / VideoMAE classifiers, logits to 1e-4.

The reference is transformers itself (PyTorch, from the test extra); the tests fail when it is
missing, and VMJAX_SKIP_TORCH=1 skips them. Nothing is downloaded: configs are built here and
every weight is drawn under torch.manual_seed.
"""

import json
import os

import jax
import numpy as np
import pytest

from vmjax.models import from_transformers
from vmjax.models.vivit import ViViT

FRAMES, SIZE, BATCH, LABELS = 8, 32, 2, 5
# Each case: (architecture, config overrides). The second of each model has a non-square,
# non-default image size and no q/k/v biases; VideoMAE's also pools its first token.
CASES = {
    "vivit": ("vivit", {}),
    "vivit_48x32_nobias": ("vivit", {"image_size": [48, 32], "qkv_bias": False}),
    "videomae": ("videomae", {}),
    "videomae_32x48_first": (
        "videomae",
        {"image_size": [32, 48], "qkv_bias": False, "use_mean_pooling": False},
    ),
}


def hf_modules():
    """(torch, transformers), skipped under VMJAX_SKIP_TORCH=1, a failure if missing."""
    if os.environ.get("VMJAX_SKIP_TORCH") == "1":
        pytest.skip("VMJAX_SKIP_TORCH=1: the transformers comparisons are skipped")
    try:
        import torch
        import transformers
    except ImportError as e:
        pytest.fail(f"{e}: the reference needs torch and transformers from the test extra")
    return torch, transformers


@pytest.fixture(scope="module")
def hf():
    """(torch, transformers), or a failure saying how to get them."""
    return hf_modules()


def _model(hf, architecture: str, overrides: dict):
    """A tiny transformers classifier whose every tensor is random (not zeros, ones)."""
    torch, transformers = hf
    common = dict(
        num_frames=FRAMES,
        image_size=SIZE,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=LABELS,
    )
    if architecture == "vivit":
        config = transformers.VivitConfig(tubelet_size=[2, 8, 8], **common | overrides)
        model = transformers.VivitForVideoClassification(config)
    else:
        config = transformers.VideoMAEConfig(tubelet_size=2, patch_size=8, **common | overrides)
        model = transformers.VideoMAEForVideoClassification(config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # LayerNorm gains around 1; ViViT's CLS and positions start at zero in transformers,
            # so drawing them too is what makes the comparison see the position layout.
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("norm.weight") else 0.0))
    return model.eval()


def _pixels(hf, config) -> np.ndarray:
    """A normalized clip `[batch, frames, channels, height, width]`, as the processor gives."""
    torch, _ = hf
    size = config.image_size
    height, width = (size, size) if isinstance(size, int) else size
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, FRAMES, 3, height, width, generator=generator).numpy()


def _reference_logits(hf, model, pixels: np.ndarray) -> np.ndarray:
    torch, _ = hf
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(pixels)).logits.numpy()


def _logits(module, variables, pixels: np.ndarray) -> np.ndarray:
    # One compiled program: op-by-op dispatch compiles every op on its own and is slower.
    return np.asarray(jax.jit(module.apply)(variables, np.moveaxis(pixels, 2, -1)))


def _state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def models(hf):
    return {case: _model(hf, *spec) for case, spec in CASES.items()}


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers(hf, models, case):
    model = models[case]
    pixels = _pixels(hf, model.config)
    want = _reference_logits(hf, model, pixels)
    module, variables = from_transformers.convert(model.config.to_dict(), _state_dict(model))
    got = _logits(module, variables, pixels)
    assert got.shape == (BATCH, LABELS)
    # Logits of order 1, so an absolute 1e-4 is a strict test.
    assert np.abs(want).max() > 0.5
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def _assert_same_conversion(model, hf_config: dict, state_dict: dict) -> None:
    """`convert` gives the variables it gives for the model in memory, whose logits are tested
    above (so no second compile is needed here)."""
    module, variables = from_transformers.convert(hf_config, state_dict)
    want_module, want = from_transformers.convert(model.config.to_dict(), _state_dict(model))
    assert module == want_module
    jax.tree.map(np.testing.assert_array_equal, variables, want)


@pytest.mark.parametrize("case", ["vivit", "videomae"])
def test_load_folder_save_pretrained(models, case, tmp_path):
    """save_pretrained writes the checkpoint files' names (q_bias, encoder.layer.N.attention...),
    not transformers 5's in-memory ones (q_proj, layers.N, query.bias)."""
    model = models[case]
    model.save_pretrained(tmp_path)
    hf_config, state_dict = from_transformers.load_folder(tmp_path)
    assert hf_config["architectures"] == [type(model).__name__]
    assert set(state_dict) != set(model.state_dict())
    _assert_same_conversion(model, hf_config, state_dict)


def test_load_folder_pytorch_bin(hf, models, tmp_path):
    torch, _ = hf
    model = models["vivit"]
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    _assert_same_conversion(model, *from_transformers.load_folder(tmp_path))


def test_load_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        from_transformers.load_folder(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no weights; expected model.safetensors"):
        from_transformers.load_folder(tmp_path)


def test_unsupported_architecture():
    with pytest.raises(ValueError, match=r"\['BertModel'\]; convert supports exactly one of"):
        from_transformers.convert({"architectures": ["BertModel"]}, {})
    with pytest.raises(ValueError, match="model_type='bert'"):
        from_transformers.convert({"model_type": "bert"}, {})


@pytest.mark.parametrize("case", ["vivit", "videomae"])
def test_bad_state_dict_names_the_key(models, case):
    model = models[case]
    config = model.config.to_dict()
    state = _state_dict(model)
    layer_key = next(k for k in state if ".1." in k and k.endswith("layernorm_after.weight"))

    missing = {k: v for k, v in state.items() if k != layer_key}
    with pytest.raises(ValueError, match=r"state_dict has no '.*\.1\.layernorm_after\.weight'"):
        from_transformers.convert(config, missing)

    with pytest.raises(ValueError, match=r"state_dict\['classifier.weight'\] has shape \(5, 31\)"):
        from_transformers.convert(config, state | {"classifier.weight": np.zeros((LABELS, 31))})

    # Weights of three layers under a two-layer config.
    extra = {k.replace(".1.", ".2."): v for k, v in state.items() if ".1." in k}
    with pytest.raises(ValueError, match=r"does not have, e\.g\. \['.*\.2\."):
        from_transformers.convert(config, state | extra)

    with pytest.raises(ValueError, match="hf_config has no 'hidden_size'"):
        from_transformers.convert({k: v for k, v in config.items() if k != "hidden_size"}, state)


def test_unsupported_vivit_activation(models):
    model = models["vivit"]
    config = model.config.to_dict() | {"hidden_act": "gelu"}
    with pytest.raises(ValueError, match="hidden_act.*tanh GELU"):
        from_transformers.convert(config, _state_dict(model))


def test_joint_position_table():
    """posemb_layout='joint': one [1, nt*ns, D] table; the factorised encoder rejects it."""
    tokens = np.zeros((1, 3, 4, 8), np.float32)
    vivit = ViViT("spatio_temporal", 1, 8, 2, 16, posemb_layout="joint")
    shapes = jax.eval_shape(lambda: vivit.init(jax.random.key(0), tokens, train=False))["params"]
    assert shapes["pos_embedding"].shape == (1, 12, 8)
    assert "pos_embedding_time" not in shapes
    encoder = ViViT("factorised_encoder", 1, 8, 2, 16, num_temporal_layers=1, posemb_layout="joint")
    with pytest.raises(ValueError, match="posemb_layout='joint'"):
        encoder.init(jax.random.key(0), tokens, train=False)


def test_pixel_normalization_is_the_processors_on_unit_pixels():
    """(x - mean) / std on x = p / 255 equals the processor's ((p r - o) - m) / s, by hand."""
    vivit, videomae = from_transformers.VIVIT, from_transformers.VIDEOMAE
    # ViViT's defaults: p / 127.5 - 1, then (y - 0.5) / 0.5: x = 0 -> -3, x = 1 -> 1.
    mean, std = from_transformers.pixel_normalization(vivit, None)
    assert mean == (0.75,) * 3 and std == (0.25,) * 3
    assert (0 - 0.75) / 0.25 == -3 and (1 - 0.75) / 0.25 == 1
    mean, std = from_transformers.pixel_normalization(videomae, None)
    assert mean == (0.485, 0.456, 0.406) and std == (0.229, 0.224, 0.225)
    # No normalization: ViViT's [-1, 1] alone is (x - 0.5) / 0.5.
    mean, std = from_transformers.pixel_normalization(vivit, {"do_normalize": False})
    assert mean == (0.5,) * 3 and std == (0.5,) * 3
    # No rescaling: the processor normalizes raw [0, 255] values, (255 x - m) / s.
    processor = {"do_rescale": False, "image_mean": [51.0] * 3, "image_std": [25.5] * 3}
    mean, std = from_transformers.pixel_normalization(videomae, processor)
    np.testing.assert_allclose(mean, [0.2] * 3) and np.testing.assert_allclose(std, [0.1] * 3)
    with pytest.raises(ValueError, match="image_std"):
        from_transformers.pixel_normalization(videomae, {"image_std": [0.2, 0.0, 0.2]})


def test_labels_of():
    assert from_transformers.labels_of({"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}, 2) is None
    names = {"1": "b", "0": "a"}
    assert from_transformers.labels_of({"id2label": names}, 2) == ["a", "b"]


def test_videomae_pixels_reads_masked_frames_as_the_mean_colour():
    """Registry model 'videomae_pixels': a masked frame is the same input as a frame painted in
    pixel_mean (0 after normalization), and it changes the logits (it still is a token)."""
    import ml_collections

    from vmjax.models import build_model

    mean = (0.2, 0.4, 0.6)
    config = ml_collections.ConfigDict(
        {
            "name": "videomae_pixels",
            "videomae": {
                "num_layers": 1,
                "hidden_size": 8,
                "num_heads": 2,
                "mlp_dim": 16,
                "patch_size": [2, 4, 4],
            },
            "pixel_mean": mean,
            "pixel_std": (0.5, 0.5, 0.5),
        }
    )
    model = build_model(config, 3)
    pixels = np.random.default_rng(0).uniform(size=(1, 4, 8, 8, 3)).astype(np.float32)
    variables = model.init(jax.random.key(0), {"pixels": pixels}, train=False)
    mask = np.array([[True, True, False, False]])
    painted = pixels.copy()
    painted[:, 2:] = mean
    apply = jax.jit(lambda p, m: model.apply(variables, {"pixels": p, "mask": m}, train=False))
    masked = apply(pixels, mask)
    np.testing.assert_allclose(masked, apply(painted, np.ones_like(mask)), atol=1e-6)
    assert np.abs(masked - apply(pixels, np.ones_like(mask))).max() > 1e-4
