"""``sbx build`` against a real daemon: RUN steps in real containers, COPY/ADD from a
context sent as a tar (``.dockerignore`` applied), the layer cache (an unchanged
rebuild is all hits; a changed file reruns from its COPY on), multi-stage ``COPY
--from``, ``FROM scratch``, config instructions reaching ``sbx run``, refusals; then
``sbx export``, ``sbx image prune``, ``sbx system df`` and rmi of a built image.

The module has its own daemon (busybox imported): builds make busybox the parent of
intermediate images, which changes what ``rmi busybox`` does on the shared daemon.
"""
from __future__ import annotations

import functools
import http.server
import io
import json
import os
import tarfile
import threading
from pathlib import Path

import pytest

from harness import Daemon


@pytest.fixture(scope="module")
def d():
    daemon = Daemon().start()
    try:
        daemon.import_busybox()
        yield daemon
    finally:
        daemon.stop()


def build(d: Daemon, context: Path, *args: str, check: bool = True):
    proc = d.sbx("build", *args, str(context), timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(f"sbx build exited {proc.returncode}\nstdout:\n{proc.out}\n"
                    f"stderr:\n{proc.err}")
    return proc


def run(d: Daemon, image: str, *cmd: str) -> str:
    return d.sbx("run", "--rm", image, *cmd, check=True).out


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.sh").write_text("echo from-main\n")
    (tmp_path / "app" / "main.sh").chmod(0o755)
    (tmp_path / "data.txt").write_text("version 1\n")
    (tmp_path / "secret.key").write_text("do not send\n")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "big.log").write_text("x" * 1000)
    (tmp_path / ".dockerignore").write_text("# comment\nsecret.key\nlogs\n")
    (tmp_path / "Dockerfile").write_text("""\
# a comment
FROM busybox
ARG GREETING=hello
ENV APP_HOME=/opt/app \\
    MODE="fast mode"
WORKDIR $APP_HOME
COPY app/ ./
COPY data.txt /etc/sbx-data.txt
RUN echo "$GREETING from RUN in $(pwd)" > /etc/greeting && \\
    cat /etc/sbx-data.txt >> /etc/greeting
RUN ["/bin/sh", "-c", "echo exec-form > /etc/exec-form"]
LABEL org.example.name="sbx build test" stage=one
EXPOSE 8080 9090/udp
USER 1000:1000
CMD ["/bin/sh", "-c", "cat /etc/greeting; id -u; echo $MODE"]
""")
    return tmp_path


def test_build_run_cache_and_rebuild(d: Daemon, ctx: Path) -> None:
    first = build(d, ctx, "-t", "sbx-build-test:1")
    assert "Step 1/12 : FROM busybox" in first.out
    assert "Step 7/12 : RUN echo" in first.out
    assert " ---> Running in " in first.out
    assert "Successfully tagged sbx-build-test:1" in first.out
    assert "Using cache" not in first.out

    out = run(d, "sbx-build-test:1")
    assert out.splitlines() == ["hello from RUN in /opt/app", "version 1", "1000",
                                "fast mode"]
    # the context's files, the .dockerignore'd ones absent, mode kept
    listing = run(d, "sbx-build-test:1", "ls", "-l", "/opt/app")
    assert "main.sh" in listing and "-rwxr-xr-x" in listing
    assert "secret" not in run(d, "sbx-build-test:1", "ls", "/opt/app")
    assert run(d, "sbx-build-test:1", "cat", "/etc/exec-form") == "exec-form\n"

    info = json.loads(d.sbx("image", "inspect", "sbx-build-test:1", check=True).out)[0]
    config = info["Config"]
    assert config["WorkingDir"] == "/opt/app" and config["User"] == "1000:1000"
    assert "APP_HOME=/opt/app" in config["Env"] and "MODE=fast mode" in config["Env"]
    assert not any(e.startswith("GREETING=") for e in config["Env"])  # ARG: build only
    assert config["Labels"] == {"org.example.name": "sbx build test", "stage": "one"}
    assert set(config["ExposedPorts"]) == {"8080/tcp", "9090/udp"}
    assert len(info["RootFS"]["Layers"]) == 5          # busybox + 2 COPY + 2 RUN

    # nothing changed: every step is a cache hit and the same image comes out
    second = build(d, ctx, "-t", "sbx-build-test:2")
    assert second.out.count(" ---> Using cache") == 10, second.out
    assert " ---> Running in " not in second.out
    ids = [json.loads(d.sbx("image", "inspect", t, check=True).out)[0]["Id"]
           for t in ("sbx-build-test:1", "sbx-build-test:2")]
    assert ids[0] == ids[1]

    # a file COPY reads changed: the steps before it hit, it and those after rerun
    (ctx / "data.txt").write_text("version 2\n")
    third = build(d, ctx, "-t", "sbx-build-test:3")
    steps = third.out.split("Step ")[1:]
    assert all("Using cache" in s for s in steps[2:5]), third.out     # ENV..COPY app
    assert not any("Using cache" in s for s in steps[5:]), third.out  # COPY data.txt on
    assert run(d, "sbx-build-test:3").splitlines()[1] == "version 2"

    # a build arg changes the RUN's key; --no-cache reruns everything
    fourth = build(d, ctx, "--build-arg", "GREETING=hi", "--build-arg", "UNUSED=1",
                   "-t", "sbx-build-test:4")
    assert "[Warning] One or more build-args [UNUSED] were not consumed" in fourth.out
    assert run(d, "sbx-build-test:4").splitlines()[0].startswith("hi from RUN")
    fifth = build(d, ctx, "--no-cache", "-q")
    assert fifth.out.strip().startswith("sha256:") and "Step" not in fifth.out

    # intermediate images are hidden from sbx images, shown by -a
    shown = d.sbx("images", "-q", check=True).out.split()
    everything = d.sbx("images", "-a", "-q", check=True).out.split()
    assert len(everything) > len(shown) + 5

    # history names the steps, newest first
    history = d.sbx("history", "--no-trunc", "sbx-build-test:1", check=True).out
    lines = history.splitlines()
    assert "CMD" in lines[1] and "FROM" not in history
    assert "<missing>" not in history          # each step's image, busybox's at the bottom
    assert lines[-1].split()[0] == json.loads(
        d.sbx("image", "inspect", "busybox", check=True).out)[0]["Id"]
    assert any("RUN" not in line and "echo exec-form" in line for line in lines)

    for tag in ("1", "2", "3", "4"):
        d.sbx("rmi", f"sbx-build-test:{tag}", check=True)
    d.sbx("image", "prune", "-f", check=True)
    # the build's intermediate images went with the images built on them
    assert d.sbx("images", "-a", "-q", check=True).out.split() == \
        d.sbx("images", "-q", check=True).out.split()


