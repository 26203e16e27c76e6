"""Where a two-cell nbclient run's wall time goes: the bench's "nbclient two-cell" run,
traced, split into phases, its kernelspecs taking turns sample by sample (so they share
the machine's load)::

    python -m bench.nbtrace [--runs 20] [--kernels pooled,local,sandboxed]

Needs root (it starts the bench's daemon). Timestamps come from wrappers put around
nbclient's and jupyter_client's own methods in this process only (their code is not
changed); the phases:

- ``start``: nbclient's ``start_kernel`` call (the provisioner's launch, then
  jupyter_client's ``asyncio.sleep(0.01)`` at the end of every start);
- ``ready, reply``: ``wait_for_ready`` until the kernel_info reply and its iopub status;
- ``ready, quiet``: the rest of ``wait_for_ready``, which reads iopub until it has been
  quiet for 0.2 s (jupyter_client/client.py, "Flush IOPub channel"), whatever the kernel;
- ``kernel_info``, ``cell 1``, ``cell 2``: nbclient's requests, each until its reply and
  idle status;
- ``shutdown``: nbclient's cleanup (interrupt, shutdown request, the manager's polls,
  cleanup, jupyter_client's second 10 ms sleep, the client's channels closed);
- ``other``: what lies between (creating the manager and the client, connecting).
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# The daemon's Python and the kernels' containers import this checkout too.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                         os.environ.get("PYTHONPATH")]))

from bench.cases_kernels import CELLS, _Kernels, _wait_for_the_pool  # noqa: E402
from bench.context import Bench, Settings  # noqa: E402

PHASES = ("start", "ready, reply", "ready, quiet", "kernel_info", "cell 1", "cell 2",
          "shutdown", "other", "total")


class Trace:
    """Timestamps of one run: method entries and exits, iopub and shell messages."""

    def __init__(self) -> None:
        self.t0 = 0.0
        self.marks: list[tuple[float, str]] = []

    def mark(self, what: str) -> None:
        self.marks.append((time.perf_counter() - self.t0, what))

    def wrap(self, cls: type, name: str) -> None:
        original = getattr(cls, name)
        label = f"{cls.__name__}.{name}"

        @functools.wraps(original)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.mark(f"> {label}")
            try:
                return await original(*args, **kwargs)
            finally:
                self.mark(f"< {label}")
        setattr(cls, name, wrapper)

    def install(self) -> None:
        from jupyter_client.asynchronous.client import AsyncKernelClient
        from jupyter_client.channels import AsyncZMQSocketChannel
        from nbclient.client import NotebookClient
        self.wrap(AsyncKernelClient, "wait_for_ready")
        for name in ("async_start_new_kernel", "async_wait_for_reply", "async_execute_cell", "_async_cleanup_kernel"):
            self.wrap(NotebookClient, name)
        get_msg = AsyncZMQSocketChannel.get_msg
        trace = self

        async def traced_get_msg(self: Any, timeout: float | None = None) -> Any:
            msg = await get_msg(self, timeout)      # Empty (a timeout) is not marked
            trace.mark(f"msg {msg['msg_type']}")
            return msg
        AsyncZMQSocketChannel.get_msg = traced_get_msg     # type: ignore[method-assign]

    def phases(self, total: float) -> dict[str, float]:
        seen: dict[str, list[float]] = {}
        for when, what in self.marks:
            seen.setdefault(what, []).append(when)

        def span(name: str, i: int = 0) -> float:
            return seen[f"< {name}"][i] - seen[f"> {name}"][i]
        ready_start = seen["> AsyncKernelClient.wait_for_ready"][0]
        ready_end = seen["< AsyncKernelClient.wait_for_ready"][0]
        last_msg = max(when for when, what in self.marks
                       if what.startswith("msg ") and ready_start < when < ready_end)
        out = {"start": span("NotebookClient.async_start_new_kernel"),
               "ready, reply": last_msg - ready_start,
               "ready, quiet": ready_end - last_msg,
               "kernel_info": span("NotebookClient.async_wait_for_reply"),
               "cell 1": span("NotebookClient.async_execute_cell", 0),
               "cell 2": span("NotebookClient.async_execute_cell", 1),
               "shutdown": span("NotebookClient._async_cleanup_kernel")}
        out["other"] = total - sum(out.values())
        out["total"] = total
        return out


def run_once(trace: Trace, name: str) -> dict[str, float]:
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    trace.marks.clear()
    trace.t0 = time.perf_counter()
    NotebookClient(nb, kernel_name=name, timeout=60).execute()
    total = time.perf_counter() - trace.t0
    if nb.cells[1].outputs[0].get("text") != "42\n":
        raise RuntimeError(f"the notebook's second cell showed {nb.cells[1].outputs}")
    return trace.phases(total)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20, help="samples per kernelspec")
    p.add_argument("--kernels", default="pooled,local",
                   help="kernelspecs, comma-separated: pooled, local, sandboxed (cold)")
    args = p.parse_args(argv)
    names = args.kernels.split(",")
    bench = Bench(Settings())
    trace = Trace()
    samples: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    load_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    try:
        bench.shared("kernels", _Kernels)
        trace.install()
        for name in names:
            run_once(trace, name)                   # warm-up; the pool's first fill
        for _ in range(args.runs):
            for name in names:
                if name == "pooled":
                    _wait_for_the_pool()
                else:
                    time.sleep(0.3)                 # the last run's exit has settled
                samples[name].append(run_once(trace, name))
    finally:
        bench.close()
    load_end = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"median ms of {args.runs} runs each, kernelspecs taking turns "
          f"(load {load_start} at the start, {load_end} at the end)")
    print(f"{'phase':<14}" + "".join(f"{n:>11}" for n in names))
    for phase in PHASES:
        print(f"{phase:<14}" + "".join(
            f"{statistics.median(s[phase] for s in samples[n]) * 1000:11.1f}"
            for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
