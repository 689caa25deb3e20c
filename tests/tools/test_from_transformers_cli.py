"""vmjax.tools.from_transformers: a save_pretrained folder -> a run that eval, init_from read.

The reference is transformers itself (PyTorch and its image processors, from the test extra):
tiny random classifiers and processors with non-default statistics are saved into tmp, nothing
is downloaded. VMJAX_SKIP_TORCH=1 skips the tests that need them.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from tests.models.test_from_transformers import hf_modules
from vmjax import configs, trained
from vmjax.errors import RunDirectoryError, UserError
from vmjax.tools import from_transformers as tool

ROOT = pathlib.Path(__file__).resolve().parents[2]
FRAMES, SIZE, LABELS = 4, 16, 11  # 11: the synthetic videos' classes, so eval runs on them
# Non-default statistics, so that a conversion that ignored the processor would fail.
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.3, 0.25]


def save_tiny_classifier(architecture: str, folder, *, frames: int = FRAMES):
    """A random tiny transformers ViViT / VideoMAE classifier and its image processor, saved
    with save_pretrained into `folder`; returns (model, processor)."""
    torch, transformers = hf_modules()
    common = dict(
        num_frames=frames,
        image_size=SIZE,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=LABELS,
    )
    if architecture == "vivit":
        model = transformers.VivitForVideoClassification(
            transformers.VivitConfig(tubelet_size=[2, 8, 8], **common)
        )
        processor_class = transformers.VivitImageProcessor
    else:
        model = transformers.VideoMAEForVideoClassification(
            transformers.VideoMAEConfig(tubelet_size=2, patch_size=8, **common)
        )
        processor_class = transformers.VideoMAEImageProcessorPil
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("norm.weight") else 0.0))
    processor = processor_class(
        do_resize=False, do_center_crop=False, image_mean=MEAN, image_std=STD
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model.eval(), processor


def base_config(cache_dir) -> ml_collections.ConfigDict:
    """vivit_pixels:smoke reading a handful of 16-pixel synthetic videos from `cache_dir`."""
    c = configs.get_config("vivit_pixels:smoke")
    c.data.cache_dir = str(cache_dir)
    c.data.synthetic_video.num_videos = 8
    c.data.synthetic_video.size = 16
    c.eval_batch_size = 4
    return c


@pytest.fixture(scope="module", params=["vivit", "videomae"])
def converted(request, tmp_path_factory):
    """(architecture, HF model, processor, workdir, summary) of a converted tiny classifier."""
    folder = tmp_path_factory.mktemp(f"hf_{request.param}")
    model, processor = save_tiny_classifier(request.param, folder)
    workdir = str(tmp_path_factory.mktemp("runs") / request.param)
    cache = tmp_path_factory.getbasetemp() / "video_cache"
    summary = tool.convert_folder(str(folder), workdir, base_config(cache), log=lambda _: None)
    return request.param, model, processor, workdir, summary


def _clip(seed: int = 0) -> np.ndarray:
    """uint8 pixels [2, frames, H, W, 3]."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (2, FRAMES, SIZE, SIZE, 3), dtype=np.uint8)


def test_the_run_gives_transformers_logits(converted):
    """trained.load of the run, on uint8 pixels, against transformers' processor + model."""
    torch, _ = hf_modules()
    architecture, model, processor, workdir, summary = converted
    run = trained.load(workdir)
    assert run.step == 0 and summary["num_classes"] == LABELS
    assert run.config.model.name == f"{architecture}_pixels"
    assert (run.config.data.num_frames, run.config.data.image_size) == (FRAMES, SIZE)
    assert run.config.data.num_classes == LABELS
    assert run.config.init_from.modules == architecture and run.config.freeze == ""
    assert os.path.isfile(os.path.join(workdir, "checkpoints", "0", "vmjax_manifest.json"))
    with open(os.path.join(workdir, "config.json")) as f:
        resolved = json.load(f)["resolved"]["from_transformers"]
    assert resolved["architecture"] == type(model).__name__ and resolved["preprocessor_config"]

    pixels = _clip()
    got = jax.jit(lambda v, x: run.model.apply(v, {"pixels": x}, train=False))(
        run.variables, pixels
    )
    values = processor([list(video) for video in pixels], return_tensors="np")["pixel_values"]
    with torch.no_grad():
        want = model(pixel_values=torch.from_numpy(values)).logits.numpy()
    assert np.abs(want).max() > 0.5
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)


