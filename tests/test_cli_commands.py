"""The command line lists every command without importing the libraries behind them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mmtoxicqa.cli import build_parser, main
from mmtoxicqa.cli.commands import COMMANDS


def _subparsers(parser):
    [action] = [a for a in parser._actions if a.dest == "command"]
    return action


def test_table_lists_exactly_the_commands_the_modules_add():
    real = _subparsers(build_parser("*"))
    assert set(real.choices) == set(COMMANDS) | {"tasks-path"}
    helps = {a.dest: a.help for a in real._choices_actions}
    for name, (_module, help_text) in COMMANDS.items():
        assert helps[name] == help_text
        assert real.choices[name].get_default("func") is not None, f"{name} has no function to run"


def test_each_command_is_added_by_its_own_module():
    for name, (module, _help) in COMMANDS.items():
        parser = _subparsers(build_parser(name)).choices[name]
        assert parser.get_default("func").__module__ == f"mmtoxicqa.cli.{module}"


def test_every_command_help_describes_it_for_a_user():
    """`mmtoxicqa CMD --help` opens with what the command does, not the cli module's note to developers."""
    for name in COMMANDS:
        description = _subparsers(build_parser(name)).choices[name].description or ""
        assert len(description.split()) >= 15, f"{name} --help has no description"
        assert "argparse" not in description and ":mod:" not in description, f"{name} --help shows the developer docstring"


def test_help_imports_no_heavy_library():
    probe = (
        "import sys\n"
        "from mmtoxicqa.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'lmms_eval') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "planted-control" in out and "organism-report" in out  # every command is listed


def test_unknown_command_names_the_choices(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'no-such-command'" in err and "'calibrate'" in err
