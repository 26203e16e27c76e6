"""The Docker Engine API's image endpoints and ``/build`` with the real clients: the
``docker`` CLI (28.x, its classic builder: ``DOCKER_BUILDKIT=0``) and docker-py 7.x,
against a daemon of this module's own (busybox imported) and Debian's
``docker-registry`` on 127.0.0.1 for pulls and pushes; plus raw HTTP for what the
clients never send (a non-tar build body, BuildKit's ``version=2``)."""
from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
from pathlib import Path

import pytest

from harness import Daemon, running
from registries import PASSWORD, USER, serve_registry

DOCKER = shutil.which("docker")
pytestmark = pytest.mark.skipif(DOCKER is None, reason="the docker CLI is not installed "
                                                       "(apt-get install docker.io)")
NO_REGISTRY = shutil.which("docker-registry") is None
needs_registry = pytest.mark.skipif(NO_REGISTRY, reason="docker-registry is not installed "
                                                        "(apt-get install docker-registry)")


@pytest.fixture(scope="module")
def d():
    with running() as daemon:
        yield daemon


@pytest.fixture(scope="module")
def sock(d: Daemon) -> str:
    return os.path.join(d.tmp, "docker.sock")


@pytest.fixture(scope="module")
def docker(sock: str, tmp_path_factory):
    """``docker(*args)``: the CLI against our socket, with a config dir of its own."""
    config = tmp_path_factory.mktemp("docker-config")
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_CONFIG": str(config),
           "DOCKER_BUILDKIT": "0"}

    def run(*args: str, check: bool = True, input: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([DOCKER, *args], env=env, capture_output=True, text=True,
                              input=input, timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(f"docker {' '.join(args)} exited {proc.returncode}:\n"
                        f"{proc.stdout}\n{proc.stderr}")
        return proc
    return run


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    if NO_REGISTRY:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    with serve_registry(tmp_path_factory.mktemp("dk-registry") / "open") as address:
        yield address


@pytest.fixture(scope="module")
def dockerpy(sock: str):
    docker_py = pytest.importorskip("docker", reason="docker-py is not installed "
                                                     "(pip install docker)")
    client = docker_py.DockerClient(base_url=f"unix://{sock}", version="auto")
    yield client
    client.close()


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.path)


def request(sock: str, method: str, url: str, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, bytes]:
    conn = _Unix(sock)
    try:
        conn.request(method, url, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def json_lines(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def context(tmp: Path, dockerfile: str, **files: str) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "Dockerfile").write_text(dockerfile)
    for name, text in files.items():
        (tmp / name).write_text(text)
    return tmp


# ---------------------------------------------------------------- build

def test_cli_build_run_inspect_history(d: Daemon, docker, tmp_path: Path) -> None:
    ctx = context(tmp_path / "ctx", "FROM busybox\nARG WHO=nobody\nLABEL team=infra\n"
                                    "COPY hello.txt /hello.txt\n"
                                    "RUN echo \"built by $WHO\" > /who\n"
                                    "CMD [\"cat\", \"/who\"]\n", **{"hello.txt": "hello\n"})
    out = docker("build", "-t", "dk-built:1", "-t", "dk-built:2", "--build-arg", "WHO=cli",
                 "--label", "extra=yes", str(ctx)).stdout
    try:
        assert "Step 1/6 : FROM busybox" in out
        assert "Step 5/6 : RUN echo \"built by $WHO\" > /who" in out
        assert "Successfully built " in out
        assert "Successfully tagged dk-built:1" in out and "Successfully tagged dk-built:2" \
            in out
        # the same image through our own face, and its run
        assert d.sbx("run", "--rm", "dk-built:2", check=True).out == "built by cli\n"
        fmt = "{{json .Config.Labels}}|{{json .Config.Cmd}}|{{json .RepoTags}}|{{.Os}}"
        labels, cmd, tags, os_name = docker("inspect", "-f", fmt,
                                            "dk-built:1").stdout.strip().split("|")
        assert json.loads(labels) == {"team": "infra", "extra": "yes"}
        assert json.loads(cmd) == ["cat", "/who"]
        assert sorted(json.loads(tags)) == ["dk-built:1", "dk-built:2"]
        assert os_name == "linux"
        history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}",
                         "dk-built:1").stdout.splitlines()
        assert "LABEL extra" in history[0] and "CMD" in history[1] and \
            "WHO=cli" in history[2], history
        listed = docker("images", "--format", "{{.Repository}}:{{.Tag}}",
                        "--filter", "reference=dk-built").stdout.split()
        assert sorted(listed) == ["dk-built:1", "dk-built:2"]
        labelled = docker("images", "-q", "--filter", "label=team=infra").stdout.split()
        assert len(set(labelled)) == 1
        # a second build: every step from the cache; -q prints the id only
        again = docker("build", "-q", "--build-arg", "WHO=cli", "--label", "extra=yes",
                       str(ctx)).stdout.strip()
        assert again == docker("inspect", "-f", "{{.Id}}", "dk-built:1").stdout.strip()
    finally:
        docker("rmi", "dk-built:1", "dk-built:2", check=False)


