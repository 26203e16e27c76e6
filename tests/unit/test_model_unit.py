"""The container model (sandboxd.model) and the modules around it: parsing Docker-style
options (flags), validation that names every bad field (validate), the wire form,
Docker's inspect JSON and ``ps`` rows (render), filters, and the Go-template ``--format``
evaluator (gotemplate). Pure: no daemon, no root."""
from __future__ import annotations

import json

import pytest

from sandboxd.envfile import parse_env, parse_env_file
from sandboxd.errors import InvalidArgument, NotFound
from sandboxd.filters import filter_records, parse_filters
from sandboxd.flags import build_config, build_update, parse_publish
from sandboxd.gotemplate import render_template
from sandboxd.model import (ContainerConfig, ContainerRecord, ContainerState, Endpoint,
                            HostConfig, ImageRecord, Link, PortBinding, evolve)
from sandboxd.render import (PS_HEADERS, PS_TABLE, bytes_size, format_table, human_duration,
                             human_size, image_row, inspect_document, ps_row, status_text)
from sandboxd.runner.spec import Mount, Ulimit
from sandboxd.validate import check_name, parse_signal, validate_config

MiB = 1 << 20


def problems_of(**options) -> list[str]:
    with pytest.raises(InvalidArgument) as info:
        build_config("busybox", ["true"], **options)
    return info.value.details["problems"]


# ---------------------------------------------------------------- building a config

def test_build_config_maps_docker_options_to_kernel_units():
    cfg = build_config(
        "busybox", "sh -c 'echo hi'", memory="64m", memory_swap="128m", cpus=0.5,
        pids_limit=64, ulimits=["nofile=1024:2048"], env={"A": "1"}, labels={"team": "x"},
        volumes=["/srv:/data:ro"], tmpfs=["/run:size=1m,noexec"], ports=["8080:80"],
        links=["db:database"], cap_add=["cap_sys_admin"], timeout=5, hostname="box",
        workdir="/tmp", user="1000:1000", read_only=True, init=True, auto_remove=True)
    assert cfg.cmd == ("sh", "-c", "echo hi")
    h = cfg.host
    assert (h.memory, h.memory_swap, h.nano_cpus, h.pids_limit) == (
        64 * MiB, 128 * MiB, 500_000_000, 64)
    assert h.ulimits == (Ulimit("nofile", 1024, 2048),)
    assert cfg.env == ("A=1",) and cfg.labels == ("team=x",)
    assert h.mounts == (Mount("/data", "bind", "/srv", readonly=True),
                        Mount("/run", "tmpfs", options=("size=1m", "noexec")))
    assert h.port_bindings == (PortBinding(80, "tcp", "", 8080),)
    assert cfg.exposed_ports == ("80/tcp",)          # a published port is exposed
    assert h.links == (Link("db", "database"),)
    assert (h.read_only, h.init, h.auto_remove, h.timeout) == (True, True, True, 5)


def test_cpus_become_a_quota_over_the_default_period():
    limits = build_config("busybox", cpus=0.5).host.limits()
    assert (limits.cpu_quota, limits.cpu_period) == (50_000, 100_000)
    unset = build_config("busybox").host.limits()
    assert (unset.cpu_quota, unset.cpu_period, unset.memory) == (-1, 100_000, None)
    explicit = build_config("busybox", cpu_quota=20_000, cpu_period=50_000).host.limits()
    assert (explicit.cpu_quota, explicit.cpu_period) == (20_000, 50_000)


def test_memory_swap_minus_one_is_unlimited_and_zero_is_unset():
    assert build_config("b", memory="64m", memory_swap="-1").host.memory_swap == -1
    assert build_config("b", memory="64m", memory_swap=0).host.memory_swap is None


def test_too_little_memory_is_refused_naming_the_field():
    (problem,) = problems_of(memory="1k")
    assert problem.startswith("host.memory:") and "6MiB" in problem


def test_memory_swap_below_memory_is_refused():
    (problem,) = problems_of(memory="64m", memory_swap="32m")
    assert problem.startswith("host.memory_swap:") and "below memory" in problem


def test_memory_swap_without_memory_is_refused():
    (problem,) = problems_of(memory_swap="64m")
    assert "memory_swap" in problem and "memory limit" in problem


def test_cpus_conflict_with_cpu_quota_and_period_like_docker():
    (problem,) = problems_of(cpus=1, cpu_quota=50_000)
    assert "--cpus and --cpu-quota cannot both be set" in problem
    both = problems_of(cpus=1, cpu_quota=50_000, cpu_period=100_000)
    assert any("--cpu-period" in p for p in both) and len(both) == 2


