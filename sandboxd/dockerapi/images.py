"""``/images/...``, ``/build`` and ``/auth``: Docker's image endpoints over the operation
table (``image.*``, ``system.login``), with Docker's JSON progress streams.

A streamed endpoint (pull, push, import, load, save, build) answers with an HTTP error
while its op has said nothing yet (an unknown image is a 404, as dockerd answers it);
once output has gone out, a failure is a last message in the stream,
``{"errorDetail": {"message": ...}, "error": ...}``, which the CLI prints and docker-py
raises. A pull's ``Pulling from`` line is held back until the registry has answered for
the manifest, so that a missing image or tag is an HTTP error too.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import posixpath
import tarfile
import tempfile
from typing import IO, Any, Awaitable, Callable

from .. import untrusted_json
from ..errors import NotFound
from ..handlers import UPLOAD_CAP
from ..images import oci
from ..images.registry import Unauthorized
from ..model import ImageRecord
from ..render import image_document
from .calls import ApiContext, Calls, json_line, stream_response, tar_response
from .containers import docker_filters
from .http import HttpError, Request, Response, Route, empty, json_response, route

MAX_DOCKERFILE = 1 << 20      # bytes of a Dockerfile read out of a build context
SPOOL_CHUNK = 1 << 20
# /build's query parameters that the classic builder has and sandboxd does not: refused
# when set to anything but the CLI's default (the CLI always sends some of them).
_UNSUPPORTED_BUILD = {"squash": "", "remote": "", "cpusetcpus": "", "cpusetmems": "",
                      "isolation": "", "outputs": "", "session": "", "memswap": "0"}


def _no_such_image(name: str) -> Callable[[BaseException], BaseException]:
    """Our "no such image: x (sbx images ...)" as dockerd's ``No such image: x``."""
    def convert(exc: BaseException) -> BaseException:
        if isinstance(exc, NotFound) and exc.message.startswith("no such image"):
            return HttpError(404, f"No such image: {name}")
        return exc
    return convert


def _progress_message(event: dict[str, Any]) -> dict[str, Any]:
    """One of the image service's progress events (``{status, id?, current?, total?}``)
    as Docker's JSON message."""
    out: dict[str, Any] = {"status": event.get("status", "")}
    if "id" in event and not out["status"].startswith("Pulling from"):
        detail = {k: event[k] for k in ("current", "total") if event.get(k) is not None}
        out["progressDetail"] = detail
    if "id" in event:
        out["id"] = event["id"]
    return out


class _SpoolContext(ApiContext):
    """An ``ApiContext`` whose stdin is a spooled file, read as the op asks for it (a
    build context is spooled here first: its Dockerfile is read out of it)."""

    def __init__(self, op: str, sink: Any, spool: IO[bytes]):
        super().__init__(op, sink)
        self._spool = spool

    async def receive(self) -> tuple[str, Any]:
        data = self._spool.read(SPOOL_CHUNK)
        return ("stdin", data) if data else ("stdin_eof", True)


def _registry_auth(req: Request) -> None:
    """``X-Registry-Auth`` is checked to be Docker's base64 JSON; the daemon then uses
    the logins it keeps (``docker login`` reaches it through ``/auth``)."""
    raw = req.headers.get("x-registry-auth", "")
    if not raw:
        return
    try:
        value = untrusted_json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError):
        raise HttpError(400, "X-Registry-Auth: not base64-encoded JSON") from None
    if not isinstance(value, dict):
        raise HttpError(400, "X-Registry-Auth: expected a JSON object")


def _image_row(r: ImageRecord) -> dict[str, Any]:
    return {"Id": r.id, "ParentId": "", "RepoTags": list(r.repo_tags),
            "RepoDigests": list(r.repo_digests), "Created": int(r.created), "Size": r.size,
            "SharedSize": -1, "VirtualSize": r.size,
            "Labels": dict(e.partition("=")[::2] for e in r.labels) or None,
            "Containers": -1}


_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")


def _terminate_tar(spool: IO[bytes]) -> None:
    """End a plain context tar with its padding and two zero blocks, then rewind: the
    CLI's ``-f -`` (Go's ReplaceFileTarWrapper) sends one cut off after the last
    file's data, which dockerd's reader takes. Extra zero blocks after a proper end
    are ignored by every tar reader; a compressed body is left as it is."""
    size = spool.tell()
    if size == 0:
        raise HttpError(400, "build: the request body (the context tar) is empty")
    spool.seek(0)
    if not spool.read(6).startswith(_COMPRESSED):
        spool.seek(size)
        spool.write(b"\0" * (-size % 512 + 1024))
    spool.seek(0)


