"""Visitor rules of a class server that need no server: which classifier files a model name may make it read."""

from __future__ import annotations

import pytest

from uap_core.errors import ImageSourceError
from uap_ui import spaces


@pytest.fixture
def visitor(monkeypatch, tmp_path):
    """A visitor (not the owner) on a server that shares one folder, ``tmp_path / "shared"``."""
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setattr(spaces, "is_owner", lambda: False)
    monkeypatch.setattr(spaces, "allowed_folders", lambda: [shared.resolve()])
    return shared


@pytest.mark.parametrize("name", ["file:/etc/net.pt?size=32",
                                  "cifar_resnet20,file:/etc/net.pt?size=32",       # hidden in an ensemble
                                  "cifar_resnet20, file:/etc/net.pt"])
def test_a_visitor_cannot_name_a_file_outside_the_shared_folders(visitor, name):
    with pytest.raises(ImageSourceError, match="outside the folders"):
        spaces.check_model_name(name)


def test_a_visitor_may_name_files_inside_the_shared_folders_and_builtin_models(visitor):
    spaces.check_model_name(f"file:{visitor / 'net.pt'}?size=32")
    spaces.check_model_name(f"cifar_resnet20,file:{visitor / 'net.pt'}")
    spaces.check_model_name("cifar_resnet20,cifar_resnet56")


def test_the_owner_may_name_any_file(monkeypatch):
    monkeypatch.setattr(spaces, "is_owner", lambda: True)
    spaces.check_model_name("cifar_resnet20,file:/etc/net.pt?size=32")