@pytest.mark.parametrize("cpus", ["x", 0, -1, "nan"])
def test_bad_cpus_are_refused(cpus):
    (problem,) = problems_of(cpus=cpus)
    assert problem.startswith("cpus:")


@pytest.mark.parametrize("ulimit, words", [
    ("nofile=2048:1024", "above the hard limit"),
    ("nosuch=1", "unknown ulimit"),
    ("nofile", "name=soft[:hard]"),
    ("nofile=abc", "integers"),
])
def test_bad_ulimits_are_refused(ulimit, words):
    (problem,) = problems_of(ulimits=[ulimit])
    assert "ulimit" in problem and words in problem


def test_ulimits_from_a_mapping():
    cfg = build_config("b", ulimits={"nofile": (64, 128), "core": 0})
    assert cfg.host.ulimits == (Ulimit("nofile", 64, 128), Ulimit("core", 0, 0))


@pytest.mark.parametrize("volume, words", [
    ("rel@tive:/x", "invalid characters for a local volume name"),
    ("/a:/b:rx", "unknown mode"),
    ("/a:/b:c:d", "[SOURCE:]/container/path"),
])
def test_bad_volumes_are_refused(volume, words):
    (problem,) = problems_of(volumes=[volume])
    assert problem.startswith("volume") and words in problem


def test_mount_destinations_are_checked_by_the_runners_rules():
    problems = problems_of(volumes=["/a:relative", "/b:/proc/x"], tmpfs=["/data", "/data"])
    assert any(p.startswith("host.mounts[0].destination") for p in problems)
    assert any("host.mounts[1].destination" in p and "/proc" in p for p in problems)
    assert any("mounted twice" in p for p in problems)


@pytest.mark.parametrize("publish, words", [
    ("99999:80", "host port '99999'"),
    ("8080:0", "container port '0'"),
    ("8080:80/icmp", "protocol 'icmp'"),
    ("8000-8002:80-81", "ranges differ"),
    ("a:b:c:d", "[ip:][host:]container"),
    ("nonsense:8080:80", "host_ip"),
    ("[::1]:80", "[ipv6]:[host]:container"),
    ("[::1]8080:80", "[ipv6]:[host]:container"),
])
def test_bad_published_ports_are_refused(publish, words):
    problems = problems_of(ports=[publish])
    assert any(words in p for p in problems), problems


@pytest.mark.parametrize("text, expected", [
    ("80", [PortBinding(80)]),
    ("8080:80", [PortBinding(80, "tcp", "", 8080)]),
    ("127.0.0.1:8080:80/udp", [PortBinding(80, "udp", "127.0.0.1", 8080)]),
    ("127.0.0.1::53", [PortBinding(53, "tcp", "127.0.0.1", 0)]),
    ("[::1]:8080:80", [PortBinding(80, "tcp", "::1", 8080)]),
    ("[::1]::80/udp", [PortBinding(80, "udp", "::1", 0)]),
    ("8000-8001:80-81", [PortBinding(80, "tcp", "", 8000), PortBinding(81, "tcp", "", 8001)]),
])
def test_publish_syntax(text, expected):
    assert parse_publish(text) == expected


def test_ports_from_a_mapping():
    cfg = build_config("b", ports={80: 8080, "53/udp": None, 443: ("127.0.0.1", 8443)})
    assert cfg.host.port_bindings == (PortBinding(80, "tcp", "", 8080),
                                      PortBinding(53, "udp", "", 0),
                                      PortBinding(443, "tcp", "127.0.0.1", 8443))


def test_env_entries_need_a_key():
    (problem,) = problems_of(env=["=x"])
    assert problem.startswith("env[0]:")


def test_bare_env_names_come_from_the_callers_environment():
    assert parse_env(["A=1", "HOME", "UNSET"], {"HOME": "/root"}) == [
        "A=1", "HOME=/root"]


def test_env_file_like_docker(tmp_path):
    path = tmp_path / "env"
    path.write_text("# comment\n\nA=1\nB= spaced value \nFROM_HOST\nC=x=y\n")
    assert parse_env_file(str(path), {"FROM_HOST": "h"}) == [
        "A=1", "B= spaced value ", "FROM_HOST=h", "C=x=y"]
    cfg = build_config("b", env_files=[str(path)], env=["A=2"], environ={})
    assert cfg.env[0] == "A=1" and cfg.env[-1] == "A=2"      # -e comes after the file


