"""A client for the OCI distribution protocol (what ``docker pull/push`` speak), on the
standard library's ``http.client``: it is all this needs (keep-alive, chunked bodies,
TLS) and keeps the daemon free of another HTTP stack.

What it does, and where:

- :class:`RegistryClient`: ``/v2/`` ping, manifests (get by tag or digest with every
  manifest and index type in ``Accept``, put), blobs (GET following redirects and
  resuming with ``Range`` after a dropped connection; HEAD; uploads, monolithic ``PUT``
  or chunked ``PATCH``s), authentication from the registry's ``WWW-Authenticate``
  challenge: ``Basic`` with the stored credentials, or ``Bearer`` with a token fetched
  from the realm it names (with the credentials, or anonymously).
- :class:`Credentials`: ``<daemon root>/auth.json`` in Docker's ``config.json`` shape
  (``{"auths": {"host:port": {"auth": base64("user:password")}}}``), mode 0600.

Errors name the registry and what to do: ``Unauthorized`` ("unauthorized: ..." /
"denied: ..."), ``NotFound`` ("manifest unknown: NAME:TAG not found"), ``Unavailable``
(cannot connect, connection lost after the retries, server errors).

Loopback registries (``localhost``, ``127.0.0.0/8``, ``::1``) are spoken to over plain
HTTP, as Docker treats them as insecure by default; every other host over HTTPS with
certificate checks, except an ``insecure`` one (the daemon's ``insecure-registries``):
HTTPS without certificate checks, then plain HTTP if the server speaks no TLS, as
Docker does. A client may talk to another ``endpoint`` than its registry's name (Docker
Hub's ``docker.io`` is served by ``registry-1.docker.io``; a mirror serves it too).
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import ipaddress
import json
import os
import re
import socket
import ssl
import urllib.parse
from pathlib import Path
from typing import Any, BinaryIO, Callable

from .. import untrusted_json
from ..errors import InvalidArgument, NotFound, Unavailable
from ..reference import DEFAULT_DOMAIN, HUB_ENDPOINT
from . import oci

USER_AGENT = "sandboxd/0.1"
ACCEPT_MANIFESTS = ", ".join((oci.MEDIA_MANIFEST, oci.MEDIA_INDEX, oci.DOCKER_MANIFEST,
                              oci.DOCKER_MANIFEST_LIST))
DEFAULT_CHUNK = 16 << 20            # blobs above this are uploaded in PATCH chunks
_MAX_MANIFEST = 4 << 20             # distribution's own limit for a manifest body
_MAX_REDIRECTS = 5
# A dropped or reset connection: worth another try (a request that may have changed
# state on the server is retried by its caller, from a clean start).
_DROPPED = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, socket.timeout,
            http.client.RemoteDisconnected, http.client.IncompleteRead,
            http.client.BadStatusLine)


class Unauthorized(InvalidArgument):
    """The registry refused the request's credentials (or wanted some). Travels as
    ``invalid_argument``: the credentials are the caller's to fix."""


class ConnectionLost(Unavailable):
    """The connection dropped and the retries ran out (travels as ``unavailable``)."""


def is_loopback(registry: str) -> bool:
    host = urllib.parse.urlsplit("//" + registry).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ================================================================ settings

def check_mirror(url: str) -> str:
    """A ``registry-mirrors`` entry (``http(s)://host[:port]``), without a trailing
    slash; ``InvalidArgument`` naming what is wrong."""
    parts = urllib.parse.urlsplit(str(url).rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path \
            or parts.query or parts.fragment:
        raise InvalidArgument(f"registry-mirrors: {url!r} is not a mirror URL "
                              f"(http(s)://host[:port], no path)")
    return f"{parts.scheme}://{parts.netloc}"


def check_insecure(entry: str) -> str:
    """An ``insecure-registries`` entry: ``host[:port]`` or a CIDR (``10.0.0.0/8``)."""
    entry = str(entry).strip()
    if "/" in entry:
        try:
            return str(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            pass
    elif entry and "://" not in entry and \
            re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]+)?|\[[0-9a-fA-F:]+\](:[0-9]+)?", entry):
        return entry
    raise InvalidArgument(f"insecure-registries: {entry!r} is neither host[:port] nor a "
                          f"CIDR such as 10.0.0.0/8")


