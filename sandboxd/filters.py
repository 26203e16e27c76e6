"""Docker's ``--filter`` semantics for ``ps``, ``images`` and ``network ls``, pure, so the daemon
and the client agree on what a filter means: values of one key are OR-ed (``label``'s
AND-ed, as moby's), keys AND-ed."""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from .errors import InvalidArgument, NotFound
from .model import (BUILTIN_NETWORKS, STATUSES, ContainerRecord, ImageRecord, NetworkRecord,
                    pairs)

NETWORK_FILTER_KEYS = ("driver", "id", "label", "name", "scope", "type")


def label_matches(labels: Mapping[str, str], wanted: str) -> bool:
    """Docker's ``label`` filter value: ``k`` (the label is set) or ``k=v``."""
    key, sep, value = wanted.partition("=")
    return key in labels and (not sep or labels[key] == value)


def key_matches(key: str, values: Iterable[str], check: Callable[[str], bool]) -> bool:
    """One filter key: any of its values matches; for ``label`` every one must (moby's
    MatchKVList: ``--filter label=a --filter label=b`` is both labels)."""
    return all(map(check, values)) if key == "label" else any(map(check, values))


def filter_networks(networks: Sequence[NetworkRecord], filters: Mapping[str, Sequence[str]]
                    ) -> list[NetworkRecord]:
    """Docker's ``network ls --filter``: ``name`` and ``id`` match any part, ``label``
    ``k`` or ``k=v``, ``type`` builtin or custom; values of a key OR-ed, keys AND-ed."""
    unknown = [k for k in filters if k not in NETWORK_FILTER_KEYS]
    if unknown:
        raise InvalidArgument(f"filters: unknown key(s) {', '.join(unknown)} "
                              f"(known: {', '.join(NETWORK_FILTER_KEYS)})")
    for value in filters.get("type", ()):
        if value not in ("builtin", "custom"):
            raise InvalidArgument(f"filters.type: {value!r} is not builtin or custom")

    def match(n: NetworkRecord) -> bool:
        labels = pairs(n.labels)
        checks = {
            "driver": lambda v: n.driver == v,
            "id": lambda v: v in n.id,
            "label": lambda v: label_matches(labels, v),
            "name": lambda v: v in n.name,
            "scope": lambda v: n.scope == v,
            "type": lambda v: (n.name in BUILTIN_NETWORKS) == (v == "builtin"),
        }
        return all(key_matches(key, values, checks[key]) for key, values in filters.items())

    return [n for n in networks if match(n)]


PRUNE_FILTER_KEYS = ("label", "label!", "until")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def point_in_time(text: str, what: str, now: float) -> float:
    """Docker's time filter values: Unix seconds, RFC 3339 / ISO 8601, or a Go duration
    before ``now`` (``24h``, ``1h30m``) -> Unix seconds."""
    value = text.strip()
    parts = _DURATION.findall(value)
    if parts and "".join(n + u for n, u in parts) == value:
        return now - sum(float(n) * _UNITS[u] for n, u in parts)
    try:
        return float(value)
    except ValueError:
        pass
    import datetime
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"{what}: {text!r} is not a Unix time, a timestamp such as "
                              f"2013-01-02T13:23:37Z or a duration such as 24h") from None
    return (when if when.tzinfo else when.astimezone()).timestamp()


def prune_filter(filters: Mapping[str, Sequence[str]], now: float
                 ) -> Callable[[Mapping[str, str], float], bool]:
    """Docker's ``prune --filter``: whether an object with these labels, created then, is
    pruned. ``label`` (``k`` or ``k=v``): every one must match; ``label!``: left when all
    of them match (moby's matchLabels); ``until``: created before that time."""
    unknown = [k for k in filters if k not in PRUNE_FILTER_KEYS]
    if unknown:
        raise InvalidArgument(f"filters: invalid filter {', '.join(map(repr, unknown))} "
                              f"(prune takes {', '.join(PRUNE_FILTER_KEYS)})")
    untils = [point_in_time(v, "filters.until", now) for v in filters.get("until", ())]
    wanted, unwanted = filters.get("label", ()), filters.get("label!", ())

    def pruned(labels: Mapping[str, str], created: float) -> bool:
        return all(label_matches(labels, v) for v in wanted) and \
            not (unwanted and all(label_matches(labels, v) for v in unwanted)) and \
            all(created < until for until in untils)
    return pruned


FILTER_KEYS = ("id", "name", "label", "status", "exited", "ancestor", "before", "since",
               "network", "volume", "expose", "publish", "health")
HEALTH_VALUES = ("starting", "healthy", "unhealthy", "none")


def parse_filters(items: Iterable[str], keys: Sequence[str] = FILTER_KEYS
                  ) -> dict[str, list[str]]:
    """``--filter key=value`` flags -> ``{key: [values]}`` (``keys``: those the command
    knows; ``ps``'s by default)."""
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in keys:
            raise InvalidArgument(f"filter: {item!r} is not KEY=VALUE with KEY one of "
                                  f"{', '.join(keys)}")
        out.setdefault(key, []).append(value)
    return out


