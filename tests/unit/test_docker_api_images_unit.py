"""The Docker API image face's pure pieces: progress messages, the context tar's ending,
``/auth``'s server address."""
from __future__ import annotations

import io
import tarfile
import tempfile

import pytest

from sandboxd.dockerapi.http import HttpError
from sandboxd.dockerapi.images import (_progress_message, _read_dockerfile, _registry_name,
                                       _terminate_tar)


def test_progress_messages_have_docker_shapes() -> None:
    assert _progress_message({"status": "Pulling from library/busybox", "id": "latest"}) \
        == {"status": "Pulling from library/busybox", "id": "latest"}
    assert _progress_message({"status": "Downloading", "id": "abc", "current": 5,
                              "total": 9}) == {
        "status": "Downloading", "id": "abc", "progressDetail": {"current": 5, "total": 9}}
    assert _progress_message({"status": "Pull complete", "id": "abc"}) == {
        "status": "Pull complete", "id": "abc", "progressDetail": {}}
    assert _progress_message({"status": "Digest: sha256:1"}) == {"status": "Digest: sha256:1"}


def test_registry_names_from_server_addresses() -> None:
    assert _registry_name("https://index.docker.io/v1/") == "docker.io"
    assert _registry_name("") == "docker.io"
    assert _registry_name("127.0.0.1:5000") == "127.0.0.1:5000"
    assert _registry_name("http://registry.example:5000/v2/") == "registry.example:5000"


def _tar(cut: bool) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM busybox\n"), ("x.txt", b"x" * 37)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return raw[:512 * 3 + 37] if cut else raw     # the CLI's `-f -`: no padding, no end


@pytest.mark.parametrize("cut", [False, True])
def test_a_context_tar_cut_after_its_last_file_is_ended(cut: bool) -> None:
    with tempfile.TemporaryFile() as spool:
        spool.write(_tar(cut))
        _terminate_tar(spool)
        assert _read_dockerfile(spool, "./Dockerfile") == "FROM busybox\n"
        assert spool.tell() == 0
        with tarfile.open(fileobj=spool) as tar:
            assert tar.extractfile("x.txt").read() == b"x" * 37


def test_context_errors() -> None:
    with tempfile.TemporaryFile() as spool:
        with pytest.raises(HttpError, match="empty"):
            _terminate_tar(spool)
        spool.write(b"not a tar" * 100)
        _terminate_tar(spool)
        with pytest.raises(HttpError, match="not a tar archive"):
            _read_dockerfile(spool, "Dockerfile")
    with tempfile.TemporaryFile() as spool:
        spool.write(_tar(False))
        _terminate_tar(spool)
        with pytest.raises(HttpError, match="Cannot locate specified Dockerfile: Other"):
            _read_dockerfile(spool, "Other")
