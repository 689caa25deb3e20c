"""vmjax.sweep: grid expansion and names, skipping finished and rerunning failed runs, gathered
mean/std, the sbatch script, and real job arrays on a single-node SLURM.

A fake trainer (a small script written here, passed with the hidden --command flag) stands in
for vmjax.main: it takes the same flags and writes metrics.jsonl with a GAP computed from its
overrides, so the expected results are known by hand. Only the launch/slurm.sbatch test
trains for real (2 processes, 4 steps on tiny data).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from vmjax.sweep import cli, local
from vmjax.sweep.grid import Run, SweepError, expand, parse_grid, resolve
from vmjax.sweep.runs import status, thread_env, write_run

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/yt8m.py:smoke"
STEPS = "num_train_steps=10"  # --set for the fake runs: the final step each must reach
LR = "optimizer.learning_rate"

# The fake trainer. A control file (FAKE_CONTROL, read when it runs) makes named runs fail
# (exit 3), stop early with exit 0 (as a preempted run does), or sleep first.
FAKE = r"""
import json, os, sys, time
args = sys.argv[1:]
workdir = args[args.index("--workdir") + 1]
name = os.path.basename(workdir)
over = dict(a[len("--config."):].split("=", 1) for a in args if a.startswith("--config."))
path = os.environ.get("FAKE_CONTROL", "")
control = json.load(open(path)) if os.path.exists(path) else {}
with open(os.path.join(workdir, "calls.jsonl"), "a") as f:
    call = {"args": args, "omp": os.environ.get("OMP_NUM_THREADS"),
            "cpus": sorted(os.sched_getaffinity(0)), "pid": os.getpid()}
    f.write(json.dumps(call) + "\n")
time.sleep(control.get("sleep", 0))
if name in control.get("fail", []):
    sys.exit(3)
lr, seed = float(over["optimizer.learning_rate"]), int(over["seed"])
final = int(over["num_train_steps"])
steps = [final // 2] if name in control.get("short", []) else [final // 2, final]
with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    for step in steps:
        line = {"step": step, "gap": lr * 100 + seed / 10, "map": lr * 10, "gap_visual": seed / 4}
        f.write(json.dumps(line) + "\n")
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """(the --command for the fake trainer, a function that sets its control file)."""
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE)
    control = tmp_path / "control.json"
    monkeypatch.setenv("FAKE_CONTROL", str(control))
    monkeypatch.chdir(ROOT)

    def set_control(**kw):
        control.write_text(json.dumps(kw))

    set_control()
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}", set_control


def _name(lr: str, seed: int) -> str:
    return f"{LR}={lr},seed={seed}"


def _calls(out: pathlib.Path, name: str) -> list[dict]:
    path = out / "runs" / name / "calls.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def _sweep(out, command, *args: str) -> int:
    """python -m vmjax.sweep with the fake trainer (and --set num_train_steps=10 by default)."""
    steps = [] if "--set" in args else ["--set", STEPS]
    return cli.main(["--config", CONFIG, "--out", str(out), "--command", command, *steps, *args])


# --- grid ------------------------------------------------------------------------------------


def test_grid_is_the_cross_product_with_names_in_grid_order():
    axes = parse_grid([f"{LR}=1e-3,3e-3", "model.num_mixtures=2,4,8"])
    assert axes == [(LR, ["1e-3", "3e-3"]), ("model.num_mixtures", ["2", "4", "8"])]
    runs = expand(axes, seeds=2)
    # First axis outermost, seeds innermost; names list the overrides sorted by key.
    expected = [
        f"model.num_mixtures={m},{LR}={lr},seed={s}"
        for lr in ("1e-3", "3e-3")
        for m in ("2", "4", "8")
        for s in (0, 1)
    ]
    assert [r.name for r in runs] == expected
    assert len(set(r.cell for r in runs)) == 6
    assert runs[3].cell == f"model.num_mixtures=4,{LR}=1e-3"
    assert runs[3].flags() == [
        "--config.model.num_mixtures=4",
        f"--config.{LR}=1e-3",
        "--config.seed=1",
    ]
    # The same grid given in another order names the same runs.
    swapped = expand([axes[1], axes[0]], seeds=2)
    assert sorted(r.name for r in swapped) == sorted(expected)
    assert [r.name for r in expand([], seeds=3)] == ["seed=0", "seed=1", "seed=2"]
    assert expand([], seeds=1)[0].cell == "default"


