"""pytest_sandbox's links and networks end to end: service fixtures started on the host
(``sandbox_container``), a containerised test reaching them by alias over legacy links
on the default bridge, or by name on a ``sandbox_network``. Traffic stays between
containers on the daemon's own bridges.

Services use the ``host`` image with the host's busybox ``httpd``; the daemon is
test_pytest_plugin's (one per module, with its own root and cgroup parent).
"""
from __future__ import annotations

import re

import pytest

from harness import wait_until
from sandboxd.api import Client
from test_pytest_plugin import daemon_sock, inner, spawn_inner  # noqa: F401

pytest_plugins = ("pytester",)

SERVICES = """
import pytest
from pytest_sandbox import PortOpen

def httpd(sandbox_container, text, **options):
    script = (f"mkdir -p /tmp/www && echo {text} > /tmp/www/index.html && "
              f"exec busybox httpd -f -p 80 -h /tmp/www")
    return sandbox_container("host", ["sh", "-c", script], wait=PortOpen(80),
                             expose=["80"], timeout=20, **options)
"""


def _left(sock: str) -> tuple[list[str], list[str]]:
    with Client(sock, autostart=False) as client:
        return ([c.name for c in client.containers.list(all=True)],
                [n.name for n in client.networks.list() if n.name.startswith("pytest-")])


def test_links_to_service_fixtures(inner, pytester: pytest.Pytester, daemon_sock):
    pytester.makepyfile(services=SERVICES)
    pytester.makepyfile(test_linked_services="""
        import os, urllib.request, pytest
        from pytest_sandbox import LinkedService, PortOpen
        from services import httpd

        @pytest.fixture(scope="session")
        def web(sandbox_container):
            with httpd(sandbox_container, "hello-from-web") as svc:
                yield svc

        @pytest.fixture
        def cache(sandbox_container):               # function scope: one per test
            with httpd(sandbox_container, "hello-from-cache") as svc:
                yield svc

        @pytest.fixture
        def broken(sandbox_container):
            with sandbox_container("host", ["sh", "-c", "echo cannot start; exit 7"],
                                   wait=PortOpen(80)) as svc:
                yield svc

        def get(url):
            return urllib.request.urlopen(url, timeout=10).read().decode().strip()

        @pytest.mark.container(links=["web"])
        def test_by_alias(web):
            assert isinstance(web, LinkedService) and web.host == "web"
            assert get("http://web/") == "hello-from-web"
            assert os.environ["WEB_PORT_80_TCP_ADDR"] == web.ip
            assert os.environ["WEB_PORT"] == f"tcp://{web.ip}:80"
            print("WEB=" + web.id)

        @pytest.mark.container(links={"www": "web", "kv": "cache"})
        def test_two_aliases_and_scopes(web, cache):
            assert (web.alias, cache.alias) == ("www", "kv")
            assert get("http://www/") == "hello-from-web"
            assert get(cache.url()) == "hello-from-cache"
            print("WEB=" + web.id)
            print("CACHE=" + cache.id)

        @pytest.mark.container(links={"kv": "cache"})
        def test_function_scope_is_fresh(cache):
            assert get("http://kv/") == "hello-from-cache"
            print("CACHE=" + cache.id)

        def test_local_gets_the_service(web):
            assert web.exec(["cat", "/tmp/www/index.html"]).stdout == b"hello-from-web\\n"

        @pytest.mark.container(links=["broken"])
        def test_service_that_fails(broken):
            raise AssertionError("must not run: its service never became ready")
        """)
    result = inner("-rA", "-p", "no:randomly")
    result.assert_outcomes(passed=4, errors=1)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(["*ERROR at setup of test_service_that_fails*",
                                 "*ServiceNotReady*exited with code 7*",
                                 "*cannot start*"])
    webs = re.findall(r"^WEB=(\w+)$", out, re.M)
    caches = re.findall(r"^CACHE=(\w+)$", out, re.M)
    assert len(webs) == 2 and len(set(webs)) == 1, webs          # session: one service
    assert len(caches) == 2 and len(set(caches)) == 2, caches    # function: one each
    assert _left(daemon_sock) == ([], [])


