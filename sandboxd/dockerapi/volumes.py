"""``/volumes/...``: Docker's volume endpoints over the ``volume.*`` operations (the
service already speaks Docker's Volume object: ``sandboxd.volumes.Volume.to_dict``)."""
from __future__ import annotations

from typing import Any

from .calls import Calls
from .containers import docker_filters
from .http import HttpError, Request, Response, Route, empty, json_response, route

_CREATE_FIELDS = {"Name", "Driver", "DriverOpts", "Labels"}


def _strings(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in value.items()):
        raise HttpError(400, f"volume create: {field}: expected a map of strings, got "
                             f"{value!r:.80}")
    return value


class VolumeRoutes:
    def __init__(self, calls: Calls):
        self.calls = calls

    def routes(self) -> list[Route]:
        return [route("GET", "/volumes", self.list),
                route("POST", "/volumes/create", self.create),
                route("POST", "/volumes/prune", self.prune),
                route("GET", "/volumes/{name}", self.inspect),
                route("DELETE", "/volumes/{name}", self.delete)]

    async def list(self, req: Request) -> Response:
        result = await self.calls.call("volume.list", {
            "filters": docker_filters(req.json_arg("filters"))})
        return json_response({"Volumes": result["volumes"],
                              "Warnings": result["warnings"] or None})

    async def create(self, req: Request) -> Response:
        body = await req.json()
        if body.get("ClusterVolumeSpec"):
            raise HttpError(400, "volume create: ClusterVolumeSpec is not supported (no "
                                 "swarm): local volumes only")
        unknown = sorted(set(body) - _CREATE_FIELDS - {"ClusterVolumeSpec"})
        if unknown:
            raise HttpError(400, f"volume create: unknown field(s) {', '.join(unknown)}")
        name, driver = body.get("Name") or "", body.get("Driver") or "local"
        if not isinstance(name, str) or not isinstance(driver, str):
            raise HttpError(400, "volume create: Name and Driver must be strings")
        volume = await self.calls.call("volume.create", {
            "name": name, "driver": driver,
            "driver_opts": _strings(body.get("DriverOpts"), "DriverOpts"),
            "labels": _strings(body.get("Labels"), "Labels")})
        return json_response(volume, 201)

    async def inspect(self, req: Request) -> Response:
        return json_response(await self.calls.call("volume.inspect",
                                                   {"name": req.params["name"]}))

    async def delete(self, req: Request) -> Response:
        await self.calls.call("volume.remove", {"name": req.params["name"],
                                                "force": req.flag("force")})
        return empty()

    async def prune(self, req: Request) -> Response:
        # Before API 1.42 a prune took every unused volume; since, the anonymous ones
        # unless the filter all=true says otherwise (Docker 23's change).
        old = req.api_version is not None and req.api_version < (1, 42)
        result = await self.calls.call("volume.prune", {
            "all": old, "filters": docker_filters(req.json_arg("filters"))})
        return json_response({"VolumesDeleted": result["deleted"] or None,
                              "SpaceReclaimed": result["space_reclaimed"]})
