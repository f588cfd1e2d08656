"""The build step pyproject.toml cannot say: a wheel (``pip install .``) carries the files that live beside the
packages in the checkout — the app (``app.py``, ``pages/``, ``.streamlit/config.toml``) into ``uap_ui/_app/`` and the
zoo and the ImageNet class list (``assets/uaps/``, ``assets/imagenet_wnids.txt``) into ``uap_core/_assets/``, where
:mod:`uap_core.bundled` finds them. An editable install (``pip install -e .``) copies nothing: the checkout's own
files are used."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# (source in the checkout, destination inside the build, relative to its root)
BUNDLED = (
    ("app.py", "uap_ui/_app/app.py"),
    ("pages", "uap_ui/_app/pages"),
    (".streamlit/config.toml", "uap_ui/_app/.streamlit/config.toml"),
    ("assets/uaps", "uap_core/_assets/uaps"),
    ("assets/imagenet_wnids.txt", "uap_core/_assets/imagenet_wnids.txt"),
)


class BuildWithBundledFiles(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for source, target in BUNDLED:
            origin, destination = HERE / source, Path(self.build_lib) / target
            if origin.is_dir():
                shutil.copytree(origin, destination, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif origin.is_file():
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, destination)


setup(cmdclass={"build_py": BuildWithBundledFiles})
