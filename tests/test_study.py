"""benchmarks/zoo.py, the study: each row's seeds run through vmjax.sweep, mean ± std and the
per-seed values reach the table and JSON, learning curves come from the runs' evaluations,
the learning-rate search picks the best rate, and a difference is a win only beyond twice the
larger std.

A fake trainer (passed to the sweep with its hidden --command flag) stands in for vmjax.main:
it writes metrics.jsonl evaluations whose GAP is a known function of seed, rate and step, so
every expected number is computed here by hand.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import statistics
import sys

import pytest

from vmjax.data import synthetic

ROOT = pathlib.Path(__file__).resolve().parents[1]

# GAP = 0.5 + 0.01 * seed + step / 1000 - |log10(lr / 0.01)| / 10: best at lr 0.01, rising with
# steps; each kind's GAP is GAP + the kind's index / 100.
FAKE = r"""
import json, math, os, sys
args = sys.argv[1:]
workdir = args[args.index("--workdir") + 1]
flags = dict(a[len("--config."):].split("=", 1) for a in args if a.startswith("--config."))
steps, every = int(flags["num_train_steps"]), int(flags["eval_every"])
seed, lr = int(flags["seed"]), float(flags["optimizer.learning_rate"])
kinds = KINDS
os.makedirs(workdir, exist_ok=True)
with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    for step in range(every, steps + 1, every):
        gap = 0.5 + 0.01 * seed + step / 1000 - abs(math.log10(lr / 0.01)) / 10
        line = {"step": step, "gap": gap, "map": gap / 2, "hit_at_1": gap + 0.1}
        line.update({f"gap_{k}": gap + i / 100 for i, k in enumerate(kinds)})
        f.write(json.dumps(line) + "\n")
