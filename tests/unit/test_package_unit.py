"""The packages' lazily loaded public names resolve (they are looked up by module name at
first use, which no import checker follows: a module that moves must be renamed here)."""
from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["sandboxd", "pytest_sandbox"])
def test_every_exported_name_resolves(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