def test_sandbox_network(inner, pytester: pytest.Pytester, daemon_sock):
    pytester.makepyfile(services=SERVICES)
    pytester.makepyfile(test_net="""
        import os, urllib.request, pytest
        from services import httpd

        @pytest.fixture
        def api(sandbox_container, sandbox_network):
            with httpd(sandbox_container, "hello-from-api",
                       network_mode=sandbox_network.name) as svc:
                yield svc

        @pytest.mark.container(network="sandbox_network", links=["api"])
        def test_on_user_network(api):
            assert api.host == api.name and api.ip
            assert not any(k.startswith("API_") for k in os.environ)   # not a legacy link
            body = urllib.request.urlopen(api.url(), timeout=10).read()
            assert body == b"hello-from-api\\n"

        @pytest.mark.container(network="sandbox_network")
        def test_on_its_own_user_network():
            with open("/etc/resolv.conf") as f:
                assert "nameserver 127.0.0.11" in f.read()     # the embedded resolver

        def test_on_host(sandbox_network, sandbox):
            assert sandbox_network.name.startswith("pytest-")
            network = sandbox.networks.get(sandbox_network.id)
            assert network.name == sandbox_network.name
            assert not network.attrs["Containers"]       # a fresh one: nothing on it

        @pytest.fixture(scope="module")
        def shared(sandbox_networks):
            with sandbox_networks(internal=True) as net:
                yield net

        def test_module_network(shared, sandbox):
            assert sandbox.networks.get(shared.id).attrs["Internal"] is True
        """)
    result = inner("-rA")
    result.assert_outcomes(passed=4)
    assert _left(daemon_sock) == ([], [])


def test_links_and_networks_under_xdist(inner, pytester: pytest.Pytester, daemon_sock):
    """Two xdist workers, each with its own session: per-test networks and services of
    both run side by side without name or address collisions."""
    pytest.importorskip("xdist", reason="pytest-xdist is not installed (test extras)")
    pytester.makepyfile(services=SERVICES)
    pytester.makepyfile(test_par="""
        import urllib.request, pytest
        from services import httpd

        @pytest.fixture
        def svc(sandbox_container, sandbox_network, request):
            with httpd(sandbox_container, f"case-{request.node.callspec.id}",
                       network_mode=sandbox_network.name) as s:
                yield s

        @pytest.fixture
        def web(sandbox_container, request):
            with httpd(sandbox_container, f"web-{request.node.callspec.id}") as s:
                yield s

        @pytest.mark.container(network="sandbox_network", links=["svc"])
        @pytest.mark.parametrize("n", range(3))
        def test_network_case(svc, n):
            body = urllib.request.urlopen(svc.url(), timeout=10).read().decode().strip()
            assert body == f"case-{n}"
            print("NET=" + svc.id)

        @pytest.mark.container(links=["web"])
        @pytest.mark.parametrize("n", range(3))
        def test_link_case(web, n):
            body = urllib.request.urlopen("http://web/", timeout=10).read().decode()
            assert body.strip() == f"web-{n}"
        """)
    result = inner("-p", "xdist", "-n", "2", "-rA", subprocess=True)
    result.assert_outcomes(passed=6)
    # Three services, one per test (by id: a generated name may come again once the
    # container that had it is gone)
    services = re.findall(r"NET=(\S+)", result.stdout.str())
    assert len(set(services)) == 3, services
    assert _left(daemon_sock) == ([], [])


def test_killed_run_leaves_nothing_behind(inner, pytester: pytest.Pytester, daemon_sock):
    """kill -9 of pytest during a linked test: the daemon removes the session's containers
    (test and service) and then the network it made, as soon as the connection drops."""
    pytester.makepyfile(services=SERVICES)
    pytester.makepyfile(test_slow="""
        import time, pytest
        from services import httpd

        @pytest.fixture
        def svc(sandbox_container, sandbox_network):
            with httpd(sandbox_container, "x", network_mode=sandbox_network.name) as s:
                yield s

        @pytest.mark.container(network="sandbox_network", links=["svc"])
        def test_sleeps(svc):
            time.sleep(60)

        def test_net(sandbox_network):
            pass
        """)
    proc = spawn_inner(pytester, daemon_sock, "test_slow.py::test_sleeps")
    try:
        wait_until(lambda: len(_left(daemon_sock)[0]) == 2, 30,
                   "the service and the test's container")
    finally:
        proc.kill()
        proc.wait()
    wait_until(lambda: _left(daemon_sock) == ([], []), 15,
               "the daemon to remove the killed session's containers and network")