def test_values_are_canonical_so_one_value_names_one_run():
    sets, axes, final_step = resolve(
        str(ROOT / "configs/yt8m.py") + ":smoke",
        [("num_train_steps", "10")],
        [(LR, ["1e-3", "0.003", "1"]), ("model.name", ["moe", "logistic"])],
    )
    assert sets == [("num_train_steps", "10")]
    assert axes == [(LR, ["0.001", "0.003", "1.0"]), ("model.name", ["moe", "logistic"])]
    assert final_step == 10  # the --set override, not the preset's 40
    with pytest.raises(SweepError, match="two values are the same"):
        resolve(str(ROOT / "configs/yt8m.py"), [], [(LR, ["1e-3", "0.001"])])


def test_names_of_odd_values_are_safe_and_distinct():
    a = Run((("data.train_pattern", "/data/a b/*.tfrecord"),), 0)
    b = Run((("data.train_pattern", "/data/a_b/_.tfrecord"),), 0)
    assert "/" not in a.name and " " not in a.name and "*" not in a.name
    assert a.name.startswith("data.train_pattern=_data_a_b__.tfrecord,seed=0-")
    assert a.name != b.name  # the same after replacing characters, told apart by the hash
    assert a.name == Run((("data.train_pattern", "/data/a b/*.tfrecord"),), 0).name
    long = Run((("model.name", "x" * 400),), 0)
    assert len(long.name) <= 211


