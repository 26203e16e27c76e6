"""The remaining run flags: --sysctl, --group-add, --cidfile, --label-file, --pull,
--device, --cpuset-cpus (its effect: tests/security/test_limit_checks.py); a large
environment."""
from __future__ import annotations

import pytest

from harness import Daemon, inspect, running
from sandboxd.errors import InvalidArgument


@pytest.fixture(scope="module")
def d():
    with running() as daemon:
        yield daemon


def test_sysctl_namespaced_applies(d: Daemon) -> None:
    r = d.sbx("run", "--rm", "--sysctl", "net.ipv4.ip_unprivileged_port_start=80",
              "--sysctl", "kernel.shmmni=1234", "busybox", "cat",
              "/proc/sys/net/ipv4/ip_unprivileged_port_start", "/proc/sys/kernel/shmmni",
              check=True)
    assert r.out.split() == ["80", "1234"]
    host = open("/proc/sys/kernel/shmmni").read().strip()
    assert host != "1234"                                # the host's is untouched
    r = d.sbx("run", "--rm", "--sysctl", "vm.swappiness=1", "busybox", "true")
    assert r.returncode == 125 and "not namespaced" in r.err
    r = d.sbx("run", "--rm", "--net", "host", "--sysctl", "net.ipv4.ip_forward=1",
              "busybox", "true")
    assert r.returncode == 125 and "host network namespace" in r.err


def test_group_add(d: Daemon) -> None:
    r = d.sbx("run", "--rm", "--user", "1000:1000", "--group-add", "27", "--group-add",
              "nogroup", "busybox", "id", "-G", check=True)
    groups = r.out.split()
    assert groups[0] == "1000" and "27" in groups and "65534" in groups   # by name too
    r = d.sbx("run", "--rm", "--group-add", "nosuchgroup", "busybox", "true")
    assert r.returncode != 0 and "no group 'nosuchgroup'" in r.err


def test_cidfile_and_label_file(d: Daemon, tmp_path) -> None:
    cid = tmp_path / "cid"
    labels = tmp_path / "labels"
    labels.write_text("# a comment\n\nteam=db\nflag\n")
    d.sbx("run", "-d", "--cidfile", str(cid), "--label-file", str(labels), "--label",
          "team=web", "--name", "cidc", "busybox", "sleep", "60", check=True)
    doc = inspect(d, "cidc")
    assert cid.read_text() == doc["Id"]
    assert doc["Config"]["Labels"]["team"] == "web" and doc["Config"]["Labels"]["flag"] == ""
    r = d.sbx("run", "-d", "--cidfile", str(cid), "busybox", "true")
    assert r.returncode == 125 and "Container ID file found" in r.err
    cid2 = tmp_path / "cid2"
    r = d.sbx("run", "--rm", "--cidfile", str(cid2), "busybox", "true", check=True)
    assert len(cid2.read_text()) == 64
    d.sbx("rm", "-f", "cidc", check=True)


def test_pull_never_and_bad_policy(d: Daemon) -> None:
    r = d.sbx("run", "--rm", "--pull", "never", "sbx-not-here", "true")
    assert r.returncode == 125 and "No such image: sbx-not-here" in r.err
    assert d.sbx("run", "--rm", "--pull", "never", "busybox", "true").returncode == 0
    r = d.sbx("run", "--rm", "--pull", "sometimes", "busybox", "true")
    assert r.returncode == 125 and "invalid pull option" in r.err


def test_device_refused_and_cpuset_checked(d: Daemon) -> None:
    assert d.sbx("run", "--rm", "--device", "/dev/null", "busybox", "true").returncode == 0
    r = d.sbx("run", "--rm", "--device", "/dev/sda", "busybox", "true")
    assert r.returncode == 125 and "only the default devices" in r.err
    r = d.sbx("run", "--rm", "--cpuset-cpus", "1-0", "busybox", "true")
    assert r.returncode == 125 and "invalid value '1-0' for cpuset cpus" in r.err
    assert d.sbx("inspect", "-f", "{{.HostConfig.CpusetCpus}}", d.sbx(
        "create", "--cpuset-cpus", "0", "busybox", "true", check=True).out.strip(),
        check=True).out.strip() == "0"


def test_an_environment_of_hundreds_of_kib(d: Daemon) -> None:
    """execve takes strings of up to 128 KiB and ~2 MiB in all; the runner's channel
    carried packets of ~208 KiB only (the socket's default send buffer): a spec past it
    was an internal error (EMSGSIZE). Past the channel's 1 MiB: a clear error."""
    env = [f"{name}={name.lower() * 100_000}" for name in ("A", "B", "C")]
    with d.client() as client:
        result = client.run("busybox", ["sh", "-c", 'echo ${#A} ${#B} ${#C}'], env=env)
        assert result.stdout == b"100000 100000 100000\n"
        huge = [f"V{i}={'v' * 100_000}" for i in range(12)]
        with pytest.raises(InvalidArgument, match="at most 1048576"):
            client.run("busybox", ["true"], env=huge)