def test_cli_build_dockerfile_from_stdin_and_compressed(d: Daemon, docker,
                                                       tmp_path: Path) -> None:
    """``-f -`` (the CLI sends a context tar cut off after its last file), ``-`` alone
    (a Dockerfile and no context), ``-f sub/File`` and ``--compress`` (gzip)."""
    ctx = context(tmp_path / "ctx", "FROM busybox\n", **{"data.txt": "from the context\n"})
    (ctx / "sub").mkdir()
    (ctx / "sub" / "Build.file").write_text("FROM busybox\nCOPY data.txt /d\n")
    dockerfile = "FROM busybox\nCOPY data.txt /d\nRUN cat /d > /e\n"
    docker("build", "-t", "dk-stdin", "-f", "-", str(ctx), input=dockerfile)
    docker("build", "-t", "dk-sub", "--compress", "-f", str(ctx / "sub" / "Build.file"),
           str(ctx))
    alone = docker("build", "-q", "-", input="FROM busybox\nRUN echo alone > /a\n")
    try:
        assert d.sbx("run", "--rm", "dk-stdin", "cat", "/e", check=True).out == \
            "from the context\n"
        assert d.sbx("run", "--rm", "dk-sub", "cat", "/d", check=True).out == \
            "from the context\n"
        assert d.sbx("run", "--rm", alone.stdout.strip(), "cat", "/a",
                     check=True).out == "alone\n"
    finally:
        docker("rmi", "dk-stdin", "dk-sub", alone.stdout.strip(), check=False)


def test_cli_build_failures(docker, tmp_path: Path) -> None:
    ctx = context(tmp_path / "fail", "FROM busybox\nRUN echo before && exit 3\n")
    proc = docker("build", str(ctx), check=False)
    assert proc.returncode == 1
    assert "Step 2/2 : RUN echo before && exit 3" in proc.stdout
    assert "returned a non-zero code: 3" in proc.stderr, proc.stderr
    proc = docker("build", str(context(tmp_path / "nobase", "FROM dk-no-such-base:1\n")),
                  check=False)
    assert proc.returncode == 1 and "dk-no-such-base" in proc.stderr, proc.stderr


def test_build_bad_bodies_and_buildkit(sock: str, tmp_path: Path) -> None:
    status, body = request(sock, "POST", "/v1.43/build", b"this is not a tar archive " * 40,
                           {"Content-Type": "application/x-tar"})
    assert status == 400
    assert json.loads(body)["message"].startswith(
        "Error processing tar file: the build context is not a tar archive")

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"FROM busybox\n"
        info = tarfile.TarInfo("Other")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    status, body = request(sock, "POST", "/v1.43/build", buf.getvalue())
    assert (status, json.loads(body)) == (400, {
        "message": "Cannot locate specified Dockerfile: Dockerfile"})
    status, body = request(sock, "POST", "/v1.43/build?dockerfile=Other&t=dk-other",
                           buf.getvalue())
    assert status == 200, body
    lines = json_lines(body)
    assert lines[0] == {"stream": "Step 1/1 : FROM busybox\n"}
    assert any(line.get("aux", {}).get("ID", "").startswith("sha256:") for line in lines)
    assert request(sock, "DELETE", "/images/dk-other")[0] == 200

    status, body = request(sock, "POST", "/v1.43/build?version=2", buf.getvalue())
    assert status == 400 and "DOCKER_BUILDKIT=0" in json.loads(body)["message"]
    status, body = request(sock, "POST", "/v1.43/build?buildargs=%7Bnot-json", buf.getvalue())
    assert status == 400 and "buildargs" in json.loads(body)["message"]
    assert request(sock, "POST", "/v1.43/build", b"")[0] == 400