"""


@pytest.fixture(scope="module")
def zoo():
    spec = importlib.util.spec_from_file_location("zoo", ROOT / "benchmarks" / "zoo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    script = tmp_path_factory.mktemp("fake") / "fake_trainer.py"
    script.write_text(FAKE.replace("KINDS", json.dumps(list(synthetic.KINDS)), 1))
    return ["--command", f"{sys.executable} {script}", "--parallel", "2"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def row(zoo, fake, workdir):
    """The logistic row, 3 seeds of 8 steps, trained by the fake trainer through the sweep."""
    return zoo.run_row("logistic", "full", workdir, 3, 8, None, fake)


def expected_gap(seed: int, step: int, lr: float = 0.01) -> float:
    import math

    return 0.5 + 0.01 * seed + step / 1000 - abs(math.log10(lr / 0.01)) / 10


def test_a_row_runs_its_seeds_as_a_sweep_with_mean_std_per_seed_values_and_curve(
    zoo, fake, workdir, row
):
    per_seed = [expected_gap(s, 8, 0.01) for s in range(3)]  # logistic's CPU rate is 0.01
    assert row["seeds"] == [0, 1, 2]
    assert row["gap_per_seed"] == pytest.approx(per_seed)
    assert row["gap"] == pytest.approx(statistics.fmean(per_seed))
    assert row["gap_std"] == pytest.approx(0.01)  # sample std of x, x + 0.01, x + 0.02
    last = synthetic.KINDS[-1]
    assert row[f"gap_{last}_per_seed"] == pytest.approx(
        [g + (len(synthetic.KINDS) - 1) / 100 for g in per_seed]
    )
    # Evaluations at 2, 4, 6, 8 (CURVE_POINTS = 4): the curve's mean and std per step.
    assert row["curve"]["step"] == [2, 4, 6, 8]
    assert row["curve"]["gap"] == pytest.approx([expected_gap(1, s) for s in (2, 4, 6, 8)])
    assert row["curve"]["gap_std"] == pytest.approx([0.01] * 4)
    assert "--seeds 3" in row["command"] and "--set=num_train_steps=8" in row["command"]

    # Running the row again runs nothing (every seed is DONE) and gives the same row.
    again = zoo.run_row("logistic", "full", workdir, 3, 8, None, fake)
    assert again["gap_per_seed"] == row["gap_per_seed"]
    # A fourth seed grows the sweep: only it runs.
    grown = zoo.run_row("logistic", "full", workdir, 4, 8, None, fake)
    assert grown["gap_per_seed"] == pytest.approx(per_seed + [expected_gap(3, 8)])


def test_the_table_shows_mean_and_std_and_the_json_keeps_each_seed(zoo, row, tmp_path):
    rows = [row]
    oracle = {"gap": 0.9, **{f"gap_{k}": 0.9 for k in synthetic.KINDS}}
    oracle["gap_temporal_order_blind"] = 0.5
    out = tmp_path / "docs" / "results.md"
    zoo.write_results(rows, oracle, str(out), {"budget": "full", "steps": 8, "seeds": 3})
    text = out.read_text()
    mean = statistics.fmean(expected_gap(s, 8) for s in range(3))
    assert f"| logistic | {mean:.3f} ± 0.010 |" in text
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["seeds"] == 3 and saved["steps"] == 8
    assert saved["rows"][0]["gap_per_seed"] == pytest.approx([expected_gap(s, 8) for s in range(3)])
    assert (out.parent / "images" / "results_curves.png").stat().st_size > 0
    # GAP gains 0.002 over the last quarter: below 0.005 and twice the std, so levelled off.
    assert "Levelled off from step 6 to 8: logistic" in text
    assert "> Seeds:" not in text  # every row has the study's seeds

    one_seed = {**row, "label": "moe", "seeds": [0], "gap_std": None}
    zoo.write_results([row, one_seed], oracle, str(out), {"budget": "full", "steps": 8, "seeds": 3})
    text = out.read_text()
    assert "> Seeds: 1 of 2 rows have fewer than 3 seeds so far (moe)" in text
    assert '--steps 8 --seeds 3 --update --rows "moe"' in text


def test_lr_search_chooses_the_best_final_gap_and_ablations_take_their_fusions_rate(
    zoo, fake, tmp_path
):
    path = tmp_path / "results_lr.json"
    lrs = [0.001, 0.01, 0.1]
    saved = zoo.lr_sweep(["logistic"], "full", 4, lrs, str(tmp_path / "w"), fake, path)
    row = saved["rows"]["logistic"]
    assert row["chosen"] == 0.01
    assert row["gap_by_lr"]["0.001"] == pytest.approx(expected_gap(0, 4, 0.001))
    assert json.loads(path.read_text()) == saved
    chosen = {"rows": {"multimodal gated": {"chosen": 0.003}}}
    assert zoo.chosen_lr("multimodal gated - audio", chosen) == 0.003
    assert zoo.chosen_lr("lstm", chosen) is None


def test_a_difference_is_a_win_only_beyond_twice_the_larger_std(zoo):
    a = {"gap": 0.70, "gap_std": 0.01}
    assert zoo.clear_win(a, {"gap": 0.67, "gap_std": 0.01}) is True  # 0.03 > 0.02
    assert zoo.clear_win(a, {"gap": 0.67, "gap_std": 0.02}) is False  # 0.03 < 0.04
    assert zoo.clear_win(a, {"gap": 0.60, "gap_std": None}) is None  # one seed: untested
    assert "not a win" in zoo.verdict(a, {"gap": 0.67, "gap_std": 0.02})
    assert "a loss" in zoo.verdict({"gap": 0.67, "gap_std": 0.01}, a)  # -0.03 beyond 0.02
    # A kind column's key is its row field: gap_<kind>, with gap_<kind>_std beside it.
    b = {"gap_cross_modal": 0.801, "gap_cross_modal_std": 0.0042}
    c = {"gap_cross_modal": 0.809, "gap_cross_modal_std": 0.0025}
    assert zoo.clear_win(c, b, "gap_cross_modal") is False  # 0.008 < 2 x 0.0042
    assert "not a win" in zoo.verdict(c, b, "gap_cross_modal")
    assert zoo.cell_text({"gap": 0.7, "gap_std": None}, "gap") == "0.700"
    assert zoo.cell_text(a, "gap") == "0.700 ± 0.010"