class Registries:
    """Where each registry is reached: Docker Hub (``docker.io``) through the
    ``mirrors`` first, in order, then ``hub`` (its endpoint); registries in ``insecure``
    (``host[:port]`` or CIDRs) without certificate checks. ``options`` go to every
    :class:`RegistryClient` (``timeout``, ``retries``, ``plain_http``)."""

    def __init__(self, mirrors: tuple[str, ...] = (), insecure: tuple[str, ...] = (),
                 hub: str = HUB_ENDPOINT, **options: Any):
        self.mirrors = tuple(check_mirror(m) for m in mirrors)
        self.insecure = tuple(check_insecure(i) for i in insecure)
        self.hub = hub
        self.options = options

    def is_insecure(self, netloc: str) -> bool:
        """Listed in ``insecure``, or loopback (Docker treats those as insecure)."""
        if is_loopback(netloc):
            return True
        host = urllib.parse.urlsplit("//" + netloc).hostname or ""
        for entry in self.insecure:
            if entry in (netloc, host):
                return True
            if "/" in entry:
                try:
                    if ipaddress.ip_address(host) in ipaddress.ip_network(entry):
                        return True
                except ValueError:
                    continue
        return False

    def endpoints(self, domain: str) -> list[tuple[str, str | None]]:
        """``(registry name, endpoint URL or None)`` to try in order for ``domain``:
        for Docker Hub, each mirror (named by its host) then the hub's endpoint."""
        if domain != DEFAULT_DOMAIN:
            return [(domain, None)]
        return [*((urllib.parse.urlsplit(m).netloc, m) for m in self.mirrors),
                (DEFAULT_DOMAIN, self.hub)]

    def client(self, name: str, endpoint: str | None, auth: tuple[str, str] | None
               ) -> RegistryClient:
        netloc = urllib.parse.urlsplit(endpoint).netloc if endpoint else name
        return RegistryClient(name, auth, endpoint=endpoint,
                              insecure=self.is_insecure(netloc), **self.options)


# ================================================================ credentials