def test_multi_stage_scratch_and_add(d: Daemon, tmp_path: Path) -> None:
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:gz") as tar:
        info = tarfile.TarInfo("pkg/readme.txt")
        data = b"from an archive\n"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        evil = tarfile.TarInfo("../../escaped")
        evil.size = 1
        tar.addfile(evil, io.BytesIO(b"x"))
    (tmp_path / "bundle.tar.gz").write_bytes(payload.getvalue())
    (tmp_path / "one.txt").write_text("1\n")
    (tmp_path / "two.txt").write_text("2\n")
    (tmp_path / "Sandboxfile").write_text("""\
FROM busybox AS builder
RUN mkdir -p /out && echo built > /out/artifact && echo $((6*7)) > /out/answer
FROM scratch
COPY --from=builder /out/ /
COPY *.txt /texts/
ADD bundle.tar.gz /unpacked/
FROM busybox
COPY --from=1 / /from-scratch/
COPY --from=builder --chown=1000:1000 /out/artifact /artifact
CMD ["cat", "/from-scratch/artifact", "/from-scratch/answer"]
""")
    build(d, tmp_path, "-t", "sbx-build-multi")
    try:
        assert run(d, "sbx-build-multi") == "built\n42\n"
        listing = run(d, "sbx-build-multi", "find", "/from-scratch", "-type", "f")
        assert sorted(listing.split()) == [
            "/from-scratch/answer", "/from-scratch/artifact", "/from-scratch/texts/one.txt",
            "/from-scratch/texts/two.txt", "/from-scratch/unpacked/pkg/readme.txt"]
        assert run(d, "sbx-build-multi", "stat", "-c", "%u:%g", "/artifact") == "1000:1000\n"
        # the final image has only busybox and its own two layers
        info = json.loads(d.sbx("image", "inspect", "sbx-build-multi", check=True).out)[0]
        assert len(info["RootFS"]["Layers"]) == 3
    finally:
        d.sbx("rmi", "sbx-build-multi", check=True)


def test_forty_layer_image_runs(d: Daemon, tmp_path: Path) -> None:
    for i in range(40):
        (tmp_path / f"f{i}").write_text(f"{i}\n")
    (tmp_path / "Dockerfile").write_text(
        "FROM scratch\n" + "".join(f"COPY f{i} /f{i}\n" for i in range(39)) +
        "COPY --from=busybox / /\n")
    build(d, tmp_path, "-t", "sbx-build-40")
    try:
        info = json.loads(d.sbx("image", "inspect", "sbx-build-40", check=True).out)[0]
        assert len(info["RootFS"]["Layers"]) == 40
        assert run(d, "sbx-build-40", "sh", "-c", "cat /f0 /f38 && ls / | grep -c '^f'") \
            == "0\n38\n39\n"
    finally:
        d.sbx("rmi", "sbx-build-40", check=True)
        d.sbx("image", "prune", "-f", check=True)


