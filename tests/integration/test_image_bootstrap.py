"""``sbx image bootstrap``: first images without a registry.

busybox comes from this machine's busybox-static. debian runs the real ``mmdebstrap``:
offline, from a one-package apt repository made here (``--variant=extract``, a
``copy://`` source), which exercises the whole path (mmdebstrap, the spool, the import,
the image's CMD) in about a second; the full ``debian`` image from this machine's apt
sources downloads from them, so it runs only when ``SBX_TEST_DEBIAN=1`` asks for it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness import Daemon, running
from sandboxd import rootfs
from sandboxd.images import oci


@pytest.fixture(scope="module")
def d():
    with running(busybox=False) as daemon:
        yield daemon


def test_busybox_from_busybox_static(d: Daemon):
    if not os.path.exists(rootfs.BUSYBOX):
        pytest.skip(f"{rootfs.BUSYBOX} is missing (apt-get install busybox-static)")
    made = d.sbx("image", "bootstrap", "busybox", check=True)
    assert made.out.startswith("sha256:")
    assert d.sbx("run", "--rm", "busybox", "echo", "hi", check=True).out == "hi\n"
    assert d.sbx("run", "--rm", "-i", "busybox", check=True, input="echo from sh\n").out == \
        "from sh\n"                                      # CMD ["sh"], as Docker Hub's
    d.sbx("image", "bootstrap", "-t", "bb:mine", "busybox", check=True)
    layers = [d.sbx("image", "inspect", "--format", "{{json .RootFS.Layers}}", name,
                    check=True).out for name in ("busybox", "bb:mine")]
    assert layers[0] == layers[1]                         # the same layer, another name
    assert d.sbx("run", "--rm", "bb:mine", "cat", "/etc/passwd", check=True).out \
        .startswith("root:x:0:0:")
    bad = d.sbx("image", "bootstrap", "busybox:1.36")
    assert bad.returncode == 1 and "give no :TAG" in bad.err
    other = d.sbx("image", "bootstrap", "alpine")
    assert other.returncode == 1 and \
        "bootstrap makes debian[:SUITE], busybox or ryuk" in other.err
    d.sbx("rmi", "bb:mine", "busybox", check=True)


def _repository(where: Path) -> Path:
    """A flat apt repository with one package, sbx-hello (a static busybox as /bin/sh
    and a /hello), its Packages index written here."""
    pkg = where / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "bin").mkdir()
    shutil.copy2(rootfs.BUSYBOX, pkg / "bin" / "busybox")
    (pkg / "bin" / "sh").symlink_to("busybox")
    (pkg / "hello").write_text("hello from a deb\n")
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    control = (f"Package: sbx-hello\nVersion: 1.0\nArchitecture: {arch}\n"
               f"Maintainer: sbx <sbx@localhost>\nDescription: sbx bootstrap test\n")
    (pkg / "DEBIAN" / "control").write_text(control)
    repo = where / "repo"
    repo.mkdir()
    deb = repo / f"sbx-hello_1.0_{arch}.deb"
    subprocess.run(["dpkg-deb", "-b", "--root-owner-group", str(pkg), str(deb)],
                   check=True, capture_output=True)
    data = deb.read_bytes()
    (repo / "Packages").write_text(
        control.replace("Description:", f"Filename: ./{deb.name}\nSize: {len(data)}\n"
                        f"SHA256: {hashlib.sha256(data).hexdigest()}\nDescription:"))
    return repo


def test_debian_with_mmdebstrap_from_a_local_repository(d: Daemon, tmp_path: Path):
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (apt-get install mmdebstrap)")
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is missing: the test makes its one-package repository with it")
    repo = _repository(tmp_path)
    source = f"deb [trusted=yes] copy://{repo} ./"
    made = d.sbx("image", "bootstrap", "-q", "--variant", "extract", "--include",
                 "sbx-hello", "--source", source, "-t", "sbx-deb:1", "debian:bookworm",
                 timeout=120)
    assert made.returncode == 0, made.err
    assert not made.err                          # no device nodes refused, nothing said
    assert d.sbx("run", "--rm", "sbx-deb:1", "/bin/sh", "-c", "cat /hello",
                 check=True).out == "hello from a deb\n"
    doc = d.sbx("image", "inspect", "--format",
                "{{json .Config.Cmd}} {{.Architecture}}", "sbx-deb:1", check=True).out
    assert doc.split() == ['["bash"]', oci.architecture()]
    history = d.sbx("history", "--format", "{{.Comment}}", "sbx-deb:1", check=True).out
    assert "sbx image bootstrap debian:bookworm (mmdebstrap --variant=extract)" in history

    # mmdebstrap failing (a package no source has): said, and nothing imported
    before = d.sbx("images", "-q", check=True).out
    failed = d.sbx("image", "bootstrap", "-q", "--variant", "extract", "--include",
                   "sbx-not-there", "--source", source, "-t", "sbx-deb:2",
                   "debian:bookworm", timeout=120)
    assert failed.returncode == 1
    assert "mmdebstrap exited with status" in failed.err and "nothing was imported" in \
        failed.err
    assert d.sbx("images", "-q", check=True).out == before
    bad = d.sbx("image", "bootstrap", "--variant", "tiny", "debian")
    assert bad.returncode == 1 and "--variant 'tiny': one of extract" in bad.err
    d.sbx("rmi", "sbx-deb:1", check=True)


@pytest.mark.skipif(os.environ.get("SBX_TEST_DEBIAN") != "1",
                    reason="downloads a Debian minbase (~40 MB) from this machine's apt "
                           "sources: set SBX_TEST_DEBIAN=1 to run it (about 35 s)")
def test_debian_minbase_from_the_hosts_apt_sources(d: Daemon):
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (apt-get install mmdebstrap)")
    started = time.monotonic()
    made = d.sbx("image", "bootstrap", "-q", "debian", timeout=300)
    assert made.returncode == 0, made.err
    assert time.monotonic() - started < 60
    suite = rootfs.host_codename() or "stable"
    out = d.sbx("run", "--rm", f"debian:{suite}", "sh", "-c",
                "command -v apt-get && command -v bash && test -s /etc/debian_version "
                "&& echo ok", check=True).out
    assert out.split() == ["/usr/bin/apt-get", "/usr/bin/bash", "ok"]
    d.sbx("rmi", f"debian:{suite}", check=True)