def test_env_file_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "env"
    path.write_text("GOOD=1\nBAD KEY=1\n")
    problems = problems_of(env_files=[str(path)])
    assert problems == [f"env-file {path}:2: 'BAD KEY=1' is not KEY=value (the name may "
                        f"not be empty or contain spaces)"]
    assert "No such file" in problems_of(env_files=[str(tmp_path / "missing")])[0]


def test_every_problem_is_reported_at_once():
    problems = problems_of(memory="abc", cpus="x", hostname="-bad-", user="a b",
                           workdir="relative", cap_add=["NOPE"], timeout=-1,
                           network_mode="host", ports=["80"], stop_signal="SIGNOPE")
    fields = [p.split(":")[0] for p in problems]
    for name in ("memory", "cpus", "hostname", "user", "workdir", "host.cap_add",
                 "host.timeout", "host.port_bindings", "signal"):
        assert name in fields, (name, problems)


def test_network_mode_conflicts():
    assert any("links" in p for p in problems_of(network_mode="none", links=["db"]))
    assert any("network_mode" in p for p in problems_of(network_mode="container:"))
    assert build_config("b", network_mode="container:other").host.network_mode == \
        "container:other"


def test_capabilities_applied_to_the_default_set():
    host = build_config("b", cap_add=["SYS_ADMIN"], cap_drop=["CHOWN"]).host
    caps = host.capabilities()
    assert "SYS_ADMIN" in caps and "CHOWN" not in caps and "KILL" in caps
    assert build_config("b", cap_drop=["ALL"], cap_add=["KILL"]).host.capabilities() == \
        ("KILL",)


def test_names_follow_dockers_rule():
    assert check_name("web-1") == []
    assert check_name("/web") == []
    for bad in ("a", "-web", "we b", ""):
        assert check_name(bad)


def test_signals_by_name_or_number():
    assert parse_signal("KILL") == parse_signal("SIGKILL") == \
        parse_signal("9") == parse_signal(9) == 9
    for bad in ("SIGNOPE", 0, 65):
        with pytest.raises(InvalidArgument):
            parse_signal(bad)


def test_update_params_in_kernel_units():
    assert build_update(memory="64m", cpus=1.5, pids_limit=10) == {
        "memory": 64 * MiB, "nano_cpus": 1_500_000_000, "pids_limit": 10}
    assert build_update(memory_swap="-1") == {"memory_swap": -1}
    with pytest.raises(InvalidArgument, match="nothing to change"):
        build_update()
    with pytest.raises(InvalidArgument, match="--cpus and --cpu-quota"):
        build_update(cpus=1, cpu_quota=10_000)
    with pytest.raises(InvalidArgument, match="host.memory"):
        build_update(memory="1k")


# ---------------------------------------------------------------- wire form

def test_config_round_trips_through_plain_data():
    cfg = build_config("busybox", ["sh"], memory="64m", ulimits=["nofile=1:2"],
                       volumes=["/a:/b"], ports=["1:2/udp"], links=["x1:y"],
                       entrypoint=["/bin/tini", "--"])
    data = cfg.to_dict()
    assert json.loads(json.dumps(data)) == data        # plain data only
    assert ContainerConfig.from_dict(data) == cfg


def test_from_dict_refuses_unknown_and_mistyped_fields():
    data = build_config("busybox").to_dict()
    data["host"]["memory"] = "64m"
    data["nonsense"] = 1
    with pytest.raises(InvalidArgument) as info:
        ContainerConfig.from_dict(data)
    problems = info.value.details["problems"]
    assert "config.host.memory: expected an integer, got str" in problems
    assert "config.nonsense: unknown field" in problems


def test_validate_on_a_hand_made_config():
    cfg = ContainerConfig(image="", env=("NOEQUALS",), stop_timeout=-5,
                          host=HostConfig(cpu_shares=1, links=(Link("x", "y"),)))
    with pytest.raises(InvalidArgument) as info:
        validate_config(cfg)
    text = info.value.message
    for name in ("image", "env[0]", "stop_timeout", "host.cpu_shares", "host.links[0].name"):
        assert name in text


# ---------------------------------------------------------------- records and inspect

