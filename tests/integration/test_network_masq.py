"""``--ip-masq`` off (as every test daemon runs): the host's forwarding and netfilter
rules are left exactly as they were. The rule set it would install is checked in
tests/unit/test_network_unit.py; no test turns forwarding on."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import Daemon

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
# Read when this module is collected, before a daemon of this run can have started.
FORWARD_BEFORE = IP_FORWARD.read_text()


def netfilter_rules() -> str:
    return subprocess.run(["iptables-save"], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.skipif(shutil.which("iptables-save") is None,
                    reason="iptables-save is not installed: cannot read the rules")
def test_with_ip_masq_off_nothing_is_touched(daemon: Daemon) -> None:
    assert "--no-ip-masq" in daemon.proc.args
    daemon.sbx("network", "create", "masq-off", check=True)
    try:
        daemon.sbx("run", "--rm", "--network", "masq-off", "busybox", "true", check=True)
        daemon.sbx("run", "--rm", "busybox", "true", check=True)
    finally:
        daemon.sbx("network", "rm", "masq-off", check=True)
    assert IP_FORWARD.read_text() == FORWARD_BEFORE
    rules = netfilter_rules()
    assert f"{daemon.prefix.upper()}-" not in rules       # no chain, no jump of ours


@pytest.mark.skipif(shutil.which("iptables-restore") is None,
                    reason="iptables-restore is not installed: cannot parse the rule set")
def test_the_rule_set_parses_in_iptables_restore_without_committing() -> None:
    """``--test`` parses and builds the rule set and commits nothing (checked)."""
    from sandboxd.runner import masq
    text = masq.ruleset("sbxq", [("sbxq0", "172.17.0.0/16", False),
                                 ("sbxq-1", "10.216.1.0/24", False),
                                 ("sbxq-2", "10.216.2.0/24", True)])
    before = netfilter_rules()
    done = subprocess.run(["iptables-restore", "--test", "--noflush"], input=text,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "SBXQ-" not in netfilter_rules() and "SBXQ-" not in before
