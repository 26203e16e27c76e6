"""Fuzzing the daemon over its socket (issue 13; CHECKS.md 28 and 29): garbage frames for
the decoder and well-formed requests with hostile params for every operation.

A quick run by default (``SANDBOXD_FUZZ_FRAMES``, default 12,000 frames); the long run is
``SANDBOXD_FUZZ_FRAMES=1000000``. The daemon runs in its own network namespace
(``unshare --net``) with no image: a random image or registry name can then reach nothing
beyond this machine, and no container starts, so every request exercises parsing and
validation. The daemon must never answer ``internal``, log a traceback or die; after the
run its open fds are back to where they were (a leaked request task keeps its
connection's fd), its threads stay bounded and its RSS grows by less than 48 MiB.
Figures are printed (``-s``) and go to docs/security.md.
"""
from __future__ import annotations

import math
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz
from harness import Daemon, wait_until

FRAMES = int(os.environ.get("SANDBOXD_FUZZ_FRAMES", "12000"))
BATCH = 40                      # requests per connection (below max-inflight, 64)
OPS = fuzz.operations()


@pytest.fixture(scope="module")
def fuzz_daemon():
    d = Daemon(wrap=("unshare", "--net")).start()
    try:
        yield d
    finally:
        d.stop()                # exit 0, nothing left, no traceback in the log


def test_every_registered_operation_is_fuzzed(fuzz_daemon):
    """The op table read from the source is what the daemon serves: an unknown op names
    the groups, an unknown op of a group names that group's ops."""
    groups = _known(fuzz_daemon.sock, "no-such-op").split("knows operations in: ")[1]
    served = set()
    for group in groups.split(", "):
        served |= set(_known(fuzz_daemon.sock, f"{group}.no-such-op")
                      .split(" knows: ")[1].split(", "))
    assert served == set(OPS), served ^ set(OPS)


def _known(path: str, op: str) -> str:
    import socket as _s
    from sandboxd import protocol
    sock = _s.socket(_s.AF_UNIX)
    sock.connect(path)
    sock.sendall(protocol.encode(protocol.hello("fuzz/1"))
                 + protocol.encode(protocol.request(1, op)))
    frames = protocol.FrameBuffer()
    got: list[dict] = []
    while len(got) < 2:
        got += frames.feed(sock.recv(65536))
    sock.close()
    return got[1]["error"]["message"]


def test_fuzz_requests_and_frames(fuzz_daemon):
    d = fuzz_daemon
    pid = d.proc.pid
    tally = fuzz.Tally()
    requests = fuzz.Tally()

    # warm-up: a first pass through every op (imports, caches, allocator pools)
    fuzz.send_batch(d.sock, [(op, {"until": 1} if op in fuzz.ENDLESS_OPS else {})
                             for op in sorted(OPS)], requests)
    before = fuzz.proc_figures(pid)
    started = time.monotonic()
    # Each example is two connections: BATCH requests (2 frames each: the request and a
    # stdin_eof, after a hello) and one garbage frame (after a hello, or not). 3% more
    # examples than the mean asks for: the run reaches FRAMES whatever the draws.
    examples = max(1, math.ceil(FRAMES * 1.03 / (2 * BATCH + 1 + 1.5)))

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(fuzz.requests(OPS), min_size=BATCH, max_size=BATCH),
           garbage=fuzz.garbage, greet=st.booleans())
    def run(batch, garbage, greet):
        fuzz.send_batch(d.sock, batch, requests)
        fuzz.send_garbage(d.sock, garbage, greet, tally)
        assert d.proc.poll() is None, f"the daemon died:\n{d.log()}"

    run()
    elapsed = time.monotonic() - started
    wait_until(lambda: fuzz.proc_figures(pid)["fds"] <= before["fds"], 20,
               "the daemon's fds to return to their count before the run")
    after = fuzz.proc_figures(pid)
    frames = tally.frames + requests.frames
    print(f"\nfuzz: {frames} frames ({requests.replies} request replies, "
          f"{tally.frames} garbage-connection frames) in {elapsed:.1f}s; "
          f"codes {dict(sorted(requests.codes.items()))}; garbage replies "
          f"{dict(sorted(tally.codes.items()))}; unanswered {requests.unanswered}; "
          f"before {before}; after {after}")
    assert not requests.internal + tally.internal, requests.internal + tally.internal
    assert frames >= FRAMES
    assert after["threads"] <= before["threads"] + 8
    assert after["rss_kib"] - before["rss_kib"] < 48 * 1024, (before, after)
    log = d.log(1 << 30)
    assert "Traceback" not in log and "internal error" not in log, log[-4000:]
