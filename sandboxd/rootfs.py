"""First images without a registry: root filesystems made on this machine, as tar
streams for ``image.import`` (``sbx image bootstrap``).

- busybox: Debian's static busybox (package ``busybox-static``) with a link per applet,
  ``/etc/passwd`` and ``/etc/group`` (what Docker Hub's ``busybox`` holds).
- apt (for tests, :func:`add_apt`): busybox plus the host's own apt-get and dpkg, enough
  to install from a local repository without a network.
- debian: ``mmdebstrap`` (package ``mmdebstrap``) of a suite, from this machine's apt
  sources: each ``deb`` entry of ``/etc/apt/sources.list`` and ``sources.list.d``
  (one-line and deb822 files) with this machine's codename swapped for the suite asked
  for (``bookworm-security`` -> ``trixie-security``); mmdebstrap's own default
  (deb.debian.org) when there are none.

Client side: nothing here talks to the daemon.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import IO, Iterator

BUSYBOX = "/bin/busybox"
APT_SOURCES = Path("/etc/apt")
VARIANTS = ("extract", "custom", "essential", "apt", "required", "minbase",
            "buildd", "important", "debootstrap", "standard")
_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "tmp", "proc", "sys", "dev",
         "var/www", "home")
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


class BootstrapError(Exception):
    """A root filesystem cannot be made here; the message says why and what to do."""


# ---------------------------------------------------------------- busybox

def busybox_applets(busybox: str = BUSYBOX) -> list[str]:
    if not os.path.exists(busybox):
        raise BootstrapError(f"{busybox} is missing: apt-get install busybox-static")
    out = subprocess.run([busybox, "--list"], capture_output=True, text=True)
    if out.returncode != 0:
        raise BootstrapError(f"{busybox} --list failed: {out.stderr.strip()}")
    if _dynamic(busybox):
        raise BootstrapError(f"{busybox} is linked dynamically and would not run in an "
                             f"image without its libraries: apt-get install busybox-static")
    return [a for a in out.stdout.split() if a != "busybox"]


def _dynamic(path: str) -> bool:
    """Whether an ELF file names a program interpreter (PT_INTERP: dynamically linked)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:        # 64-bit ELF only
            return False
        order = "little" if head[5] == 1 else "big"
        phoff = int.from_bytes(head[32:40], order)
        phentsize = int.from_bytes(head[54:56], order)
        phnum = int.from_bytes(head[56:58], order)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return any(int.from_bytes(table[i:i + 4], order) == 3          # PT_INTERP
               for i in range(0, len(table), phentsize))


