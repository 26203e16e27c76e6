"""``-v`` / ``--mount`` / ``--volumes-from`` parsing and checks, and the VolumeService
on a temporary root (a real sqlite store; no daemon)."""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from sandboxd.errors import Conflict, InvalidArgument, NotFound
from sandboxd.flags import build_config, parse_mount, parse_volume
from sandboxd.runner.spec import Mount
from sandboxd.store import Store
from sandboxd.volumes import ANONYMOUS_LABEL, VolumeService


def problems(func, *args) -> list[str]:
    with pytest.raises(InvalidArgument) as info:
        func(*args)
    return info.value.details.get("problems") or [info.value.message]


@pytest.mark.parametrize("text, mount", [
    ("/h:/c", Mount("/c", "bind", "/h")),
    ("/h:/c:ro", Mount("/c", "bind", "/h", True)),
    ("data:/c", Mount("/c", "volume", "data")),
    ("data:/c:ro,nocopy", Mount("/c", "volume", "data", True, ("nocopy",))),
    ("/c", Mount("/c", "volume", "")),
    ("data:/c:rw,z", Mount("/c", "volume", "data")),
])
def test_volume_flag_forms(text: str, mount: Mount) -> None:
    assert parse_volume(text) == mount


@pytest.mark.parametrize("text, expected", [
    ("a:/c", "'a' is too short"),
    ("b@d:/c", "includes invalid characters for a local volume name"),
    ("/h:/c:nocopy", "nocopy is for volumes"),
    ("data:/c:xx", "unknown mode 'xx'"),
    ("a:b:c:d", "is not [SOURCE:]/container/path"),
])
def test_volume_flag_errors(text: str, expected: str) -> None:
    assert any(expected in p for p in problems(parse_volume, text)), problems(parse_volume, text)


@pytest.mark.parametrize("text, mount", [
    ("type=bind,source=/h,target=/c", Mount("/c", "bind", "/h")),
    ("type=bind,src=/h,dst=/c,readonly,bind-propagation=rprivate",
     Mount("/c", "bind", "/h", True)),
    ("src=v1,destination=/c,ro=true", Mount("/c", "volume", "v1", True)),
    ("type=volume,target=/c,volume-nocopy,volume-label=a=b,volume-label=c",
     Mount("/c", "volume", "", False, ("nocopy", "label=a=b", "label=c"))),
    ("type=volume,src=v1,dst=/c,volume-driver=local,consistency=cached",
     Mount("/c", "volume", "v1")),
    ("type=volume,dst=/c,volume-opt=size=1g,volume-label=a=b",
     Mount("/c", "volume", "", False, ("label=a=b", "opt=size=1g"))),
    ("type=tmpfs,dst=/t,tmpfs-size=1m,tmpfs-mode=700",
     Mount("/t", "tmpfs", "", False, ("size=1048576", "mode=700"))),
    ('"type=bind","src=/a,b",dst=/c', Mount("/c", "bind", "/a,b")),     # csv quoting
])
def test_mount_flag_forms(text: str, mount: Mount) -> None:
    assert parse_mount(text) == mount


@pytest.mark.parametrize("text, expected", [
    ("type=bind,dst=/c", "source: required for type=bind"),
    ("type=bind,src=rel,dst=/c", "source: 'rel' must be an absolute host path"),
    ("type=volume,src=v", "target: required"),
    ("type=tmpfs,src=x,dst=/c", "source: a tmpfs mount takes no source"),
    ("type=tmpfs,dst=/c,tmpfs-size=lots", "tmpfs-size: invalid size 'lots'"),
    ("type=tmpfs,dst=/c,tmpfs-mode=88888", "tmpfs-mode: '88888' is not an octal mode"),
    ("type=bind,src=/a,dst=/c,bind-propagation=rshared", "bind-propagation: 'rshared'"),
    ("type=bind,src=/a,dst=/c,bind-nonrecursive", "bind-nonrecursive: not supported"),
    ("type=bind,src=/a,dst=/c,volume-nocopy", "cannot mix volume-nocopy with mount type 'bind'"),
    ("type=tmpfs,dst=/c,volume-label=a=b", "cannot mix volume-label with mount type 'tmpfs'"),
    ("type=volume,dst=/c,volume-subpath=x", "volume-subpath: not supported"),
    ("type=volume,dst=/c,volume-opt=o=size=1m", "driver option 'o'"),
    ("type=volume,dst=/c,volume-opt=size=1m", "driver option size: '1m' is outside"),
    ("type=bind,src=/a,dst=/c,volume-opt=size=1g", "cannot mix volume-opt with mount type"),
    ("type=volume,dst=/c,readonly=maybe", "readonly: 'maybe' is not true or false"),
    ("type=volume,dst=/c,src", "src: a value is required"),
    ("type=volume,dst=/c,size=1", "unexpected key 'size'"),
    ("type=image,dst=/c", "type: 'image' is not bind, volume or tmpfs"),
])
def test_mount_flag_errors_name_the_field(text: str, expected: str) -> None:
    found = problems(parse_mount, text)
    assert any(expected in p for p in found), found
    assert all(p.startswith(f"mount {text!r}: ") for p in found)


