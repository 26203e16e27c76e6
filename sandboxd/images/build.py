"""``sbx build``: a Dockerfile (:mod:`.dockerfile`) run step by step in the daemon.

The client sends the context directory as a tar (:mod:`sandboxd.buildcontext`,
``.dockerignore`` applied); it is unpacked into a private directory under the daemon's
root (with the layer unpacker's path rules) and read through a
:class:`~.view.LayerView`, so no symlink in it leads outside.

Each instruction after ``FROM`` makes an image, as Docker's classic builder does:
``RUN`` runs in a real container (the container service: the runner, the daemon's
default limits, the default bridge unless ``--network`` says ``none``, ``host`` or a
user network, with ``--add-host``, ``--ulimit`` and ``--shm-size``) whose writable layer becomes the
step's layer; ``COPY``/``ADD`` write a layer tar from the context or another stage
(``--from``); the rest change only the config (an empty layer). Every step image
records ``{"parent", "key"}``: the cache key is a hash of the parent image id, the
instruction with its variables expanded, the build args a ``RUN`` sees, and for
``COPY``/``ADD`` the names, modes and content digests of the sources. A step whose key
is known reuses that image (`` ---> Using cache``), so an unchanged rebuild runs nothing
and a changed file reruns from its ``COPY`` on. Intermediate images are untagged and
hidden from ``sbx images``; ``rmi`` of the result removes them.
"""
from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, BinaryIO, Callable, Protocol

from ..errors import InvalidArgument, NotFound
from ..model import ContainerConfig, ContainerRecord
from ..reference import parse as parse_ref
from ..runner.spec import DEFAULT_PATH
from . import dockerfile as df
from .configsteps import DEFAULT_SHELL, Change, config_step, rt_workdir
from .unpack import WHITEOUT_PREFIX, apply_layer, detect_compression, uncompressed
from .view import LayerView

if TYPE_CHECKING:
    from .service import ImageService

Say = Callable[[str], Awaitable[None]]
# what a config step (ENV, WORKDIR, CMD ...) does to the runtime config
# Docker's predefined build args: usable without an ARG line, never in the image.
PREDEFINED_ARGS = frozenset(("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy",
                             "FTP_PROXY", "ftp_proxy", "NO_PROXY", "no_proxy",
                             "ALL_PROXY", "all_proxy"))
_CHUNK = 1 << 20


@dataclass
class BuildOptions:
    """What ``sbx build`` passes besides the context: ``dockerfile`` is the text,
    ``dockerfile_name`` the name it is reported under."""
    dockerfile: str
    dockerfile_name: str = "Dockerfile"
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    no_cache: bool = False
    network: str = "default"
    target: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    memory: str | int | None = None
    cpus: str | float | None = None
    pids_limit: int | None = None
    add_hosts: list[str] = field(default_factory=list)
    ulimits: list[str] = field(default_factory=list)
    shm_size: str | int | None = None
    pull: bool = False                   # pull every FROM image, even one that is here
    # Images whose build steps may be reused: every image here already is a cache
    # source, so these are only checked to be here.
    cache_from: list[str] = field(default_factory=list)


class StepContainers(Protocol):
    """What the builder needs to run a ``RUN`` step: a container made, started and
    followed to its exit (its output streamed), its writable layer then held for the
    step's image, and removed; and the image service the steps' images go to. The
    daemon's :class:`~sandboxd.containers.ContainerService` is one."""

    images: ImageService

    def create(self, config: ContainerConfig, name: str | None, session: str = "",
               check_spec: bool = True) -> tuple[ContainerRecord, list[str]]: ...

    async def start(self, record: ContainerRecord, stdin: bool = False
                    ) -> ContainerRecord: ...

    def subscribe(self, record: ContainerRecord) -> tuple[asyncio.Queue | None, Any]:
        """A queue of the container's output (None: it has ended) and its live state."""

    def unsubscribe(self, record: ContainerRecord, queue: asyncio.Queue | None) -> None: ...

    async def wait_exit(self, record: ContainerRecord, live: Any = None
                        ) -> ContainerRecord: ...

    def upper(self, record: ContainerRecord) -> AbstractAsyncContextManager[None]:
        """While held, the exited container's writable layer stays mounted."""

    async def remove(self, record: ContainerRecord, force: bool = False,
                     files_later: bool = False) -> None: ...


