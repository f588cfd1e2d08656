"""pyproject.toml + setup.py: a non-editable `pip install .` in a new virtual environment installs uap_core and
uap_ui (nothing else of the checkout as a package) with the `uap` command, and carries the app, the zoo and the
ImageNet class list inside them; outside the checkout `uap --help`, `uap list-models`, `uap study --list` answer
and `uap app` serves the Home page (headless, a free port: GET / is 200 and /healthz "ok"), then stops.

Cheap: no dependency is downloaded (the venv sees this Python's packages; --no-deps, no build isolation)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import venv
from pathlib import Path

from uap_core.studies import study_names

REPO = Path(__file__).resolve().parent.parent
# what `pip install .` reads: the packages, the build files, and what the wheel carries beside them
SOURCE = ("pyproject.toml", "setup.py", "requirements.txt", "README.md", "uap_core", "uap_ui", "app.py", "pages",
          ".streamlit", "assets")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - a local server started here
        return response.status, response.read().decode("utf-8", "replace")


def test_pip_install_gives_the_uap_command_and_the_app(tmp_path):
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
    env["HOME"] = str(tmp_path / "home")  # an empty home: nothing cached, no library
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
    assert not (site / "tests").exists() and not (site / "app.py").exists() and not (site / "pages").exists()
    app = site / "uap_ui" / "_app"
    assert (app / "app.py").is_file() and sorted(p.name for p in (app / "pages").glob("*.py")) == sorted(
        p.name for p in (REPO / "pages").glob("*.py")) and (app / ".streamlit" / "config.toml").is_file()
    zoo = site / "uap_core" / "_assets"
    assert (zoo / "imagenet_wnids.txt").is_file() and sorted(p.name for p in (zoo / "uaps").iterdir()) == sorted(
        p.name for p in (REPO / "assets" / "uaps").iterdir())

    uap = env_dir / "bin" / "uap"
    port = _free_port()
    # the three commands and the app at once (each start imports torch or Streamlit: seconds of CPU apiece)
    started = {name: subprocess.Popen([str(uap), *argv], cwd=elsewhere, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True)
               for name, argv in (("help", ["--help"]), ("studies", ["study", "--list"]),
                                  ("models", ["list-models"]),
                                  ("app", ["app", "--server.port", str(port), "--server.headless", "true"]))}
    server = started.pop("app")
    try:
        deadline, health = time.monotonic() + 120, None
        while health is None:
            assert server.poll() is None, server.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the app did not answer in time"
            try:
                health = _get(f"http://127.0.0.1:{port}/_stcore/health")  # Streamlit's /healthz
            except OSError:
                time.sleep(0.3)
        assert health == (200, "ok")
        status, page = _get(f"http://127.0.0.1:{port}/")
        assert status == 200 and "<html" in page.lower()
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the process group started here: streamlit (exec'd by uap)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    out = {}
    for name, process in started.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, (name, stderr[-3000:])
        out[name] = stdout
    assert "study" in out["help"] and "app" in out["help"]
    assert [line.split()[0] for line in out["studies"].splitlines() if line.strip()] == study_names()
    assert "efficientnet_lite0" in out["models"] and "cifar_resnet20" in out["models"]
