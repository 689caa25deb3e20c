"""vmjax.cli and vmjax.configs: --config by name or path, and user errors in a few lines.

The command-line tests run a tiny entry point (cli.define_config_flag + cli.run + validate) in
a subprocess from a temporary directory, as a user would outside the checkout.
"""

import importlib
import os
import subprocess
import sys
import textwrap

import pytest
from absl import flags

from vmjax import cli, configs
from vmjax.configs_check import ConfigError, UnknownKeyError
from vmjax.configs_check.keys import lookup
from vmjax.tools import configs as config_files

ENTRY = textwrap.dedent(
    """
    import os

    from absl import app, flags

    from vmjax import cli
    from vmjax.configs_check import validate

    CONFIG = cli.define_config_flag()
    flags.DEFINE_bool("validate", True, "validate the config")
    flags.mark_flags_as_required(["config"])


    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        if os.environ.get("ENTRY_RAISES") == "user":
            raise cli.UserError("workdir /nowhere is not a run directory")
        if os.environ.get("ENTRY_RAISES") == "bug":
            raise RuntimeError("a bug")
        if os.environ.get("ENTRY_RAISES") == "stopped":
            from vmjax.errors import RunStopped

            raise RunStopped("the train loss diverged at step 3; last good checkpoint: none")
        if flags.FLAGS.validate:
            validate(CONFIG.value, num_devices=1)
        print("batch_size", CONFIG.value.batch_size)


    if __name__ == "__main__":
        cli.run(main)
    """
)


@pytest.fixture
def entry(tmp_path):
    """Runs the entry point with `args` from an empty directory: (exit code, stdout, stderr)."""
    script = tmp_path / "entry.py"
    script.write_text(ENTRY)
    env = {k: v for k, v in os.environ.items() if k != "VMJAX_DEBUG"}
    env["JAX_PLATFORMS"] = "cpu"

    def run(*args: str, **extra_env: str) -> tuple[int, str, str]:
        done = subprocess.run(
            [sys.executable, str(script), *args],
            cwd=tmp_path,
            env=env | extra_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return done.returncode, done.stdout, done.stderr

    return run


def assert_user_error(result: tuple[int, str, str], *words: str) -> str:
    code, _, stderr = result
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert 1 <= len(lines) <= 5, stderr
    assert lines[0].startswith("error: "), stderr
    for word in words:
        assert word in stderr, stderr
    return stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--config.num_train_step=5"],
            "error: unknown config key 'num_train_step'; did you mean 'num_train_steps'?",
        ),
        (
            ["--config.model.num_mixture=4"],
            "error: unknown config key 'model.num_mixture'; did you mean 'model.num_mixtures'?",
        ),
        (["--config.foo=1"], "error: unknown config key 'foo'\nconfig has: augment, batch_size"),
        (["--config.foo"], "error: unknown config key 'foo'"),
        (["--config.batch_size=abc"], "error: config.batch_size='abc': expected an int\n"),
        (["--config.eval_every=0"], "error: config.eval_every=0: expected an int >= 1\n"),
    ],
)
def test_a_bad_override_is_named_without_a_traceback(entry, args, message):
    assert_user_error(entry("--config=yt8m:smoke", *args), message)


@pytest.mark.parametrize(
    "spec, words",
    [
        ("missing.py", ["error: --config='missing.py': expected a config file", "no such file"]),
        ("yt8m:bogus", ["presets that yt8m accepts", "unknown preset(s) ['bogus']"]),
    ],
)
def test_a_bad_config_spec_is_named_without_a_traceback(entry, spec, words):
    assert_user_error(entry(f"--config={spec}"), *words)


def test_a_user_error_raised_by_main_is_a_few_lines(entry):
    error = entry("--config=yt8m", "--novalidate", ENTRY_RAISES="user")
    assert_user_error(error, "error: workdir /nowhere is not a run directory")


def test_a_run_stopped_by_its_guards_is_one_line_and_exit_status_3(entry):
    code, _, stderr = entry("--config=yt8m", "--novalidate", ENTRY_RAISES="stopped")
    assert code == 3 and "Traceback" not in stderr, stderr
    assert stderr.strip() == (
        "error: the train loss diverged at step 3; last good checkpoint: none"
    )


def test_a_bug_keeps_its_traceback(entry):
    code, _, stderr = entry("--config=yt8m", "--novalidate", ENTRY_RAISES="bug")
    assert code == 1
    assert "Traceback" in stderr and "RuntimeError: a bug" in stderr


@pytest.mark.parametrize(
    "args, env",
    [
        (["--config=yt8m:smoke", "--config.eval_every=0", "--debug"], {}),
        (["--config=yt8m:smoke", "--config.num_train_step=5"], {"VMJAX_DEBUG": "1"}),
    ],
)
def test_debug_shows_the_traceback_of_user_errors(entry, args, env):
    code, _, stderr = entry(*args, **env)
    assert code == 2
    assert "Traceback" in stderr
    assert stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize("spec", ["yt8m:smoke", "configs/yt8m.py:smoke"])
