"""IPython extension: ``%load_ext ipython_ext`` (or ``%load_ext sandboxd``) registers
``%%container`` / ``%container``, which run cells in fresh, limited sandboxd containers
or in long-lived container sessions (:mod:`.session`); :mod:`.notebooks` runs a whole
notebook's cells in one session, through IPython's shell (``sbx notebook run``, pytest's
``--sandbox-notebooks``); :mod:`.provisioner` is the Jupyter kernel provisioner that
starts whole kernels in containers (``sandboxd-provisioner``), :mod:`.kernelpool` its
pools of started kernels. See ``docs/notebooks.md``."""
from __future__ import annotations

from typing import Any


def load_ipython_extension(ip: Any) -> None:
    from .magics import load
    load(ip)


def unload_ipython_extension(ip: Any) -> None:
    from .magics import unload
    unload(ip)
