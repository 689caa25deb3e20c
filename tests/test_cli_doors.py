"""Every command line answers a user's mistake with a few lines and exit status 2."""

import subprocess
import sys

import pytest

CASES = [
    (["vmjax.export", "--workdir", "{tmp}/none", "--out", "{tmp}/m.npz"], "does not exist"),
    (
        ["vmjax.export", "--workdir", "{tmp}", "--out", "{tmp}/m.npz", "--platforms", "foo"],
        "--platforms 'foo': unknown foo; choose from cpu, cuda, rocm, tpu",
    ),
    (
        ["vmjax.extract", "--workdir", "{tmp}/none", "--videos", "{tmp}/v.csv", "--out", "{tmp}/o"],
        "does not exist",
    ),
    (["vmjax.tools.summary", "--config", "yt8m:smok"], "unknown preset(s) ['smok']"),
    (["vmjax.baselines", "--config", "yt8m:smoke", "--config.foo=1"], "unknown config key 'foo'"),
    (["vmjax.data.synthetic", "--out", "{tmp}/d", "--num_train=-3"], "--num_train=-3: expected"),
    (
        ["vmjax.main", "--config", "yt8m", "--workdir", "{tmp}/w", "--config.eval_every=0"],
        "eval_every",
    ),
]


@pytest.mark.parametrize("argv, says", CASES, ids=[c[0][0] + str(i) for i, c in enumerate(CASES)])
def test_a_user_mistake_is_a_few_lines_and_exit_2(tmp_path, argv, says):
    argv = [a.format(tmp=tmp_path) for a in argv]
    done = subprocess.run(
        [sys.executable, "-m", *argv], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert says in done.stderr
    assert "Traceback" not in done.stderr
    assert len([ln for ln in done.stderr.splitlines() if ln.strip()]) <= 5, done.stderr
