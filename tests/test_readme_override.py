"""The README's override example, run as printed on an existing run, does what the README says.

The command is parsed out of README.md, so a change to the README's example changes the test.
README: "a new run: a new workdir" and, under *Resuming a run*, "A refused change exits with
status 2 naming each key with its old and new value, and leaves the run untouched".
"""

import os
import pathlib
import re
import shlex
import subprocess
import sys

from vmjax import run as run_lib
from vmjax.configs import yt8m

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _override_example() -> list[str]:
    """The README's `python -m vmjax.main` command that overrides model fields (a new run)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [line for line in joined.splitlines() if "# a new run: a new workdir" in line]
    assert len(commands) == 1, commands
    command = commands[0].split("#", 1)[0]
    return shlex.split(command)


def test_the_override_example_on_an_existing_run_exits_2_and_changes_nothing(tmp_path):
    argv = _override_example()
    assert argv[:3] == ["python", "-m", "vmjax.main"]
    workdir_at = argv.index("--workdir") + 1
    config_file = argv[argv.index("--config") + 1]
    overrides = dict(a[len("--config.") :].split("=", 1) for a in argv if a.startswith("--config."))
    assert overrides, argv
    # An existing run of the example's config file, created as the run directory's owner does.
    workdir = tmp_path / "run"
    assert config_file == "configs/yt8m.py"
    with run_lib.training(yt8m.get_config(), str(workdir), {"note": "existing"}):
        pass
    stored = (workdir / "config.json").read_bytes()
    history = (workdir / "history.jsonl").read_bytes()
    listing = sorted(os.listdir(workdir))

    argv[workdir_at] = str(workdir)
    proc = subprocess.run(
        [sys.executable, *argv[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "nothing was changed" in proc.stderr
    defaults = yt8m.get_config()
    for key, new in overrides.items():  # each key named with its old and new value
        old = defaults[key.split(".")[0]]
        for part in key.split(".")[1:]:
            old = old[part]
        assert f"{key}: {old!r} -> {int(new)!r}" in proc.stderr, proc.stderr
    assert "cannot change on an existing run" in proc.stderr  # "a new run: a new workdir"
    assert (workdir / "config.json").read_bytes() == stored
    assert (workdir / "history.jsonl").read_bytes() == history
    assert sorted(os.listdir(workdir)) == listing


def test_the_readme_lists_the_keys_a_run_may_always_change():
    section = README.split("### Resuming a run", 1)[1]
    row = next(
        line
        for line in section.splitlines()
        if line.endswith("| allowed; recorded in `history.jsonl` |")
    )
    listed = re.findall(r"`([^`]+)`", row.split("|")[1])
    # a block of keys (`eval.*`) is listed as KEY.*
    assert listed == [k if "." in k or k in _FIELDS else f"{k}.*" for k in run_lib.FREE_KEYS]


_FIELDS = set(yt8m.get_config().keys()) - {
    k for k, v in yt8m.get_config().items() if hasattr(v, "keys")
}
