"""``sbx images --filter`` and ``sbx images REPOSITORY[:TAG]``: Docker's semantics, pure."""
from __future__ import annotations

import pytest

from sandboxd.errors import InvalidArgument
from sandboxd.filters import IMAGE_FILTER_KEYS, filter_images, parse_filters
from sandboxd.model import ImageRecord

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
