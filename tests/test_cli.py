"""The vidclip entry point: help, version, dispatch and plain refusals for commands not built yet."""

import re
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


def test_every_command_has_help_with_an_example(capsys):
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit) as done:
            cli.main([name, "--help"])
        assert done.value.code == 0
        assert "example" in capsys.readouterr().out.lower(), f"vidclip {name} --help shows no example"


def test_python_dash_m_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "vidclip", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("vidclip ")


@pytest.mark.slow
def test_demo_trains_from_chance_to_far_above_it(capsys, tmp_path):
    assert cli.main(["demo", "--workdir", str(tmp_path), "--num-frames", "4", "--steps", "40"]) == 0
    out = capsys.readouterr().out
    assert "generated 32 captioned videos" in out
    before, after = re.findall(r"t2v/R@5 ([0-9.]+)", out)
    assert float(before) <= 30 and float(after) >= 60  # chance R@5 is 5/32 = 15.6%
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_import_vidclip_loads_no_decoder_or_trainer():
    code = "import sys, vidclip; bad = {'decord', 'av', 'accelerate'} & set(sys.modules); print(sorted(bad))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
