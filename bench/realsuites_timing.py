"""A pytest plugin for ``bench/realsuites.py``: the wall time of each item's whole
run-test protocol, as the pytest process that runs it sees it (under ``--sandbox``:
the request, the test in its container, the reports; under xdist: in each worker),
appended as one JSON line per item to the file ``$REALSUITES_TIMINGS`` names. The same
measure in a plain run and a sandboxed one gives each test's added time exactly."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Generator

import pytest


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Any) -> Generator[None, Any, None]:
    began = time.perf_counter()
    yield
    seconds = time.perf_counter() - began
    path = os.environ.get("REALSUITES_TIMINGS")
    if path:
        with open(path, "a") as f:          # one short O_APPEND write per line
            f.write(json.dumps({"nodeid": item.nodeid, "seconds": seconds,
                                "pid": os.getpid()}) + "\n")
