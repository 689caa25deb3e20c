"""vmjax.tools.summary against hand-counted parameters and FLOPs."""

import subprocess
import sys

import pytest

from tests.train.test_loop import ROOT, get_config
from vmjax.tools import configs
from vmjax.tools.summary import summarize


def test_moe_params_and_flops_by_hand():
    c = get_config("")
    c.model.num_mixtures = 2
    result = summarize(c)
    d, classes, m = 1024 + 128, 3862, 2
    gates = d * classes * (m + 1)  # no bias (starter)
    experts = d * classes * m + classes * m
    assert result["modules"] == {"head": gates + experts}
    assert result["params"] == gates + experts
    # Two matmuls dominate: 2 * d * classes * (2m + 1) multiply-adds.
    assert result["flops_per_example"] == pytest.approx(2 * d * classes * (2 * m + 1), rel=0.05)


def test_frame_moe_with_one_mixture():
    c = get_config("frame")
    c.model.name = "frame_moe"
    c.model.num_mixtures = 1
    c.data.max_frames = 10
    result = summarize(c)
    assert result["params"] == 1152 * 3862 * 2 + (1152 * 3862 + 3862)  # gates + experts


def test_cli_prints_params_last():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmjax.tools.summary",
            "--config",
            "configs/yt8m.py",
            "--config.model.name=logistic",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == f"params {1152 * 3862 + 3862}"
    assert any(line.startswith("flops_per_example") for line in lines)


# The shipped config files (vmjax/configs/, also reachable as configs/ in a checkout).
CONFIGS = next(
    d for d in (ROOT / "vmjax" / "configs", ROOT / "configs") if (d / "yt8m.py").exists()
)
# The papers' parameter counts of the configs that reproduce a paper's model (ViViT-B on
# Kinetics-400, Arnab et al. 2021 Table 2: Models 1 and 2).
PAPER_PARAMS = {("vivit_k400.py", ""): 88.9e6, ("vivit_k400.py", "fe"): 115.1e6}


def _config_cases() -> list:
    """(file, preset) for every config file of configs/, bare and with each of its presets."""
    cases = []
    for path in sorted(p for p in CONFIGS.glob("*.py") if not p.name.startswith("_")):
        module = configs.load_module(path)
        if hasattr(module, "ARGUMENT"):  # run.py reads a run directory: tested with one below
            continue
        presets = (*getattr(module, "PRESETS", ()), *getattr(module, "METHOD_PRESETS", ()))
        # compress.py takes exactly one method preset; every other file also runs bare.
        bare = () if hasattr(module, "METHOD_PRESETS") else ("",)
        cases += [pytest.param(path.name, arg, id=f"{path.name}:{arg}") for arg in bare + presets]
    return cases


CASES = _config_cases()


def test_cases_cover_the_video_file_configs():
    ids = {p.id for p in CASES}
    assert {"vivit_k400.py:", "vivit_k400.py:fe", "vivit_pixels.py:smoke"} <= ids
    assert {"compress.py:prune", "retrieval.py:", "audiovisual.py:probe"} <= ids


@pytest.mark.parametrize("name,arg", CASES)
def test_every_config_and_preset(name, arg):
    config = configs.get_config(CONFIGS / name, arg)
    result = summarize(config, flops=False)  # shapes only: compiling every model takes minutes
    assert result["params"] == sum(result["modules"].values())
    assert all(count > 0 for count in result["modules"].values())
    if config.data.get("format") == "video_files":  # the decoded clips the trainer feeds
        d = config.data
        pixels = result["inputs"]["pixels"]
        assert pixels.shape == (1, d.num_frames, d.image_size, d.image_size, 3)
    if (name, arg) in PAPER_PARAMS:
        assert result["params"] == pytest.approx(PAPER_PARAMS[name, arg], rel=0.015)


def test_cli_on_a_video_file_config():
    out = subprocess.run(
        [sys.executable, "-m", "vmjax.tools.summary", "--config", "configs/vivit_pixels.py:smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("model vivit_pixels (ViViTPixels; mask [1, 8] bool, pixels [1, 8,")
    smoke = summarize(configs.get_config(CONFIGS / "vivit_pixels.py", "smoke"), flops=False)
    assert lines[-1] == f"params {smoke['params']}"
