"""pyproject.toml: `pip install .` in a new virtual environment installs uap_core and uap_ui (nothing else of the
checkout) with the `uap` command, which answers `uap study --list` outside the checkout (the commands its
`--help` lists are tests/test_cli.py's).

Cheap: no dependency is downloaded (the venv sees this Python's packages; --no-deps, no build isolation)."""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

from uap_core.studies import study_names

REPO = Path(__file__).resolve().parent.parent
SOURCE = ("pyproject.toml", "requirements.txt", "README.md", "uap_core", "uap_ui")  # what `pip install .` reads


def test_pip_install_gives_the_uap_command(tmp_path):
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ and *.egg-info there
    source.mkdir()
    for name in SOURCE:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, source / name)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)  # this Python's pip and packages, seen from it
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    elsewhere = tmp_path / "elsewhere"  # not the checkout: the command must import the installed package
    elsewhere.mkdir()

    def run(*argv) -> subprocess.CompletedProcess:
        done = subprocess.run([*map(str, argv)], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    run(python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", source)

    site = next((env_dir / "lib").glob("python*/site-packages"))
    top_level = next(site.glob("uap_explorer-*.dist-info/top_level.txt"))
    assert top_level.read_text().split() == ["uap_core", "uap_ui"], "only the two packages (no tests, pages, …)"
    assert (site / "uap_core" / "studies" / "__init__.py").is_file() and (site / "uap_core" / "algorithms").is_dir()
    assert (site / "uap_ui" / "assets" / "explainer.png").is_file(), "package data: the Home page's picture"
    assert not (site / "tests").exists() and not (site / "app.py").exists()

    uap = env_dir / "bin" / "uap"
    listed = run(uap, "study", "--list")  # one start of the command (each imports torch: ~5 s of CPU)
    assert [line.split()[0] for line in listed.stdout.splitlines() if line.strip()] == study_names()