def test_eval_runs_on_synthetic_videos(converted):
    architecture, _, _, workdir, _ = converted
    if architecture != "vivit":
        pytest.skip("one architecture suffices: eval reads every run alike")
    from vmjax.train import inference

    config = configs.get_config(f"run:{workdir}")  # the run's own config, --config run:DIR
    result = inference.evaluate_checkpoint(config, workdir)
    assert result["step"] == 0 and result["num_videos"] == 2  # 8 videos, a quarter validate
    assert np.isfinite(result["loss"])
    assert os.path.isfile(os.path.join(workdir, "eval", "step_0.json"))


def test_init_from_takes_the_encoder_for_other_classes(converted):
    """A new 3-class run starting from the converted one: its encoder is the HF weights."""
    architecture, model, _, workdir, _ = converted
    from vmjax.train import pretrained, setup

    config = configs.get_config(f"run:{workdir}")
    with config.unlocked():
        config.data.num_classes = 3
        config.init_from.workdir = workdir
    fresh = jax.eval_shape(lambda: setup.init_run(config)[2])
    params = jax.tree.map(lambda s: np.full(s.shape, 7.0, s.dtype), fresh.params)
    out = pretrained.initialize(config, params)
    assert out["head"]["logits"]["kernel"].shape == (16, 3)
    assert np.all(np.asarray(out["head"]["logits"]["kernel"]) == 7.0)  # the new head stays
    # The tubelet embedding: torch Conv3d [out, in, t, h, w] -> Flax [t, h, w, in, out].
    prefix = "vivit" if architecture == "vivit" else "videomae"
    hf_kernel = model.state_dict()[f"{prefix}.embeddings.patch_embeddings.projection.weight"]
    np.testing.assert_array_equal(
        np.asarray(out[architecture]["embedding"]["conv"]["kernel"]),
        hf_kernel.numpy().transpose(2, 3, 4, 1, 0),
    )


def test_training_resumes_from_the_converted_step_0(converted):
    """The trainer's restore (full state, with its data iterator) accepts the step-0 checkpoint,
    which has no iterator state: nothing had been read, so the fresh iterator is its position."""
    architecture, model, _, workdir, _ = converted
    from vmjax import run as run_lib
    from vmjax.train import setup
    from vmjax.train.checkpoint import Checkpointer

    class Untouched:  # a fresh iterator: restoring must not set its state
        def set_state(self, _):
            raise AssertionError("the step-0 checkpoint has no iterator state to set")

    config = run_lib.Run.open(workdir).config
    like = jax.eval_shape(lambda: setup.init_run(config)[2])
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=3)
    state, step = ckpt.restore_verified(like, Untouched())
    ckpt.close()
    assert step == 0 and int(state.step) == 0
    prefix = "vivit" if architecture == "vivit" else "videomae"
    np.testing.assert_array_equal(
        np.asarray(state.params["head"]["logits"]["bias"]),
        model.state_dict()["classifier.bias"].numpy(),
    )
    assert prefix in state.params and not any(
        np.asarray(x).any() for x in jax.tree.leaves(state.opt_state)
    )  # a fresh AdamW state: zero moments, count 0
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["0"]  # nothing rejected


def test_refusals(converted, tmp_path):
    _, _, _, workdir, _ = converted
    with pytest.raises(RunDirectoryError, match="exists and is not empty"):
        tool.convert_folder(str(tmp_path), workdir, log=lambda _: None)
    with pytest.raises(UserError, match="does not exist"):
        tool.convert_folder(str(tmp_path / "nope"), str(tmp_path / "w"), log=lambda _: None)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(UserError, match="VivitForVideoClassification.*VideoMAEForVideo"):
        tool.convert_folder(str(tmp_path), str(tmp_path / "w"), log=lambda _: None)
    assert not (tmp_path / "w").exists()
    # `--config run:DIR` names a run directory.
    with pytest.raises(ValueError, match="run:RUN_DIR"):
        configs.get_config("run")
    with pytest.raises(RunDirectoryError, match="not a vmjax run directory"):
        configs.get_config(f"run:{tmp_path / 'w'}")


def test_cli_help_and_exit_status(tmp_path):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "vmjax.tools.from_transformers", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )

    result = cli("--help")  # absl's --help exits 1
    assert "--folder" in result.stdout and "--workdir" in result.stdout
    result = cli("--folder", str(tmp_path / "missing"), "--workdir", str(tmp_path / "w"))
    assert result.returncode == 2
    assert "error: --folder" in result.stderr and "does not exist" in result.stderr
