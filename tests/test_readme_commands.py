"""Every shell command in README.md's code blocks parses, and the cheap ones run as written.

Commands are taken from fenced ``bash``/``sh``/``shell`` blocks and from 4-space indented blocks, in README order,
with ``\\`` continuations joined and ``# comments`` dropped, so a section added later is checked without touching
this file.  Each command is parsed by the real parser of what it starts: the ``mawstron`` CLI (and, for
``mawstron train``/``deepspeed``/``torchrun``/``python recipes/...``, the recipe's flags and its resolved config),
the DeepSpeed and torchrun launchers, a script's own argparse, ``make -n``.  Then every command not on the
``EXPENSIVE`` list runs in README order in a scratch folder that mirrors the repository (so ``runs/`` is created
there, and a command may use what an earlier one wrote).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
BIN = os.path.dirname(sys.executable)
SHELL_LANGS = ("bash", "sh", "shell", "console")
PROGRAMS = ("mawstron", "python", "python3", "deepspeed", "torchrun", "make", ".venv/bin/python", ".venv/bin/mawstron")

# Commands that are parsed but not run here: each trains, benchmarks for minutes, needs `make demo`'s outputs, a
# GPU, a cluster or the network.  Keep this list short; a cheap command belongs in the run.
EXPENSIVE = {
    r"^make (test|demo|study)\b": "builds the venv / trains (minutes)",
    r"^(deepspeed|torchrun)\b": "starts a training run",
    r"^mawstron train\b(?!.*--dry-run)": "starts a training run",
    r"^mawstron (bench|eval|consolidate)\b": "trains, or reads `make demo`'s checkpoints",
    r"^mawstron weights get\b": "downloads released weights (the network)",
    r"^mawstron data from-folder\b": "converts the user's own image folders (placeholder paths here)",
    r"^(python|\.venv/bin/python) tests/_compile_kernels\.py\b": "compiles every preset shape for sm_90 (minutes)",
    r"^mawstron (features|show-mae)\b": "reads `make demo`'s checkpoints or the released weights",
    r"^(python|\.venv/bin/python) benchmarks/": "benchmarks (minutes on a CPU)",
    r"^benchmarks/gpu_check\.sh(?!.*--dry-run)": "needs a GPU",
    r"\bpytest\b": "the test suite itself",
}


def _blocks(text: str):
    """(language, [lines]) of every fenced block and every 4-space indented block outside fences."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if fence:
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            yield fence.group(1).lower(), lines[i + 1:j]
            i = j + 1
            continue
        if lines[i].startswith("    ") and lines[i].strip() and (i == 0 or not lines[i - 1].strip()):
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            block = [line[4:] for line in lines[i:j] if line.strip()]
            if block and block[0].split()[0] in PROGRAMS:
                yield "indented", block
            i = j
            continue
        i += 1


def readme_commands(text: str | None = None) -> list[str]:
    """The README's shell commands, one string each, as a shell would see them (continuations joined, comments
    dropped)."""
    text = open(README).read() if text is None else text
    commands = []
    for lang, block in _blocks(text):
        if lang not in SHELL_LANGS and lang != "indented":
            continue
        current = ""
        for line in block:
            current += line.rstrip()
            if current.endswith("\\"):
                current = current[:-1] + " "
                continue
            words = shlex.split(current, comments=True)
            if words:
                commands.append(shlex.join(words))
            current = ""
    return commands


def readme_inline_commands(text: str | None = None) -> list[str]:
    """Complete commands quoted inline in prose (`` `mawstron plan --model vit_b16 --gpus 8` ``): those that start
    with a known program and give at least two options; fragments (``mawstron data synth --out DIR``, ``...``)
    are prose, not commands."""
    text = open(README).read() if text is None else text
    found = []
    for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text):
        words = span.split()
        if words and words[0] in PROGRAMS and "..." not in span and sum(w.startswith("--") for w in words) >= 2:
            found.append(span)
    return list(dict.fromkeys(found))


def python_snippets(text: str) -> list[str]:
    return ["\n".join(block) for lang, block in _blocks(text) if lang == "python"]


class _Parsed(Exception):
    def __init__(self, namespace):
        self.namespace = namespace


def parse_with_script_parser(script: str, argv: list[str]) -> argparse.Namespace:
    """Run ``script``'s own argparse on ``argv`` and stop right after it: the script's real parser, nothing run."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        patch.setattr(sys, "argv", [script, *argv])
        patch.syspath_prepend(os.path.dirname(os.path.abspath(script)))
        try:
            runpy.run_path(script, run_name="__main__")
        except _Parsed as parsed:
            return parsed.namespace
    raise AssertionError(f"{script} ran to the end without parsing any arguments")


def check_launched(script: str, args: list[str]):
    """What a launcher starts: a recipe (flags and config, returned) or a script (its own parser)."""
    if os.path.normpath(script).startswith("recipes" + os.sep):
        return check_recipe(script, args)
    assert os.path.isfile(script), f"{script} does not exist"
    parse_with_script_parser(script, args)
    return None


def check_recipe(recipe: str, args: list[str]):
    """The recipe's flags and its resolved, validated config (returned)."""
    from mawstron.cli.train import validate

    return validate(recipe, args)


