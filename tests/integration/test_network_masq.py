"""``--ip-masq`` off (as every test daemon runs): the host's forwarding is left as it
was and the only netfilter rules are the daemon's isolation chain (no nat chain). The
rule sets are checked in tests/unit/test_network_unit.py; isolation with forwarding on
in tests/security/test_network_checks.py."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness import Daemon

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
# Read when this module is collected, before a daemon of this run can have started.
FORWARD_BEFORE = IP_FORWARD.read_text()


def netfilter_rules() -> str:
    """The host's rules (``iptables-save`` less its comment lines, which carry a time)."""
    out = subprocess.run(["iptables-save"], capture_output=True, text=True,
                         check=True).stdout
    return "".join(line for line in out.splitlines(keepends=True)
                   if not line.startswith("#"))


@pytest.mark.skipif(shutil.which("iptables-save") is None,
                    reason="iptables-save is not installed: cannot read the rules")
def test_with_ip_masq_off_only_the_isolation_chain_is_there(daemon: Daemon) -> None:
    assert "--no-ip-masq" in daemon.proc.args
    daemon.sbx("network", "create", "masq-off", check=True)
    try:
        daemon.sbx("run", "--rm", "--network", "masq-off", "busybox", "true", check=True)
        daemon.sbx("run", "--rm", "busybox", "true", check=True)
    finally:
        daemon.sbx("network", "rm", "masq-off", check=True)
    assert IP_FORWARD.read_text() == FORWARD_BEFORE
    ours = [line for line in netfilter_rules().splitlines()
            if f"{daemon.prefix.upper()}-" in line]
    chain = f"{daemon.prefix.upper()}-ISOLATION"
    assert f"-A FORWARD -j {chain}" in ours, daemon.log()
    assert all(chain in line for line in ours), ours      # no nat chain of ours


@pytest.mark.skipif(shutil.which("iptables-restore") is None,
                    reason="iptables-restore is not installed: cannot parse the rule set")
def test_the_rule_set_parses_in_iptables_restore_without_committing() -> None:
    """``--test`` parses and builds the rule set and commits nothing (checked)."""
    from sandboxd.runner import masq
    text = masq.ruleset("sbxq", [("sbxq0", "172.17.0.0/16", False),
                                 ("sbxq-1", "10.216.1.0/24", False),
                                 ("sbxq-2", "10.216.2.0/24", True)], masq=True,
                        uplinks=["lo"])
    before = netfilter_rules()
    done = subprocess.run(["iptables-restore", "--test", "--noflush"], input=text,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "SBXQ-" not in netfilter_rules() and "SBXQ-" not in before


MASQ_IN_PRIVATE_NETNS = """
import json, subprocess, sys
from sandboxd.runner import masq
bridges = [("sbxq0", "172.17.0.0/16", False), ("sbxq-2", "10.216.2.0/24", True)]
masq.apply("sbxq", bridges, True)
masq.apply("sbxq", bridges[:1], True)           # again: replaced, not appended
applied = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
masq.remove("sbxq")
removed = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
print(json.dumps({"applied": applied, "removed": removed}))
"""


@pytest.mark.skipif(shutil.which("iptables-restore") is None or shutil.which("unshare") is None,
                    reason="needs iptables-restore and unshare")
def test_apply_and_remove_in_a_private_network_namespace() -> None:
    """The commands for real, in a network namespace of its own (no interfaces but lo,
    no traffic): its netfilter tables are its own, the host's stay as they were."""
    import json
    import os
    import sys
    host_before = netfilter_rules()
    done = subprocess.run(["unshare", "--net", sys.executable, "-c", MASQ_IN_PRIVATE_NETNS],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    applied = out["applied"].splitlines()
    assert "-A POSTROUTING -j SBXQ-POSTROUTING" in applied
    assert "-A FORWARD -j SBXQ-ISOLATION" in applied
    assert applied.count("-A POSTROUTING -j SBXQ-POSTROUTING") == 1
    assert "-A SBXQ-POSTROUTING -s 172.17.0.0/16 ! -o sbxq0 -j MASQUERADE" in applied
    assert not any("sbxq-2" in line for line in applied)      # the second apply replaced
    assert "SBXQ" not in out["removed"]
    assert netfilter_rules() == host_before and "SBXQ" not in host_before
