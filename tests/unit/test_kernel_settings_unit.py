"""The kernel provisioner's config check and the kernelspec it writes (no daemon): every
bad key is named, values are checked by the same rules as ``sbx run``'s flags."""
from __future__ import annotations

import pytest

from ipython_ext.provisioner import (DISPLAY_NAME, PROVISIONER_NAME, KernelSettings,
                                     kernel_json, kernel_settings)
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
    ({"volumes": ["rel:/x"]}, "volumes: volume 'rel:/x': the source 'rel' must be an "
                              "absolute host path"),
    ({"volumes": "/a:/b"}, "volumes: expected a list of /host:/container[:ro]"),
    ({"workdir": "rel"}, "workdir: 'rel' is not an absolute path"),
    ({"start_timeout": 0}, "start_timeout: must be positive, got 0"),
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
