"""One convention across the `mawstron` command line, checked by walking every subcommand's parser and --help:
one name per concept, options spelled with dashes and listed once, every option explained, `--json` a flag that
puts JSON alone on stdout, the checkpoint always `--checkpoint`, and usage errors exit 2 (argparse's code)."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from mawstron.cli.main import build_parser, main

# one name per concept: these spellings are another command's concept under a different name
SYNONYMS = {
    "--ckpt": "--checkpoint", "--checkpoint-dir": "--checkpoint", "--weights": "--checkpoint", "--model-path":
    "--checkpoint", "--output": "--out", "--output-dir": "--out", "--out-dir": "--out", "--outdir": "--out",
    "--input": "--images or --data", "--inputs": "--images or --data", "--dataset": "--data", "--data-dir": "--data",
    "--image-dir": "--images", "--num-gpus": "--gpus", "--ngpus": "--gpus", "--bs": "--batch-size",
    "--micro-batch-size": "--micro-batch", "--step": "--tag", "--quiet-mode": "--quiet", "--hosts": "--hostfile",
}


def leaf_parsers(parser: argparse.ArgumentParser, path=()):
    """(command words, parser) for every command that runs (subcommands of subcommands included)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for action in subs:
        for name, sub in action.choices.items():
            yield from leaf_parsers(sub, path + (name,))


LEAVES = list(leaf_parsers(build_parser()))
IDS = [" ".join(path) for path, _ in LEAVES]


def test_every_command_is_walked():
    assert {"train", "eval", "features", "consolidate", "checkpoints", "plan", "bench", "models", "show-mae",
            "data synth", "data vocab", "data stats", "weights get", "weights list"} <= set(IDS)


def visible_options(parser):
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        yield action


@pytest.mark.parametrize("path,parser", LEAVES, ids=IDS)
def test_options_follow_one_convention(path, parser):
    for action in visible_options(parser):
        for option in action.option_strings:
            assert option.startswith("--") or re.fullmatch(r"-\w", option), f"{path}: {option}"
            assert "_" not in option, f"mawstron {' '.join(path)}: {option} is spelled with '_'; use dashes"
            assert option not in SYNONYMS, f"mawstron {' '.join(path)}: {option}; this concept is {SYNONYMS[option]}"
        assert action.help, f"mawstron {' '.join(path)}: {action.option_strings or action.dest} has no help"
        if not action.option_strings:  # a positional: never the checkpoint (that is --checkpoint everywhere)
            assert "checkpoint" not in action.dest and "ckpt" not in action.dest, f"{path}: positional {action.dest}"
        if "--json" in action.option_strings:  # a flag (JSON on stdout), never a file name
            assert action.nargs in (0, "?"), f"mawstron {' '.join(path)}: --json takes a value"
        if action.dest in ("checkpoint",):
            assert "--checkpoint" in action.option_strings


@pytest.mark.parametrize("path,parser", LEAVES, ids=IDS)
def test_help_lists_each_option_once_and_usage_errors_exit_2(path, parser, capsys):
    with pytest.raises(SystemExit) as done:
        main([*path, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    listed = re.findall(r"^ {2}((?:-\w, )?--[\w-]+)", text, re.M)  # option lines; not wrapped help text
    names = [entry.split(", ")[-1] for entry in listed]
    twice = sorted({n for n in names if names.count(n) > 1})
    assert not twice, f"mawstron {' '.join(path)} --help lists {twice} more than once"
    with pytest.raises(SystemExit) as bad:
        main([*path, "--no-such-option"] if path[0] not in ("train",) else ["train", "--no-such-option"])
    assert bad.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_a_commands_own_refusal_exits_2_not_1(capsys):
    """`raise SystemExit("message")` inside a command is a usage error: printed on stderr, exit 2."""
    assert main(["eval", "--checkpoint", "x"]) == 2  # neither --data nor --train/--test-shards
    assert "give --data DIR" in capsys.readouterr().err
    assert main(["train", "recipes/no_such_recipe.py"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["plan", "--model", "vit_nope"]) == 2


@pytest.mark.parametrize("argv", [["models", "--json"], ["plan", "--model", "vit_b16", "--gpus", "8", "--json"]])
def test_json_goes_alone_to_stdout(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.strip() and all(json.loads(line) is not None for line in out.strip().splitlines())