def write_busybox_tree(dest: Path, busybox: str = BUSYBOX) -> None:
    """The busybox root filesystem as a directory tree at ``dest`` (made)."""
    applets = busybox_applets(busybox)
    for sub in _DIRS:
        (dest / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    shutil.copy2(busybox, dest / "bin" / "busybox")
    for applet in applets:
        link = dest / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")     # relative: absolute links would point at the host
    (dest / "etc" / "passwd").write_text(PASSWD)
    (dest / "etc" / "group").write_text(GROUP)


def write_busybox_tar(out: IO[bytes], busybox: str = BUSYBOX) -> None:
    """The same root filesystem as a plain tar stream, written to ``out``."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        add_busybox(tar, busybox)


def add_busybox(tar: tarfile.TarFile, busybox: str = BUSYBOX,
                skip: frozenset[str] = frozenset()) -> None:
    """The busybox root filesystem's entries, added to ``tar``; no link for the applets
    in ``skip`` (the real programs come from elsewhere)."""
    applets = [a for a in busybox_applets(busybox) if a not in skip]
    mtime = int(os.stat(busybox).st_mtime)
    for sub in sorted({d for path in _DIRS for d in _parents(path)}):
        info = tarfile.TarInfo(sub)
        info.type, info.mtime = tarfile.DIRTYPE, mtime
        info.mode = 0o1777 if sub == "tmp" else 0o755
        tar.addfile(info)
    info = tar.gettarinfo(busybox, arcname="bin/busybox")
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    with open(busybox, "rb") as f:
        tar.addfile(info, f)
    for applet in applets:
        link = tarfile.TarInfo(f"bin/{applet}")
        link.type, link.linkname, link.mtime = tarfile.SYMTYPE, "busybox", mtime
        tar.addfile(link)
    for name, text in (("etc/passwd", PASSWD), ("etc/group", GROUP)):
        _add_text(tar, name, text, mtime)


def _add_text(tar: tarfile.TarFile, name: str, text: str, mtime: int,
              mode: int = 0o644) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, mtime
    tar.addfile(info, io.BytesIO(data))


def _parents(path: str) -> Iterator[str]:
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        yield "/".join(parts[:i])


# ---------------------------------------------------------------- debian

def host_codename() -> str:
    """This machine's Debian codename (``/etc/os-release``), or ``""``."""
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return ""
    m = re.search(r'^VERSION_CODENAME="?([a-z]+)"?$', text, re.M)
    return m.group(1) if m else ""


def _entries() -> Iterator[tuple[str, str, list[str], list[str]]]:
    """``(options, uri, suites, components)`` of each ``deb`` entry of the host's apt
    sources, one-line and deb822 alike."""
    files = [APT_SOURCES / "sources.list"]
    parts = APT_SOURCES / "sources.list.d"
    if parts.is_dir():
        files += sorted(parts.iterdir())
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split() or \
                        fields.get("enabled", "yes").lower() == "no":
                    continue
                options = f"[signed-by={fields['signed-by']}] " \
                    if fields.get("signed-by", "").startswith("/") else ""
                for uri in fields.get("uris", "").split():
                    yield options, uri, fields.get("suites", "").split(), \
                        fields.get("components", "").split()
        elif path.name == "sources.list" or path.suffix == ".list":
            for line in text.splitlines():
                m = re.match(r"^\s*deb\s+(\[[^]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
                if m:
                    yield m.group(1) or "", m.group(2), [m.group(3)], m.group(4).split()


def debian_sources(suite: str) -> list[str]:
    """One-line ``deb`` entries for ``suite`` made from the host's apt sources (its
    codename swapped for ``suite`` in each suite name); ``[]`` when it has none."""
    codename = host_codename()
    lines = []
    for options, uri, suites, components in _entries():
        for s in suites:
            if codename and (s == codename or s.startswith(codename + "-")):
                s = suite + s[len(codename):]
            elif s not in (suite, "stable") and not s.startswith(suite + "-"):
                continue                  # another release's entry: nothing to map it to
            lines.append(f"deb {options}{uri} {s} {' '.join(components) or 'main'}")
    return list(dict.fromkeys(lines))


def mmdebstrap_command(suite: str, variant: str = "minbase",
                       include: tuple[str, ...] = (), sources: list[str] | None = None,
                       quiet: bool = False) -> list[str]:
    """The ``mmdebstrap`` command writing the root filesystem of ``suite`` as a tar to
    its stdout; ``sources`` (apt source lines or mirror URLs) instead of the host's."""
    exe = shutil.which("mmdebstrap")
    if exe is None:
        raise BootstrapError("mmdebstrap is not installed: apt-get install mmdebstrap")
    if variant not in VARIANTS:
        raise BootstrapError(f"--variant {variant!r}: one of {', '.join(VARIANTS)}")
    if not re.fullmatch(r"[a-z][a-z0-9.-]*", suite):
        raise BootstrapError(f"debian:{suite}: not a suite name (bookworm, trixie, stable)")
    # no device nodes in /dev: an image holds none (the runtime makes /dev)
    cmd = [exe, f"--variant={variant}", "--format=tar", "--skip=output/dev",
           *(["--quiet"] if quiet else [])]
    packages = [p for item in include for p in item.split(",") if p]
    if packages:
        cmd.append("--include=" + ",".join(packages))
    return [*cmd, suite, "-", *(debian_sources(suite) if sources is None else sources)]


# ---------------------------------------------------------------- python, ryuk

# Debian's interpreter, not the one a venv may run on: its prefix is /usr, so it finds
# its standard library where the image puts it.
PYTHON = "/usr/bin/python3.11"
PYTHON_LIB = "/usr/lib/python3.11"
# Left out: no image made here needs them, and EXTERNALLY-MANAGED would make pip refuse
# to install (PEP 668).
_PYTHON_SKIP = {"EXTERNALLY-MANAGED", "test", "idlelib", "tkinter", "turtledemo",
                "ensurepip", "lib2to3", "pydoc_data", "config-3.11-x86_64-linux-gnu"}
RYUK_IMAGE = "testcontainers/ryuk:0.8.1"     # what testcontainers-python 4.x asks for
RYUK_PATH = "usr/local/lib/sandboxd-ryuk.py"


def _libraries(binaries: list[str]) -> list[str]:
    """The shared libraries ``binaries`` link (``ldd``), at the names ldd gives."""
    libs: set[str] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
        for line in out.splitlines():
            fields = line.split()
            path = fields[2] if len(fields) > 2 and fields[1] == "=>" else fields[0]
            if path.startswith("/"):
                libs.add(path)
    return sorted(libs)


def _python_libraries() -> list[str]:
    """The shared libraries python3.11 and its extension modules link."""
    if not os.path.exists(PYTHON):
        raise BootstrapError(f"{PYTHON} is missing: apt-get install python3.11")
    return _libraries([PYTHON, *(str(p) for p in Path(PYTHON_LIB, "lib-dynload")
                                 .glob("*.so"))])


def add_python(tar: tarfile.TarFile) -> None:
    """The host's Debian ``python3.11`` (interpreter, standard library, the shared
    libraries they link) added to ``tar``, which should hold busybox's entries already."""
    libs = _python_libraries()

    def skip(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if Path(info.name).name in _PYTHON_SKIP else info

    tar.add(PYTHON, arcname=PYTHON.lstrip("/"))
    link = tarfile.TarInfo("usr/bin/python3")
    link.type, link.linkname = tarfile.SYMTYPE, "python3.11"
    tar.addfile(link)
    for lib in libs:                                  # as files at the names ldd gave
        tar.add(os.path.realpath(lib), arcname=lib.lstrip("/"))
    tar.add(PYTHON_LIB, arcname=PYTHON_LIB.lstrip("/"), filter=skip)


# The host's apt and dpkg, enough for ``apt-get update && apt-get install`` from a
# repository (an image made here, offline, that installs packages like Debian's does).
APT_PROGRAMS = ("/usr/bin/apt-get", "/usr/bin/dpkg", "/usr/bin/dpkg-deb",
                "/usr/bin/dpkg-split", "/usr/bin/dpkg-query", "/usr/bin/tar",
                "/usr/lib/apt/methods/http", "/usr/lib/apt/methods/file",
                "/usr/lib/apt/methods/copy", "/usr/lib/apt/methods/store")
# dpkg's architecture tables (apt reads them) and ldconfig (dpkg runs it after installs)
APT_EXTRA = ("/usr/share/dpkg/cputable", "/usr/share/dpkg/ostable",
             "/usr/share/dpkg/tupletable", "/sbin/ldconfig")
# busybox applets left out: they would shadow the real ones (an image without a PATH runs
# with busybox sh's own, /bin before /usr/bin), and understand too little for apt.
APT_SHADOWED = frozenset({"dpkg", "dpkg-deb", "tar"})
_APT_DIRS = ("etc/apt/apt.conf.d", "etc/apt/sources.list.d", "etc/apt/preferences.d",
             "etc/apt/trusted.gpg.d", "etc/dpkg/dpkg.cfg.d", "var/lib/dpkg/info",
             "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "var/lib/apt/lists/partial",
             "var/cache/apt/archives/partial", "var/log/apt")
# No ``_apt`` user in the image: apt downloads as root instead of warning about it.
_APT_CONF = 'APT::Sandbox::User "root";\n'


def add_apt(tar: tarfile.TarFile) -> None:
    """The host's apt-get and dpkg (programs, the shared libraries they link, an empty
    dpkg database, no sources) added to ``tar``, which should hold busybox's entries
    made with ``skip=APT_SHADOWED``."""
    missing = [p for p in (*APT_PROGRAMS, *APT_EXTRA) if not os.path.exists(p)]
    if missing:
        raise BootstrapError(f"{', '.join(missing)} missing: apt and dpkg come from the "
                             f"host (apt-get install apt dpkg tar libc-bin)")
    mtime = int(os.stat(APT_PROGRAMS[0]).st_mtime)
    for sub in sorted({d for path in _APT_DIRS for d in _parents(path)}):
        info = tarfile.TarInfo(sub)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
        tar.addfile(info)
    for path in (*APT_PROGRAMS, *APT_EXTRA, *_libraries(list(APT_PROGRAMS))):
        tar.add(os.path.realpath(path), arcname=path.lstrip("/"))
    for name in ("var/lib/dpkg/status", "var/lib/dpkg/available"):
        _add_text(tar, name, "", mtime)
    _add_text(tar, "etc/apt/apt.conf.d/00sandboxd", _APT_CONF, mtime)


def write_ryuk_tar(out: IO[bytes], busybox: str = BUSYBOX) -> None:
    """A Ryuk image's root filesystem (busybox, python3.11 and :mod:`sandboxd.ryuk` at
    ``/usr/local/lib``) as a plain tar stream; its command is :data:`RYUK_CMD`."""
    from . import ryuk
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        add_busybox(tar, busybox)
        add_python(tar)
        tar.add(ryuk.__file__, arcname=RYUK_PATH)


RYUK_CMD = ["python3", "-I", "-S", "/" + RYUK_PATH]    # -S: no site, a faster start