def _read_dockerfile(spool: IO[bytes], name: str) -> str:
    """The Dockerfile ``name`` (a path in the context) out of the spooled context tar."""
    wanted = posixpath.normpath(name.lstrip("/"))
    try:
        with tarfile.open(fileobj=spool, mode="r:*") as tar:
            for member in tar:
                if posixpath.normpath(member.name.lstrip("/")) != wanted:
                    continue
                if not member.isfile():
                    break
                if member.size > MAX_DOCKERFILE:
                    raise HttpError(400, f"the Dockerfile {name} is larger than "
                                         f"{MAX_DOCKERFILE} bytes")
                data = tar.extractfile(member).read()      # type: ignore[union-attr]
                try:
                    return data.decode()
                except UnicodeDecodeError:
                    raise HttpError(400, f"the Dockerfile {name} is not UTF-8 text") \
                        from None
    except tarfile.TarError:
        raise HttpError(400, "Error processing tar file: the build context is not a tar "
                             "archive (plain, gzip, bzip2 or xz)") from None
    finally:
        spool.seek(0)
    raise HttpError(400, f"Cannot locate specified Dockerfile: {name}")


class ImageRoutes:
    def __init__(self, calls: Calls):
        self.calls = calls

    def routes(self) -> list[Route]:
        i = "/images/{name:path}"
        return [
            route("GET", "/images/json", self.list),
            route("POST", "/images/create", self.create),
            route("POST", "/images/load", self.load),
            route("GET", "/images/get", self.save),
            route("POST", "/images/prune", self.prune),
            route("POST", "/build", self.build),
            route("POST", "/build/prune", self.build_prune),
            route("POST", "/auth", self.auth),
            route("POST", "/commit", self.commit),
            route("GET", i + "/json", self.inspect),
            route("GET", i + "/history", self.history),
            route("GET", i + "/get", self.save),
            route("POST", i + "/tag", self.tag),
            route("POST", i + "/push", self.push),
            route("DELETE", "/images/{name:path}", self.delete),
        ]

    async def _call(self, op: str, raw: dict[str, Any], name: str) -> Any:
        try:
            return await self.calls.call(op, raw)
        except NotFound as e:
            raise _no_such_image(name)(e) from None

    # -- listing and inspecting
    async def list(self, req: Request) -> Response:
        result = await self.calls.call("image.list", {
            "all": req.flag("all"), "filters": docker_filters(req.json_arg("filters"))})
        return json_response([_image_row(ImageRecord.from_dict(r)) for r in result["images"]])

    async def inspect(self, req: Request) -> Response:
        name = req.params["name"]
        record = ImageRecord.from_dict(await self._call("image.inspect", {"name": name}, name))
        doc = image_document(record)
        doc.update(Container="", DockerVersion="", Author="", VirtualSize=record.size,
                   GraphDriver={"Name": "overlay2", "Data": None},
                   Metadata={"LastTagTime": "0001-01-01T00:00:00Z"})
        return json_response(doc)

    async def history(self, req: Request) -> Response:
        name = req.params["name"]
        rows = (await self._call("image.history", {"name": name}, name))["history"]
        return json_response([{"Id": r["id"] or "<missing>", "Created": int(r["created"]),
                               "CreatedBy": r["created_by"], "Tags": r["tags"] or None,
                               "Size": r["size"], "Comment": r["comment"]} for r in rows])

    # -- names
    async def tag(self, req: Request) -> Response:
        name, repo = req.params["name"], req.arg("repo")
        if not repo:
            raise HttpError(400, "tag: the repo query parameter is required")
        target = f"{repo}:{req.arg('tag')}" if req.arg("tag") else repo
        await self._call("image.tag", {"source": name, "target": target}, name)
        return empty(201)

    async def delete(self, req: Request) -> Response:
        name = req.params["name"]
        if req.flag("noprune"):
            raise HttpError(400, "noprune is not supported by sandboxd: removing an image "
                                 "also removes the untagged images its build made")
        result = await self._call("image.remove", {"name": name, "force": req.flag("force")},
                                  name)
        return json_response([{"Untagged": u} for u in result["untagged"]] +
                             [{"Deleted": d} for d in result["deleted"]])

    async def prune(self, req: Request) -> Response:
        filters = docker_filters(req.json_arg("filters"))
        dangling = filters.pop("dangling", ["true"])
        if len(set(v.lower() in ("true", "1") for v in dangling)) != 1 or \
                not all(v.lower() in ("true", "false", "1", "0") for v in dangling):
            raise HttpError(400, f"filters.dangling: {dangling!r} is not true or false")
        all_unused = dangling[0].lower() in ("false", "0")
        result = await self.calls.call("image.prune", {"all": all_unused, "filters": filters})
        return json_response({
            "ImagesDeleted": [{"Untagged": u} for u in result.get("untagged", [])] +
                             [{"Deleted": d} for d in result["deleted"]] or None,
            "SpaceReclaimed": result["space_reclaimed"]})

    async def build_prune(self, req: Request) -> Response:
        """``docker builder prune`` and the last step of ``docker system prune``. The
        classic builder here keeps no cache beside the images its steps made (a step is
        reused by its image's key), which ``image prune`` removes: nothing to free."""
        docker_filters(req.json_arg("filters"))          # bad JSON is still a 400
        return json_response({"CachesDeleted": None, "SpaceReclaimed": 0})

    async def commit(self, req: Request) -> Response:
        container = req.arg("container")
        if not container:
            raise HttpError(400, "commit: the container query parameter is required")
        if any(req.query.get("author", [])):
            raise HttpError(400, "commit: author is not supported by sandboxd")
        config = await req.json()
        if any(v not in (None, "", [], {}, False, 0) for v in config.values()):
            raise HttpError(400, "commit: a container config in the body is not supported "
                                 "by sandboxd (the image keeps the container's)")
        repo = req.arg("repo")
        name = (f"{repo}:{req.arg('tag')}" if req.arg("tag") else repo) if repo else None
        if req.arg("tag") and not repo:
            raise HttpError(400, "commit: a tag needs a repo")
        result = await self.calls.call("container.commit", {
            "id": container, "name": name, "message": req.arg("comment"),
            "changes": req.query.get("changes", [])})
        return json_response({"Id": result["id"]}, 201)

    # -- registries
    async def create(self, req: Request) -> Response:
        if req.arg("fromSrc"):
            if req.arg("fromImage"):
                raise HttpError(400, "images/create: give fromImage (pull) or fromSrc "
                                     "(import), not both")
            return await self._import(req)
        image = req.arg("fromImage")
        if not image:
            raise HttpError(400, "images/create: fromImage (or fromSrc) is required")
        _registry_auth(req)
        tag = req.arg("tag")
        if tag:
            ref = f"{image}@{tag}" if ":" in tag else f"{image}:{tag}"
        elif "@" in image or ":" in image.rpartition("/")[2]:
            ref = image
        else:
            raise HttpError(400, f"pulling every tag of {image} (docker pull -a) is not "
                                 f"supported: name a tag")
        queue: asyncio.Queue[bytes] = asyncio.Queue(64)
        held: list[bytes] = []
        said = False

        async def sink(name: str, data: Any) -> None:
            nonlocal said
            if name != "progress":
                return
            line = json_line(_progress_message(data))
            if not said and data.get("status", "").startswith("Pulling from"):
                held.append(line)          # until the registry has the manifest
                return
            said = True
            while held:
                await queue.put(held.pop(0))
            await queue.put(line)

        params: dict[str, Any] = {"name": ref}
        if req.arg("platform"):
            params["platform"] = req.arg("platform")
        ctx = ApiContext("image.pull", sink)
        return await stream_response(self.calls.call("image.pull", params, ctx), queue,
                                     convert=_pull_error(ref))

    async def _import(self, req: Request) -> Response:
        if req.arg("fromSrc") != "-":
            raise HttpError(400, f"import: fromSrc {req.arg('fromSrc')!r}: only - (the "
                                 f"request body) is supported, not URLs")
        repo = req.arg("repo")
        if not repo:
            raise HttpError(400, "import: a repository name (repo) is required by sandboxd")
        name = f"{repo}:{req.arg('tag')}" if req.arg("tag") else repo
        params: dict[str, Any] = {"name": name, "message": req.arg("message"),
                                  "changes": req.query.get("changes", [])}
        ctx = ApiContext("image.import")
        result = await self._upload(req, ctx, self.calls.call("image.import", params, ctx))
        return Response(200, json_line({"status": result["id"]}))

    async def _upload(self, req: Request, ctx: ApiContext, work: Awaitable[Any]) -> Any:
        """Run ``work`` (an op that spools its stdin) with the request body as stdin."""
        task = asyncio.ensure_future(work)
        try:
            async for chunk in req.chunks(UPLOAD_CAP):
                # bounded: the body is read only as fast as the op takes it; an op that
                # ends early (a bad archive) must not leave the push waiting for it
                pushing = asyncio.ensure_future(ctx.push("stdin", chunk))
                await asyncio.wait((pushing, task), return_when=asyncio.FIRST_COMPLETED)
                if not pushing.done():
                    pushing.cancel()
                if task.done():
                    break
            ctx.feed("stdin_eof", True)
            return await task
        finally:
            task.cancel()

    async def push(self, req: Request) -> Response:
        name = req.params["name"]
        _registry_auth(req)
        if req.arg("tag"):
            refs = [f"{name}:{req.arg('tag')}"]
        else:            # docker-py without a tag: every local tag of the repository
            found = await self.calls.call("image.list", {"filters": {"reference": [name]}})
            refs = [t for r in found["images"] for t in r["repo_tags"]]
            if not refs:
                raise HttpError(404, f"An image does not exist locally with the tag: {name}")
        queue: asyncio.Queue[bytes] = asyncio.Queue(64)

        async def sink(event: str, data: Any) -> None:
            if event == "progress":
                await queue.put(json_line(_progress_message(data)))

        async def push_all() -> None:
            for ref in refs:
                ctx = ApiContext("image.push", sink)
                try:
                    result = await self.calls.call("image.push", {"name": ref}, ctx)
                except NotFound as e:
                    if e.message.startswith("no such image"):
                        raise HttpError(404, f"An image does not exist locally with the "
                                             f"tag: {ref}") from None
                    raise
                await queue.put(json_line({"progressDetail": {}, "aux": {
                    "Tag": ref.rpartition(":")[2], "Digest": result["digest"],
                    "Size": result["size"]}}))
        return await stream_response(push_all(), queue)

    async def auth(self, req: Request) -> Response:
        body = await req.json(required=True)
        if body.get("identitytoken") or body.get("IdentityToken"):
            raise HttpError(400, "auth: identity tokens are not supported; log in with a "
                                 "username and password")
        user, password = body.get("username"), body.get("password")
        server = body.get("serveraddress") or ""
        if not all(isinstance(v, str) for v in (user, password, server)) or not user:
            raise HttpError(400, "auth: username, password and serveraddress must be "
                                 "strings, with a username")
        try:
            result = await self.calls.call("system.login", {
                "registry": _registry_name(server), "username": user, "password": password})
        except Unauthorized as e:
            raise HttpError(401, e.message) from None
        return json_response({"Status": result["status"], "IdentityToken": ""})

    # -- archives
    async def load(self, req: Request) -> Response:
        ctx = ApiContext("image.load")
        result = await self._upload(req, ctx, self.calls.call("image.load", {}, ctx))
        lines = []
        for image in result["images"]:
            lines += [f"Loaded image: {t}\n" for t in image["tags"]] or \
                [f"Loaded image ID: {image['id']}\n"]
        return Response(200, b"".join(json_line({"stream": s}) for s in lines))

    async def save(self, req: Request) -> Response:
        names = [req.params["name"]] if "name" in req.params else req.query.get("names", [])
        if not names:
            raise HttpError(400, "images/get: name at least one image (names=...)")
        return await tar_response(self.calls, "image.save", {"names": names},
                                  convert=_no_such_image(", ".join(names)))

    # -- build
    async def build(self, req: Request) -> Response:
        params = _build_params(req)
        quiet = req.flag("q")
        spool = tempfile.TemporaryFile(dir=self.calls.handlers.spool_dir)
        try:
            async for chunk in req.chunks(UPLOAD_CAP):
                spool.write(chunk)
            _terminate_tar(spool)
            name = params["dockerfile_name"]
            params["dockerfile"] = await asyncio.get_running_loop().run_in_executor(
                None, _read_dockerfile, spool, name)
        except BaseException:
            spool.close()
            raise
        queue: asyncio.Queue[bytes] = asyncio.Queue(64)

        async def sink(event: str, data: Any) -> None:
            if event == "progress" and not quiet:
                await queue.put(json_line({"stream": data.get("stream", "")}))

        async def run() -> Any:
            with spool:
                ctx = _SpoolContext("image.build", sink, spool)
                result = await self.calls.call("image.build", params, ctx)
            await queue.put(json_line({"aux": {"ID": result["id"]}}))
            if quiet:
                await queue.put(json_line({"stream": result["id"] + "\n"}))
            return result
        return await stream_response(run(), queue)