def test_build_refusals(d: Daemon, tmp_path: Path) -> None:
    def fails(dockerfile: str, *args: str) -> str:
        (tmp_path / "Dockerfile").write_text(dockerfile)
        proc = build(d, tmp_path, *args, check=False)
        assert proc.returncode != 0, proc.out
        return proc.out + proc.err

    assert "returned a non-zero code: 3" in fails("FROM busybox\nRUN exit 3\n")
    assert "source can't be a URL for COPY" in fails(
        "FROM busybox\nCOPY https://example.com/x /x\n")
    assert "only http:// and https:// URLs" in fails(
        "FROM busybox\nADD git@github.com:a/b.git /x\n")
    assert "file not found in build context" in fails("FROM busybox\nCOPY nope /x\n")
    assert "outside the build context" in fails("FROM busybox\nCOPY ../etc/passwd /x\n")
    assert "unknown instruction FRUM" in fails("FRUM busybox\n")
    assert "HEALTHCHECK takes CMD COMMAND or NONE" in fails("FROM busybox\nHEALTHCHECK true\n")
    assert "heredocs" in fails("FROM busybox\nRUN <<EOF\necho\nEOF\n")
    # pulled from Docker Hub, which tests point at a port where nothing listens
    assert "cannot connect to registry docker.io" in fails("FROM sbx-no-such-image\n")
    # RUN is on the default bridge unless --network says otherwise (as Docker's
    # classic builder); --network none: only lo
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox\nRUN tail -n +3 /proc/net/dev | cut -d: -f1 > /nets\n"
        "CMD [\"cat\", \"/nets\"]\n")
    for flags, links in (((), ["eth0", "lo"]), (("--network", "none"), ["lo"])):
        build(d, tmp_path, "--no-cache", "-t", "sbx-build-net", *flags)
        try:
            assert sorted(run(d, "sbx-build-net").split()) == links, flags
        finally:
            d.sbx("rmi", "sbx-build-net", check=True)
    # the failed RUN left no container behind
    assert d.ids("-a") == []