def check_command(command: str):
    """Parse ``command`` with the parser of what it starts; raises (AssertionError, SystemExit, ConfigError).
    Returns the resolved RunConfig of a command that starts a training run (None for others)."""
    words = shlex.split(command)
    program, argv = words[0], words[1:]
    name = os.path.basename(program)
    if name == "mawstron":
        from mawstron.cli.main import build_parser

        args, unknown = build_parser().parse_known_args(argv)
        if getattr(args, "command", None) == "train":
            cfg = check_recipe(args.recipe, unknown)
            return None if "--dry-run" in unknown else cfg
        elif getattr(args, "command", None) == "bench":
            from mawstron.parallel.launcher.bench import build_arg_parser, config_from_args

            config_from_args(build_arg_parser().parse_args(unknown))
        else:
            assert not unknown, f"unrecognized arguments {unknown}"
    elif name == "deepspeed":
        ns = parse_with_script_parser(os.path.join(BIN, "deepspeed"), argv)
        return check_launched(ns.user_script, ns.user_args)
    elif name == "torchrun":
        from torch.distributed.run import get_args_parser

        ns = get_args_parser().parse_args(argv)
        return check_launched(ns.training_script, ns.training_script_args)
    elif name in ("python", "python3"):
        if argv[:2] == ["-m", "pytest"]:
            paths = [a for a in argv[2:] if not a.startswith("-") and not a.isdigit()]
            assert all(glob.glob(p) for p in paths), f"no file matches {paths}"
        elif argv[0].startswith("recipes/"):
            cfg = check_recipe(argv[0], argv[1:])
            return None if "--dry-run" in argv else cfg
        else:
            assert os.path.isfile(argv[0]), f"{argv[0]} does not exist"
            parse_with_script_parser(argv[0], argv[1:])
    elif name == "make":
        out = subprocess.run(["make", "-n", *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    else:  # a program no rule knows yet: at least it must exist
        assert shutil.which(program) or os.path.isfile(os.path.join(REPO, program)), f"{program} not found"
    return None


COMMANDS = readme_commands()


def test_readme_has_commands_from_every_section_kind():
    assert any(c.startswith("mawstron data synth") for c in COMMANDS)
    assert any(c.startswith("deepspeed") for c in COMMANDS) and any(c.startswith("make demo") for c in COMMANDS)
    joined = readme_commands("```bash\nmawstron plan \\\n    --model vit_b16  # a comment\n```\n\n    python x.py\n")
    assert joined == ["mawstron plan --model vit_b16", "python x.py"]


@pytest.mark.parametrize("command", COMMANDS + readme_inline_commands())
def test_readme_command_parses(command, monkeypatch):
    monkeypatch.chdir(REPO)
    check_command(command)


def test_readme_training_runs_chain_without_clashing(monkeypatch):
    """Followed top to bottom after `make demo`: no training command reruns into another's folder (it would be
    refused without --resume/--overwrite), and every init_from names a run that `make demo` or an earlier command
    trained."""
    monkeypatch.chdir(REPO)
    makefile = open(os.path.join(REPO, "Makefile")).read()
    demo_dir = re.search(r"^DEMO_DIR \?= (\S+)", makefile, re.M).group(1)
    trained = {f"{demo_dir}/{name}" for name in re.findall(r"output_dir=\$\(DEMO_DIR\)/(\w+)", makefile)}
    assert trained, "the Makefile's demo names no run folders"
    for command in COMMANDS:
        cfg = check_command(command)
        if cfg is None:
            continue
        run_dir = os.path.normpath(cfg.run_dir)
        if not (cfg.checkpoint.resume or "--overwrite" in command):
            assert run_dir not in trained, f"`{command}` reruns into {run_dir}, which an earlier command trained"
        source = cfg.checkpoint.init_from
        if source and not source.startswith("/"):
            base = os.path.normpath(source.removesuffix("/checkpoints"))
            assert base in trained, f"`{command}`: init_from={source} is not what `make demo` or the README trains"
        trained.add(run_dir)


def test_readme_python_snippets_compile():
    for snippet in python_snippets(open(README).read()):
        compile(snippet, "README.md", "exec")


def _sandbox(tmp_path) -> str:
    """A folder that looks like the repository (links to its top-level entries) but has its own runs/."""
    root = tmp_path / "repo"
    root.mkdir()
    for entry in os.listdir(REPO):
        if entry not in ("runs", ".git"):
            (root / entry).symlink_to(os.path.join(REPO, entry))
    return str(root)


def test_cheap_readme_commands_run_as_written(tmp_path):
    cwd = _sandbox(tmp_path)
    before = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    ran = []
    for command in COMMANDS:
        if any(re.search(pattern, command) for pattern in EXPENSIVE):
            continue
        out = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        tail = out.stdout[-2000:] + out.stderr[-2000:]
        assert out.returncode == 0, f"`{command}` failed (rc {out.returncode}):\n{tail}"
        ran.append(command)
    assert any("data synth" in c for c in ran) and any("data vocab" in c for c in ran)
    after = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    assert after == before, "following the README changed files in the repository"
