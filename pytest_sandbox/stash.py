"""What the plugin keeps on pytest's config for the session: the host's
:class:`~pytest_sandbox.controller.Controller` (none inside a test's container).

Its own small module so the plugin's hooks and the notebook items reach the controller
the same way without importing each other, and without loading the controller's
module where no controller runs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .controller import Controller

CONTROLLER = pytest.StashKey["Controller"]()


def controller_of(config: pytest.Config) -> Controller:
    """The session's controller; a usage error inside a containerised test."""
    controller = config.stash.get(CONTROLLER, None)
    if controller is None:
        raise pytest.UsageError("the sandbox fixtures talk to the daemon from the host; "
                                "they are not available inside a containerised test")
    return controller
