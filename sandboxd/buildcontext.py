"""A build context as the client sends it: the context directory as a tar, without what
``.dockerignore`` excludes (as ``docker build`` does; the Dockerfile and
``.dockerignore`` are always sent).

``.dockerignore``: one pattern a line, ``#`` comments, Go ``filepath.Match`` syntax
(``*``, ``?``, ``[...]``) plus ``**`` for any number of directories; a leading ``!``
makes an exception; the last matching line wins; a pattern that matches a directory
excludes everything under it. Light on imports: the CLI and the Python client use it
(the daemon unpacks the tar with :func:`sandboxd.images.build.unpack_context`).
"""
from __future__ import annotations

import os
import posixpath
import re
import stat
import tarfile
from typing import BinaryIO, Sequence

from .errors import InvalidArgument

IGNORE_FILE = ".dockerignore"


def read_ignore(context: str | os.PathLike[str]) -> list[str]:
    """The patterns of ``CONTEXT/.dockerignore`` (none when it is absent)."""
    try:
        with open(os.path.join(context, IGNORE_FILE), encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    return parse_ignore(text)


def parse_ignore(text: str) -> list[str]:
    patterns = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        body = line[1:].strip() if negate else line
        body = posixpath.normpath(body.lstrip("/")) if body.lstrip("/") else ""
        if body in ("", "."):
            continue
        patterns.append(("!" if negate else "") + body)
    return patterns


def _regex(pattern: str) -> re.Pattern[str]:
    out, i, n = ["^"], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):      # "**/": zero or more directories
                    i += 1
                    out.append("(?:.*/)?")
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise InvalidArgument(f".dockerignore: bad pattern {pattern!r} (unclosed [)")
            body = pattern[i + 1:end]
            if body.startswith("^"):
                body = "!" + body[1:]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    out.append("$")
    return re.compile("".join(out))


class Ignore:
    """Matches context paths (relative, ``/``-separated) against the patterns."""

    def __init__(self, patterns: Sequence[str]):
        cleaned = parse_ignore("\n".join(patterns))
        self.rules = [(p.startswith("!"), _regex(p.lstrip("!"))) for p in cleaned]
        self.has_exceptions = any(negate for negate, _ in self.rules)

    def excluded(self, path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        result = False
        for negate, rx in self.rules:
            if any(rx.match(p) for p in prefixes):
                result = not negate
        return result


def write_context(context: str | os.PathLike[str], out: BinaryIO,
                  dockerfile: str | None = None) -> None:
    """Write the context directory as a plain tar to ``out``, skipping what
    ``.dockerignore`` excludes; ``dockerfile`` (a path inside the context) is sent
    even when excluded. Symlinks are archived as links (never followed); sockets are
    skipped; owners are not kept (COPY makes files root's unless --chown)."""
    root = os.fspath(context)
    if not os.path.isdir(root):
        raise InvalidArgument(f"build context {root!r} is not a directory")
    ignore = Ignore(read_ignore(root))
    keep = {IGNORE_FILE}
    if dockerfile:
        keep.add(posixpath.normpath(dockerfile))
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = os.path.relpath(dirpath, root)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
            dirnames.sort()
            kept_dirs = []
            for name in dirnames:
                rel = f"{rel_dir}/{name}" if rel_dir else name
                full = os.path.join(dirpath, name)
                if os.path.islink(full):
                    filenames.append(name)            # archived as a link below
                    continue
                if ignore.excluded(rel) and not ignore.has_exceptions:
                    continue                          # nothing under it can come back
                kept_dirs.append(name)
                if not ignore.excluded(rel):
                    _add(tar, full, rel)
            dirnames[:] = kept_dirs
            for name in sorted(filenames):
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if ignore.excluded(rel) and rel not in keep:
                    continue
                _add(tar, os.path.join(dirpath, name), rel)


def _add(tar: tarfile.TarFile, full: str, rel: str) -> None:
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        return                                        # removed while we walked
    info = tarfile.TarInfo(rel)
    info.mode, info.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(full)
        tar.addfile(info)
    elif stat.S_ISREG(st.st_mode):
        try:
            f = open(full, "rb")
        except PermissionError:
            raise InvalidArgument(f"build context: cannot read {rel} (permission denied); "
                                  f"fix its mode or add it to .dockerignore") from None
        with f:
            info.size = os.fstat(f.fileno()).st_size
            tar.addfile(info, f)


DEFAULT_NAMES = ("Dockerfile", "Sandboxfile")


def prepare(context: str | os.PathLike[str] | None, dockerfile: str | None = None,
            text: str | None = None) -> tuple[str, str, BinaryIO]:
    """What a build sends: (the Dockerfile's text, its name for messages, the context
    tar in an unnamed temp file at offset 0). ``dockerfile``: a path (relative to the
    current directory, as ``docker build -f`` takes it); default ``CONTEXT/Dockerfile``,
    else ``CONTEXT/Sandboxfile``. ``text``: the Dockerfile itself (``-f -``, read from
    stdin by the caller). ``context`` None: an empty context (``sbx build -``)."""
    import tempfile
    name = "Dockerfile"
    inside = None
    if text is None:
        if dockerfile is None:
            if context is None:
                raise InvalidArgument("no context and no Dockerfile given")
            found = [n for n in DEFAULT_NAMES if os.path.isfile(os.path.join(context, n))]
            if not found:
                raise InvalidArgument(f"no Dockerfile or Sandboxfile in {os.fspath(context)}; "
                                      f"give -f FILE")
            dockerfile = os.path.join(context, found[0])
        try:
            with open(dockerfile, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise InvalidArgument(f"cannot read the Dockerfile {dockerfile}: {e.strerror}"
                                  ) from None
        except UnicodeDecodeError:
            raise InvalidArgument(f"the Dockerfile {dockerfile} is not UTF-8 text") from None
        name = os.path.basename(dockerfile)
        if context is not None:
            rel = os.path.relpath(os.path.abspath(dockerfile), os.path.abspath(context))
            inside = None if rel.startswith("..") else rel
    spool = tempfile.TemporaryFile()
    try:
        if context is not None:
            write_context(context, spool, inside)
        else:
            with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT):
                pass
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return text, name, spool
