"""Jupyter kernels: ipykernel started by jupyter_client through the sandboxd kernel
provisioner (host image, network none, a 512 MiB limit; the bench's daemon) beside the
same ipykernel started locally (jupyter_client's LocalProvisioner). Both kernelspecs live
in the bench's temp dir.

- kernel start: ``KernelManager.start_kernel()`` until the client has the kernel_info
  reply (``wait_for_ready``); the shutdown after it is not counted;
- two-cell notebook: one ``nbclient.NotebookClient(nb, kernel_name=...).execute()`` of two
  small cells, kernel start and shutdown included (what ``papermill`` or a notebook test
  pays; nbclient owns its kernel manager, so it shuts the kernel down); the pooled row's
  kernelspec keeps two started kernels (``pool: 2``, ipython_ext/kernelpool.py): its
  warm-up run fills the pool, and each sample waits until the pool has refilled, as a
  notebook run that follows another by a second finds it;
- idle kernel memory: PSS of every process of one idle kernel (in the sandboxed case, of
  the container's init and kernel, found in its memory cgroup).

Kernel starts take most of a second, so these rows take ``process_runs // 5`` samples.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .cases import case
from .context import Bench, NotAvailable

START = "Jupyter kernel start (start_kernel to kernel_info reply)"
NOTEBOOK = "nbclient two-cell notebook, wall (kernel start, cells, shutdown)"
MEMORY = "idle Jupyter kernel, PSS of its processes"
SANDBOXED = "sandboxd provisioner (host image, network none)"
POOLED = "sandboxd provisioner, pooled kernels (pool: 2)"
LOCAL = "local ipykernel (LocalProvisioner)"
CELLS = ("x = 6 * 7", "print(x)")


class _Kernels:
    """Two kernelspecs in a private directory and the managers that start them."""

    def __init__(self, bench: Bench):
        try:
            import nbclient  # noqa: F401
            from jupyter_client.kernelspec import KernelSpecManager
            from importlib.metadata import entry_points
        except ImportError as exc:
            raise NotAvailable(f"{exc.name} is not installed") from None
        if not entry_points(group="jupyter_client.kernel_provisioners",
                            name="sandboxd-provisioner"):
            raise NotAvailable("the sandboxd-provisioner entry point is not installed "
                               "(pip install --no-deps -e .)")
        from ipython_ext.provisioner import kernel_json
        from . import ours
        daemon = bench.shared("daemon", ours.Daemon.start)
        root = bench.tmp / "kernels"
        specs = {"sandboxed": kernel_json({"host": daemon.host, "memory": "512m"}),
                 "pooled": kernel_json({"host": daemon.host, "memory": "512m", "pool": 2}),
                 "local": {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                                    "{connection_file}"],
                           "display_name": "Python 3", "language": "python"}}
        for name, spec in specs.items():
            (root / name).mkdir(parents=True)
            (root / name / "kernel.json").write_text(json.dumps(spec))
        self.specs = KernelSpecManager(kernel_dirs=[str(root)])
        self.daemon = daemon
        # Connection files and kernel directories in the bench's temp dir, removed with
        # it; nbclient finds the kernelspecs through JUPYTER_PATH (it makes its own
        # kernel manager).
        self._saved = {k: os.environ.get(k) for k in ("JUPYTER_RUNTIME_DIR", "JUPYTER_PATH")}
        os.environ["JUPYTER_RUNTIME_DIR"] = str(bench.tmp / "jupyter-runtime")
        os.environ["JUPYTER_PATH"] = str(bench.tmp)

    def close(self) -> None:
        from ipython_ext import kernelpool
        kernelpool.close_all()
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def manager(self, name: str, asynchronous: bool = False) -> Any:
        from jupyter_client.manager import AsyncKernelManager, KernelManager
        cls = AsyncKernelManager if asynchronous else KernelManager
        return cls(kernel_name=name, kernel_spec_manager=self.specs)


def _runs(bench: Bench) -> int:
    return max(3, bench.settings.process_runs // 5)


def _start(bench: Bench, name: str) -> list[float]:
    kernels = bench.shared("kernels", _Kernels)
    samples = []
    for i in range(1 + _runs(bench)):          # one warm-up: page cache, pyc files
        km = kernels.manager(name)
        start = time.perf_counter()
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            elapsed = time.perf_counter() - start
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
        if i:
            samples.append(elapsed)
    return samples


def _notebook(bench: Bench, name: str) -> list[float]:
    import nbformat
    from nbclient import NotebookClient
    kernels = bench.shared("kernels", _Kernels)
    samples = []
    for i in range(1 + _runs(bench)):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
        if name == "pooled":
            _wait_for_the_pool()
        start = time.perf_counter()
        NotebookClient(nb, kernel_name=name, timeout=60).execute()
        elapsed = time.perf_counter() - start
        if nb.cells[1].outputs[0].get("text") != "42\n":
            raise RuntimeError(f"the notebook's second cell showed {nb.cells[1].outputs}")
        if i:
            samples.append(elapsed)
    return samples


def _wait_for_the_pool() -> None:
    from ipython_ext import kernelpool
    deadline = time.monotonic() + 60
    while not all(len(p.ready) >= p.size for p in kernelpool._pools.values()):
        if time.monotonic() > deadline:
            raise RuntimeError("the kernel pool did not refill within 60 s")
        time.sleep(0.05)
    time.sleep(0.3)             # the refill's start-up work has settled


def _pss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def _memory(bench: Bench, name: str) -> list[float]:
    kernels = bench.shared("kernels", _Kernels)
    samples: list[float] = []
    for _ in range(3):
        km = kernels.manager(name)
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            time.sleep(1.0)                      # idle: what it holds after start-up
            if name == "local":
                pids = [km.provisioner.pid]
            else:
                container = km.provisioner._container_id
                procs = Path(f"/sys/fs/cgroup/memory/{kernels.daemon.cgroup_parent}/"
                             f"{container}/cgroup.procs")
                pids = [int(p) for p in procs.read_text().split()]
            samples.append(float(sum(_pss(pid) for pid in pids)))
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    return samples


@case(START, SANDBOXED, reference=True, count="")
def start_sandboxed(bench: Bench, n: int) -> list[float]:
    return _start(bench, "sandboxed")


@case(START, LOCAL, count="")
def start_local(bench: Bench, n: int) -> list[float]:
    return _start(bench, "local")


@case(NOTEBOOK, SANDBOXED, reference=True, count="")
def notebook_sandboxed(bench: Bench, n: int) -> list[float]:
    return _notebook(bench, "sandboxed")


@case(NOTEBOOK, POOLED, count="")
def notebook_pooled(bench: Bench, n: int) -> list[float]:
    return _notebook(bench, "pooled")


@case(NOTEBOOK, LOCAL, count="")
def notebook_local(bench: Bench, n: int) -> list[float]:
    return _notebook(bench, "local")


@case(MEMORY, SANDBOXED, unit="MiB", reference=True, count="")
def memory_sandboxed(bench: Bench, n: int) -> list[float]:
    return _memory(bench, "sandboxed")


@case(MEMORY, LOCAL, unit="MiB", count="")
def memory_local(bench: Bench, n: int) -> list[float]:
    return _memory(bench, "local")