@dataclass
class _Stage:
    """A stage being built: its current image, config and variables."""
    image: str
    runtime: dict[str, Any]
    args: dict[str, str] = field(default_factory=dict)     # ARGs declared in the stage
    shell: list[str] = field(default_factory=lambda: list(DEFAULT_SHELL))
    cmd_set: bool = False          # a CMD in this stage: a later ENTRYPOINT keeps it

    def env(self) -> dict[str, str]:
        """Variables for expansion: ARGs, then ENV over them (Docker's order)."""
        out = dict(self.args)
        for item in self.runtime.get("Env") or []:
            k, _, v = item.partition("=")
            out[k] = v
        return out


class Builder:
    """One build. ``containers`` runs the RUN steps and holds the image service;
    ``context`` is the unpacked context directory; ``say`` sends a progress line."""

    def __init__(self, containers: StepContainers, context: Path,
                 options: BuildOptions, say: Say):
        self.containers = containers
        self.images = containers.images
        self.context = LayerView([context])
        self.options = options
        self.say = say
        self.used_args: set[str] = set()
        self.stages: dict[str, str] = {}        # stage name or index -> image id

    async def _thread(self, func: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: func(*args, **kw))

    async def run(self) -> str:
        """Build; returns the final image id (tagged with every ``tags``)."""
        opts = self.options
        parsed = df.parse(opts.dockerfile, opts.dockerfile_name)
        for warning in parsed.warnings:
            await self.say(f"[Warning] {warning}\n")
        stages = parsed.stages
        if opts.target:
            names = [s.name for s in stages]
            if opts.target.lower() not in names:
                named = ", ".join(n for n in names if n) or "none named"
                raise InvalidArgument(f"--target {opts.target}: no stage of that name "
                                      f"(stages: {named})")
            stages = stages[:names.index(opts.target.lower()) + 1]
        for ref in opts.cache_from:
            try:
                self.images.get(ref)
            except NotFound:
                await self.say(f"[Warning] --cache-from {ref}: no such image here; only "
                               f"local images are cache sources (sbx pull it first)\n")
        total = len(parsed.args) + sum(1 + len(s.instructions) for s in stages)
        step = 0
        meta: dict[str, str] = {}                # ARGs before the first FROM
        for ins in parsed.args:
            step += 1
            await self.say(f"Step {step}/{total} : {ins}\n")
            for name, default in df.arg_items(ins, meta, parsed.escape):
                value = self._arg_value(name, default)
                if value is not None:
                    meta[name] = value
        image = ""
        for stage in stages:
            step += 1
            await self.say(f"Step {step}/{total} : {stage.base}\n")
            state = await self._from(stage, meta, parsed.escape)
            await self.say(f" ---> {_short(state.image)}\n")
            for ins in stage.instructions:
                step += 1
                await self.say(f"Step {step}/{total} : {ins}\n")
                await self._step(ins, state, meta, parsed.escape)
            image = state.image
            self.stages[str(stage.index)] = image
            if stage.name:
                self.stages[stage.name] = image
        if opts.labels:
            state = _Stage(image, self.images.config(image))
            await self._config_step(state, "LABEL " + " ".join(
                f"{k}={json.dumps(v)}" for k, v in sorted(opts.labels.items())),
                lambda rt: {**rt, "Labels": {**(rt.get("Labels") or {}), **opts.labels}})
            image = state.image
        unused = sorted(set(opts.build_args) - self.used_args - PREDEFINED_ARGS)
        if unused:
            await self.say(f"[Warning] One or more build-args [{' '.join(unused)}] were not "
                           f"consumed\n")
        await self.say(f"Successfully built {_short(image)}\n")
        for tag in opts.tags:
            name = await self._thread(self.images.tag, image, tag)
            await self.say(f"Successfully tagged {name}\n")
        return image

    def _arg_value(self, name: str, default: str | None) -> str | None:
        if name in self.options.build_args:
            self.used_args.add(name)
            return self.options.build_args[name]
        return default

    # ------------------------------------------------------------ FROM

    async def _from(self, stage: df.Stage, meta: dict[str, str], escape: str) -> _Stage:
        base = df.expand(stage.base.text.split()[0], meta, escape)
        if not base:
            raise InvalidArgument(f"line {stage.base.line}: FROM names no image after "
                                  f"expansion ({stage.base.text!r})")
        if base.lower() == "scratch":
            image = await self._thread(self.images.scratch)
        elif base.lower() in self.stages:
            image = self.stages[base.lower()]
        else:
            image = await self._base_image(base)
        runtime = copy.deepcopy(self.images.config(image))
        return _Stage(image, runtime, shell=list(runtime.get("Shell") or DEFAULT_SHELL))

    async def _base_image(self, ref: str) -> str:
        if self.options.pull:                    # --pull: the registry's, even if here
            await self.say(f"Pulling {ref}\n")
            return self._buildable(self.images.get(await self._thread(self.images.pull, ref)))
        try:
            image = self.images.get(ref)
        except NotFound:
            parse_ref(ref)                    # a bad name: said as such, no pull
            await self.say(f"Pulling {ref}\n")
            image_id = await self._thread(self.images.pull, ref)
            image = self.images.get(image_id)
        return self._buildable(image)

    @staticmethod
    def _buildable(image: dict[str, Any]) -> str:
        if image["doc"].get("host"):
            raise InvalidArgument("FROM host: the built-in host image cannot be built on "
                                  "(its root is the host's own files, not layers)")
        return image["id"]

    # ------------------------------------------------------------ steps

    async def _step(self, ins: df.Instruction, state: _Stage, meta: dict[str, str],
                    escape: str) -> None:
        k = ins.keyword
        env = state.env()
        if k == "ARG":
            for name, default in df.arg_items(ins, {**meta, **env}, escape):
                if default is None and name in meta:
                    default = meta[name]          # a global ARG re-declared in the stage
                value = self._arg_value(name, default)
                state.args[name] = value if value is not None else ""
            return
        if k == "RUN":
            await self._run(ins, state)
            return
        if k in ("COPY", "ADD"):
            await self._copy(ins, state, env, escape)
            return
        text, change = config_step(ins, state.runtime, state.shell, env, escape,
                                   state.cmd_set)
        await self._config_step(state, text, change)
        state.shell = list(state.runtime.get("Shell") or DEFAULT_SHELL)     # SHELL's
        state.cmd_set = state.cmd_set or k == "CMD"

    async def _config_step(self, state: _Stage, text: str, change: Change) -> None:
        key = _key(state.image, text)
        if await self._use_cache(state, key):
            return
        runtime = change(copy.deepcopy(state.runtime))
        image = await self._thread(
            self.images.derive, state.image, runtime=runtime,
            history={"created_by": f"/bin/sh -c #(nop)  {text}"},
            build={"parent": state.image, "key": key})
        self._advance(state, image, runtime)
        await self.say(f" ---> {_short(image)}\n")

    async def _use_cache(self, state: _Stage, key: str) -> bool:
        if self.options.no_cache:
            return False
        image = self.images.cached(key)
        if image is None:
            return False
        self._advance(state, image, self.images.config(image))
        await self.say(f" ---> Using cache\n ---> {_short(image)}\n")
        return True

    @staticmethod
    def _advance(state: _Stage, image: str, runtime: dict[str, Any]) -> None:
        state.image = image
        state.runtime = copy.deepcopy(runtime)

    # ------------------------------------------------------------ RUN

    async def _run(self, ins: df.Instruction, state: _Stage) -> None:
        from ..flags import build_config
        argv = df.command(ins, state.shell)
        # build args reach the command's environment, not the image; ENV wins over them
        env_names = {e.partition("=")[0] for e in state.runtime.get("Env") or []}
        arg_env = [f"{k}={v}" for k, v in sorted(state.args.items()) if k not in env_names]
        if not any(e.startswith("PATH=") for e in state.runtime.get("Env") or []):
            arg_env.append(f"PATH={DEFAULT_PATH}")
        key = _key(state.image, "RUN " + json.dumps(argv), *arg_env)
        if await self._use_cache(state, key):
            return
        opts = self.options
        config = build_config(
            state.image, argv, entrypoint=[], env=arg_env,
            workdir=state.runtime.get("WorkingDir") or "",
            user=state.runtime.get("User") or "", network_mode=opts.network,
            memory=opts.memory, cpus=opts.cpus, pids_limit=opts.pids_limit,
            extra_hosts=opts.add_hosts, ulimits=opts.ulimits, shm_size=opts.shm_size,
            no_healthcheck=True, environ={})     # a step is no service to probe (Docker's)
        service = self.containers
        # Tied to this build as a client's containers are to its session: a daemon that
        # dies mid-build forgets it at its next start instead of listing a stray record.
        record, _ = service.create(config, None, session="build")
        try:
            await self.say(f" ---> Running in {record.id[:12]}\n")
            record = await service.start(record)
            queue, live = service.subscribe(record)
            try:
                while queue is not None:
                    item = await queue.get()
                    if item is None:
                        break
                    await self.say(item[1].decode("utf-8", "replace"))
                final = await service.wait_exit(record, live)
            finally:
                service.unsubscribe(record, queue)
            if final.state.exit_code != 0 or final.state.error:
                why = final.state.error or f"returned a non-zero code: {final.state.exit_code}"
                if final.state.oom_killed:
                    why += " (killed: out of memory; give sbx build --memory more)"
                raise BuildFailed(f"The command {_shown(argv)} {why}")
            created_by = (f"|{len(arg_env)} {' '.join(arg_env)} " if arg_env else "") + \
                " ".join(argv)
            async with service.upper(final):
                image = await self._thread(
                    self.images.derive, state.image, upper=record.id,
                    history={"created_by": created_by},
                    build={"parent": state.image, "key": key})
        finally:
            await service.remove(record, force=True)      # by id: stopped first if live
            await self.say(f"Removing intermediate container {record.id[:12]}\n")
        self._advance(state, image, self.images.config(image))
        await self.say(f" ---> {_short(image)}\n")

    # ------------------------------------------------------------ COPY / ADD

    async def _copy(self, ins: df.Instruction, state: _Stage, env: dict[str, str],
                    escape: str) -> None:
        sources, dest = df.copy_sources(ins, env, escape)
        add = ins.keyword == "ADD"
        urls = [src for src in sources if "://" in src or src.startswith("git@")]
        origin = ins.flag("from")
        if urls:
            _check_urls(ins, urls, sources, origin)
            # ADD of http(s) URLs: fetched by the daemon into a directory of their own,
            # then copied as a context's files are (never unpacked, as Docker's)
            # (beside the contexts: what a crash leaves there goes at the next start)
            self.images.builds_root.mkdir(parents=True, exist_ok=True)
            fetched = Path(tempfile.mkdtemp(prefix="add-", dir=self.images.builds_root))
            try:
                names = [await self._thread(_fetch, url, fetched, dest, ins) for url in urls]
                await self._copy_from(ins, state, env, escape, LayerView([fetched]), names,
                                      dest, from_context=True, add=False)
            finally:
                shutil.rmtree(fetched, ignore_errors=True)
            return
        if origin is not None:
            source_view = await self._stage_view(df.expand(origin, env, escape), ins)
        else:
            source_view = self.context
        await self._copy_from(ins, state, env, escape, source_view, sources, dest,
                              from_context=origin is None, add=add)

    async def _copy_from(self, ins: df.Instruction, state: _Stage, env: dict[str, str],
                         escape: str, source_view: LayerView, sources: list[str], dest: str,
                         *, from_context: bool, add: bool) -> None:
        chown = ins.flag("chown")
        chmod = ins.flag("chmod")
        mode = None
        if chmod is not None:
            try:
                mode = int(chmod, 8)
                if not 0 <= mode <= 0o7777:
                    raise ValueError
            except ValueError:
                raise InvalidArgument(f"line {ins.line}: --chmod={chmod}: not an octal mode "
                                      f"such as 755") from None
        workdir = rt_workdir(state.runtime)
        plan = await self._thread(
            _CopyPlan.make, source_view, sources, dest, workdir, ins,
            from_context=from_context, add=add)
        parent_view = await self._thread(self.images.view, state.image)
        owner = None
        if chown is not None:
            user, _, group = df.expand(chown, env, escape).partition(":")
            owner = parent_view.user_ids(user, group or None)
        key = _key(state.image, str(ins), json.dumps([sources, dest, workdir, owner, mode]),
                   await self._thread(plan.digest))
        if await self._use_cache(state, key):
            return
        with tempfile.TemporaryFile(dir=self.images.content.root) as spool:
            await self._thread(plan.write, parent_view, owner, mode, spool)
            spool.seek(0)
            summary = plan.summary()
            image = await self._thread(
                self.images.derive, state.image, layer=spool,
                history={"created_by": f"/bin/sh -c #(nop) {ins.keyword} {summary} in "
                                       f"{plan.dest} "},
                build={"parent": state.image, "key": key})
        self._advance(state, image, self.images.config(image))
        await self.say(f" ---> {_short(image)}\n")

    async def _stage_view(self, origin: str, ins: df.Instruction) -> LayerView:
        image = self.stages.get(origin.lower())
        if image is None:
            if origin.isdigit():
                raise InvalidArgument(f"line {ins.line}: --from={origin}: no earlier stage "
                                      f"with that index")
            image = await self._base_image(origin)
        return await self._thread(self.images.view, image)


