"""N seeds in one vmapped program (vmjax.train.seeds) against the ordinary single runs, and the
sweep's --vmap_seeds path (one program per cell, markers per seed)."""

import json
import os
import pathlib
import shlex
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.train.test_loop import _metrics, _small
from vmjax.errors import UserError
from vmjax.sweep import cli, local
from vmjax.train import guards, loop, seeds
from vmjax.train.checkpoint import restore_checkpoint
from vmjax.train.setup import init_run

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Seed k's vmapped run against the single run with seed k: parameters and metrics equal up to
# float rounding (a vmapped matmul may sum in another order). Measured on CPU: bitwise equal
# (moe; dbof with BatchNorm too); the bound leaves room for other backends.
RTOL, ATOL = 1e-4, 1e-5


def _config(tmp_path):
    c = _small(tmp_path, num_train_steps=4, eval_every=2, checkpoint_every=2, log_every=2)
    c.data.synthetic.num_train = 64
    c.data.synthetic.num_validate = 32
    return c


def _state(config, workdir, step):
    _, _, like = init_run(config)
    state, _ = restore_checkpoint(os.path.join(workdir, "checkpoints"), jax.device_get(like), step)
    return state


def _nan_at_step_3_for_the_last_seed(monkeypatch, n):
    """The vmapped step, with the last seed's step 3 reported as NaN (its state is untouched:
    what is tested is that the guard stops that seed alone)."""
    real = seeds.step_functions

    def patched(config, model, tx):
        train, evaluate = real(config, model, tx)

        def train_nan(states, batch):
            states, m = train(states, batch)
            bad = (states.step == 3) & (jnp.arange(n) == n - 1)
            loss = jnp.where(bad, jnp.nan, m["loss"])
            return states, {**m, "loss": loss, "finite": m["finite"] & ~bad}

        return train_nan, evaluate

    monkeypatch.setattr(seeds, "step_functions", patched)


def test_vmapped_seeds_equal_single_runs_resume_and_stop_alone(tmp_path, monkeypatch):
    config = _config(tmp_path)
    chosen = [0, 3, 5]
    dirs = [str(tmp_path / f"v{s}") for s in chosen]
    # A SIGTERM at step 2: every seed saves and the program returns; the rerun resumes them.
    with monkeypatch.context() as m:
        m.setattr(guards.Preemption, "reached", lambda self, step: step == 2)
        assert seeds.train_seeds(config, chosen, dirs) == [{"preempted_at": 2}] * 3
    with monkeypatch.context() as m:
        _nan_at_step_3_for_the_last_seed(m, len(chosen))
        results = seeds.train_seeds(config, chosen, dirs)
    # Seed 5 stopped alone at its NaN: reported, in its history, no final evaluation or
    # checkpoint; seeds 0 and 3 finished.
    assert "NaN/Inf at step 3" in results[2]["stopped"]
    history = [json.loads(x) for x in open(os.path.join(dirs[2], "history.jsonl"))]
    assert history[-1]["event"] == "stopped" and "step 3" in history[-1]["reason"]
    assert [m["step"] for m in _metrics(dirs[2])] == [2]
    assert sorted(os.listdir(os.path.join(dirs[2], "checkpoints"))) == ["2"]
    assert [r["step"] for r in results[:2]] == [4, 4]

    # Seed 3 against the ordinary run with seed 3 (uninterrupted).
    single = str(tmp_path / "single3")
    expected = loop.train_and_evaluate(seeds.seed_config(config, 3), single)
    stored = json.load(open(os.path.join(dirs[1], "config.json")))["config"]
    assert stored == json.load(open(os.path.join(single, "config.json")))["config"]
    assert stored["seed"] == 3 and stored["data"]["seed"] == 3
    assert sorted(os.listdir(os.path.join(dirs[1], "checkpoints"))) == ["2", "4"]
    got, want = _metrics(dirs[1]), _metrics(single)
    assert [m["step"] for m in got] == [m["step"] for m in want] == [2, 4]
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        np.testing.assert_allclose([g[k] for k in g], [w[k] for k in g], RTOL, ATOL)
    assert results[1]["gap"] == pytest.approx(expected["gap"], rel=RTOL, abs=ATOL)
    a, b = _state(config, dirs[1], 4), _state(config, single, 4)
    assert int(a.step) == int(b.step) == 4
    np.testing.assert_array_equal(a.rng, b.rng)
    leaves = [jax.tree.leaves((s.params, s.opt_state)) for s in (a, b)]
    for x, y in zip(*leaves, strict=True):
        np.testing.assert_allclose(x, y, RTOL, ATOL)
    # Another seed really differs (its init and data order), so the comparison can fail.
    other = _state(config, dirs[0], 4)
    assert not np.allclose(jax.tree.leaves(other.params)[0], jax.tree.leaves(a.params)[0], 1e-3)
    # The single loop accepts a vmapped seed's run as its own: already trained, nothing to do.
    again = loop.train_and_evaluate(seeds.seed_config(config, 0), dirs[0])
    assert again["step"] == 4 and again["gap"] == pytest.approx(results[0]["gap"])


