"""Netfilter rules of a daemon's bridges: isolation always, masquerade with ``--ip-masq``.

Isolation is a property of each network, not of the host's ``ip_forward``: another
daemon (or anything else) may turn forwarding on, and then the kernel routes between
every bridge of the machine. So the network server installs, for every bridge network
of its daemon, whether ``--ip-masq`` is on or not, a filter chain hooked first into
``FORWARD`` (the idea of Docker's DOCKER-ISOLATION-STAGE-1/2, with names of this
daemon's network prefix, so two daemons never touch each other's rules):

- ``<PREFIX>-ISOLATION`` (filter), per bridge, in this order: traffic within the
  bridge passes (it only shows here with ``br_netfilter``); with ``--ip-masq`` and a
  non-internal network, traffic out to an uplink (an interface carrying a default
  route, read at each apply) passes and replies from it (conntrack
  RELATED,ESTABLISHED) come back; everything else forwarded into or out of the bridge
  is dropped: other bridges of this daemon, of another daemon, bridges nobody's daemon
  made. Published ports need no rule: they go through the daemon's userland proxy
  (:mod:`sandboxd.ports`), which is local traffic, not forwarded. An internal network
  has no way out at all.
- ``<PREFIX>-POSTROUTING`` (nat), only with ``--ip-masq``: traffic from a non-internal
  network's subnet leaving by another interface is masqueraded.

Each daemon's chain only matches its own bridges, so the chains of several daemons
compose: traffic between daemon A's and B's bridges is dropped by both.

Backend: the rules go where the host keeps its rules, as Docker does: of
``iptables-legacy`` and ``iptables-nft`` the one with more rules in use (ties: the
``iptables`` the system's alternatives point to). Both tables are evaluated by the
kernel, so a DROP works in either; an ACCEPT only matters next to the host's own
rules, hence the detection. ``nft`` through a binding was not taken: Debian 12 has no
``nft`` command and no maintained Python binding in the venv, while iptables is there
on every Docker host. The whole rule set of our chains is replaced in one
``iptables-restore --noflush`` transaction (a chain declared in the input is flushed
first), which also reconciles at start-up: stale rules of this prefix go. The rest of
the host's rules are left as they are. :func:`ruleset` is pure and unit-tested;
:func:`apply` and :func:`remove` run the commands.
"""
from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Sequence

from ..errors import SetupFailed

__all__ = ["IP_FORWARD", "chains", "ruleset", "uplinks", "apply", "remove", "backend"]

IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"

Bridge = tuple[str, str, bool]          # (bridge link name, subnet CIDR, internal)


def chains(prefix: str) -> dict[str, tuple[str, str]]:
    """Our chains: ``{table: (our chain, the built-in chain that jumps to it)}``."""
    return {"nat": (f"{prefix.upper()}-POSTROUTING", "POSTROUTING"),
            "filter": (f"{prefix.upper()}-ISOLATION", "FORWARD")}


def ruleset(prefix: str, bridges: Sequence[Bridge], masq: bool,
            uplinks: Sequence[str] = ()) -> str:
    """``iptables-restore --noflush`` input that sets our chains for ``bridges``.
    Without ``masq`` only the filter table is written (no nat chain of ours exists)."""
    nat, fwd = chains(prefix)["nat"][0], chains(prefix)["filter"][0]
    nat_rules: list[str] = []
    fwd_rules: list[str] = []
    for bridge, subnet, internal in bridges:
        fwd_rules.append(f"-A {fwd} -i {bridge} -o {bridge} -j ACCEPT")
        if masq and not internal:
            nat_rules.append(f"-A {nat} -s {subnet} ! -o {bridge} -j MASQUERADE")
            for up in uplinks:
                if up == bridge:
                    continue
                fwd_rules += [f"-A {fwd} -i {bridge} -o {up} -j ACCEPT",
                              f"-A {fwd} -i {up} -o {bridge} -m conntrack "
                              f"--ctstate RELATED,ESTABLISHED -j ACCEPT"]
        fwd_rules += [f"-A {fwd} -i {bridge} -j DROP", f"-A {fwd} -o {bridge} -j DROP"]
    lines = ["*filter", f":{fwd} - [0:0]", *fwd_rules, "COMMIT"]
    if masq:
        lines += ["*nat", f":{nat} - [0:0]", *nat_rules, "COMMIT"]
    return "\n".join([*lines, ""])


def uplinks() -> list[str]:
    """Interfaces carrying an IPv4 default route (where masqueraded traffic leaves)."""
    names: list[str] = []
    with open("/proc/net/route") as f:
        next(f, None)
        for line in f:
            fields = line.split()
            if len(fields) > 7 and fields[1] == "00000000" and fields[7] == "00000000" \
                    and fields[0] not in names:
                names.append(fields[0])
    return names


def apply(prefix: str, bridges: Sequence[Bridge], masq: bool) -> None:
    """Replace our chains' rules and make sure the built-in chains jump to them first.
    Without ``masq`` a nat chain of ours left by an earlier run is removed."""
    tool = backend()
    ups = uplinks() if masq else []
    _run([f"{tool}-restore", "-w", "--noflush"], ruleset(prefix, bridges, masq, ups))
    for table, (ours, builtin) in chains(prefix).items():
        if table == "nat" and not masq:
            _remove_chain(tool, table, ours, builtin)
            continue
        jump = [builtin, "-j", ours]
        if subprocess.run([tool, "-w", "-t", table, "-C", *jump],
                          capture_output=True).returncode:
            _run([tool, "-w", "-t", table, "-I", *jump])


def remove(prefix: str) -> None:
    """Remove the jumps and our chains (what is not there is skipped)."""
    tool = backend()
    for table, (ours, builtin) in chains(prefix).items():
        _remove_chain(tool, table, ours, builtin)


def _remove_chain(tool: str, table: str, ours: str, builtin: str) -> None:
    while subprocess.run([tool, "-w", "-t", table, "-D", builtin, "-j", ours],
                         capture_output=True).returncode == 0:
        pass
    for flag in ("-F", "-X"):
        subprocess.run([tool, "-w", "-t", table, flag, ours], capture_output=True)


@functools.cache
def backend() -> str:
    """Path of the ``iptables`` to use: legacy or nft, whichever holds more rules."""
    default = _tool("iptables")
    counts: dict[str, int] = {}
    for flavour in ("iptables-legacy", "iptables-nft"):
        path = shutil.which(flavour) or shutil.which(flavour, path="/usr/sbin:/sbin")
        if path is None:
            continue
        save = subprocess.run([f"{path}-save"], capture_output=True, text=True)
        if save.returncode == 0:
            counts[path] = sum(1 for line in save.stdout.splitlines()
                               if line.startswith("-A "))
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return default
    return ranked[0][0]


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise SetupFailed(f"isolating bridge networks needs {name} (Debian: apt-get "
                          f"install iptables)")
    return path


def _run(argv: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if done.returncode:
        raise SetupFailed(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