FETCH_TIMEOUT = 60.0           # seconds without a byte from the server


def _check_urls(ins: df.Instruction, urls: list[str], sources: list[str],
                origin: str | None) -> None:
    where = f"line {ins.line}: {ins.keyword}"
    if ins.keyword == "COPY":
        raise InvalidArgument(f"{where} {urls[0]}: source can't be a URL for COPY (ADD "
                              f"fetches URLs)")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise InvalidArgument(f"{where} {url}: only http:// and https:// URLs are "
                                  f"fetched by this builder (not git)")
    if len(urls) != len(sources) or origin is not None:
        raise InvalidArgument(f"{where}: URLs and files of the build context (or --from) in "
                              f"one ADD are not supported: give each its own ADD")


def _fetch(url: str, directory: Path, dest: str, ins: df.Instruction) -> str:
    """GET ``url`` into ``directory``; the file's name in it: the URL's last path
    component (what a destination ending in ``/`` gets), mode 0600 and the server's
    ``Last-Modified`` as its time, as Docker's ADD."""
    import email.utils
    import urllib.error
    import urllib.parse
    import urllib.request
    path = urllib.parse.urlsplit(url).path
    name = urllib.parse.unquote(posixpath.basename(path))
    if dest.endswith("/") and (not name or name in (".", "..")):
        raise InvalidArgument(f"line {ins.line}: ADD {url}: cannot determine a file name "
                              f"from the URL: give the destination a file name")
    name = name if name not in ("", ".", "..") else "download"
    target = directory / name
    request = urllib.request.Request(url, headers={"User-Agent": "sandboxd-build"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as reply, \
                open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             0o600), "wb") as out:
            shutil.copyfileobj(reply, out, _CHUNK)
            modified = reply.headers.get("Last-Modified")
    except urllib.error.HTTPError as e:
        raise InvalidArgument(f"line {ins.line}: ADD {url}: failed to GET with status "
                              f"{e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise InvalidArgument(f"line {ins.line}: ADD {url}: {reason}") from None
    if modified:
        try:
            when = email.utils.parsedate_to_datetime(modified).timestamp()
            os.utime(target, (when, when))
        except (TypeError, ValueError, OverflowError):
            pass                                  # an unreadable date: the download's
    return "/" + name


class BuildFailed(InvalidArgument):
    """A RUN step's command failed; the build stops there. (On the wire an
    ``invalid_argument``: the Dockerfile asked for a step that cannot be done.)"""


@dataclass
class _Item:
    """One source to copy: its path in the source view, the name it gets under the
    destination ("" for the destination itself), and whether it is an archive to
    unpack (ADD)."""
    path: str
    target: str
    archive: bool = False


class _CopyPlan:
    """The sources of one COPY/ADD, expanded (globs) and checked, and where they land."""

    def __init__(self, view: LayerView, items: list[_Item], dest: str):
        self.view = view
        self.items = items
        self.dest = dest

    @classmethod
    def make(cls, view: LayerView, sources: list[str], dest: str, workdir: str,
             ins: df.Instruction, *, from_context: bool, add: bool) -> _CopyPlan:
        where = "build context" if from_context else "source stage"
        paths: list[str] = []
        for src in sources:
            clean = posixpath.normpath("/" + src.lstrip("/")) if from_context else \
                posixpath.normpath(src if src.startswith("/") else "/" + src)
            if from_context and posixpath.normpath(src).startswith(".."):
                raise InvalidArgument(f"line {ins.line}: {ins.keyword} {src}: forbidden path "
                                      f"outside the build context")
            if any(c in src for c in "*?["):
                matched = _glob(view, clean)
                if not matched:
                    raise NotFound(f"line {ins.line}: {ins.keyword} failed: no source files "
                                   f"were specified ({src} matches nothing in the {where})")
                paths += matched
                continue
            if not view.exists(clean):
                raise NotFound(f"line {ins.line}: {ins.keyword} failed: file not found in "
                               f"{where} or excluded by .dockerignore: {src}")
            paths.append(clean)
        dest_abs = posixpath.join(workdir, dest)
        to_dir = dest.endswith("/") or dest in (".", "..") or dest.endswith("/.")
        if len(paths) > 1 and not to_dir:
            raise InvalidArgument(f"line {ins.line}: when using {ins.keyword} with more than "
                                  f"one source file, the destination must be a directory "
                                  f"and end with a /")
        dest_abs = posixpath.normpath(dest_abs)
        items = []
        for path in paths:
            real = view.resolve(path)
            found = view.lstat(real)
            assert found is not None
            st = found[1]
            if stat.S_ISDIR(st.st_mode):
                items.append(_Item(real, ""))     # its contents, not the dir itself
            elif add and stat.S_ISREG(st.st_mode) and _is_archive(found[0]):
                items.append(_Item(real, "", archive=True))
            else:
                items.append(_Item(real, posixpath.basename(path) if to_dir else "",
                                   archive=False))
        return cls(view, items, dest_abs)

    def summary(self) -> str:
        kind = "dir" if any(not i.target for i in self.items) else "file"
        return f"{kind}:{self.digest()[7:71]}"

    def digest(self) -> str:
        """A hash of every source entry: names, types, modes, link targets, contents."""
        h = hashlib.sha256()
        for item in self.items:
            for path, real, st in self.view.walk(item.path):
                h.update(json.dumps([item.target, path[len(item.path):], st.st_mode,
                                     st.st_uid, st.st_gid]).encode())
                if stat.S_ISREG(st.st_mode):
                    with open(real, "rb") as f:
                        while chunk := f.read(_CHUNK):
                            h.update(chunk)
                elif stat.S_ISLNK(st.st_mode):
                    h.update(os.readlink(real).encode())
                h.update(b"\0")
        return "sha256:" + h.hexdigest()

    def write(self, parent: LayerView, owner: tuple[int, int] | None, mode: int | None,
              out: BinaryIO) -> None:
        """The layer tar: the destination's parent directories as the parent image has
        them (so the layer does not change them), then the sources under it."""
        uid, gid = owner or (0, 0)
        written: set[str] = set()
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for item in self.items:
                if item.archive:
                    base = parent.resolve(self.dest)
                    self._parents(tar, parent, base, written, (uid, gid), include_self=True)
                    self._unpack_archive(tar, item, base, written)
                    continue
                found = self.view.lstat(item.path)
                assert found is not None
                is_dir = stat.S_ISDIR(found[1].st_mode)
                if item.target:
                    base = posixpath.join(parent.resolve(self.dest), item.target)
                elif is_dir:
                    base = parent.resolve(self.dest)
                elif parent.is_dir(self.dest):
                    base = posixpath.join(parent.resolve(self.dest),
                                          posixpath.basename(item.path))
                else:
                    base = posixpath.join(parent.resolve(posixpath.dirname(self.dest)),
                                          posixpath.basename(self.dest))
                # a directory's contents go into the destination, which keeps its
                # attributes when the image has it (else a new 0755 directory)
                self._parents(tar, parent, base, written, (uid, gid), include_self=is_dir)
                for path, real, st in self.view.walk(item.path):
                    rel = path[len(item.path):].lstrip("/")
                    name = posixpath.join(base, rel) if rel else base
                    if name in written:
                        continue
                    written.add(name)
                    info = tarfile.TarInfo(name.lstrip("/") or ".")
                    info.mode = mode if mode is not None else stat.S_IMODE(st.st_mode)
                    info.uid, info.gid, info.mtime = uid, gid, int(st.st_mtime)
                    if stat.S_ISDIR(st.st_mode):
                        info.type = tarfile.DIRTYPE
                        tar.addfile(info)
                    elif stat.S_ISREG(st.st_mode):
                        with open(real, "rb") as f:
                            info.size = os.fstat(f.fileno()).st_size
                            tar.addfile(info, f)
                    elif stat.S_ISLNK(st.st_mode):
                        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(real)
                        tar.addfile(info)

    def _parents(self, tar: tarfile.TarFile, parent: LayerView, path: str,
                 written: set[str], owner: tuple[int, int], include_self: bool = False
                 ) -> None:
        parts = [p for p in path.split("/") if p]
        upto = parts if include_self else parts[:-1]
        for i in range(1, len(upto) + 1):
            name = "/" + "/".join(upto[:i])
            if name in written:
                continue
            written.add(name)
            info = tarfile.TarInfo(name.lstrip("/"))
            info.type = tarfile.DIRTYPE
            found = parent.lstat(name)
            if found is not None:
                st = found[1]
                if not stat.S_ISDIR(st.st_mode):
                    raise InvalidArgument(f"cannot copy to {path}: {name} is not a directory "
                                          f"in the image")
                info.mode, info.uid, info.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
                info.mtime = int(st.st_mtime)
            else:
                info.mode, (info.uid, info.gid) = 0o755, owner
                info.mtime = 0
            tar.addfile(info)

    def _unpack_archive(self, tar: tarfile.TarFile, item: _Item, base: str,
                        written: set[str]) -> None:
        """ADD of a local tar (plain or compressed): its entries under ``base``; names
        with ``..``, whiteouts and devices are left out."""
        found = self.view.lstat(item.path)
        assert found is not None
        with uncompressed(found[0]) as stream, \
                tarfile.open(fileobj=stream, mode="r|") as archive:   # type: ignore[call-overload]
            for member in archive:
                parts = [p for p in member.name.split("/") if p not in ("", ".")]
                if not parts or ".." in parts or parts[-1].startswith(WHITEOUT_PREFIX):
                    continue
                if member.isdev():
                    continue
                name = posixpath.join(base, *parts)
                member.name = name.lstrip("/")
                if member.islnk():
                    link = [p for p in member.linkname.split("/") if p not in ("", ".")]
                    if ".." in link:
                        continue
                    member.linkname = posixpath.join(base, *link).lstrip("/")
                written.add(name)
                if member.isreg():
                    tar.addfile(member, archive.extractfile(member))
                else:
                    tar.addfile(member)


def _glob(view: LayerView, pattern: str) -> list[str]:
    """Paths of the view matching ``pattern`` (``*``, ``?``, ``[...]`` per component)."""
    found = ["/"]
    for part in [p for p in pattern.split("/") if p]:
        nxt = []
        for base in found:
            if not view.is_dir(base):
                continue
            real = view.resolve(base)
            if any(c in part for c in "*?["):
                nxt += [posixpath.join(base, n) for n in view.listdir(real)
                        if fnmatchcase(n, part)]
            elif view.exists(posixpath.join(base, part)):
                nxt.append(posixpath.join(base, part))
        found = nxt
    return sorted(found)


def _is_archive(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(512)
    if detect_compression(head):
        return True
    return len(head) >= 262 and head[257:262] == b"ustar"


def _key(parent: str, *parts: str) -> str:
    h = hashlib.sha256(parent.encode())
    for part in parts:
        h.update(b"\0" + part.encode())
    return "sha256:" + h.hexdigest()


def _short(image_id: str) -> str:
    return image_id.partition(":")[2][:12]


def _shown(argv: list[str]) -> str:
    return "'" + " ".join(argv) + "'"


def unpack_context(src: BinaryIO, root: Path) -> Path:
    """Unpack the context tar into a fresh directory under ``root``; returns it.
    The unpacker's rules apply (no ``..``, nothing through symlinks, no devices);
    owners are not kept."""
    root.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="context-", dir=root))
    try:
        stats = apply_layer(src, directory, same_owner=False)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    if stats.skipped:
        shutil.rmtree(directory, ignore_errors=True)
        raise InvalidArgument.of([f"build context: {name}: {why}"
                                  for name, why in stats.skipped[:20]])
    return directory
