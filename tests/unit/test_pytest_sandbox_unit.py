"""pytest_sandbox's pure parts: the marker's ``links`` forms, network modes, and the
worker's choice of what to collect (a real pytest run, in-process, no daemon)."""
from __future__ import annotations

import pytest

from pytest_sandbox.links import LinkedService, is_user_network, parse_links

pytest_plugins = ("pytester",)


def test_links_forms() -> None:
    assert parse_links(None) == {} and parse_links([]) == {}
    assert parse_links(["web"]) == {"web": "web"}
    assert parse_links(["web:www", "db"]) == {"www": "web", "db": "db"}
    assert parse_links({"www": "web"}) == {"www": "web"}
    with pytest.raises(TypeError, match=r"write links=\['web'\]"):
        parse_links("web")
    with pytest.raises(ValueError, match="is not alias: target"):
        parse_links({"": "web"})


def test_user_networks() -> None:
    assert not any(is_user_network(m) for m in ("none", "bridge", "default", "host",
                                                "container:abc"))
    assert is_user_network("pytest-0123") and is_user_network("sandbox_network")


def test_linked_service_url() -> None:
    svc = LinkedService(alias="web", host="web", name="n", id="i", ip="10.0.0.2")
    assert svc.url() == "http://web/"
    assert svc.url("https", 8443, "/x") == "https://web:8443/x"


def test_worker_collects_only_its_item(pytester: pytest.Pytester) -> None:
    """The worker's filter builds the target's members only: the module's other
    functions and classes are broken in a way that fails at collection, and do not."""
    from pytest_sandbox.worker import WorkerPlugin
    path = pytester.makepyfile(test_sel="""
        import pytest

        @pytest.mark.parametrize("zz", [1])       # an error if it were ever built
        def test_other():
            pass

        class TestOther:
            @pytest.mark.parametrize("zz", [1])
            def test_x(self):
                pass

        class TestTarget:
            def test_a(self):
                pass

            @pytest.mark.parametrize("n", [1, 2])
            def test_b(self, n):
                pass
        """)
    target = f"{path}::TestTarget::test_b[2]"
    sent: list[dict] = []

    class Frames:              # the worker's channel, kept in memory
        def send(self, message: dict) -> None:
            sent.append(message)

    class Install:
        def pytest_configure(self, config: pytest.Config) -> None:
            config.pluginmanager.register(WorkerPlugin(config, Frames(), {}, target))

    reprec = pytester.inline_run(target, plugins=[Install()])
    reprec.assertoutcome(passed=1)
    assert reprec.getfailedcollections() == []
    assert {m["data"]["nodeid"] for m in sent} == {"test_sel.py::TestTarget::test_b[2]"}

    unfiltered = pytester.inline_run(str(path))          # without the worker's filter
    assert len(unfiltered.getfailedcollections()) == 1