def test_configs_load_by_name_or_path_from_any_directory(entry, spec):
    code, stdout, stderr = entry(f"--config={spec}", "--novalidate", "--config.batch_size=48")
    assert (code, stdout) == (0, "batch_size 48\n"), stderr


# ml_collections loads config files with importlib's deprecated load_module().
no_load_module_warning = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")


def parse(monkeypatch, *args: str):
    """cli.parse_flags on fresh flags (a config flag and --workdir), in this process."""
    argv = ["prog", *args]
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections finds overrides in sys.argv
    flag_values = flags.FlagValues()
    cli.define_config_flag(flag_values=flag_values)
    flags.DEFINE_string("workdir", None, "a run directory", flag_values=flag_values)
    flags.mark_flag_as_required("config", flag_values=flag_values)
    cli.parse_flags(argv, flag_values)
    return flag_values


@pytest.mark.parametrize(
    "args, error_type, words",
    [
        (["--config=yt8n:smoke"], ConfigError, ["--config='yt8n'", "did you mean 'yt8m'?"]),
        (["--config=compress"], ConfigError, ["choose exactly one compression preset"]),
        (["--config=configs/missing.py"], ConfigError, ["no such file"]),
        (["--config=yt8m", "--config.model.vivit.pooling_mode=x"], UnknownKeyError, ["pooling"]),
        (["--config=yt8m", "--config.hidden_size=8"], UnknownKeyError, ["'model.hidden_size'"]),
        (["--config=yt8m", "--config.data.foo.bar=1"], UnknownKeyError, ["'data.foo.bar'"]),
        (["--config=yt8m", "--config.log_batches=maybe"], ConfigError, ["expected true or false"]),
        (["--config=yt8m", "--config.model=3"], ConfigError, ["config.model='3'", "not a dict"]),
        (["--config=yt8m", "--wrokdir=/tmp"], cli.UserError, ["Did you mean: workdir"]),
        ([], cli.UserError, ["--config must have a value"]),
    ],
)
@no_load_module_warning
def test_parse_flags_turns_flag_mistakes_into_user_errors(monkeypatch, args, error_type, words):
    with pytest.raises(error_type) as error:
        parse(monkeypatch, *args)
    message = str(error.value)
    assert len(message.splitlines()) <= 5 and "Traceback" not in message, message
    for word in words:
        assert word in message, message


@no_load_module_warning
def test_parse_flags_applies_overrides_to_a_locked_config(monkeypatch):
    flag_values = parse(monkeypatch, "--config=yt8m:frame", "--config.model.vivit.num_heads=8")
    config = flag_values.config
    assert (config.model.name, config.model.vivit.num_heads) == ("frame_moe", 8)
    with pytest.raises(AttributeError):
        config.new_field = 1  # locked, as DEFINE_config_file(lock_config=True) leaves it


def test_resolve_names_presets_and_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert configs.resolve("yt8m:frame,smoke") == (configs.path("yt8m"), "frame,smoke")
    assert configs.resolve("retrieval") == (configs.path("retrieval"), "")
    assert configs.resolve("configs/yt8m.py:smoke") == (configs.path("yt8m"), "smoke")
    own = tmp_path / "mine.py"
    own.write_text("def get_config(arg=None):\n    return {}\n")
    assert configs.resolve("mine.py:x") == (str(own), "x")
    assert configs.resolve(f"{own}") == (str(own), "")
    assert "yt8m" in configs.names() and "__init__" not in configs.names()


@pytest.mark.parametrize(
    "spec, words",
    [
        ("yt8n", ["--config='yt8n'", "did you mean 'yt8m'?"]),
        ("qqqq", ["a config name (audiovisual, compress"]),
        ("nowhere/yt8m.py", ["no such file"]),
    ],
)
def test_resolve_names_what_it_cannot_find(tmp_path, monkeypatch, spec, words):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        configs.resolve(spec)
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize(
    "spec, field, value",
    [
        ("compress:prune,frame,smoke", "data.level", "frame"),
        ("audiovisual:probe", "model.head", "logistic"),
    ],
)
def test_configs_that_build_on_yt8m_load_as_modules_and_as_files(spec, field, value):
    name, _, presets = spec.partition(":")
    as_file = config_files.get_config(configs.path(name), presets)
    as_module = importlib.import_module(f"vmjax.configs.{name}").get_config(presets)
    assert as_file.to_dict() == as_module.to_dict()
    assert lookup(as_file, field) == value


@no_load_module_warning
def test_a_config_file_must_return_a_config_dict(monkeypatch, tmp_path):
    own = tmp_path / "plain.py"
    own.write_text("def get_config(arg=None):\n    return {'batch_size': 1}\n")
    with pytest.raises(ConfigError) as error:
        parse(monkeypatch, f"--config={own}")
    assert "returns a ConfigDict" in str(error.value) and "dict" in str(error.value)