def test_build_config_collects_mount_problems_and_volumes_from() -> None:
    with pytest.raises(InvalidArgument) as info:
        build_config(image="busybox", volumes=["x:/a"], mounts=["type=bind,dst=/b"],
                     volumes_from=["a:rx"])
    found = info.value.details["problems"]
    assert len(found) == 3, found
    assert any("host.volumes_from[0]: 'a:rx'" in p for p in found)
    config = build_config(image="busybox", volumes=["/c"], mounts=["src=v1,dst=/d"],
                          volumes_from=["other:ro"], tmpfs=["/t"])
    assert [m.type for m in config.host.mounts] == ["volume", "volume", "tmpfs"]
    assert config.host.volumes_from == ("other:ro",)
    with pytest.raises(InvalidArgument) as info:        # the same path twice
        build_config(image="busybox", volumes=["v1:/d"], mounts=["src=v2,dst=/d"])
    assert "duplicate mount point" in info.value.message


# ---------------------------------------------------------------- the service

@pytest.fixture
def service(tmp_path: Path) -> VolumeService:
    return VolumeService(tmp_path, Store(tmp_path))


def test_create_get_list_filters_and_idempotent_create(service: VolumeService) -> None:
    a = service.create("alpha", labels={"team": "x"})
    assert service.create("alpha", labels={"other": "y"}).labels == {"team": "x"}
    anon = service.create(labels={ANONYMOUS_LABEL: ""})
    assert len(anon.name) == 64 and anon.anonymous
    assert os.path.isdir(a.mountpoint) and a.mountpoint.endswith("/volumes/alpha/_data")
    doc = a.to_dict()
    assert {k: doc[k] for k in ("Name", "Driver", "Scope", "Labels", "Options")} == {
        "Name": "alpha", "Driver": "local", "Scope": "local", "Labels": {"team": "x"},
        "Options": None}
    assert doc["CreatedAt"].endswith("Z")
    names = lambda **f: [v.name for v in service.list(f)]        # noqa: E731
    assert names(name=["^al"]) == ["alpha"]
    assert names(label=["team=x"]) == ["alpha"]
    assert names(**{"label!": ["team"]}) == [anon.name]
    assert sorted(names(dangling=["true"])) == sorted(["alpha", anon.name])
    assert names(dangling=["false"]) == []
    with pytest.raises(InvalidArgument, match="invalid filter 'colour'"):
        service.list({"colour": ["red"]})
    with pytest.raises(NotFound, match="get nope: no such volume"):
        service.get("nope")
    with pytest.raises(NotFound):
        service.get("../etc")                         # never a path


def test_in_use_remove_prune_and_cleanup(service: VolumeService, tmp_path: Path) -> None:
    service.create("used")
    service.create("named")
    anon = service.create(labels={ANONYMOUS_LABEL: ""}).name
    (Path(service.path(anon)) / "f").write_bytes(b"x" * 10000)
    doc = {"config": {"host": {"mounts": [{"destination": "/d", "type": "volume",
                                           "source": "used"}]}}}
    service.store.put_container("c" * 64, "user", "created", "", None, doc)
    with pytest.raises(Conflict, match=r"remove used: volume is in use - \[c{64}\]"):
        service.remove("used", force=True)
    assert service.remove("missing", force=True) == []
    deleted, doomed = service.prune()
    assert deleted == [anon] and service.purge(doomed) >= 10000
    deleted, doomed = service.prune(all=True)
    assert deleted == ["named"]                      # the used one stays
    service.purge(doomed)
    usage = service.usage()
    assert [(u["Name"], u["UsageData"]["RefCount"]) for u in usage] == [("used", 1)]
    os.mkdir(service.dir / ".new-crashed")
    service.cleanup()
    assert os.listdir(service.dir) == ["used"]


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts are character devices: mknod "
                                              "needs root")
