"""The README's claims about the recipes' defaults hold: its "Data by default" table names every recipe once,
with the data source, the data it must be given and the checkpoint it starts from that the recipe really has."""

from __future__ import annotations

import glob
import itertools
import os
import re
import runpy

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")


def expand_braces(name: str) -> list[str]:
    """``vit_{b16,l16}_mae.py`` -> ``[vit_b16_mae.py, vit_l16_mae.py]`` (shell brace expansion, lists only)."""
    parts = re.split(r"\{([^{}]*)\}", name)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def data_by_default_table(text: str) -> list[list[str]]:
    """The rows of the table that follows the README's **Data by default.** paragraph, as cell texts."""
    start = text.index("**Data by default.**")
    lines = text[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| recipes |"))
    rows = []
    for line in lines[first + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


ROWS = data_by_default_table(open(README).read())
CLAIMS = {recipe: row for row in ROWS for name in ticked(row[0]) for recipe in expand_braces(name)}


def test_the_table_names_every_recipe_exactly_once():
    named = [recipe for row in ROWS for name in ticked(row[0]) for recipe in expand_braces(name)]
    on_disk = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "recipes", "*.py")))
    assert sorted(named) == on_disk


@pytest.mark.parametrize("recipe", sorted(CLAIMS))
def test_a_recipes_defaults_are_what_the_readme_says(recipe):
    _, source, needs, init_from = CLAIMS[recipe]
    cfg = runpy.run_path(os.path.join(REPO, "recipes", recipe), run_name="__readme_check__")["CONFIG"]
    source_and_shards = ticked(source)
    assert cfg.data.source == source_and_shards[0], f"{recipe}: data.source"
    assert cfg.data.shards == (source_and_shards[1] if len(source_and_shards) > 1 else ""), f"{recipe}: data.shards"
    # what the README says to give is exactly what the recipe leaves empty and its stage needs
    required = {"data.shards"} if cfg.data.source == "shards" and not cfg.data.shards else set()
    if cfg.data.source == "shards" and cfg.train.stage == "wsp" and not cfg.data.vocab:
        required.add("data.vocab")
    assert {t for t in ticked(needs) if t.startswith("data.")} == required, f"{recipe}: what to give"
    model = recipe.rsplit("_", 1)[0]
    expected = [t.replace("<model>", model) for t in ticked(init_from)]
    assert [cfg.checkpoint.init_from] == (expected or [""]), f"{recipe}: checkpoint.init_from"


def test_a_recipe_that_reads_shards_refuses_to_start_without_them(tmp_path):
    """What the table's "to give" column means: `mawstron train` stops before launch and names data.shards."""
    from mawstron.cli.main import main

    assert main(["train", os.path.join(REPO, "recipes", "vit_b16_mae.py"), "--gpus", "8",
                 "--set", f"output_dir={tmp_path / 'run'}"]) == 2
    assert main(["train", os.path.join(REPO, "recipes", "vit_b16_mae.py"), "--gpus", "8", "--dry-run",
                 "--set", "data.source=synthetic"]) == 0
