"""The kernel provisioner's config check and the kernelspecs written for it, by
``kernel_json`` and by ``sbx notebook kernelspec install`` (no daemon): every bad key or
flag is named, values are checked by the same rules as ``sbx run``'s flags."""
from __future__ import annotations

import json

import pytest

from ipython_ext.provisioner import (DISPLAY_NAME, PROVISIONER_NAME, KernelSettings,
                                     kernel_json, kernel_settings)
from sandboxd.cli import commands
from sandboxd.errors import InvalidArgument


def test_defaults_are_host_and_no_network():
    assert kernel_settings({}) == KernelSettings(image="host", network="none")


def test_values_are_kept_and_env_resolved(monkeypatch):
    monkeypatch.setenv("FROM_CLIENT", "yes")
    settings = kernel_settings({"memory": "512m", "cpus": 1.5, "pids_limit": 64,
                                "env": ["A=1", "FROM_CLIENT", "UNSET_HERE"],
                                "volumes": ["/srv/data:/data:ro"], "workdir": "/data",
                                "network": "bridge", "start_timeout": 5})
    assert settings.options() == {"memory": "512m", "cpus": 1.5, "pids_limit": 64,
                                  "network_mode": "bridge"}
    assert settings.env == ("A=1", "FROM_CLIENT=yes")      # as docker's -e KEY
    assert settings.volumes == ("/srv/data:/data:ro",) and settings.workdir == "/data"
    assert kernel_settings({"env": {"B": 2}}).env == ("B=2",)


@pytest.mark.parametrize("config, message", [
    ({"memory": "12q"}, "memory: invalid size '12q'"),
    ({"memory": 5}, "memory: minimum is 6MiB"),
    ({"cpus": "x"}, "cpus: 'x' is not a number"),
    ({"cpus": True}, "cpus: expected a number, got True"),
    ({"pids_limit": "many"}, "pids_limit: expected an integer, got 'many'"),
    ({"pids_limit": -3}, "pids_limit: must be positive or -1"),
    ({"network": "no such!"}, "network: 'no such!' is not a network name"),
    ({"network": ""}, "network: must not be empty"),
    ({"image": ""}, "image: must not be empty"),
    ({"volumes": ["b@d:/x"]}, "volumes: volume 'b@d:/x': 'b@d' includes invalid "
                              "characters for a local volume name"),
    ({"volumes": "/a:/b"}, "volumes: expected a list of /host:/container[:ro]"),
    ({"workdir": "rel"}, "workdir: 'rel' is not an absolute path"),
    ({"start_timeout": 0}, "start_timeout: must be positive, got 0"),
    ({"pool": 17}, "pool: must be 0 to 16 kernels, got 17"),
    ({"pool": -1}, "pool: must be 0 to 16 kernels, got -1"),
    ({"pool": "2"}, "pool: expected a number of kernels (0 to 16), got '2'"),
    ({"memroy": "1g"}, "'memroy' is not a setting (known: image, python, memory"),
])
def test_a_bad_value_is_named_by_its_key(config, message):
    with pytest.raises(InvalidArgument) as caught:
        kernel_settings(config, "kernelspec 'k': metadata.kernel_provisioner.config")
    assert caught.value.message.startswith(
        "kernelspec 'k': metadata.kernel_provisioner.config: ")
    assert message in caught.value.message


def test_every_problem_is_reported_at_once():
    with pytest.raises(InvalidArgument) as caught:
        kernel_settings({"memory": "12q", "cpu": 1, "pids_limit": "x"})
    assert len(caught.value.details["problems"]) == 3


def test_kernel_json_uses_the_provisioner():
    spec = kernel_json({"memory": "1g"})
    assert spec["argv"] == ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert spec["display_name"] == DISPLAY_NAME and spec["language"] == "python"
    assert spec["metadata"]["kernel_provisioner"] == {
        "provisioner_name": PROVISIONER_NAME, "config": {"memory": "1g"}}
    with pytest.raises(InvalidArgument, match="memory: invalid size"):
        kernel_json({"memory": "lots"})


def sbx(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        commands.main(list(args))
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_sbx_installs_a_kernelspec(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SANDBOXD_HOST", "unix:///from/the/environment.sock")
    code, out, err = sbx(capsys, "notebook", "kernelspec", "install", "--prefix",
                         str(tmp_path), "--name", "lab", "-m", "1g", "--cpus", "1.5",
                         "--pids-limit", "64", "-e", "A=1", "-e", "TOKEN", "-v",
                         "/srv:/srv:ro", "--pool", "2")
    assert code == 0, err
    target = tmp_path / "share" / "jupyter" / "kernels" / "lab"
    assert out == f"Installed kernelspec lab (Python 3 (sandboxed)) in {target}\n"
    spec = json.loads((target / "kernel.json").read_text())
    # Defaults (image host, network none) and $SANDBOXD_HOST are not written; a bare
    # KEY stays bare (its value is taken when a kernel starts, never stored).
    assert spec["metadata"]["kernel_provisioner"]["config"] == {
        "memory": "1g", "cpus": 1.5, "pids_limit": 64, "env": ["A=1", "TOKEN"],
        "volumes": ["/srv:/srv:ro"], "pool": 2}
    code, out, err = sbx(capsys, "-H", "unix:///tmp/d.sock", "notebook", "kernelspec",
                         "install", "--prefix", str(tmp_path), "--name", "lab",
                         "--image", "python:3.12", "--display-name", "Py 3.12")
    assert code == 0, err
    spec = json.loads((target / "kernel.json").read_text())
    assert spec["display_name"] == "Py 3.12"
    assert spec["metadata"]["kernel_provisioner"]["config"] == {
        "image": "python:3.12", "host": "unix:///tmp/d.sock"}


@pytest.mark.parametrize("args, message", [
    (["-m", "1q", "--cpus", "x"], "sbx: --memory: invalid size '1q' (use e.g. 64m, 1g, "
                                  "512k, 100b); --cpus: 'x' is not a number\n"),
    (["--net", "no such!"], "sbx: --network: 'no such!' is not a network name\n"),
    (["--name", "a b"], "sbx: Invalid kernel name 'a b'."),
    (["--user"], "sbx: --prefix and --user exclude each other\n"),
    (["--pool", "20"], "sbx: --pool: must be 0 to 16 kernels, got 20\n"),
])
def test_sbx_refuses_bad_flags(capsys, tmp_path, args, message):
    code, out, err = sbx(capsys, "notebook", "kernelspec", "install", "--prefix",
                         str(tmp_path), *args)
    assert code == 125 and err.startswith(message)
    assert not (tmp_path / "share").exists()
