"""The harness itself: a default container is reachable and reports its own status."""
from __future__ import annotations


def test_probe_runs_in_a_container(secure_daemon):
    out = secure_daemon.sbx("run", "--rm", "busybox", "sh", "-c", "echo $$", check=True).out
    assert out.strip() == "1"
