"""Containers reaching out: forwarding and masquerade for bridge networks (``--ip-masq``).

Off by default in the test suite and CI (``--no-ip-masq``, or ``SANDBOXD_IP_MASQ=0``);
on, as Docker's ``--ip-masq``, for a daemon users run. The network server
(:mod:`sandboxd.runner.netserver`) applies it: IPv4 forwarding on, and two chains of
ours, hooked into the built-in ones by one jump rule each:

- ``<PREFIX>-POSTROUTING`` (nat): traffic from a non-internal network's subnet
  leaving by any other interface is masqueraded (source NAT to the host's address).
- ``<PREFIX>-FORWARD`` (filter): per bridge, in this order: traffic within the bridge
  passes; into any other bridge of ours it is dropped (networks stay isolated from
  each other, as with forwarding off); out of the bridge it passes; into it only
  replies (conntrack RELATED,ESTABLISHED) pass, the rest is dropped: nothing outside
  opens a connection to a container (published ports go through the daemon's proxy,
  :mod:`sandboxd.ports`, not through forwarding). An internal network neither
  sends out nor receives.

Debian 12 has ``iptables`` (the nft backend) and no ``nft`` command, so the rules
are written for ``iptables-restore --noflush``: the whole rule set of our chains is
replaced in one transaction (a chain declared in the input is flushed first), the
rest of the host's rules are left as they are. :func:`ruleset` is pure and
unit-tested; :func:`apply` and :func:`remove` run the commands.
"""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

from ..errors import SetupFailed

__all__ = ["IP_FORWARD", "chains", "ruleset", "apply", "remove"]

IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"

Bridge = tuple[str, str, bool]          # (bridge link name, subnet CIDR, internal)


def chains(prefix: str) -> dict[str, tuple[str, str]]:
    """Our chains: ``{table: (our chain, the built-in chain that jumps to it)}``."""
    return {"nat": (f"{prefix.upper()}-POSTROUTING", "POSTROUTING"),
            "filter": (f"{prefix.upper()}-FORWARD", "FORWARD")}


def ruleset(prefix: str, bridges: Sequence[Bridge]) -> str:
    """``iptables-restore --noflush`` input that sets our chains for ``bridges``."""
    (nat, _), (fwd, _) = chains(prefix)["nat"], chains(prefix)["filter"]
    nat_rules: list[str] = []
    fwd_rules: list[str] = []
    names = [b[0] for b in bridges]
    for bridge, subnet, internal in bridges:
        if internal:
            fwd_rules += [f"-A {fwd} -i {bridge} ! -o {bridge} -j DROP",
                          f"-A {fwd} -o {bridge} ! -i {bridge} -j DROP"]
            continue
        nat_rules.append(f"-A {nat} -s {subnet} ! -o {bridge} -j MASQUERADE")
        fwd_rules.append(f"-A {fwd} -i {bridge} -o {bridge} -j ACCEPT")
        fwd_rules += [f"-A {fwd} -i {bridge} -o {other} -j DROP"
                      for other in names if other != bridge]
        fwd_rules += [f"-A {fwd} -i {bridge} -j ACCEPT",
                      f"-A {fwd} -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED "
                      f"-j ACCEPT",
                      f"-A {fwd} -o {bridge} -j DROP"]
    return "\n".join(["*nat", f":{nat} - [0:0]", *nat_rules, "COMMIT",
                      "*filter", f":{fwd} - [0:0]", *fwd_rules, "COMMIT", ""])


def apply(prefix: str, bridges: Sequence[Bridge]) -> None:
    """Replace our chains' rules and make sure the built-in chains jump to them."""
    _run([_tool("iptables-restore"), "-w", "--noflush"], ruleset(prefix, bridges))
    iptables = _tool("iptables")
    for table, (ours, builtin) in chains(prefix).items():
        jump = [builtin, "-j", ours]
        if subprocess.run([iptables, "-w", "-t", table, "-C", *jump],
                          capture_output=True).returncode:
            _run([iptables, "-w", "-t", table, "-I", *jump])


def remove(prefix: str) -> None:
    """Remove the jumps and our chains (what is not there is skipped)."""
    iptables = _tool("iptables")
    for table, (ours, builtin) in chains(prefix).items():
        while subprocess.run([iptables, "-w", "-t", table, "-D", builtin, "-j", ours],
                             capture_output=True).returncode == 0:
            pass
        for flag in ("-F", "-X"):
            subprocess.run([iptables, "-w", "-t", table, flag, ours], capture_output=True)


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise SetupFailed(f"--ip-masq needs {name} (Debian: apt-get install iptables), "
                          f"or run the daemon with --no-ip-masq")
    return path


def _run(argv: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if done.returncode:
        raise SetupFailed(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