class Credentials:
    """Logins per registry in ``path`` (Docker's ``config.json`` ``auths`` shape)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def _load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"auths": {}}
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"{self.path}: unreadable credentials file ({e}); fix or "
                                  f"delete it and log in again") from None
        doc.setdefault("auths", {})
        return doc

    def get(self, registry: str) -> tuple[str, str] | None:
        entry = self._load()["auths"].get(registry)
        if not entry or not entry.get("auth"):
            return None
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument(f"{self.path}: the login for {registry} is not valid "
                                  f"base64 user:password; log in again") from None
        return user, password

    def set(self, registry: str, user: str, password: str) -> None:
        doc = self._load()
        doc["auths"][registry] = {
            "auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
        self._write(doc)

    def erase(self, registry: str) -> bool:
        """Forget the login for ``registry``; ``False`` when there was none."""
        doc = self._load()
        if doc["auths"].pop(registry, None) is None:
            return False
        self._write(doc)
        return True

    def _write(self, doc: dict[str, Any]) -> None:
        # Created 0600 before anything is written: the file holds passwords.
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.rename(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


# ================================================================ the client

def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` -> ``("bearer", {realm, service, ...})``."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in
              re.findall(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*"([^"]*)"', rest)}
    return scheme.lower(), params


def _registry_errors(body: bytes) -> tuple[str, str]:
    """``(code, message)`` of a distribution error body (``{"errors": [...]}``)."""
    try:
        errors = untrusted_json.loads(body).get("errors") or []
        first = errors[0]
        return str(first.get("code", "")), str(first.get("message", ""))
    except (ValueError, AttributeError, IndexError, TypeError):
        return "", body[:200].decode(errors="replace").strip()


class RegistryClient:
    """One registry (``host[:port]``, the name errors and logins use). Not thread-safe:
    one client per pull or push. ``auth`` is ``(user, password)`` or ``None``;
    ``endpoint`` (``scheme://host[:port]``) is where it is served when that is not the
    name itself; ``plain_http`` defaults to whether the host is loopback; ``insecure``:
    no certificate checks, and plain HTTP when the server speaks no TLS. Dropped
    connections are retried ``retries`` times."""

    def __init__(self, registry: str, auth: tuple[str, str] | None = None, *,
                 endpoint: str | None = None, plain_http: bool | None = None,
                 insecure: bool = False, timeout: float = 60.0, retries: int = 3):
        self.registry = registry
        if endpoint:
            parts = urllib.parse.urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise InvalidArgument(f"registry endpoint {endpoint!r}: expected "
                                      f"http(s)://host[:port]")
            self.netloc, self.scheme = parts.netloc, parts.scheme
        else:
            self.netloc = registry
            self.scheme = "http" if (is_loopback(registry) if plain_http is None
                                     else plain_http) else "https"
        self.insecure = insecure
        self.auth = auth
        self.timeout = timeout
        self.retries = retries
        self._conns: dict[tuple[str, str], http.client.HTTPConnection] = {}
        self._challenge: tuple[str, dict[str, str]] | None = None
        self._tokens: dict[str, str] = {}

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ transport

    def _conn(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        conn = self._conns.get((scheme, netloc))
        if conn is None:
            if scheme == "https":
                context = ssl.create_default_context()
                if self.insecure and netloc == self.netloc:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                conn = http.client.HTTPSConnection(netloc, timeout=self.timeout,
                                                   context=context, blocksize=1 << 20)
            else:
                conn = http.client.HTTPConnection(netloc, timeout=self.timeout,
                                                  blocksize=1 << 20)
            self._conns[(scheme, netloc)] = conn
        return conn

    def _drop(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        conn = self._conns.pop((parts.scheme, parts.netloc), None)
        if conn is not None:
            conn.close()

    def _url(self, path: str) -> str:
        return f"{self.scheme}://{self.netloc}{path}"

    def _once(self, method: str, url: str, headers: dict[str, str],
              body: bytes | BinaryIO | None) -> http.client.HTTPResponse:
        parts = urllib.parse.urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn = self._conn(parts.scheme, parts.netloc)
        try:
            conn.request(method, target, body=body,
                         headers={"User-Agent": USER_AGENT, **headers})
            return conn.getresponse()
        except BaseException:
            self._drop(url)
            raise

    def _unreachable(self, url: str, e: OSError) -> Unavailable:
        if isinstance(e, ssl.SSLError):
            return Unavailable(f"registry {self.registry}: TLS failed ({e.reason or e}); "
                               f"a registry without a trusted certificate or without TLS "
                               f"must be listed in the daemon's insecure-registries")
        if isinstance(e, ConnectionRefusedError):
            return Unavailable(f"cannot connect to registry {self.registry} ({url}): "
                               f"connection refused; is a registry listening there?")
        return Unavailable(f"cannot connect to registry {self.registry} ({url}): {e}")

    def request(self, method: str, path_or_url: str, *, scope: str | None,
                headers: dict[str, str] | None = None,
                body: bytes | Callable[[], BinaryIO] | None = None,
                retry: bool = True) -> http.client.HTTPResponse:
        """Send a request with authentication, following redirects of GET/HEAD, and
        retrying a dropped connection when ``retry`` (the request is idempotent). The
        caller reads (or closes) the response before the next request. ``body`` may be
        a callable opening a fresh stream for each try."""
        url = path_or_url if "://" in path_or_url else self._url(path_or_url)
        headers = dict(headers or {})
        tries = 0
        authenticated = False
        redirects = 0
        while True:
            own = urllib.parse.urlsplit(url).netloc == self.netloc
            send = dict(headers)
            if own:                                  # never leak credentials elsewhere
                send.update(self._auth_header(scope))
            stream = body() if callable(body) else body
            try:
                resp = self._once(method, url, send, stream)
            except _DROPPED as e:
                tries += 1
                if not retry or tries > self.retries:
                    raise ConnectionLost(f"registry {self.registry}: connection lost during "
                                      f"{method} {urllib.parse.urlsplit(url).path} "
                                      f"({type(e).__name__}: {e}), tried {tries} times") \
                        from None
                continue
            except ssl.SSLError as e:
                if not (own and self.insecure and self.scheme == "https"):
                    raise self._unreachable(url, e) from None
                # an insecure registry that speaks no TLS: plain HTTP, as Docker does
                self.scheme = "http"
                url = "http" + url[len("https"):]
                continue
            except OSError as e:
                raise self._unreachable(url, e) from None
            finally:
                if callable(body) and stream is not None:
                    stream.close()  # type: ignore[union-attr]
            if resp.status == 401 and own and not authenticated:
                resp.read()
                authenticated = True
                self._learn(resp.headers.get("WWW-Authenticate", ""), scope)
                continue
            if resp.status in (301, 302, 303, 307, 308) and method in ("GET", "HEAD"):
                resp.read()
                redirects += 1
                if redirects > _MAX_REDIRECTS:
                    raise Unavailable(f"registry {self.registry}: more than "
                                      f"{_MAX_REDIRECTS} redirects for {path_or_url}")
                url = urllib.parse.urljoin(url, resp.headers["Location"])
                continue
            return resp

    # ------------------------------------------------------------ authentication

    def _learn(self, header: str, scope: str | None) -> None:
        """A 401: remember the challenge, and drop a token it refused (expired)."""
        if not header:
            return
        self._challenge = _parse_challenge(header)
        self._tokens.pop(scope or "", None)

    def _auth_header(self, scope: str | None) -> dict[str, str]:
        if self._challenge is None:
            return {}
        kind, params = self._challenge
        if kind == "basic":
            return {"Authorization": self._basic()} if self.auth else {}
        if kind == "bearer":
            key = scope or ""
            if key not in self._tokens:
                self._tokens[key] = self._fetch_token(params, scope)
            return {"Authorization": f"Bearer {self._tokens[key]}"}
        raise Unavailable(f"registry {self.registry} asks for {kind!r} authentication; "
                          f"only Basic and Bearer are supported")

    def _basic(self) -> str:
        assert self.auth is not None
        return "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()

    def _fetch_token(self, params: dict[str, str], scope: str | None) -> str:
        realm = params.get("realm")
        if not realm:
            raise Unavailable(f"registry {self.registry}: its Bearer challenge names no "
                              f"token realm")
        query = {"service": params.get("service", "")}
        if scope:
            query["scope"] = scope
        if self.auth:
            query["account"] = self.auth[0]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        headers = {"Authorization": self._basic()} if self.auth else {}
        try:
            resp = self._once("GET", url, headers, None)
            body = resp.read()
        except OSError as e:
            raise self._unreachable(url, e) from None
        if resp.status in (401, 403):
            code, message = _registry_errors(body)
            raise Unauthorized(self._refusal(message or "the token server refused"))
        if resp.status != 200:
            raise Unavailable(f"registry {self.registry}: token server {realm} answered "
                              f"HTTP {resp.status}: {body[:200]!r}")
        try:
            doc = untrusted_json.loads(body)
            return doc.get("token") or doc["access_token"]
        except (ValueError, KeyError, AttributeError):
            raise Unavailable(f"registry {self.registry}: token server {realm} sent no "
                              f"token") from None

    def _refusal(self, message: str) -> str:
        if self.auth:
            return (f"unauthorized: {message} (registry {self.registry} refused the "
                    f"login of {self.auth[0]!r}; sbx login {self.registry} to change it)")
        return (f"unauthorized: {message} (registry {self.registry} needs a login: "
                f"sbx login {self.registry})")

    # ------------------------------------------------------------ errors

    def fail(self, resp: http.client.HTTPResponse, what: str) -> Exception:
        """The error for an unexpected response about ``what`` (the body is read)."""
        body = resp.read(1 << 16)
        if not resp.isclosed():                 # an unread rest would garble the next
            resp.close()
            self.close()
        code, message = _registry_errors(body)
        code_text = code.lower().replace("_", " ") if code else ""
        if resp.status == 401:
            return Unauthorized(self._refusal(message or "authentication required"))
        if resp.status == 403:
            return Unauthorized(f"denied: {message or 'access to the resource is denied'} "
                                f"({what} on {self.registry})")
        if resp.status == 404:
            return NotFound(f"{code_text or 'not found'}: {what} not found")
        if resp.status in (400, 405, 413, 416):
            return InvalidArgument(f"registry {self.registry} refused {what}: "
                                   f"{code_text or resp.status}: {message}")
        return Unavailable(f"registry {self.registry}: {what}: HTTP {resp.status} "
                           f"{code_text} {message}".rstrip())

    # ------------------------------------------------------------ the API

    def ping(self) -> None:
        """``GET /v2/`` with authentication: ``Unauthorized`` when the credentials (or
        their absence) are refused."""
        resp = self.request("GET", "/v2/", scope=None)
        if resp.status != 200:
            raise self.fail(resp, "GET /v2/")
        resp.read()

    def get_manifest(self, repo: str, reference: str, *, scope: str | None = None,
                     name: str | None = None) -> tuple[bytes, str, str]:
        """``(body, media type, digest)`` of a manifest or index; a digest reference is
        checked against the body."""
        resp = self.request("GET", f"/v2/{repo}/manifests/{reference}",
                            scope=scope or pull_scope(repo),
                            headers={"Accept": ACCEPT_MANIFESTS})
        shown = name or f"{self.registry}/{repo}"
        shown += f"@{reference}" if reference.startswith("sha256:") else f":{reference}"
        if resp.status != 200:
            raise self.fail(resp, shown)
        body = resp.read(_MAX_MANIFEST + 1)
        if len(body) > _MAX_MANIFEST:
            resp.close()
            self._drop(self._url("/"))
            raise InvalidArgument(f"{shown}: the manifest is larger than "
                                  f"{_MAX_MANIFEST} bytes")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise InvalidArgument(f"{shown}: the registry sent a manifest whose digest is "
                                  f"{digest}")
        try:
            doc = untrusted_json.loads(body)
        except ValueError:
            raise InvalidArgument(f"{shown}: the manifest is not JSON") from None
        media = resp.headers.get_content_type()
        if media not in oci.MANIFESTS | oci.INDEXES:
            media = oci.media_type(doc) if isinstance(doc, dict) else media
        return body, media, digest

    def blob(self, repo: str, digest: str, *, scope: str | None = None) -> BlobReader:
        """A stream of the blob's bytes that reconnects (with ``Range``) when the
        connection drops; the caller checks the digest (``ContentStore.ingest``)."""
        return BlobReader(self, repo, digest, scope or pull_scope(repo))

    def blob_exists(self, repo: str, digest: str, *, scope: str | None = None) -> bool:
        resp = self.request("HEAD", f"/v2/{repo}/blobs/{digest}",
                            scope=scope or push_scope(repo))
        resp.read()
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        raise self.fail(resp, f"blob {digest}")

    def upload_blob(self, repo: str, digest: str, size: int,
                    opener: Callable[[], BinaryIO], *, chunk_size: int = DEFAULT_CHUNK,
                    progress: Callable[[int], None] | None = None) -> None:
        """Upload a blob: one ``PUT`` when it fits ``chunk_size``, else ``PATCH`` chunks
        then a closing ``PUT``. A dropped connection restarts the upload from a new
        session (a half-sent ``PATCH`` may or may not have been stored)."""
        for attempt in range(self.retries + 1):
            try:
                self._upload(repo, digest, size, opener, chunk_size, progress)
                return
            except ConnectionLost:
                if attempt == self.retries:
                    raise

    def _upload(self, repo: str, digest: str, size: int, opener: Callable[[], BinaryIO],
                chunk_size: int, progress: Callable[[int], None] | None) -> None:
        scope = push_scope(repo)
        what = f"upload of blob {digest} to {self.registry}/{repo}"
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/", scope=scope,
                            headers={"Content-Length": "0"}, retry=False)
        if resp.status != 202:
            raise self.fail(resp, what)
        resp.read()
        location = self._location(resp, what)
        if size <= chunk_size:
            resp = self.request("PUT", _with_query(location, digest=digest), scope=scope,
                                headers={"Content-Type": "application/octet-stream",
                                         "Content-Length": str(size)},
                                body=opener, retry=False)
            if resp.status != 201:
                raise self.fail(resp, what)
            resp.read()
            if progress:
                progress(size)
            return
        offset = 0
        with opener() as f:
            while chunk := f.read(chunk_size):
                resp = self.request(
                    "PATCH", location, scope=scope, body=chunk, retry=False,
                    headers={"Content-Type": "application/octet-stream",
                             "Content-Length": str(len(chunk)),
                             "Content-Range": f"{offset}-{offset + len(chunk) - 1}"})
                if resp.status != 202:
                    raise self.fail(resp, what)
                resp.read()
                location = self._location(resp, what)
                offset += len(chunk)
                if progress:
                    progress(offset)
        resp = self.request("PUT", _with_query(location, digest=digest), scope=scope,
                            headers={"Content-Length": "0"}, retry=False)
        if resp.status != 201:
            raise self.fail(resp, what)
        resp.read()

    def _location(self, resp: http.client.HTTPResponse, what: str) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise Unavailable(f"registry {self.registry}: {what}: no Location in its "
                              f"answer")
        return urllib.parse.urljoin(self._url("/"), location)

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        """Store a manifest under a tag (or its digest); returns its digest."""
        resp = self.request("PUT", f"/v2/{repo}/manifests/{reference}",
                            scope=push_scope(repo), body=body,
                            headers={"Content-Type": media_type,
                                     "Content-Length": str(len(body))})
        if resp.status != 201:
            raise self.fail(resp, f"manifest {self.registry}/{repo}:{reference}")
        resp.read()
        return resp.headers.get("Docker-Content-Digest") or \
            "sha256:" + hashlib.sha256(body).hexdigest()


def pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


def push_scope(repo: str) -> str:
    return f"repository:{repo}:pull,push"


def _with_query(url: str, **params: str) -> str:
    return url + ("&" if "?" in url else "?") + urllib.parse.urlencode(params)


class BlobReader:
    """``read(n)`` over a blob download; a connection that drops mid-body is reopened
    with ``Range: bytes=<offset>-`` (or, when the server ignores ranges, read again
    from the start and the part already delivered skipped), ``retries`` times."""

    def __init__(self, client: RegistryClient, repo: str, digest: str, scope: str):
        self._client = client
        self._path = f"/v2/{repo}/blobs/{digest}"
        self._what = f"blob {digest} of {client.registry}/{repo}"
        self._scope = scope
        self._resp: http.client.HTTPResponse | None = None
        self._tries = 0
        self.offset = 0
        self.size: int | None = None

    def _open(self) -> None:
        headers = {"Range": f"bytes={self.offset}-"} if self.offset else {}
        resp = self._client.request("GET", self._path, scope=self._scope, headers=headers)
        if resp.status == 200:
            if self.size is None and resp.length is not None:
                self.size = resp.length
            skip = self.offset
            while skip:
                got = resp.read(min(skip, 1 << 20))
                if not got:
                    raise http.client.IncompleteRead(b"")
                skip -= len(got)
        elif resp.status != 206 or not self.offset:
            raise self._client.fail(resp, self._what)
        self._resp = resp

    def read(self, n: int = -1, /) -> bytes:
        while True:
            try:
                if self._resp is None:
                    self._open()
                assert self._resp is not None
                data = self._resp.read(n if n is not None and n >= 0 else None)
                if not data and n != 0 and self._resp.length:
                    # read(n) reports a connection closed before Content-Length as EOF
                    raise http.client.IncompleteRead(b"", self._resp.length)
            except _DROPPED as e:
                self._tries += 1
                self.close()
                self._client._drop(self._client._url("/"))
                if self._tries > self._client.retries:
                    raise ConnectionLost(f"{self._what}: connection lost at byte "
                                      f"{self.offset} ({type(e).__name__}), tried "
                                      f"{self._tries} times") from None
                continue
            self.offset += len(data)
            return data

    def close(self) -> None:
        if self._resp is not None:
            if not self._resp.isclosed():       # stopped mid-body: the connection is spent
                self._client._drop(self._client._url("/"))
            self._resp.close()
            self._resp = None

    def __enter__(self) -> BlobReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
