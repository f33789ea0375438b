"""The installed distribution: import names, no bare top-level packages, the console script."""

import importlib.util
import os
import subprocess
import sys
import sysconfig


def test_imports_from_another_folder(tmp_path):
    code = "import mawstron.core, mawstron.kernels, mawstron.parallel; print(mawstron.core.create_vit.__name__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "create_vit"


def test_no_bare_top_level_packages_installed():
    site = sysconfig.get_paths()["purelib"]
    bare = {"core", "kernels", "parallel", "cli", "recipes", "benchmarks", "tests"} & set(os.listdir(site))
    assert not bare, f"bare top-level packages in {site}: {sorted(bare)}"
    for name in ("core", "kernels", "parallel"):
        spec = importlib.util.find_spec(name)
        assert spec is None or not (spec.origin or "").startswith(site), f"bare {name!r} importable from site-packages"


def test_console_script_lists_presets(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "mawstron")
    out = subprocess.run([exe, "models"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "vit_6.5b14" in out.stdout and "6447.6M" in out.stdout