def _pull_error(ref: str) -> Callable[[BaseException], BaseException]:
    def convert(exc: BaseException) -> BaseException:
        if isinstance(exc, Unauthorized):
            return HttpError(401, exc.message)
        if isinstance(exc, NotFound):
            return HttpError(404, f"pull {ref}: {exc.message}")
        return exc
    return convert


def _registry_name(server: str) -> str:
    """``/auth``'s serveraddress (``https://index.docker.io/v1/``, ``host:port``, a URL)
    as the registry's name."""
    for prefix in ("https://", "http://"):
        if server.startswith(prefix):
            server = server[len(prefix):]
    server = server.split("/", 1)[0]
    return "docker.io" if server in ("", "index.docker.io", "registry-1.docker.io") \
        else server


def _build_params(req: Request) -> dict[str, Any]:
    """image.build's params from /build's query (the Dockerfile text comes later)."""
    if req.arg("version") == "2":
        raise HttpError(400, "BuildKit (build version 2) is not supported by sandboxd: "
                             "use the classic builder, DOCKER_BUILDKIT=0 docker build ...")
    for key, default in _UNSUPPORTED_BUILD.items():
        value = req.arg(key)
        if value not in ("", default) and not (key == "squash" and value in ("0", "false")):
            raise HttpError(400, f"build: {key} is not supported by sandboxd")
    platform, here = req.arg("platform"), f"linux/{oci.architecture()}"
    if platform and platform not in ("linux", here):
        raise HttpError(400, f"build: platform {platform!r}: sandboxd builds for this "
                             f"machine only ({here})")
    build_args = req.json_arg("buildargs") or {}
    labels = req.json_arg("labels") or {}
    for where, value in (("buildargs", build_args), ("labels", labels)):
        if not isinstance(value, dict) or not all(
                isinstance(v, (str, type(None))) for v in value.values()):
            raise HttpError(400, f"build: {where} must be a JSON object of strings")
    cache_from = req.json_arg("cachefrom") or []
    if not isinstance(cache_from, list) or not all(isinstance(c, str) for c in cache_from):
        raise HttpError(400, "build: cachefrom must be a JSON list of image names")
    ulimits = req.json_arg("ulimits") or []
    if not isinstance(ulimits, list) or not all(
            isinstance(u, dict) and isinstance(u.get("Name"), str) for u in ulimits):
        raise HttpError(400, "build: ulimits must be a JSON list of {Name, Soft, Hard}")
    params: dict[str, Any] = {
        "dockerfile_name": req.arg("dockerfile") or "Dockerfile",
        "tags": list(req.query.get("t", [])),
        # a build arg without a value is one the client did not have: as unset
        "build_args": {k: v for k, v in build_args.items() if v is not None},
        "labels": {k: v or "" for k, v in labels.items()},
        "no_cache": req.flag("nocache"),
        "network": req.arg("networkmode") or "default",
        "target": req.arg("target"),
        "pull": req.flag("pull"),
        "cache_from": cache_from,
        "ulimits": [f"{u['Name']}={u.get('Soft', 0)}:{u.get('Hard', 0)}" for u in ulimits],
        "add_hosts": [h for value in req.query.get("extrahosts", [])
                      for h in value.split(",") if h],
    }
    memory, shm = req.integer("memory", 0), req.integer("shmsize", 0)
    if memory:
        params["memory"] = memory
    if shm:
        params["shm_size"] = shm
    quota, period = req.integer("cpuquota", 0), req.integer("cpuperiod", 0)
    if quota:
        params["cpus"] = quota / (period or 100_000)
    if req.integer("cpushares", 0):
        raise HttpError(400, "build: cpushares is not supported by sandboxd (use "
                             "cpuquota/cpuperiod)")
    if params["network"] == "bridge":
        params["network"] = "default"
    return params