@pytest.mark.parametrize(
    "overrides,named",
    [
        ({"compress.method": "prune"}, "compress.method='prune'"),
        ({"parallelism": "pmap"}, "parallelism='pmap'"),
        ({"mesh.fsdp": 2}, "mesh.fsdp=2"),
        ({"init_from.workdir": "/runs/a"}, "init_from.workdir"),
    ],
)
def test_what_cannot_be_vmapped_is_refused_by_name(tmp_path, overrides, named):
    with pytest.raises(UserError, match="cannot train these seeds") as e:
        seeds.check_vmappable(_small(tmp_path, **overrides))
    assert named in str(e.value)
    seeds.check_vmappable(_small(tmp_path))  # the plain config is fine


def test_run_directories_one_per_seed_or_a_pattern():
    assert seeds.check_workdirs([0, 2], ["/r/s={seed}"]) == ["/r/s=0", "/r/s=2"]
    assert seeds.check_workdirs([1], ["/r/a"]) == ["/r/a"]
    for bad_seeds, dirs, message in [
        ([0, 1], ["/r/a"], "1 --workdir for 2 seeds"),
        ([0, 0], ["/r/{seed}"], "appears twice"),
        ([0, 1], ["/r/a", "/r/a"], "share a run directory"),
        ([], ["/r/a"], "no seeds"),
    ]:
        with pytest.raises(UserError, match=message):
            seeds.check_workdirs(bad_seeds, dirs)


def test_cli_user_errors_exit_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vmjax.train.seeds", "--config", "yt8m:smoke", "--seeds", "0,1",
         "--workdir", str(tmp_path / "s{seed}"), "--config.compress.method=prune"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "cannot train these seeds" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "s0").exists()  # refused before anything was written


def test_sweep_wrapper_knows_the_trainers_exit_status():
    assert local.EXIT_SEEDS_STOPPED == seeds.EXIT_SEEDS_STOPPED


# The --vmap_seeds trainer stand-in: vmjax.train.seeds' flags; writes each seed's final
# metrics, except for seeds named in FAKE_STOP (stopped: exit EXIT_SEEDS_STOPPED).
FAKE = r"""
import json, os, sys
args = sys.argv[1:]
seeds = args[args.index("--seeds") + 1].split(",")
dirs = [args[i + 1] for i, a in enumerate(args) if a == "--workdir"]
over = dict(a[len("--config."):].split("=", 1) for a in args if a.startswith("--config."))
stop = os.environ.get("FAKE_STOP", "").split(",")
print("trained seeds", ",".join(seeds), "together")
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps({"seeds": seeds, "dirs": dirs}) + "\n")
for seed, d in zip(seeds, dirs, strict=True):
    if seed not in stop:
        lr = float(over["optimizer.learning_rate"])
        with open(os.path.join(d, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": 10, "gap": lr * 100 + int(seed) / 10}) + "\n")
sys.exit(3 if any(s in stop for s in seeds) else 0)
"""


def test_sweep_vmap_seeds_runs_one_program_per_cell_with_markers_per_seed(
    tmp_path, monkeypatch, capsys
):
    script = tmp_path / "fake_seeds.py"
    script.write_text(FAKE)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    monkeypatch.setenv("FAKE_STOP", "1")
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    argv = ["--config", "configs/yt8m.py:smoke", "--out", str(out), "--seeds", "3",
            "--grid", "optimizer.learning_rate=0.001,0.01", "--set", "num_train_steps=10",
            "--vmap_seeds", "--command", f"{shlex.quote(sys.executable)} {script}"]  # fmt: skip
    assert cli.main(argv) == 1  # seed 1 of each cell stopped: the sweep is unfinished
    programs = [json.loads(x) for x in calls.read_text().splitlines()]
    assert sorted(p["seeds"] == ["0", "1", "2"] for p in programs) == [True, True]
    runs = out / "runs"
    for lr in ("0.001", "0.01"):
        for seed in range(3):
            d = runs / f"optimizer.learning_rate={lr},seed={seed}"
            assert (d / ("FAILED" if seed == 1 else "DONE")).exists()
            assert not (d / "RUNNING").exists()
            assert "trained seeds 0,1,2 together" in (d / "log.txt").read_text()
    failed = json.loads((runs / "optimizer.learning_rate=0.01,seed=1" / "FAILED").read_text())
    assert "this seed stopped" in failed["reason"]
    results = json.loads((out / "results.json").read_text())
    cell = next(c for c in results["cells"] if c["overrides"] == {LR: "0.01"})
    assert cell["mean"]["gap"] == pytest.approx((1.0 + 1.2) / 2)  # seeds 0 and 2, not 1
    assert list(cell["not_done"]) == ["1"]
    # Rerun: only the stopped seeds, one program per cell.
    monkeypatch.setenv("FAKE_STOP", "")
    assert cli.main(argv) == 0
    programs = [json.loads(x) for x in calls.read_text().splitlines()][2:]
    assert [p["seeds"] for p in programs] == [["1"], ["1"]]
    capsys.readouterr()
    # --vmap_seeds is refused where it cannot work, before anything runs.
    assert cli.main([*argv, "--launcher", "slurm"]) == 2
    bad = ["--config", "configs/yt8m.py:smoke", "--out", str(tmp_path / "o2"), "--vmap_seeds",
           "--grid", "compress.method=none,prune", "--dry_run"]  # fmt: skip
    assert cli.main(bad) == 2
    assert "cell compress.method=prune" in capsys.readouterr().err


LR = "optimizer.learning_rate"
