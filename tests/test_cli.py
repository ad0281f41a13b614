"""The command line: help for every command, fast import, clear not-built messages."""

import subprocess
import sys

import pytest

from cvkit.cli import HANDLERS, NOT_BUILT, build_parser, main

COMMANDS = [
    ["train"],
    ["eval"],
    ["predict"],
    ["export"],
    ["serve"],
    ["data"],
    ["data", "check"],
    ["data", "convert"],
    ["data", "synth"],
    ["tune"],
    ["viz"],
    ["viz", "filters"],
    ["viz", "features"],
    ["viz", "cam"],
    ["style"],
]


def test_every_command_is_either_built_or_marked_not_built():
    assert set(HANDLERS).isdisjoint(NOT_BUILT)
    assert set(HANDLERS) | set(NOT_BUILT) == {
        " ".join(c) for c in COMMANDS if c not in (["data"], ["viz"])
    }


@pytest.mark.parametrize("command", [[], *COMMANDS], ids=lambda c: " ".join(c) or "cvkit")
def test_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*command, "--help"])
    assert info.value.code == 0
    assert "usage: cvkit" in capsys.readouterr().out


def test_console_script_help_runs():
    result = subprocess.run(
        [sys.executable, "-m", "cvkit", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "train" in result.stdout and "export" in result.stdout


def test_import_cvkit_and_help_do_not_import_torch():
    code = "import sys, cvkit, cvkit.cli; cvkit.cli.build_parser(); print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_not_built_command_says_so_and_fails(capsys):
    if "serve" in HANDLERS:
        pytest.skip("serve is built")
    assert main(["serve", "model.onnx"]) == 2
    assert "not built yet" in capsys.readouterr().err
