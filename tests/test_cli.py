"""The vidclip entry point: help, version, dispatch and plain refusals for commands not built yet."""

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from vidclip import cli

REPO = Path(__file__).resolve().parents[1]


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


def example_commands(name, capsys):
    """The ``vidclip ...`` command lines of ``vidclip NAME --help``'s examples, as argv lists after the name."""
    with pytest.raises(SystemExit):
        cli.main([name, "--help"])
    help_text = capsys.readouterr().out
    commands = []
    for line in help_text.split("example", 1)[1].splitlines():
        if not line.startswith("  ") or f"vidclip {name}" not in line:  # prose mentions are not examples
            continue
        words = shlex.split(line.split("  #")[0])
        commands.append(words[words.index("vidclip") + 2 :])
    return commands


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_help_examples_parse_and_name_config_files_that_exist(name, capsys):
    commands = example_commands(name, capsys)
    assert commands, f"vidclip {name} --help has no runnable example"
    main = importlib.import_module(cli.COMMANDS[name][0]).main
    parse_args = importlib.import_module(main.__module__).parse_args  # the module that defines main
    for argv in commands:
        parse_args(argv)  # a typo in an example's flags would exit here
        for word in argv:
            if word.startswith("configs/"):
                assert (REPO / word).is_file(), f"vidclip {name} --help names {word}, which does not exist"


def test_python_dash_m_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "vidclip", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("vidclip ")


@pytest.mark.slow
def test_demo_trains_from_chance_to_far_above_it_then_search_finds_the_direction_too(capsys, tmp_path):
    """The default demo (seq_transformer, CLIP frozen) learns which way a shape moves: the search for "a red
    square moving left" answers that colour, shape and direction, not the same square moving right. (Its 400
    steps keep the right answer ahead by ~0.10 in cosine over repeated runs; 300 by ~0.06; with 4 frames 300
    steps are not enough.)"""
    assert cli.main(["demo", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "generated 32 captioned videos" in out
    assert "'seq_transformer' head" in out and "CLIP frozen" in out
    before, after = re.findall(r"t2v/R@5 ([0-9.]+)", out)
    assert float(before) <= 30 and float(after) >= 60  # chance R@5 is 5/32 = 15.6%
    r1_after = float(re.findall(r"t2v/R@1 ([0-9.]+)", out)[1])
    assert r1_after > 40  # an order-blind head stops near 25% (left and right look alike to it)
    assert (tmp_path / "run" / "model.safetensors").exists()
    answer = re.search(r'"a red square moving left" -> (\S+) \(', out)
    assert answer and answer.group(1) == "videos/red_square_left_0.mp4", out
    assert (tmp_path / "index" / "index.json").exists()
    assert f"vidclip serve {tmp_path / 'index'}" in out


def test_import_vidclip_loads_no_decoder_trainer_plotting_or_hub_client():
    code = (
        "import sys, vidclip, vidclip.viz; "
        "bad = {'decord', 'av', 'torchcodec', 'accelerate', 'matplotlib', 'huggingface_hub'} & set(sys.modules); "
        "print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
