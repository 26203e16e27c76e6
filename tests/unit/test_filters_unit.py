"""Docker's --filter semantics: images, and prune's label, label! and until."""
from __future__ import annotations

import pytest

from sandboxd.errors import InvalidArgument
from sandboxd.filters import (IMAGE_FILTER_KEYS, filter_images, filter_networks,
                              parse_filters, point_in_time, prune_filter)
from sandboxd.model import ImageRecord, NetworkRecord

IMAGES = [
    ImageRecord("sha256:" + "a" * 64, ("busybox:latest", "busybox:1.36"), created=10,
                labels=("team=core",)),
    ImageRecord("sha256:" + "b" * 64, ("localhost:5000/team/app:v2",), created=20),
    ImageRecord("sha256:" + "c" * 64, (), created=30),                      # dangling
]
BY_REF = {"busybox": IMAGES[0], "localhost:5000/team/app:v2": IMAGES[1]}


def shown(filters: dict) -> list[tuple[str, ...]]:
    return [i.repo_tags for i in filter_images(IMAGES, filters, BY_REF.__getitem__)]


@pytest.mark.parametrize("filters, expected", [
    ({"reference": ["busybox"]}, [("busybox:latest", "busybox:1.36")]),
    ({"reference": ["busy*:1.*"]}, [("busybox:1.36",)]),
    ({"reference": ["*/team/*"]}, [("localhost:5000/team/app:v2",)]),
    ({"reference": ["*"]}, [("busybox:latest", "busybox:1.36")]),     # * stops at /
    ({"reference": ["busybox:[0-9]*", "*/*/app"]},
     [("busybox:1.36",), ("localhost:5000/team/app:v2",)]),
    ({"dangling": ["true"]}, [()]),
    ({"dangling": ["false"]}, [("busybox:latest", "busybox:1.36"),
                               ("localhost:5000/team/app:v2",)]),
    ({"label": ["team"]}, [("busybox:latest", "busybox:1.36")]),
    ({"label": ["team=other"]}, []),
    ({"before": ["localhost:5000/team/app:v2"]}, [("busybox:latest", "busybox:1.36")]),
    ({"since": ["busybox"], "dangling": ["false"]}, [("localhost:5000/team/app:v2",)]),
])
def test_image_filters(filters, expected):
    assert shown(filters) == expected


@pytest.mark.parametrize("filters, words", [
    ({"colour": ["red"]}, "unknown key(s) colour"),
    ({"dangling": ["maybe"]}, "filters.dangling: 'maybe'"),
])
def test_bad_image_filters_are_named(filters, words):
    with pytest.raises(InvalidArgument, match=words.replace("(", r"\(").replace(")", r"\)")):
        shown(filters)


def test_images_flags_know_their_own_keys():
    assert parse_filters(["reference=busy*", "dangling=true"], IMAGE_FILTER_KEYS) == \
        {"reference": ["busy*"], "dangling": ["true"]}
    with pytest.raises(InvalidArgument, match="status"):
        parse_filters(["status=running"], IMAGE_FILTER_KEYS)


def test_prune_filters_as_moby_matches_them() -> None:
    now = 1_700_000_000.0
    assert point_in_time("24h", "until", now) == now - 86400
    assert point_in_time("1h30m", "until", now) == now - 5400
    assert point_in_time("1600000000", "until", now) == 1_600_000_000
    assert point_in_time("2020-09-13T12:26:40Z", "until", now) == 1_600_000_000
    with pytest.raises(InvalidArgument, match="'soon' is not a Unix time"):
        point_in_time("soon", "filters.until", now)
    everything = prune_filter({}, now)
    assert everything({}, now) and everything({"a": "1"}, 0)
    labelled = prune_filter({"label": ["a", "b=2"]}, now)          # every one must match
    assert labelled({"a": "", "b": "2"}, now) and not labelled({"a": ""}, now)
    unwanted = prune_filter({"label!": ["keep"]}, now)
    assert unwanted({}, now) and not unwanted({"keep": "1"}, now)
    old = prune_filter({"until": ["1h"]}, now)
    assert old({}, now - 7200) and not old({}, now - 60)
    with pytest.raises(InvalidArgument, match="'status'"):
        prune_filter({"status": ["exited"]}, now)


def test_label_filters_are_all_of_them_as_in_moby() -> None:
    both = NetworkRecord(id="1" * 64, name="both", driver="bridge", created=0,
                         labels=("a=1", "b=2"))
    one = NetworkRecord(id="2" * 64, name="one", driver="bridge", created=0, labels=("a=1",))
    assert [n.name for n in filter_networks([both, one], {"label": ["a"]})] == ["both", "one"]
    assert [n.name for n in filter_networks([both, one], {"label": ["a", "b=2"]})] == ["both"]
    assert [n.name for n in filter_networks([both, one], {"name": ["bo", "on"]})] == \
        ["both", "one"]                                       # other keys: any value