def test_populate_merges_layers_with_whiteouts(service: VolumeService,
                                               tmp_path: Path) -> None:
    bottom, top = tmp_path / "l1", tmp_path / "l2"
    (bottom / "data" / "sub").mkdir(parents=True)
    (bottom / "data" / "keep").write_text("k")
    (bottom / "data" / "gone").write_text("g")
    (bottom / "data" / "sub" / "old").write_text("o")
    (top / "data" / "sub").mkdir(parents=True)
    os.mknod(top / "data" / "gone", stat.S_IFCHR, os.makedev(0, 0))
    os.setxattr(top / "data" / "sub", "trusted.overlay.opaque", b"y")
    (top / "data" / "sub" / "new").write_text("n")
    os.symlink("keep", top / "data" / "link")
    os.chmod(top / "data", 0o1777)
    service.create("pop")
    service.populate("pop", [str(top), str(bottom)], "/data")
    data = Path(service.path("pop"))
    assert sorted(os.listdir(data)) == ["keep", "link", "sub"]
    assert os.listdir(data / "sub") == ["new"]
    assert os.readlink(data / "link") == "keep"
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o1777
    # Not again once it has content, and nothing for a path that is a file or missing.
    (bottom / "data" / "later").write_text("l")
    service.populate("pop", [str(top), str(bottom)], "/data")
    assert not (data / "later").exists()
    service.create("none")
    service.populate("none", [str(top), str(bottom)], "/data/keep")
    service.populate("none", [str(top), str(bottom)], "/missing")
    assert os.listdir(service.path("none")) == []


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="capped volumes need "
                                                              "mkfs.ext4 (e2fsprogs)")
def test_a_capped_volume_is_an_image_mount(service: VolumeService) -> None:
    volume = service.create("capped", options={"size": "16m"})
    assert volume.capped and volume.mountpoint.endswith("/volumes/capped/volume.img")
    assert os.path.getsize(volume.mountpoint) == 16 << 20
    assert service.mount("capped", "/c", True) == Mount("/c", "image", volume.mountpoint,
                                                          True)
    assert service.mount("plain", "/p", False) == Mount("/p", "bind", service.path("plain"))
    (usage,) = service.usage()
    assert 0 < usage["UsageData"]["Size"] < 16 << 20        # sparse
    with pytest.raises(InvalidArgument, match="outside 16m to 16t"):
        service.create("small", options={"size": "8m"})
    with pytest.raises(InvalidArgument, match="driver option 'device'"):
        service.create("dev", options={"device": "/dev/sda"})


def test_plan_attaches_an_image_mount_in_the_root() -> None:
    from sandboxd.runner.plan import AttachMount, MountStep, build_plan
    from sandboxd.runner.spec import ContainerSpec, Process, RootFS
    spec = ContainerSpec(id="a" * 64, process=Process(args=("true",)),
                         root=RootFS(lowerdirs=("/",)),
                         mounts=(Mount("/c", "image", "/v/volume.img", True),
                                 Mount("/b", "bind", "/tmp")))
    steps = build_plan(spec, "/mnt", image_fds=(7,))
    i = next(i for i, s in enumerate(steps) if isinstance(s, AttachMount))
    assert steps[i] == AttachMount(7, "/c", in_root=True)
    assert isinstance(steps[i + 1], MountStep) and steps[i + 1].target == "/c"
    with pytest.raises(ValueError, match="needs the mount of it"):
        build_plan(spec, "/mnt")


@pytest.mark.skipif(os.geteuid() != 0, reason="copies owners as root does")
def test_populate_never_writes_through_a_symlink_of_a_lower_layer(
        service: VolumeService, tmp_path: Path) -> None:
    """A hostile image: layer 1 has ``data/x -> <outside>``, layer 2 a directory
    ``data/x`` with a file. The copy replaces the link; nothing lands outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    bottom, top = tmp_path / "l1", tmp_path / "l2"
    (bottom / "data").mkdir(parents=True)
    os.symlink(str(outside), bottom / "data" / "x")
    (top / "data" / "x").mkdir(parents=True)
    (top / "data" / "x" / "planted").write_text("p")
    service.create("hostile")
    service.populate("hostile", [str(top), str(bottom)], "/data")
    assert os.listdir(outside) == []
    data = Path(service.path("hostile"))
    assert not (data / "x").is_symlink() and (data / "x" / "planted").read_text() == "p"


def test_docker_py_volume_mappings() -> None:
    config = build_config(image="busybox", volumes={"data": {"bind": "/d", "mode": "ro"},
                                                    "/tmp": "/t"})
    assert config.host.mounts == (Mount("/d", "volume", "data", True),
                                  Mount("/t", "bind", "/tmp"))