@pytest.fixture
def web(tmp_path: Path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path/www`` (what ADD fetches)."""
    root = tmp_path / "www"
    root.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_add_fetches_urls_as_docker_does(d: Daemon, tmp_path: Path, web) -> None:
    root, url = web
    (root / "data.txt").write_text("fetched\n")
    with tarfile.open(root / "kept.tar.gz", "w:gz") as tar:         # not unpacked
        tar.add(root / "data.txt", "inside.txt")
    for name in ("data.txt", "kept.tar.gz"):                        # their Last-Modified
        os.utime(root / name, (1_600_000_000, 1_600_000_000))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM busybox\nADD {url}/data.txt /d/\nADD {url}/data.txt /named.txt\n"
        f"ADD --chmod=644 {url}/kept.tar.gz /t/\n"
        "CMD stat -c '%n %a %Y' /d/data.txt /named.txt /t/kept.tar.gz && cat /d/data.txt\n")
    build(d, ctx, "-t", "sbx-add-url")
    try:
        assert run(d, "sbx-add-url").splitlines() == [
            "/d/data.txt 600 1600000000", "/named.txt 600 1600000000",
            "/t/kept.tar.gz 644 1600000000", "fetched"]
        again = build(d, ctx, "-t", "sbx-add-url")     # fetched again: the same content
        assert again.out.count("Using cache") >= 3, again.out
        (root / "data.txt").write_text("changed\n")
        build(d, ctx, "-t", "sbx-add-url")
        assert run(d, "sbx-add-url").splitlines()[-1] == "changed"
        (ctx / "Dockerfile").write_text(f"FROM busybox\nADD {url}/missing.txt /m\n")
        missing = build(d, ctx, check=False)
        assert missing.returncode != 0 and f"ADD {url}/missing.txt: failed to GET with " \
            f"status 404" in missing.out + missing.err, missing.out + missing.err
        (ctx / "Dockerfile").write_text(f"FROM busybox\nADD {url} /dir/\n")
        nameless = build(d, ctx, check=False)
        assert "cannot determine a file name from the URL" in nameless.out + nameless.err
    finally:
        d.sbx("rmi", "sbx-add-url")


def test_dockerfile_from_stdin(d: Daemon, tmp_path: Path) -> None:
    # "sbx build -": the Dockerfile on stdin, no context
    proc = d.sbx("build", "-q", "-t", "sbx-build-stdin", "-",
                 input="FROM busybox\nRUN echo piped > /p\n", timeout=120)
    assert proc.returncode == 0, proc.err
    # "-f -" with a context directory
    (tmp_path / "ctx.txt").write_text("context file\n")
    proc = d.sbx("build", "-q", "-t", "sbx-build-stdin2", "-f", "-", str(tmp_path),
                 input="FROM sbx-build-stdin\nCOPY ctx.txt /ctx.txt\n", timeout=120)
    assert proc.returncode == 0, proc.err
    try:
        assert run(d, "sbx-build-stdin2", "cat", "/p", "/ctx.txt") == \
            "piped\ncontext file\n"
        refused = d.sbx("build", "https://example.com/repo.git")
        assert refused.returncode != 0 and "remote contexts are not supported" in refused.err
    finally:
        d.sbx("rmi", "sbx-build-stdin2", check=True)
        d.sbx("rmi", "sbx-build-stdin", check=True)


def test_from_an_image_named_with_its_registry_pulls_it(d: Daemon, tmp_path: Path) -> None:
    import shutil
    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    from registries import serve_registry
    with serve_registry(tmp_path / "registry") as address:
        ref = f"{address}/sbx-build/base:1"
        d.sbx("tag", "busybox", ref, check=True)
        d.sbx("push", ref, check=True)
        d.sbx("rmi", ref, check=True)
        (tmp_path / "ctx").mkdir()
        (tmp_path / "ctx" / "Dockerfile").write_text(f"FROM {ref}\nRUN echo pulled > /p\n")
        out = build(d, tmp_path / "ctx", "-t", "sbx-build-pulled").out
        try:
            assert f"Pulling {ref}" in out
            assert run(d, "sbx-build-pulled", "cat", "/p") == "pulled\n"
        finally:
            d.sbx("rmi", "sbx-build-pulled", check=True)
            d.sbx("rmi", ref, check=True)


def test_python_client_build(d: Daemon, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo client > /c\n")
    lines: list[str] = []
    with d.client() as client:
        image = client.images.build(path=tmp_path, tag="sbx-build-client",
                                    progress=lines.append)
        try:
            assert image.tags == ["sbx-build-client:latest"]
            assert any(line.startswith("Step 2/2 : RUN") for line in lines)
            assert run(d, "sbx-build-client", "cat", "/c") == "client\n"
        finally:
            client.images.remove("sbx-build-client")


def test_export_prune_and_df(d: Daemon, tmp_path: Path) -> None:
    # other tests' multi-stage builds leave dangling stages (as Docker's do)
    d.sbx("image", "prune", "-f", check=True)
    d.sbx("create", "--name", "sbx-export", "busybox", "true", check=True)
    try:
        d.sbx("start", "sbx-export", check=True)
        d.sbx("wait", "sbx-export", check=True)
        d.sbx("cp", "-", "sbx-export:/", input=_tar({"added.txt": b"exported\n"}),
              check=True)
        out = tmp_path / "export.tar"
        d.sbx("export", "-o", str(out), "sbx-export", check=True)
        with tarfile.open(out) as tar:
            names = set(tar.getnames())
            assert {"bin/busybox", "added.txt", "etc"} <= names
            assert tar.extractfile("added.txt").read() == b"exported\n"
        streamed = d.sbx("export", "sbx-export")          # to stdout: not a terminal here
        with tarfile.open(fileobj=io.BytesIO(streamed.stdout)) as tar:
            assert "added.txt" in tar.getnames()

        df = d.sbx("system", "df", check=True).out
        assert df.splitlines()[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE",
                                              "RECLAIMABLE"]
        images_row = next(line for line in df.splitlines() if line.startswith("Images"))
        # busybox, used by sbx-export, and the built-in host image, as `images` lists
        assert images_row.split()[1:3] == ["2", "1"]
        verbose = d.sbx("system", "df", "-v", check=True).out
        assert "busybox" in verbose and "sbx-export" in verbose
    finally:
        d.sbx("rm", "-f", "sbx-export", check=True)

    # a dangling image goes with prune; a tagged one only with prune -a
    (tmp_path / "Dockerfile").write_text("FROM busybox\nLABEL dangling=yes\n")
    built = build(d, tmp_path, "-q").out.strip()
    assert built in d.sbx("images", "-q", "--no-trunc", check=True).out
    pruned = d.sbx("image", "prune", "-f", check=True).out
    assert f"deleted: {built}" in pruned
    assert built not in d.sbx("images", "-a", "-q", "--no-trunc", check=True).out
    d.sbx("tag", "busybox", "sbx-prune-me", check=True)
    kept = d.sbx("image", "prune", "-f", check=True).out
    assert "sbx-prune-me" not in kept
    d.sbx("rmi", "sbx-prune-me", check=True)


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