def record(**changes) -> ContainerRecord:
    cfg = build_config("busybox", ["sh", "-c", "echo hi"], memory="64m", cpus=0.5,
                       pids_limit=32, ulimits=["nofile=10:20"], uts_mode="host",
                       links=["db:d"], ports=["8080:80"], volumes=["/src:/dst:ro"],
                       tmpfs=["/run:size=1m"], labels={"k": "v"}, env=["A=1"])
    base = dict(id="ab" * 32, name="web", created=1_700_000_000.25, config=cfg,
                state=ContainerState("exited", exit_code=137, oom_killed=True,
                                     started_at=1_700_000_001.0,
                                     finished_at=1_700_000_003.5),
                image_id="sha256:" + "cd" * 32, path="sh", args=("-c", "echo hi"),
                endpoints=(Endpoint("bridge", "172.18.0.2", 16, "172.18.0.1",
                                    "02:42:ac:12:00:02"),),
                ports=(PortBinding(80, "tcp", "", 8080),))
    base.update(changes)
    return ContainerRecord(**base)


def test_record_round_trips():
    r = record()
    assert ContainerRecord.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_inspect_document_has_dockers_fields():
    doc = inspect_document(record())
    assert doc["Id"] == "ab" * 32 and doc["Name"] == "/web"
    assert doc["Created"] == "2023-11-14T22:13:20.25Z"
    state = doc["State"]
    assert state == {"Status": "exited", "Running": False, "Paused": False,
                     "Restarting": False, "OOMKilled": True, "Dead": False, "Pid": 0,
                     "ExitCode": 137, "Error": "", "StartedAt": "2023-11-14T22:13:21Z",
                     "FinishedAt": "2023-11-14T22:13:23.5Z", "TimedOut": False}
    assert doc["Path"] == "sh" and doc["Args"] == ["-c", "echo hi"]
    assert doc["Config"]["Image"] == "busybox"
    assert doc["Config"]["Cmd"] == ["sh", "-c", "echo hi"]
    assert doc["Config"]["Env"] == ["A=1"] and doc["Config"]["Labels"] == {"k": "v"}
    assert doc["Config"]["Hostname"] == "abababababab"
    host = doc["HostConfig"]
    assert host["Memory"] == 64 * MiB and host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 32 and host["UTSMode"] == "host"
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 10, "Hard": 20}]
    assert host["Links"] == ["/db:/web/d"]
    assert host["PortBindings"] == {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}
    assert host["Binds"] == ["/src:/dst:ro"] and host["Tmpfs"] == {"/run": "size=1m"}
    assert host["NetworkMode"] == "default"
    net = doc["NetworkSettings"]
    assert net["IPAddress"] == "172.18.0.2"
    assert net["Networks"]["bridge"]["Gateway"] == "172.18.0.1"
    assert net["Ports"] == {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}
    assert doc["Mounts"][0] == {"Type": "bind", "Source": "/src", "Destination": "/dst",
                                "Mode": "ro", "RW": False, "Propagation": "rprivate"}
    json.dumps(doc)                                   # serialisable as is


def test_never_started_times_are_gos_zero_time():
    doc = inspect_document(record(state=ContainerState()))
    assert doc["State"]["StartedAt"] == doc["State"]["FinishedAt"] == "0001-01-01T00:00:00Z"
    assert doc["State"]["Status"] == "created"


def test_grep_memory_finds_the_limit():
    text = json.dumps([inspect_document(record())], indent=4)
    assert f'"Memory": {64 * MiB},' in text


# ---------------------------------------------------------------- --format

DOC = inspect_document(record())


