"""Config instructions on an image config: ``docker commit``/``import --change`` and what a
commit takes from the container."""
from __future__ import annotations

import pytest

from sandboxd.errors import InvalidArgument
from sandboxd.images.configsteps import apply_changes, container_runtime
from sandboxd.model import ContainerConfig, HostConfig
from sandboxd.validate import exposed_ports

BASE = {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["sh"], "Labels": {"from": "base"}}


def test_changes_apply_in_order_with_the_configs_variables() -> None:
    out = apply_changes(BASE, [
        'ENV APP=/srv/app NAME="two words"', "WORKDIR $APP", "WORKDIR sub",
        "EXPOSE 80 53/udp", "LABEL a=b", "USER 1000:1000", "VOLUME /data",
        "STOPSIGNAL SIGINT", 'CMD ["serve", "--port", "80"]', "", "  "])
    assert out["Env"] == ["PATH=/usr/bin:/bin", "APP=/srv/app", "NAME=two words"]
    assert out["WorkingDir"] == "/srv/app/sub"
    assert out["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert out["Labels"] == {"from": "base", "a": "b"}
    assert (out["User"], out["Volumes"], out["StopSignal"]) == ("1000:1000", {"/data": {}},
                                                                "SIGINT")
    assert out["Cmd"] == ["serve", "--port", "80"]
    assert BASE["Cmd"] == ["sh"] and "WorkingDir" not in BASE        # a copy was changed


def test_an_entrypoint_resets_the_base_cmd_but_not_one_set_before_it() -> None:
    # Docker's builder: ENTRYPOINT drops the CMD it inherited, keeps one of the stage
    assert apply_changes(BASE, ["ENTRYPOINT echo"])["Cmd"] is None
    out = apply_changes(BASE, ['CMD ["hi"]', 'ENTRYPOINT ["echo"]'])
    assert (out["Entrypoint"], out["Cmd"]) == (["echo"], ["hi"])
    assert apply_changes(BASE, ["CMD echo hi"])["Cmd"] == ["/bin/sh", "-c", "echo hi"]


def test_expose_stores_a_range_as_docker_does_one_key_per_port() -> None:
    out = apply_changes({}, ["EXPOSE 8000-8002 53/UDP", "EXPOSE 9000/sctp"])
    assert list(out["ExposedPorts"]) == ["8000/tcp", "8001/tcp", "8002/tcp", "53/udp",
                                         "9000/sctp"]
    for bad in ("0", "65536", "9" * 20, "80-70", "80/xyz", "1-" + "9" * 5000, "http"):
        with pytest.raises(InvalidArgument, match=r"not PORT\[-END\]"):
            apply_changes({}, [f"EXPOSE {bad}"])
    assert exposed_ports("1-65535") == [f"{p}/tcp" for p in range(1, 65536)]


def test_bad_changes_are_all_named_at_once() -> None:
    with pytest.raises(InvalidArgument) as e:
        apply_changes(BASE, ["RUN ls", "FROM busybox", "EXPOSE http", "ENV", "CMD a\nCMD b",
                             "ONBUILD RUN x"])
    problems = e.value.details["problems"]
    assert len(problems) == 6, problems
    assert problems[0] == ("change 'RUN ls': RUN is not an instruction a change takes "
                           "(CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME, "
                           "WORKDIR)")
    assert "EXPOSE http: not PORT" in problems[2] and "line" not in problems[2]
    assert "ENV requires at least one argument" in problems[3]
    assert "one instruction per change, got 2" in problems[4]
    assert "ONBUILD is not an instruction" in problems[5]


def test_a_commit_takes_what_the_container_ran_with() -> None:
    config = ContainerConfig(image="busybox", cmd=("sh", "-c", "serve"),
                             env=("PATH=/usr/bin:/bin", "MODE=test"), workdir="/srv",
                             user="1000", exposed_ports=("8080/tcp",),
                             labels=("from=base", "run=1"), host=HostConfig())
    out = container_runtime({**BASE, "Volumes": {"/data": {}}}, config)
    assert out == {"Env": ["PATH=/usr/bin:/bin", "MODE=test"], "Cmd": ["sh", "-c", "serve"],
                   "WorkingDir": "/srv", "User": "1000",
                   "ExposedPorts": {"8080/tcp": {}},
                   "Labels": {"from": "base", "run": "1"}, "Volumes": {"/data": {}}}
    bare = container_runtime({"Env": ["PATH=/bin"]},
                             ContainerConfig(image="x", cmd=("true",), env=("PATH=/bin",),
                                             host=HostConfig()))
    assert bare == {"Env": ["PATH=/bin"], "Cmd": ["true"]}      # nothing made up
