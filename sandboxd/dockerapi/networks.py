"""``/networks/...``: Docker's network endpoints over the ``network.*`` operations,
with Docker's network JSON (``sandboxd.render.network_document``). Only bridge
networks can be made (as ``sbx network create``); a field that asks for anything else
(IPv6, another IPAM driver, several pools, swarm scopes) is a 400 naming it."""
from __future__ import annotations

import hashlib
from typing import Any

from ..model import NetworkRecord
from ..render import network_document
from .calls import Calls
from .containers import docker_filters
from .http import HttpError, Request, Response, Route, json_response, route

# Fields of a create body whose Docker default sandboxd has (anything else is a 400).
_DEFAULTS = {"EnableIPv6": False, "Ingress": False, "ConfigOnly": False, "Scope": "local",
             "ConfigFrom": None}
_KNOWN = {"Name", "CheckDuplicate", "Driver", "Internal", "Attachable", "IPAM", "Options",
          "Labels", *_DEFAULTS}


def endpoint_id(network_id: str, container_id: str) -> str:
    """A stable id for a container's endpoint on a network (Docker's EndpointID)."""
    return hashlib.sha256(f"{network_id}/{container_id}".encode()).hexdigest()


def document(raw: dict) -> dict[str, Any]:
    doc = network_document(NetworkRecord.from_dict(raw))
    for cid, entry in doc["Containers"].items():
        entry["EndpointID"] = endpoint_id(doc["Id"], cid)
    return doc


def _strings(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in value.items()):
        raise HttpError(400, f"{field}: expected a map of strings, got {value!r:.80}")
    return value


def _string(body: dict, field: str) -> str:
    value = body.get(field) or ""
    if not isinstance(value, str):
        raise HttpError(400, f"{field}: expected a string, got {value!r:.80}")
    return value


def create_params(body: dict) -> dict[str, Any]:
    """A ``POST /networks/create`` body as ``network.create``'s params."""
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise HttpError(400, f"network create: unknown field(s) {', '.join(unknown)}")
    for field, default in _DEFAULTS.items():
        if body.get(field) not in (default, None, "", {}):
            raise HttpError(400, f"network create: {field}={body[field]!r} is not supported "
                                 f"by sandboxd (local bridge networks only)")
    name = _string(body, "Name")
    if not name:
        raise HttpError(400, "network create: Name is required")
    for field in ("Internal", "Attachable", "CheckDuplicate"):
        if not isinstance(body.get(field, False), (bool, type(None))):
            raise HttpError(400, f"network create: {field}: expected a boolean")
    ipam = body.get("IPAM") or {}
    if not isinstance(ipam, dict):
        raise HttpError(400, "network create: IPAM: expected an object")
    if (ipam.get("Driver") or "default") != "default":
        raise HttpError(400, f"network create: IPAM.Driver {ipam['Driver']!r} is not "
                             f"supported (only \"default\")")
    if _strings(ipam.get("Options"), "IPAM.Options"):
        raise HttpError(400, "network create: IPAM.Options are not supported")
    pools = ipam.get("Config") or []
    if not isinstance(pools, list) or not all(isinstance(p, dict) for p in pools):
        raise HttpError(400, "network create: IPAM.Config: expected a list of objects")
    if len(pools) > 1:
        raise HttpError(400, "network create: IPAM.Config: sandboxd's networks have one "
                             "IPv4 pool; give at most one Subnet")
    pool = pools[0] if pools else {}
    extra = sorted(set(pool) - {"Subnet", "Gateway", "IPRange", "AuxiliaryAddresses"})
    if extra or pool.get("AuxiliaryAddresses"):
        raise HttpError(400, f"network create: IPAM.Config: "
                             f"{', '.join(extra) or 'AuxiliaryAddresses'} not supported")
    return {"name": name, "driver": _string(body, "Driver") or "bridge",
            "subnet": _string(pool, "Subnet"), "gateway": _string(pool, "Gateway"),
            "ip_range": _string(pool, "IPRange"), "internal": bool(body.get("Internal")),
            "labels": _strings(body.get("Labels"), "Labels"),
            "options": _strings(body.get("Options"), "Options")}


class NetworkRoutes:
    def __init__(self, calls: Calls):
        self.calls = calls

    def routes(self) -> list[Route]:
        n = "/networks/{id}"
        return [route("GET", "/networks", self.list),
                route("POST", "/networks/create", self.create),
                route("POST", "/networks/prune", self.prune),
                route("GET", n, self.inspect),
                route("DELETE", n, self.delete),
                route("POST", n + "/connect", self.connect),
                route("POST", n + "/disconnect", self.disconnect)]

    async def list(self, req: Request) -> Response:
        result = await self.calls.call("network.list", {
            "filters": docker_filters(req.json_arg("filters"))})
        return json_response([document(n) for n in result["networks"]])

    async def inspect(self, req: Request) -> Response:
        return json_response(document(await self.calls.call(
            "network.inspect", {"id": req.params["id"]})))

    async def create(self, req: Request) -> Response:
        # CheckDuplicate or not, a name is one network's (Docker 24 always refuses).
        result = await self.calls.call("network.create",
                                       create_params(await req.json(required=True)))
        return json_response({"Id": result["id"], "Warning": "; ".join(result["warnings"])},
                             201)

    async def delete(self, req: Request) -> Response:
        await self.calls.call("network.remove", {"id": req.params["id"]})
        return Response(204, b"", content_type="")

    async def connect(self, req: Request) -> Response:
        body = await req.json(required=True)
        container = _string(body, "Container")
        if not container:
            raise HttpError(400, "network connect: Container is required")
        config = body.get("EndpointConfig") or {}
        if not isinstance(config, dict):
            raise HttpError(400, "network connect: EndpointConfig: expected an object")
        ipam = config.get("IPAMConfig") or {}
        if not isinstance(ipam, dict):
            raise HttpError(400, "network connect: EndpointConfig.IPAMConfig: expected an "
                                 "object")
        if ipam.get("IPv6Address") or ipam.get("LinkLocalIPs"):
            raise HttpError(400, "network connect: IPv6Address and LinkLocalIPs are not "
                                 "supported (IPv4 networks)")
        if config.get("Links"):
            raise HttpError(400, "network connect: EndpointConfig.Links is not supported; "
                                 "containers on a user network find each other by name")
        aliases = config.get("Aliases") or []
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise HttpError(400, "network connect: EndpointConfig.Aliases: expected a list "
                                 "of strings")
        await self.calls.call("network.connect", {
            "id": req.params["id"], "container": container,
            "ip": _string(ipam, "IPv4Address"), "aliases": aliases})
        return Response(200, b"", content_type="")

    async def disconnect(self, req: Request) -> Response:
        body = await req.json(required=True)
        container = _string(body, "Container")
        if not container:
            raise HttpError(400, "network disconnect: Container is required")
        await self.calls.call("network.disconnect", {
            "id": req.params["id"], "container": container,
            "force": bool(body.get("Force"))})
        return Response(200, b"", content_type="")

    async def prune(self, req: Request) -> Response:
        result = await self.calls.call("network.prune", {
            "filters": docker_filters(req.json_arg("filters"))})
        return json_response({"NetworksDeleted": result["removed"] or None})
