"""Every command line answers a user's mistake with a few lines and exit status 2."""

import contextlib
import importlib
import io
import subprocess
import sys

import pytest

# argparse commands: their main(argv) runs in this process (no interpreter to start).
IN_PROCESS = [
    (["vmjax.export", "--workdir", "{tmp}/none", "--out", "{tmp}/m.npz"], "does not exist"),
    (
        ["vmjax.export", "--workdir", "{tmp}", "--out", "{tmp}/m.npz", "--platforms", "foo"],
        "--platforms 'foo': unknown foo; choose from cpu, cuda, rocm, tpu",
    ),
    (
        ["vmjax.extract", "--workdir", "{tmp}/none", "--videos", "{tmp}/v.csv", "--out", "{tmp}/o"],
        "does not exist",
    ),
    (
        ["vmjax.data.convert", "--src", "{tmp}/none*.tfrecord", "--dst", "{tmp}/ar"],
        "matched no files",
    ),
    (["vmjax.data.synthetic_video", "--out", "{tmp}/v", "--size", "63"], "size must be even"),
]
# absl commands parse the process-wide FLAGS: each in its own interpreter.
SUBPROCESS = [
    (["vmjax.tools.summary", "--config", "yt8m:smok"], "unknown preset(s) ['smok']"),
    (["vmjax.baselines", "--config", "yt8m:smoke", "--config.foo=1"], "unknown config key 'foo'"),
    (["vmjax.data.synthetic", "--out", "{tmp}/d", "--num_train=-3"], "--num_train=-3: expected"),
    (
        ["vmjax.main", "--config", "yt8m", "--workdir", "{tmp}/w", "--config.eval_every=0"],
        "eval_every",
    ),
]


def _ids(cases):
    return [c[0][0] + str(i) for i, c in enumerate(cases)]


def _check(code: int, stderr: str, says: str) -> None:
    assert code == 2, stderr[-2000:]
    assert says in stderr
    assert "Traceback" not in stderr
    assert len([ln for ln in stderr.splitlines() if ln.strip()]) <= 5, stderr


@pytest.mark.parametrize("argv, says", IN_PROCESS, ids=_ids(IN_PROCESS))
def test_an_argparse_command_answers_a_mistake_in_a_few_lines_and_exit_2(tmp_path, argv, says):
    module, *args = [a.format(tmp=tmp_path) for a in argv]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as e:
        importlib.import_module(module).main(args)
    _check(e.value.code, stderr.getvalue(), says)


@pytest.mark.parametrize("argv, says", SUBPROCESS, ids=_ids(SUBPROCESS))
def test_an_absl_command_answers_a_mistake_in_a_few_lines_and_exit_2(tmp_path, argv, says):
    argv = [a.format(tmp=tmp_path) for a in argv]
    done = subprocess.run(
        [sys.executable, "-m", *argv], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    _check(done.returncode, done.stderr, says)