def filter_records(records: Sequence[ContainerRecord], filters: Mapping[str, Sequence[str]]
                   ) -> list[ContainerRecord]:
    """Docker's ``ps --filter`` semantics: values of one key are OR-ed, keys AND-ed.
    Pure, so the daemon and the client agree on what a filter means."""
    unknown = [k for k in filters if k not in FILTER_KEYS]
    if unknown:
        raise InvalidArgument(f"filters: unknown key(s) {', '.join(unknown)} "
                              f"(known: {', '.join(FILTER_KEYS)})")
    for value in filters.get("status", ()):
        if value not in STATUSES:
            raise InvalidArgument(f"filters.status: {value!r} is not one of "
                                  f"{', '.join(STATUSES)}")
    for value in filters.get("health", ()):
        if value not in HEALTH_VALUES:
            raise InvalidArgument(f"filters.health: Unrecognised filter value for health: "
                                  f"{value!r} (one of {', '.join(HEALTH_VALUES)})")
    by_ref = {r.id: r for r in records}
    by_ref.update({r.name: r for r in records})

    def anchor(key: str) -> float | None:
        values = filters.get(key)
        if not values:
            return None
        ref = by_ref.get(values[0]) or next(
            (r for r in records if r.id.startswith(values[0])), None)
        if ref is None:
            raise NotFound(f"filters.{key}: no such container: {values[0]}")
        return ref.created

    before, since = anchor("before"), anchor("since")

    def match(r: ContainerRecord) -> bool:
        labels = r.config.labels_dict()
        checks = {
            "id": lambda v: r.id.startswith(v),
            "name": lambda v: re.search(v, r.name) is not None,
            "label": lambda v: label_matches(labels, v),
            "status": lambda v: r.state.status == v,
            "exited": lambda v: r.state.status == "exited" and str(r.state.exit_code) == v,
            "ancestor": lambda v: v in (r.config.image, r.image_id) or
            r.image_id.split(":", 1)[-1].startswith(v),
            "network": lambda v: any(e.network == v for e in r.endpoints) or
            r.config.host.network_mode == v,
            "volume": lambda v: any(v in (m.source, m.destination)
                                    for m in r.config.host.mounts),
            "expose": lambda v: v in r.config.exposed_ports or f"{v}/tcp" in
            r.config.exposed_ports,
            "health": lambda v: (r.state.health.status or "none") == v,
            "publish": lambda v: any(f"{b.host_port}" == v.partition("/")[0]
                                     for b in r.ports),
        }
        for key, values in filters.items():
            if key in ("before", "since"):
                continue
            if not key_matches(key, values, checks[key]):
                return False
        if before is not None and not r.created < before:
            return False
        if since is not None and not r.created > since:
            return False
        return True

    return [r for r in records if match(r)]


IMAGE_FILTER_KEYS = ("before", "dangling", "label", "reference", "since")


def filter_images(images: Sequence[ImageRecord], filters: Mapping[str, Sequence[str]],
                  resolve: Callable[[str], ImageRecord]) -> list[ImageRecord]:
    """Docker's ``images --filter``: ``dangling`` true|false (an image without a tag),
    ``label`` ``k`` or ``k=v``, ``reference`` a pattern matched against each
    ``name:tag`` and its ``name`` alone (``*`` does not cross ``/``, as Go's
    ``path.Match``), ``before``/``since`` an image (``resolve`` finds it) made earlier
    or later; values of a key OR-ed, keys AND-ed. With ``reference`` an image keeps
    only its matching tags."""
    unknown = [k for k in filters if k not in IMAGE_FILTER_KEYS]
    if unknown:
        raise InvalidArgument(f"filters: unknown key(s) {', '.join(unknown)} "
                              f"(known: {', '.join(IMAGE_FILTER_KEYS)})")
    for value in filters.get("dangling", ()):
        if value.lower() not in ("true", "false", "1", "0"):
            raise InvalidArgument(f"filters.dangling: {value!r} is not true or false")
    anchors = {key: [resolve(v).created for v in filters.get(key, ())]
               for key in ("before", "since")}
    patterns = [_path_pattern(v) for v in filters.get("reference", ())]

    def referenced(tag: str) -> bool:
        return any(p.fullmatch(n) for p in patterns for n in (tag, tag.rpartition(":")[0]))

    def match(image: ImageRecord) -> bool:
        labels = pairs(image.labels)
        checks = {
            "dangling": lambda v: (not image.repo_tags) == (v.lower() in ("true", "1")),
            "label": lambda v: label_matches(labels, v),
        }
        return (all(key_matches(key, values, checks[key])
                    for key, values in filters.items() if key in checks)
                and (not patterns or any(map(referenced, image.repo_tags)))
                and all(image.created < t for t in anchors["before"])
                and all(image.created > t for t in anchors["since"]))

    # As Docker: with a reference filter an image shows only the tags that match.
    return [dataclasses.replace(i, repo_tags=tuple(filter(referenced, i.repo_tags)))
            if patterns else i for i in images if match(i)]


def _path_pattern(pattern: str) -> re.Pattern[str]:
    """Go's ``path.Match`` as a regular expression: ``*`` and ``?`` stay within one
    path element, ``[...]`` is a class."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in pattern[i + 1:]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("^") else body) + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))