@pytest.mark.parametrize("template, expected", [
    ("{{.State.Status}}", "exited"),
    ("{{.Name}} {{.State.ExitCode}} {{.State.OOMKilled}}", "/web 137 true"),
    ("{{json .Config.Cmd}}", '["sh","-c","echo hi"]'),
    ("{{.Config.Cmd | json}}", '["sh","-c","echo hi"]'),
    ("{{.Config.Cmd}}", "[sh -c echo hi]"),
    ("{{.Config.Labels}}", "map[k:v]"),
    ("{{.HostConfig.PidsLimit}}", "32"),
    ("{{.Config.Nope}}", "<no value>"),
    ("{{index .Config.Labels \"k\"}}", "v"),
    ("{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "172.18.0.2"),
    ("{{range $n, $e := .NetworkSettings.Networks}}{{$n}}={{$e.Gateway}}{{end}}",
     "bridge=172.18.0.1"),
    ("{{range $p, $b := .NetworkSettings.Ports}}{{$p}}->{{(index $b 0).HostPort}}{{end}}",
     "80/tcp->8080"),
    ("{{if .State.Running}}up{{else}}down{{end}}", "down"),
    ("{{with .State}}{{.Status}}{{end}}", "exited"),
    ("{{join .Args \",\"}}", "-c,echo hi"),
    ("{{upper .State.Status}} {{lower \"A\"}}", "EXITED a"),
    ("a {{- \" b \" -}} c", "a b c"),
    ("{{len .Args}}", "2"),
])
def test_templates(template, expected):
    assert render_template(template, DOC) == expected


def test_json_alone_prints_the_whole_object():
    assert json.loads(render_template("json", DOC)) == DOC


@pytest.mark.parametrize("template, words", [
    ("{{.State.Status", "unclosed"),
    ("{{nosuch .Name}}", "not defined"),
    ("{{.Name.Inner}}", "can't evaluate field Inner"),
    ("{{range .Args}}x", "missing {{end}}"),
    ("{{end}}", "unexpected {{end}}"),
    ("{{$nope}}", "undefined variable"),
])
def test_template_errors_are_invalid_argument(template, words):
    with pytest.raises(InvalidArgument, match="format") as info:
        render_template(template, DOC)
    assert words in info.value.message


# ---------------------------------------------------------------- ps and images

def test_ps_table_has_dockers_columns_and_alignment():
    now = 1_700_000_013.5
    rows = [ps_row(record(), now),
            ps_row(record(id="ef" * 32, name="db-long-name",
                          state=ContainerState("running", pid=9,
                                               started_at=now - 3)), now)]
    text = format_table(PS_TABLE, rows, PS_HEADERS)
    header, first, second = text.splitlines()
    assert header.split("   ")[0] == "CONTAINER ID"
    for column in ("IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"):
        assert column in header
    assert first.startswith("abababababab   busybox   \"sh -c 'echo hi'\"")
    assert "Exited (137) 10 seconds ago" in first
    assert "Up 3 seconds" in second
    assert "0.0.0.0:8080->80/tcp" in first
    assert header.index("NAMES") == first.index("web") == second.index("db-long-name")


def test_format_without_table_has_no_header():
    rows = [ps_row(record(), 1_700_000_013.5)]
    assert format_table("{{.Names}}: {{.State}}", rows, PS_HEADERS) == \
        "web: exited\n"
    table = format_table('table {{.ID}}\t{{.Label "k"}}', rows, PS_HEADERS)
    assert table.splitlines() == ["CONTAINER ID   K", "abababababab   v"]


def test_json_of_a_ps_row_has_its_data_not_its_methods():
    row = json.loads(format_table("{{json .}}", [ps_row(record(), 1_700_000_013.5)],
                                  PS_HEADERS))
    assert row["Names"] == "web" and row["State"] == "exited" and "Label" not in row


@pytest.mark.parametrize("seconds, text", [
    (0.5, "Less than a second"), (1, "1 second"), (59, "59 seconds"),
    (60, "About a minute"), (150, "2 minutes"), (3600, "About an hour"),
    (3 * 3600, "3 hours"), (3 * 86400, "3 days"), (21 * 86400, "3 weeks"),
    (90 * 86400, "3 months"), (3 * 365 * 86400, "3 years"),
])
def test_human_durations_match_dockers(seconds, text):
    assert human_duration(seconds) == text


def test_human_sizes():
    assert human_size(4_860_000) == "4.86MB"
    assert human_size(999) == "999B"
    assert bytes_size(1.5 * MiB) == "1.5MiB"


def test_status_text():
    assert status_text(ContainerState("created"), 10) == "Created"
    assert status_text(ContainerState("paused", started_at=0), 120) == \
        "Up 2 minutes (Paused)"


def test_images_rows():
    image = ImageRecord(id="sha256:" + "12" * 32, repo_tags=("busybox:latest",),
                        created=0, size=4_860_000)
    (row,) = image_row(image, 3 * 86400)
    assert (row["Repository"], row["Tag"], row["ID"], row["CreatedSince"], row["Size"]) == (
        "busybox", "latest", "121212121212", "3 days ago", "4.86MB")
    (untagged,) = image_row(ImageRecord(id="sha256:ab"), 0)
    assert (untagged["Repository"], untagged["Tag"]) == ("<none>", "<none>")


def test_filters_like_docker_ps():
    web = record()
    db = record(id="ef" * 32, name="db", created=1_700_000_100.0,
                state=ContainerState("running"),
                config=build_config("postgres", labels={"tier": "data"}))
    both = [web, db]
    assert filter_records(both, {"status": ["running"]}) == [db]
    assert filter_records(both, {"status": ["running", "exited"]}) == both
    assert filter_records(both, {"label": ["tier=data"]}) == [db]
    assert filter_records(both, {"label": ["k"]}) == [web]
    assert filter_records(both, {"name": ["^w"]}) == [web]
    assert filter_records(both, {"id": ["ef"]}) == [db]
    assert filter_records(both, {"exited": ["137"]}) == [web]
    assert filter_records(both, {"ancestor": ["postgres"]}) == [db]
    assert filter_records(both, {"since": ["web"]}) == [db]
    assert filter_records(both, {"before": ["db"]}) == [web]
    with pytest.raises(InvalidArgument, match="unknown key"):
        filter_records(both, {"colour": ["red"]})
    with pytest.raises(InvalidArgument, match="status"):
        filter_records(both, {"status": ["sleeping"]})
    with pytest.raises(NotFound):
        filter_records(both, {"since": ["nope"]})
    assert parse_filters(["status=exited", "label=a=b"]) == {
        "status": ["exited"], "label": ["a=b"]}
    with pytest.raises(InvalidArgument):
        parse_filters(["bogus"])


def test_storage_and_log_options():
    c = build_config("busybox", ["true"], storage_opt=["size=20G"],
                     log_driver="local", log_opts={"max-size": "10m", "max-file": 3})
    assert c.host.storage_size == 20 << 30
    assert c.host.log_opts == ("max-size=10m", "max-file=3")
    assert c.host.log_limits() == (10 << 20, 3)
    doc = inspect_document(ContainerRecord(id="a" * 64, name="n", created=0,
                                           config=c))
    assert doc["HostConfig"]["StorageOpt"] == {"size": "20G"}
    assert doc["HostConfig"]["LogConfig"] == {"Type": "local", "Config": {
        "max-size": "10m", "max-file": "3"}}
    for kwargs, words in (({"storage_opt": ["size=1m"]}, "minimum"),
                          ({"storage_opt": ["quota=1"]}, "size=N"),
                          ({"log_driver": "syslog"}, "json-file, local, none"),
                          ({"log_opts": ["max-file=0"]}, "at least 1"),
                          ({"log_opts": ["compress=true"]}, "max-size=SIZE"),
                          ({"log_driver": "none", "log_opts": ["max-file=2"]}, "no options")):
        try:
            build_config("busybox", ["true"], **kwargs)
        except InvalidArgument as e:
            assert words in str(e.details.get("problems") or e.message), (kwargs, e)
        else:
            raise AssertionError(f"{kwargs} was accepted")


def test_daemon_log_defaults_fill_what_is_not_given():
    from sandboxd.daemon import load_config
    from sandboxd.errors import InvalidArgument
    assert load_config().log_opts == ("max-size=20m", "max-file=5")
    assert load_config(log_opts=("max-file=2",)).log_opts == ("max-file=2", "max-size=20m")
    assert load_config(log_driver="none").log_opts == ()
    assert load_config(default_storage_size="0").default_storage_size == 0
    for flags, words in (({"default_storage_size": "1m"}, "minimum"),
                         ({"log_driver": "none", "log_opts": ("max-file=2",)}, "no options"),
                         ({"log_opts": ("max-size=big",)}, "invalid size")):
        try:
            load_config(**flags)
        except InvalidArgument as e:
            assert words in e.message, (flags, e.message)
        else:
            raise AssertionError(f"{flags} was accepted")


def test_evolve_is_replace_for_records_and_states():
    """The start's and the exit's fast replace: the same record as dataclasses.replace
    (equal, same hash, the original untouched), and an unknown field refused."""
    import dataclasses
    config = ContainerConfig(image="busybox", cmd=("true",))
    record = ContainerRecord(id="a" * 64, name="n", created=1.0, config=config)
    state = {"status": "running", "pid": 7, "exit_code": 0}
    fast = evolve(record, sandbox_key="/k", state=evolve(record.state, **state))
    slow = dataclasses.replace(record, sandbox_key="/k",
                               state=dataclasses.replace(record.state, **state))
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert vars(fast).keys() == vars(slow).keys()
    assert record.state.pid == 0 and record.sandbox_key == ""
    for obj in (record, record.state):
        with pytest.raises(TypeError, match="no field"):
            evolve(obj, nonsense=1)
