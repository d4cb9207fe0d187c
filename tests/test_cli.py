"""The command line itself: version, help in pipeline order, flags after the subcommand,
`python -m migfuse`, missing extras in one line, `fuse heads` as pasteable config."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from typer.testing import CliRunner

import migfuse
from migfuse.cli import app
from migfuse.commands.app import _hoist_root_flags


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "migfuse", *args], capture_output=True, text=True, timeout=120)


def test_python_dash_m_migfuse_prints_the_version_also_after_a_subcommand():
    for args in (["--version"], ["fuse", "--version"], ["extract", "video", "--version"]):
        r = _cli(*args)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f"migfuse {migfuse.__version__}"


def test_root_help_lists_commands_in_pipeline_order_with_whole_descriptions():
    out = CliRunner().invoke(app, ["-h"], terminal_width=80).output
    listed = [line.split()[0] for line in out.split("Commands:")[1].splitlines() if line[:4].strip()]
    assert listed == [n for n in ["data", "backbone", "extract", "cache", "fuse", "scores", "export", "score", "demo"]
                      if n in listed]
    assert listed[:5] == ["data", "backbone", "extract", "cache", "fuse"]
    assert "..." not in out.split("Commands:")[1]


def test_short_help_flag_and_verbose_flag_work_after_the_subcommand():
    r = CliRunner().invoke(app, ["fuse", "heads", "-h"])
    assert r.exit_code == 0 and "Usage:" in r.output
    r = CliRunner().invoke(app, ["fuse", "heads", "cmtf", "-v"])
    assert r.exit_code == 0, r.output
    assert _hoist_root_flags(["fuse", "train", "-v", "--", "-v"]) == ["--verbose", "fuse", "train", "--", "-v"]


def test_fuse_heads_prints_a_block_that_fuse_train_accepts_as_config(tmp_path):
    from migfuse.fuse.train import resolve_config

    r = CliRunner().invoke(app, ["fuse", "heads", "cmtf"])
    assert r.exit_code == 0, r.output
    block = json.loads(r.stdout[r.stdout.index("{"):])
    assert block["head"] == "cmtf" and block["head_options"]["width"] > 0
    config = tmp_path / "my.json"
    config.write_text(json.dumps({**block, "head_options": {**block["head_options"], "width": 96}}))
    assert resolve_config("mg", config)["head_options"]["width"] == 96
    r = CliRunner().invoke(app, ["fuse", "heads", "no-such-head"])
    assert r.exit_code == 2 and "unknown head 'no-such-head'" in r.output


def test_a_missing_extra_is_one_line_naming_it(tmp_path):
    code = textwrap.dedent("""
        import sys
        class Absent:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "torch":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Absent())
        sys.argv = ["migfuse", "fuse", "heads"]
        from migfuse.cli import main
        main()
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "needs torch" in lines[0] and "install the fuse extra" in lines[0] and "Traceback" not in r.stderr


def test_every_positional_argument_is_named_in_upper_case_in_usage_lines():
    """typer 0.29 prints an argument's lower-case parameter name ("{cache}") unless it has a metavar."""
    import typer
    from typer.core import TyperArgument

    def commands(group, path: tuple[str, ...] = ()):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):  # a group
                yield from commands(cmd, path + (name,))
            else:
                yield path + (name,), cmd

    seen = 0
    for path, cmd in commands(typer.main.get_command(app)):
        for param in cmd.params:
            if isinstance(param, TyperArgument):
                seen += 1
                assert param.metavar == param.name.upper(), (path, param.name, param.metavar)
    assert seen >= 14


def test_an_interrupt_or_sigterm_ends_in_one_line_and_the_shell_status(monkeypatch):
    import migfuse.demo
    from migfuse.commands.app import Terminated

    for raised, status in ((KeyboardInterrupt(), 130), (Terminated(), 143)):
        def stop(*a, _e=raised, **k):
            raise _e

        monkeypatch.setattr(migfuse.demo, "run_demo", stop)
        r = CliRunner().invoke(app, ["demo"])
        assert r.exit_code == status
        assert r.output.strip() == "interrupted: finished work is kept; rerun the same command to go on"


def test_sigterm_to_the_command_is_taken_like_ctrl_c(tmp_path):
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "migfuse", "demo", "--out", str(tmp_path / "demo")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # demo.json is written just before the dataset is generated
            if (tmp_path / "demo" / "demo.json").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert err.rstrip().endswith("interrupted: finished work is kept; rerun the same command to go on")