def test_cli_buildkit_default_is_the_classic_builder(sock: str, tmp_path: Path) -> None:
    """/_ping says Builder-Version 1: without buildx the CLI picks the classic builder
    itself (no DOCKER_BUILDKIT needed); DOCKER_BUILDKIT=1 fails in the CLI, clearly."""
    ctx = context(tmp_path / "ctx", "FROM busybox\n")
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}",
           "DOCKER_CONFIG": str(tmp_path / "cfg")}
    env.pop("DOCKER_BUILDKIT", None)
    proc = subprocess.run([DOCKER, "build", "-q", str(ctx)], env=env, capture_output=True,
                          text=True, timeout=60)
    if "buildx" in proc.stdout + proc.stderr and proc.returncode != 0:
        pytest.skip("this docker CLI has a buildx plugin: it always builds with BuildKit")
    assert proc.returncode == 0 and proc.stdout.strip().startswith("sha256:"), proc.stderr
    proc = subprocess.run([DOCKER, "build", str(ctx)], env={**env, "DOCKER_BUILDKIT": "1"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "buildx" in proc.stderr


# ---------------------------------------------------------------- names

def test_cli_tag_rmi_prune_and_unknown_images(d: Daemon, docker, tmp_path: Path) -> None:
    docker("tag", "busybox", "dk/bb:t1")
    docker("tag", "busybox", "dk/bb")
    listed = docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert {"dk/bb:t1", "dk/bb:latest", "busybox:latest"} <= set(listed)
    assert docker("rmi", "dk/bb:t1", "dk/bb").stdout.split() == [
        "Untagged:", "dk/bb:t1", "Untagged:", "dk/bb:latest"]

    proc = docker("image", "inspect", "dk-nope:1", check=False)
    assert proc.returncode == 1 and "No such image: dk-nope:1" in proc.stderr
    proc = docker("rmi", "dk-nope:1", check=False)
    assert proc.returncode == 1 and "No such image: dk-nope:1" in proc.stderr
    proc = docker("history", "dk-nope:1", check=False)
    assert proc.returncode == 1 and "No such image: dk-nope:1" in proc.stderr
    proc = docker("tag", "dk-nope:1", "dk-other:1", check=False)
    assert proc.returncode == 1 and "No such image: dk-nope:1" in proc.stderr
    proc = docker("rmi", "--no-prune", "busybox", check=False)
    assert proc.returncode == 1 and "noprune is not supported" in proc.stderr

    # a dangling image (a build's, untagged by a second build): prune -f takes it
    ctx = context(tmp_path / "ctx", "FROM busybox\nRUN echo one > /v\n")
    docker("build", "-t", "dk-prune", str(ctx))
    first = docker("inspect", "-f", "{{.Id}}", "dk-prune").stdout.strip()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo two > /v\n")
    docker("build", "-t", "dk-prune", str(ctx))
    dangling = docker("images", "-q", "--no-trunc", "--filter", "dangling=true").stdout.split()
    assert first in dangling
    out = docker("image", "prune", "-f").stdout
    assert f"deleted: {first}" in out and "Total reclaimed space" in out
    assert docker("images", "-q", "--filter", "dangling=true").stdout.strip() == ""
    docker("rmi", "dk-prune")
    assert "busybox:latest" in docker("images", "--format",
                                      "{{.Repository}}:{{.Tag}}").stdout.split()


def test_images_json_filters_and_errors(sock: str) -> None:
    status, body = request(sock, "GET", '/v1.43/images/json?filters={"reference":["busybox"]}')
    rows = json.loads(body)
    assert status == 200 and [r["RepoTags"] for r in rows] == [["busybox:latest"]]
    row = rows[0]
    assert row["Id"].startswith("sha256:") and isinstance(row["Created"], int)
    assert row["Size"] > 0
    status, body = request(sock, "GET", '/v1.43/images/json?filters={"colour":["red"]}')
    assert status == 400 and "colour" in json.loads(body)["message"]
    status, body = request(sock, "GET", "/v1.43/images/json?filters=not-json")
    assert status == 400
    status, body = request(sock, "GET", "/v1.43/images/sha256:0000/json")
    assert (status, json.loads(body)) == (404, {"message": "No such image: sha256:0000"})
    status, body = request(sock, "POST", "/v1.43/images/busybox/tag")
    assert status == 400 and "repo" in json.loads(body)["message"]
    status, body = request(sock, "POST", "/v1.43/images/create?fromImage=busybox")
    assert status == 400 and "name a tag" in json.loads(body)["message"]
    status, body = request(sock, "POST", "/v1.43/images/busybox/push",
                           headers={"X-Registry-Auth": "%%%"})
    assert status == 400 and "X-Registry-Auth" in json.loads(body)["message"]


def test_cli_commit(d: Daemon, docker) -> None:
    cid = d.sbx("run", "-d", "-e", "RUNTIME=1", "-w", "/tmp", "busybox", "sh", "-c",
                "echo kept > /k; sleep 60", check=True).out.strip()
    try:
        d.sbx("exec", cid, "cat", "/k", check=True)       # the file is there
        out = docker("commit", "-m", "from the api", cid, "dk-committed:1").stdout.strip()
        assert out.startswith("sha256:")
        assert docker("inspect", "-f", "{{.Comment}}", "dk-committed:1").stdout.strip() == \
            "from the api"
        assert d.sbx("run", "--rm", "dk-committed:1", "cat", "/k", check=True).out == "kept\n"
        # as dockerd: the image's config is what the container ran with...
        config = json.loads(docker("inspect", "-f", "{{json .Config}}",
                                   "dk-committed:1").stdout)
        assert config["Cmd"] == ["sh", "-c", "echo kept > /k; sleep 60"]
        assert "RUNTIME=1" in config["Env"] and config["WorkingDir"] == "/tmp"
        # ... then each --change, a Dockerfile instruction
        docker("commit", "--change", "ENV A=1", "--change", 'CMD ["cat", "/k"]',
               "--change", "EXPOSE 8080", cid, "dk-committed:2")
        config = json.loads(docker("inspect", "-f", "{{json .Config}}",
                                   "dk-committed:2").stdout)
        assert config["Cmd"] == ["cat", "/k"] and "A=1" in config["Env"]
        assert config["ExposedPorts"] == {"8080/tcp": {}}
        assert d.sbx("run", "--rm", "dk-committed:2", check=True).out == "kept\n"
        proc = docker("commit", "--change", "RUN ls", cid, "dk-committed:3", check=False)
        assert proc.returncode == 1 and "RUN is not an instruction a change takes" \
            in proc.stderr
        proc = docker("commit", "dk-no-such-container", check=False)
        assert proc.returncode == 1 and "dk-no-such-container" in proc.stderr
    finally:
        d.sbx("rm", "-f", cid, check=True)
        docker("rmi", "dk-committed:1", "dk-committed:2", check=False)


# ---------------------------------------------------------------- archives

def test_cli_save_load_import(d: Daemon, docker, tmp_path: Path) -> None:
    docker("tag", "busybox", "dk-saved:1")
    archive = tmp_path / "saved.tar"
    docker("save", "-o", str(archive), "dk-saved:1")
    with tarfile.open(archive) as tar:
        assert "manifest.json" in tar.getnames()
    docker("rmi", "dk-saved:1")
    with open(archive, "rb") as f:
        out = subprocess.run([DOCKER, "load"], stdin=f, capture_output=True, text=True,
                             env={**os.environ, "DOCKER_HOST": f"unix://{d.tmp}/docker.sock"},
                             timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "Loaded image: dk-saved:1", out
    proc = docker("save", "dk-nope:1", "-o", str(tmp_path / "nope.tar"), check=False)
    assert proc.returncode == 1 and "No such image: dk-nope:1" in proc.stderr
    proc = docker("load", "-i", str(tmp_path / "saved.tar"), "-q")
    assert "dk-saved:1" in proc.stdout
    docker("rmi", "dk-saved:1")

    rootfs = tmp_path / "rootfs.tar"
    docker("save", "-o", str(rootfs), "busybox")     # any tar: import takes it as a rootfs
    imported = docker("import", "--change", 'CMD ["echo", "imported"]', str(rootfs),
                      "dk-imported:1").stdout.strip()
    assert imported.startswith("sha256:")
    assert docker("inspect", "-f", "{{json .Config.Cmd}}", "dk-imported:1").stdout.strip() \
        == '["echo","imported"]'
    docker("import", "--change", "EXPOSE 80", "--change", "ENV A=1 B=2", "--change",
           "WORKDIR /srv", str(rootfs), "dk-imported:2")
    config = json.loads(docker("inspect", "-f", "{{json .Config}}", "dk-imported:2").stdout)
    assert config["ExposedPorts"] == {"80/tcp": {}} and config["WorkingDir"] == "/srv"
    assert config["Env"][-2:] == ["A=1", "B=2"]
    proc = docker("import", "--change", "FROM busybox", str(rootfs), "dk-imported:3",
                  check=False)
    assert proc.returncode == 1 and "FROM is not an instruction" in proc.stderr
    docker("rmi", "dk-imported:1", "dk-imported:2")


# ---------------------------------------------------------------- registries

@needs_registry
def test_cli_push_rmi_pull(d: Daemon, docker, registry: str, sock: str,
                           tmp_path: Path) -> None:
    ref = f"{registry}/dk/app:v1"
    ctx = context(tmp_path / "ctx", "FROM busybox\nRUN echo pushed > /p\n")
    docker("build", "-t", ref, str(ctx))
    try:
        out = docker("push", ref).stdout
        assert out.splitlines()[0] == f"The push refers to repository [{registry}/dk/app]"
        assert ": Pushed" in out and "v1: digest: sha256:" in out
        image_id = docker("inspect", "-f", "{{.Id}}", ref).stdout.strip()
        docker("rmi", ref)
        # through the raw stream: Docker's JSON messages, with per-layer progress
        status, body = request(sock, "POST", f"/v1.43/images/create?fromImage="
                                             f"{registry}/dk/app&tag=v1")
        assert status == 200
        lines = json_lines(body)
        assert lines[0] == {"status": "Pulling from dk/app", "id": "v1"}
        statuses = [line.get("status", "") for line in lines]
        assert "Already exists" in statuses            # busybox's layer
        assert "Pull complete" in statuses and "Download complete" in statuses
        downloading = [line for line in lines if line.get("status") == "Downloading"]
        assert downloading and all(set(line["progressDetail"]) == {"current", "total"}
                                   for line in downloading)
        assert statuses[-2].startswith("Digest: sha256:")
        assert statuses[-1] == f"Status: Downloaded newer image for {ref}"
        assert docker("inspect", "-f", "{{.Id}}", ref).stdout.strip() == image_id
        assert d.sbx("run", "--rm", ref, "cat", "/p", check=True).out == "pushed\n"
        # the CLI's pull of it again, and its digests
        out = docker("pull", ref).stdout
        assert f"Status: Image is up to date for {ref}" in out
        digests = docker("images", "--digests", "--format", "{{.Digest}}", ref).stdout
        assert digests.strip().startswith("sha256:")
        proc = docker("pull", f"{registry}/dk/missing:v1", check=False)
        assert proc.returncode == 1 and "Error response from daemon" in proc.stderr
        assert "dk/missing" in proc.stderr
        proc = docker("push", f"{registry}/dk/never:v1", check=False)
        assert proc.returncode == 1 and \
            "An image does not exist locally with the tag" in proc.stderr
    finally:
        docker("rmi", ref, check=False)


@needs_registry
def test_cli_login_through_auth(docker, tmp_path_factory) -> None:
    if shutil.which("htpasswd") is None:
        pytest.skip("htpasswd is not installed (apt-get install apache2-utils)")
    base = tmp_path_factory.mktemp("dk-registry-auth")
    line = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True,
                          capture_output=True, text=True).stdout.strip()
    (base / "htpasswd").write_text(line + "\n")
    auth = f"auth:\n  htpasswd:\n    realm: sbx-test\n    path: {base / 'htpasswd'}\n"
    with serve_registry(base / "server", auth) as address:
        proc = docker("login", "-u", USER, "--password-stdin", address, input="wrong\n",
                      check=False)
        assert proc.returncode == 1 and "unauthorized" in proc.stderr.lower()
        proc = docker("login", "-u", USER, "--password-stdin", address,
                      input=PASSWORD + "\n")
        assert "Login Succeeded" in proc.stdout
        # the daemon keeps the login: a push through it is authorized
        ref = f"{address}/dk/authed:1"
        docker("tag", "busybox", ref)
        try:
            assert "digest: sha256:" in docker("push", ref).stdout
        finally:
            docker("rmi", ref)


# ---------------------------------------------------------------- docker-py

def test_dockerpy_build_list_save_load(dockerpy, tmp_path: Path) -> None:
    import docker as docker_py
    ctx = context(tmp_path / "ctx", "FROM busybox\nARG V\nRUN echo py-$V > /py\n")
    image, logs = dockerpy.images.build(path=str(ctx), tag="dk-py:1", buildargs={"V": "7"})
    try:
        assert image.tags == ["dk-py:1"]
        assert any("Step 3/3" in entry.get("stream", "") for entry in logs)
        assert "dk-py:1" in [t for i in dockerpy.images.list() for t in i.tags]
        assert [i.id for i in dockerpy.images.list(name="dk-py")] == [image.id]
        data = b"".join(dockerpy.images.get("dk-py:1").save(named=True))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            assert "manifest.json" in tar.getnames()
        dockerpy.images.remove("dk-py:1")
        with pytest.raises(docker_py.errors.ImageNotFound):
            dockerpy.images.get("dk-py:1")
        loaded = dockerpy.images.load(data)
        assert [i.id for i in loaded] == [image.id]
        with pytest.raises(docker_py.errors.BuildError) as failed:
            dockerpy.images.build(path=str(context(tmp_path / "bad", "FROM busybox\n"
                                                                     "RUN exit 5\n")))
        assert "non-zero code: 5" in str(failed.value)
    finally:
        try:
            dockerpy.images.remove("dk-py:1")
        except docker_py.errors.ImageNotFound:
            pass


@needs_registry
def test_dockerpy_pull_push(dockerpy, registry: str) -> None:
    ref = f"{registry}/dk/py"
    dockerpy.images.get("busybox").tag(ref, "p1")
    try:
        out = list(dockerpy.images.push(ref, tag="p1", stream=True, decode=True))
        assert any(e.get("aux", {}).get("Digest", "").startswith("sha256:") for e in out)
        pulled = dockerpy.images.pull(ref, tag="p1")
        assert f"{ref}:p1" in pulled.tags
        assert any(digest.startswith(f"{ref}@sha256:")
                   for digest in pulled.attrs["RepoDigests"]), pulled.attrs["RepoDigests"]
    finally:
        dockerpy.images.remove(f"{ref}:p1")


def test_uploads_cut_off_mid_body(sock: str) -> None:
    """A client gone halfway through a load, import or build context: the request ends
    quietly (the module's daemon stops without a traceback) and the next one is served."""
    for path in ("/images/load", "/build", "/images/create?fromSrc=-&repo=dk-cut"):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(sock)
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: d\r\nContent-Length: 100000\r\n\r\n"
                      .encode() + b"\0" * 5000)
    status, body = request(sock, "GET", "/v1.43/images/json")
    assert status == 200 and "dk-cut" not in body.decode()
