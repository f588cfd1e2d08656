"""Where the files that ship beside the code are: the zoo and the ImageNet class list (``assets/``), the app
(``app.py``, ``pages/``, ``.streamlit/config.toml``).

In a checkout (and an editable install) they are where the repository keeps them: ``assets/`` and ``app.py`` at the
top level. A wheel (``pip install .``) carries copies inside the packages — ``uap_core/_assets/`` (the zoo
``uaps/`` and ``imagenet_wnids.txt``) and ``uap_ui/_app/`` (``app.py``, ``pages/``, ``.streamlit/config.toml``),
written by ``setup.py``'s build step — and these functions find them there. Nothing here imports uap_ui (the app's
folder is found from the package's location alone).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent
INSTALLED_ASSETS = "_assets"  # inside uap_core, in a wheel
INSTALLED_APP = "_app"  # inside uap_ui, in a wheel
APP_SCRIPT = "app.py"


def assets_dir() -> Path:
    """The folder holding ``uaps/`` and ``imagenet_wnids.txt``: the installed copy when there is one, else the
    checkout's ``assets/``."""
    installed = _PACKAGE / INSTALLED_ASSETS
    return installed if installed.is_dir() else _CHECKOUT / "assets"


def app_dir() -> Path | None:
    """The folder holding ``app.py`` and ``pages/`` next to the installed ``uap_ui``: its ``_app/`` copy in a wheel,
    else the checkout's top level; None when neither holds the app."""
    spec = importlib.util.find_spec("uap_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    ui = Path(list(spec.submodule_search_locations)[0]).resolve()
    for folder in (ui / INSTALLED_APP, ui.parent):
        if (folder / APP_SCRIPT).is_file() and (folder / "pages").is_dir():
            return folder
    return None


def streamlit_options(folder: Path) -> list[str]:
    """The app's ``.streamlit/config.toml`` as ``streamlit run`` options (``--section.key=value``): Streamlit reads
    that file only from the folder it is started in, and ``uap app`` may start anywhere."""
    import tomllib

    config = folder / ".streamlit" / "config.toml"
    if not config.is_file():
        return []
    options = []
    for section, values in tomllib.loads(config.read_text(encoding="utf-8")).items():
        for key, value in values.items() if isinstance(values, dict) else ():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            options.append(f"--{section}.{key}={text}")
    return options


__all__ = ["APP_SCRIPT", "INSTALLED_APP", "INSTALLED_ASSETS", "app_dir", "assets_dir", "streamlit_options"]