# --- user errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "optimizer.learning_rate"], "expected KEY=VALUE"),
        (["--grid", "optimizer.learning_rate=1e-3,,1e-2"], "no empty value"),
        (["--launcher", "pbs"], "invalid choice: 'pbs'"),
        (["--seeds", "0"], "--seeds 0: expected at least 1"),
        (["--grid", "optimizer.learnin_rate=1,2"], 'Did you mean "learning_rate"'),
        (["--grid", "optimizer.learning_rate=fast"], "could not convert string to float"),
        (["--set", "seed=3"], "set per run"),
        (["--wait"], "--wait goes with --launcher slurm"),
    ],
)
def test_user_errors_exit_2_in_two_lines_without_traceback(tmp_path, args, message):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "vmjax.sweep", "--config", CONFIG, "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_missing_config_file_exits_2(tmp_path, capsys):
    code = cli.main(["--config", "configs/nope.py:smoke", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "configs/nope.py" in err and len(err.splitlines()) <= 2


def test_help_documents_local_and_slurm_use():
    proc = subprocess.run(
        [sys.executable, "-m", "vmjax.sweep", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0
    for text in ("--grid", "--seeds", "--parallel", "--launcher slurm", "--dry_run", "--wait"):
        assert text in proc.stdout
    assert "python -m vmjax.sweep gather --out" in proc.stdout
    assert "--command" not in proc.stdout  # the tests' hook stays out of the help


# --- local launcher: sizing ----------------------------------------------------------------


def test_slots_share_the_cores_within_memory_and_gpus():
    cpus = list(range(8))

    def shares(**kw):
        return [(s.cpus, s.gpu) for s in local.slots(cpus=cpus, mem_per_run_gb=3, **kw)]

    assert shares(num_runs=10, gpus=[], memory_gb=100) == [((i,), None) for i in range(8)]
    # 7 GiB free / 3 GiB per run: 2 runs, 4 cores each.
    assert shares(num_runs=10, gpus=[], memory_gb=7) == [((0, 1, 2, 3), None), ((4, 5, 6, 7), None)]
    assert shares(num_runs=10, gpus=["0", "1"], memory_gb=100) == [
        ((0, 1, 2, 3), "0"),
        ((4, 5, 6, 7), "1"),
    ]
    assert shares(num_runs=1, gpus=[], memory_gb=100) == [(tuple(cpus), None)]
    assert shares(num_runs=10, parallel=3, gpus=[]) == [
        ((0, 1), None),
        ((2, 3, 4), None),
        ((5, 6, 7), None),
    ]
    assert shares(num_runs=10, parallel=10, gpus=[])[8:] == [((0,), None), ((1,), None)]


def test_thread_env_sizes_thread_pools_and_keeps_the_users_settings():
    env = thread_env(1, {"MKL_NUM_THREADS": "7", "XLA_FLAGS": "--xla_dump_to=/tmp/x"})
    assert env["OMP_NUM_THREADS"] == "1" and env["OPENBLAS_NUM_THREADS"] == "1"
    assert env["MKL_NUM_THREADS"] == "7"
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_cpu_multi_thread_eigen=false"
    env = thread_env(4, {})
    assert env["OMP_NUM_THREADS"] == "4" and "XLA_FLAGS" not in env
    assert thread_env(None, {"A": "1"}) == {"A": "1"}


def test_status_reads_markers_and_ignores_stale_running_ones(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    assert status(str(run)) == "pending"
    # A live process on this host whose command line names vmjax.sweep: running.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "vmjax.sweep"])
    cmdline = pathlib.Path(f"/proc/{proc.pid}/cmdline")
    for _ in range(100):  # /proc shows the new command line shortly after the exec
        if b"vmjax.sweep" in cmdline.read_bytes():
            break
        time.sleep(0.05)
    try:
        marker = {"pid": proc.pid, "host": os.uname().nodename, "slurm_job": None}
        (run / "RUNNING").write_text(json.dumps(marker))
        assert status(str(run)) == "running"
    finally:
        proc.kill()
        proc.wait()
    assert status(str(run)) == "pending"  # its process is gone: the marker is stale
    (run / "FAILED").write_text("{}")
    assert status(str(run)) == "failed"
    (run / "RUNNING").write_text(json.dumps({"pid": 1, "host": "x", "slurm_job": "12_3"}))
    assert status(str(run), slurm_active={"12_3"}) == "running"
    assert status(str(run), slurm_active={"12_4"}) == "failed"
    (run / "DONE").write_text("{}")
    assert status(str(run), slurm_active={"12_3"}) == "done"


# --- local launcher: resume, rerun, grow ----------------------------------------------------


def test_local_sweep_skips_finished_reruns_failed_and_grows(tmp_path, fake, capsys):
    command, control = fake
    out = tmp_path / "sweep"
    grid = ["--grid", f"{LR}=1e-3,3e-3", "--parallel", "2", "--set", STEPS]
    control(fail=[_name("0.003", 1)], short=[_name("0.001", 1)])
    assert _sweep(out, command, *grid, "--seeds", "2") == 1
    runs = out / "runs"
    assert (runs / _name("0.001", 0) / "DONE").exists()
    assert (runs / _name("0.003", 0) / "DONE").exists()
    failed = json.loads((runs / _name("0.003", 1) / "FAILED").read_text())
    assert failed["returncode"] == 3 and failed["reason"] == "exit status 3"
    # Exit 0 without the final evaluation (a preempted run) is not finished either.
    short = json.loads((runs / _name("0.001", 1) / "FAILED").read_text())
    assert short["returncode"] == 0 and "final step 10" in short["reason"]
    assert not (runs / _name("0.001", 1) / "DONE").exists()
    call = _calls(out, _name("0.001", 0))[0]
    assert call["args"] == [
        "--config",
        str(ROOT / "configs/yt8m.py") + ":smoke",
        "--workdir",
        str(runs / _name("0.001", 0)),
        "--config.num_train_steps=10",
        f"--config.{LR}=0.001",
        "--config.seed=0",
    ]
    # Two runs at a time on this machine's cores: each pinned to its share, threads to match.
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert len(call["cpus"]) == share and call["omp"] == str(share)
    first = json.loads((out / "results.json").read_text())
    cells = {c["overrides"][LR]: c for c in first["cells"]}
    assert list(cells["0.003"]["seeds"]) == ["0"]
    assert cells["0.003"]["not_done"] == {"1": "failed: exit status 3"}

    # Resume: only the two unfinished runs run again (and now succeed).
    control()
    assert _sweep(out, command, *grid, "--seeds", "2") == 0
    counts = {n: len(_calls(out, n)) for n in os.listdir(runs)}
    assert counts == {
        _name("0.001", 0): 1,
        _name("0.001", 1): 2,
        _name("0.003", 0): 1,
        _name("0.003", 1): 2,
    }
    assert not (runs / _name("0.003", 1) / "FAILED").exists()

    # Grow: a new value and a third seed run only the 5 new runs.
    assert _sweep(out, command, "--grid", f"{LR}=1e-3,3e-3,1e-2", "--seeds", "3", *grid[2:]) == 0
    counts = {n: len(_calls(out, n)) for n in os.listdir(runs)}
    assert sum(counts.values()) == 6 + 5 and len(counts) == 9
    assert all(counts[_name(lr, 2)] == 1 for lr in ("0.001", "0.003", "0.01"))
    results = json.loads((out / "results.json").read_text())
    assert [c["overrides"][LR] for c in results["cells"]] == ["0.001", "0.003", "0.01"]
    assert [c["num_done"] for c in results["cells"]] == [3, 3, 3]
    # gap = lr * 100 + seed / 10: seeds 0, 1, 2 give mean lr * 100 + 0.1, std 0.1.
    assert results["cells"][2]["mean"]["gap"] == pytest.approx(1.1)
    assert results["cells"][2]["std"]["gap"] == pytest.approx(0.1)
    assert "4 runs (2 cells x 2 seeds)" in capsys.readouterr().err


def test_sigterm_stops_the_local_runs_and_a_rerun_finishes_them(tmp_path, fake):
    command, control = fake
    out = tmp_path / "sweep"
    control(sleep=60)
    args = ["--config", CONFIG, "--out", str(out), "--command", command, "--set", STEPS]
    args += ["--grid", f"{LR}=1e-3,3e-3", "--parallel", "2"]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "vmjax.sweep", *args], stderr=subprocess.PIPE, text=True
    )
    names = [_name("0.001", 0), _name("0.003", 0)]
    deadline = time.monotonic() + 60
    while not all(_calls(out, n) for n in names) and time.monotonic() < deadline:
        time.sleep(0.1)
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=30) == 128 + signal.SIGTERM
    assert "interrupted: stopping 2 runs" in launcher.stderr.read()
    for name in names:
        failed = json.loads((out / "runs" / name / "FAILED").read_text())
        assert failed["reason"] == "killed by signal 15"
        assert not (out / "runs" / name / "RUNNING").exists()
        assert not _alive(_calls(out, name)[0]["pid"])
    control()
    assert _sweep(out, command, *args[6:]) == 0
    assert [len(_calls(out, n)) for n in names] == [2, 2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_sweep_directory_keeps_its_config_and_sets(tmp_path, fake, capsys):
    command, _ = fake
    out = tmp_path / "sweep"
    assert _sweep(out, command, "--grid", f"{LR}=1e-3", "--set", STEPS) == 0
    capsys.readouterr()
    code = _sweep(out, command, "--grid", f"{LR}=1e-3", "--set", "num_train_steps=20")
    assert code == 2
    assert "Use another --out" in capsys.readouterr().err
    assert len(_calls(out, _name("0.001", 0))) == 1


def test_local_dry_run_prints_the_commands_and_runs_nothing(tmp_path, fake, capsys):
    command, _ = fake
    out = tmp_path / "sweep"
    assert _sweep(out, command, "--grid", f"{LR}=1e-3,3e-3", "--parallel", "1", "--dry_run") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and not out.exists()
    words = shlex.split(lines[1])
    assert words[:4] == [sys.executable, "-m", "vmjax.sweep", "_task"]
    assert words[words.index("--run_dir") + 1] == str(out / "runs" / _name("0.003", 0))
    assert words[words.index("--final_step") + 1] == "10"


# --- gather ----------------------------------------------------------------------------------


def _write_run(out, lr, seed, lines, marker="DONE"):
    run = Run(((LR, lr),), seed)
    write_run(str(out), run, 40, ["python", "-m", "vmjax.main"])
    directory = out / "runs" / run.name
    with open(directory / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    if marker == "DONE":
        (directory / "DONE").write_text("{}")
    elif marker == "FAILED":
        (directory / "FAILED").write_text(json.dumps({"reason": "exit status 1"}))


def test_gather_means_and_stds_from_hand_written_metrics(tmp_path, capsys):
    out = tmp_path / "sweep"
    mid = {"step": 20, "gap": 0.01, "map": 0.01, "gap_visual": 0.01}
    for seed, (g, m, v) in enumerate([(0.5, 0.2, 0.3), (0.6, 0.4, 0.3), (0.7, 0.9, 0.6)]):
        final = {"step": 40, "gap": g, "map": m, "gap_visual": v, "hit_at_1": 1.0}
        lines = [mid, final]
        if seed == 2:  # resumed after a crash: the final step logged twice, the last one counts
            lines = [mid, {**final, "gap": 0.0}, final]
        _write_run(out, "0.001", seed, lines)
    _write_run(out, "0.003", 0, [mid, {"step": 40, "gap": 0.8, "map": 0.1, "gap_visual": 0.2}])
    _write_run(out, "0.003", 1, [mid], marker="FAILED")
    _write_run(out, "0.003", 2, [mid], marker=None)  # killed: no marker at all

    assert cli.main(["gather", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    low, high = results["cells"]
    assert low["overrides"] == {LR: "0.001"} and low["num_done"] == 3
    assert low["seeds"]["2"]["gap"] == 0.7
    # Hand-computed: mean (0.5 + 0.6 + 0.7) / 3; sample std sqrt((0.01 + 0 + 0.01) / 2) = 0.1.
    assert low["mean"]["gap"] == pytest.approx(0.6)
    assert low["std"]["gap"] == pytest.approx(0.1)
    # map 0.2, 0.4, 0.9: mean 0.5, std sqrt((0.09 + 0.01 + 0.16) / 2) = sqrt(0.13).
    assert low["mean"]["map"] == pytest.approx(0.5)
    assert low["std"]["map"] == pytest.approx(0.13**0.5)
    assert low["mean"]["gap_visual"] == pytest.approx(0.4)
    assert high["num_done"] == 1 and high["std"]["gap"] is None
    assert high["not_done"] == {"1": "failed: exit status 1", "2": "pending"}
    assert results["table_metrics"] == ["gap", "map", "gap_visual"]

    md = (out / "results.md").read_text()
    assert md == printed
    assert f"| {LR} | seeds | gap | map | gap_visual |" in md
    assert "| 0.001 | 3/3 | 0.6000 ± 0.1000 | 0.5000 ± 0.3606 | 0.4000 ± 0.1732 |" in md
    assert "| 0.003 | 1/3 | **0.8000** | 0.1000 | 0.2000 |" in md
    assert f"- {LR}=0.003, seed 1: failed: exit status 1" in md


def test_gather_without_runs_is_a_user_error(tmp_path, capsys):
    assert cli.main(["gather", "--out", str(tmp_path)]) == 2
    assert "no runs" in capsys.readouterr().err


# --- SLURM: the script -----------------------------------------------------------------------


def _case_arms(script: str) -> dict[int, list[str]]:
    arms = re.findall(r"^(\d+)\) exec (.*) ;;$", script, re.M)
    return {int(i): shlex.split(cmd) for i, cmd in arms}


def test_sbatch_script_has_one_array_task_per_unfinished_run(tmp_path, fake, capsys):
    command, _ = fake
    out = tmp_path / "sweep"
    grid = ["--grid", f"{LR}=1e-3,3e-3", "--seeds", "2"]
    # Finish one run first: the array then covers the other three.
    assert _sweep(out, command, "--grid", f"{LR}=1e-3", "--seeds", "1") == 0
    capsys.readouterr()
    slurm_args = ["--launcher", "slurm", "--slurm_option=--partition=debug", "--max_parallel", "2"]
    assert _sweep(out, command, *grid, *slurm_args, "--dry_run") == 0
    script = capsys.readouterr().out
    assert script.startswith("#!/usr/bin/env bash\n")
    assert re.findall(r"^#SBATCH --array=.*$", script, re.M) == ["#SBATCH --array=0-2%2"]
    assert "#SBATCH --partition=debug\n" in script
    assert f"#SBATCH --output={out}/slurm/%A_%a.out\n" in script
    arms = _case_arms(script)
    names = [_name("0.001", 1), _name("0.003", 0), _name("0.003", 1)]
    assert sorted(arms) == [0, 1, 2]
    for i, name in enumerate(names):
        workdir = str(out / "runs" / name)
        lr, seed = name.split(",")[0].split("=")[1], name[-1]
        assert arms[i] == [
            sys.executable,
            *("-m", "vmjax.sweep", "_task", "--run_dir", workdir, "--final_step", "10", "--"),
            *shlex.split(command),
            *("--config", str(ROOT / "configs/yt8m.py") + ":smoke", "--workdir", workdir),
            f"--config.{STEPS}",
            f"--config.{LR}={lr}",
            f"--config.seed={seed}",
        ]
    assert not (out / "slurm").exists()  # a dry run submits and writes nothing

    # The script is valid bash that runs task i's run without SLURM's help.
    path = tmp_path / "array.sbatch"
    path.write_text(script)
    shellcheck = pathlib.Path(sys.executable).parent / "shellcheck"
    if shellcheck.exists():
        lint = subprocess.run([str(shellcheck), str(path)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1"}
    subprocess.run(["bash", str(path)], env=env, check=True, timeout=60)
    assert (out / "runs" / names[1] / "DONE").exists()
    assert not (out / "runs" / names[0] / "DONE").exists()


# --- SLURM: real job arrays ------------------------------------------------------------------


def _slurm_ready() -> str | None:
    """Why SLURM cannot run jobs here, or None when a node takes jobs."""
    if not shutil.which("sbatch"):
        return "no SLURM (sbatch): start one with /work/shared/tools/slurm_local.sh (as root)"
    try:
        states = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20
        ).stdout.split()
    except (OSError, subprocess.SubprocessError) as e:
        return f"sinfo failed ({e})"
    if not {"idle", "mix", "alloc"} & set(states):
        return f"no SLURM node takes jobs (sinfo states: {states or 'none'})"
    return None


SLURM_MISSING = _slurm_ready()
needs_slurm = pytest.mark.skipif(SLURM_MISSING is not None, reason=str(SLURM_MISSING))


@needs_slurm
def test_slurm_array_runs_resubmits_failed_and_gathers(tmp_path, fake, capsys):
    command, control = fake
    out = tmp_path / "sweep"
    args = ["--grid", f"{LR}=1e-3,3e-3,1e-2", "--launcher", "slurm", "--poll_s", "0.5"]
    control(fail=[_name("0.003", 0)], sleep=5)
    assert _sweep(out, command, *args) == 0  # submits and returns
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())["jobs"]
    assert len(jobs) == 1 and len(jobs[0]["runs"]) == 3
    # While the array is queued or running, a relaunch submits nothing again.
    assert _sweep(out, command, *args) == 0
    assert len(json.loads((out / "slurm" / "jobs.json").read_text())["jobs"]) == 1
    assert "0 to run" in capsys.readouterr().err

    assert _sweep(out, command, *args, "--wait") == 1  # one run failed
    job = jobs[0]["job_id"]
    done = json.loads((out / "runs" / _name("0.001", 0) / "DONE").read_text())
    assert done["slurm_job"] == f"{job}_0"
    assert (out / "runs" / _name("0.003", 0) / "FAILED").exists()

    # Resubmit: only the failed run, as a one-task array.
    control()
    capsys.readouterr()
    assert _sweep(out, command, *args, "--wait") == 0
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())["jobs"]
    assert len(jobs) == 2 and jobs[1]["runs"] == [_name("0.003", 0)]
    assert "#SBATCH --array=0-0\n" in pathlib.Path(jobs[1]["script"]).read_text()
    assert [len(_calls(out, _name(lr, 0))) for lr in ("0.001", "0.003", "0.01")] == [1, 2, 1]
    results = json.loads((out / "results.json").read_text())
    gaps = [c["mean"]["gap"] for c in results["cells"]]
    assert gaps == pytest.approx([0.1, 0.3, 1.0])  # lr * 100 + seed / 10, seed 0
    assert "| 0.01 | 1/1 | **1.0000** |" in capsys.readouterr().out


@needs_slurm
def test_launch_slurm_sbatch_trains_as_a_two_process_jax_cluster(tmp_path, monkeypatch):
    """launch/slurm.sbatch with 2 tasks on one node: jax.distributed over SLURM's environment."""
    import numpy as np

    from vmjax.data import tfrecord, yt8m

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for shard, n in (("train-0", 32), ("train-1", 32), ("eval-0", 16), ("eval-1", 16)):
        examples = [  # a file per process: the pipeline shards files over processes
            yt8m.encode_video_example(
                f"{shard}-{i}",
                rng.choice(10, size=2, replace=False),
                rng.normal(0, 1, yt8m.RGB_DIM).astype(np.float32),
                rng.normal(0, 1, yt8m.AUDIO_DIM).astype(np.float32),
            )
            for i in range(n)
        ]
        tfrecord.write_records(str(data / f"{shard}.tfrecord"), examples)
    workdir = tmp_path / "run"
    monkeypatch.setenv("PYTHON", sys.executable)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    log = tmp_path / "job.out"
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--ntasks-per-node=2",
            "--gpus-per-node=0",  # the script asks for 8 by default; this node has none
            f"--output={log}",
            "launch/slurm.sbatch",
            "--config",
            CONFIG,
            "--workdir",
            str(workdir),
            f"--config.data.train_pattern={data / 'train-*.tfrecord'}",
            f"--config.data.eval_pattern={data / 'eval-*.tfrecord'}",
            "--config.data.num_classes=10",
            "--config.model.name=logistic",
            "--config.batch_size=8",
            "--config.eval_batch_size=8",
            "--config.num_train_steps=4",
            "--config.eval_every=4",
            "--config.checkpoint_every=4",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    job = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True)
        if not queue.stdout.strip():
            break
        time.sleep(1)
    else:
        subprocess.run(["scancel", job])
        pytest.fail(f"job {job} still running after 300 s: {log.read_text()}")
    text = log.read_text()
    job_info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
    assert "JobState=COMPLETED" in job_info.stdout, text[-3000:]
    # The trainer's own record of the run: one JAX cluster of 2 processes with 1 CPU device each
    # (two separate single-process runs would each say 1, and each write metrics).
    resolved = json.loads((workdir / "config.json").read_text())["resolved"]
    assert (resolved["jax_processes"], resolved["jax_devices"]) == (2, 2), text[-3000:]
    lines = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [4]  # only process 0 writes


def test_a_shipped_config_name_is_checked_and_passed_to_every_run(tmp_path, fake, capsys):
    command, _ = fake
    out = tmp_path / "sweep"
    argv = ["--config", "yt8m:smoke", "--out", str(out), "--command", command, "--dry_run"]
    assert cli.main([*argv, "--set", STEPS, "--parallel", "1"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()[-1:]
    words = shlex.split(line)
    assert words[words.index("--config") + 1] == "yt8m:smoke"  # each run resolves the name
    assert cli.main(["--config", "yt8m:smok", "--out", str(tmp_path / "x"), "--dry_run"]) == 2
    assert "unknown preset(s) ['smok']" in capsys.readouterr().err
