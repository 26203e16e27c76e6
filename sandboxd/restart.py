"""Restart policies (``--restart``): which exits bring a container back, and when.

Docker's rules (its ``restartmanager``): ``no`` never; ``always`` after every exit;
``unless-stopped`` likewise unless a user stopped it; ``on-failure[:N]`` after a non-zero
exit, at most N times (0: no cap). A user's stop or kill cancels the policy until the
next start by a user, which also zeroes the restart count. The delay before a restart
starts at 100 ms and doubles after each quick exit, up to a minute; a run of 10 seconds
or more resets it. While it waits the container is ``restarting``.

When the daemon starts, ``always`` containers come back, and ``unless-stopped`` ones
that no user stopped; ``on-failure`` ones do not (Docker's documented behaviour).
"""
from __future__ import annotations

from .model import ContainerRecord

FIRST_DELAY = 0.1            # seconds
MAX_DELAY = 60.0
RESET_AFTER = 10.0           # a run this long resets the delay


def should_restart(record: ContainerRecord) -> bool:
    """After ``record``'s exit (its final state), does its policy restart it?"""
    h, s = record.config.host, record.state
    if s.manually_stopped:
        return False
    if h.restart_policy in ("always", "unless-stopped"):
        return True
    if h.restart_policy == "on-failure":
        return s.exit_code != 0 and (h.restart_retries == 0
                                     or record.restart_count < h.restart_retries)
    return False


def next_delay(previous: float, ran: float) -> float:
    """The wait before the next restart: ``previous`` doubled (the first 100 ms), back
    to 100 ms after a run of ``ran`` >= 10 seconds, never above a minute."""
    if ran >= RESET_AFTER or previous <= 0:
        return FIRST_DELAY
    return min(previous * 2, MAX_DELAY)


def restores(record: ContainerRecord) -> bool:
    """Does the daemon's start bring this (stopped) container back?"""
    policy = record.config.host.restart_policy
    return policy == "always" or (policy == "unless-stopped"
                                  and not record.state.manually_stopped)
