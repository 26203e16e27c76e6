"""``/_ping``, ``/version``, ``/info``, ``/system/df``: what clients ask before anything
else (the CLI negotiates its API version from ``/_ping``'s ``Api-Version`` header,
docker-py from ``/version``)."""
from __future__ import annotations

import os
import platform
import time

from ..render import rfc3339
from ..version import __version__
from .calls import Calls
from .http import API_VERSION, MIN_API_VERSION, Request, Response, Route, json_response, route

ENGINE_VERSION = "24.0.0"       # the Docker release whose API (1.43) this face follows
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


class SystemRoutes:
    def __init__(self, calls: Calls):
        self.calls = calls

    def routes(self) -> list[Route]:
        return [route("GET", "/_ping", self.ping), route("HEAD", "/_ping", self.ping),
                route("GET", "/version", self.version), route("GET", "/info", self.info),
                route("GET", "/system/df", self.df)]

    async def ping(self, req: Request) -> Response:
        return Response(200, b"" if req.method == "HEAD" else b"OK",
                        content_type="text/plain; charset=utf-8",
                        headers=[("Builder-Version", "1"), ("Cache-Control", "no-cache, no-store, must-revalidate")])

    async def version(self, req: Request) -> Response:
        uname = os.uname()
        details = {"ApiVersion": API_VERSION, "MinAPIVersion": ".".join(map(str, MIN_API_VERSION)),
                   "Os": "linux", "Arch": _ARCH.get(uname.machine, uname.machine),
                   "KernelVersion": uname.release, "GitCommit": "sandboxd",
                   "GoVersion": f"python{platform.python_version()}",
                   "BuildTime": rfc3339(time.time())}
        return json_response({
            "Platform": {"Name": f"sandboxd {__version__}"},
            "Components": [{"Name": "Engine", "Version": ENGINE_VERSION,
                            "Details": {k: str(v) for k, v in details.items()}}],
            "Version": ENGINE_VERSION, **details})

    async def info(self, req: Request) -> Response:
        i = await self.calls.call("system.info", {})
        return json_response({
            "ID": i["name"], "Name": i["name"], "ServerVersion": ENGINE_VERSION,
            "Containers": i["containers"], "ContainersRunning": i["running"],
            "ContainersPaused": i["paused"], "ContainersStopped": i["stopped"],
            "Images": i["images"], "Driver": "overlay2", "DriverStatus": [],
            "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "none"],
                        "Log": ["json-file", "local", "none"]},
            "MemoryLimit": True, "SwapLimit": True, "CpuCfsPeriod": True,
            "CpuCfsQuota": True, "CPUShares": True, "PidsLimit": True,
            "IPv4Forwarding": True, "Debug": False, "NFd": len(os.listdir("/proc/self/fd")),
            "NGoroutines": 0, "SystemTime": rfc3339(time.time()),
            "LoggingDriver": "json-file", "CgroupDriver": i["cgroup_driver"],
            "CgroupVersion": str(i["cgroup_version"]), "NEventsListener": i["events_listeners"],
            "KernelVersion": i["kernel_version"], "OperatingSystem": i["operating_system"],
            "OSVersion": "", "OSType": "linux",
            "Architecture": i["architecture"], "IndexServerAddress":
                "https://index.docker.io/v1/", "NCPU": i["ncpu"], "MemTotal": i["mem_total"],
            "DockerRootDir": i["root_dir"], "Labels": [], "ExperimentalBuild": False,
            "Runtimes": {"sandboxd-runner": {"path": "sandboxd-runner"}},
            "DefaultRuntime": "sandboxd-runner", "Swarm": {"LocalNodeState": "inactive"},
            "SecurityOptions": i["security_options"], "Warnings": i["warnings"] or None})

    async def df(self, req: Request) -> Response:
        d = await self.calls.call("system.df", {})
        return json_response({
            "LayersSize": sum(img.get("size", 0) for img in d["images"]),
            "Images": [{"Id": img.get("id", ""), "RepoTags": img.get("tags") or [],
                        "Size": img.get("size", 0), "SharedSize": -1,
                        "Containers": img.get("containers", 0), "Created": 0}
                       for img in d["images"]],
            "Containers": [{"Id": c["id"], "Names": [f"/{c['name']}"], "Image": c["image"],
                            "SizeRw": c["size"], "State": c["status"]}
                           for c in d["containers"]],
            "Volumes": d["volumes"], "BuildCache": []})
