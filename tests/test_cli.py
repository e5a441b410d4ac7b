"""The vidclip entry point: help, version, dispatch and plain refusals for commands not built yet."""

import subprocess
import sys

import pytest

from vidclip import cli


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "eval", "zeroshot", "extract", "demo"):
        assert name in out


def test_unknown_command_fails_with_usage(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("name", [n for n, (module, _) in cli.COMMANDS.items() if module is None])
def test_unbuilt_commands_say_so_plainly(name, capsys):
    assert cli.main([name, "--config", "x.yaml"]) == 2
    assert "not available yet" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "vidclip", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("vidclip ")


def test_demo_runs_offline_end_to_end(capsys, tmp_path):
    assert cli.main(["demo", "--workdir", str(tmp_path), "--num-frames", "4"]) == 0
    out = capsys.readouterr().out
    assert "generated 32 captioned videos" in out and "t2v/R@1" in out
    assert (tmp_path / "data" / "captions.csv").exists()


def test_import_vidclip_loads_no_decoder_or_trainer():
    code = "import sys, vidclip; bad = {'decord', 'av', 'accelerate'} & set(sys.modules); print(sorted(bad))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
