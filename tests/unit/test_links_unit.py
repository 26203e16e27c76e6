"""``sandboxd.network.link_env``: a legacy link's variables, as Docker's daemon/links
writes them."""
from __future__ import annotations

from sandboxd.network import link_env


def test_ports_name_and_environment() -> None:
    env = link_env("web-srv", "/client/web-srv", "10.0.0.2", ("81/udp", "80/tcp", "443"),
                   ("HOME=/root", "PATH=/bin", "TOKEN=a=b=c", "EMPTY=", "BROKEN"))
    assert env == [
        "WEB_SRV_PORT=tcp://10.0.0.2:80",
        # 80 and 81 are consecutive: a range from the first to the last
        "WEB_SRV_PORT_80_TCP_START=tcp://10.0.0.2:80", "WEB_SRV_PORT_80_TCP_ADDR=10.0.0.2",
        "WEB_SRV_PORT_80_TCP_PROTO=tcp", "WEB_SRV_PORT_80_TCP_PORT_START=80",
        "WEB_SRV_PORT_80_UDP_END=udp://10.0.0.2:81", "WEB_SRV_PORT_80_UDP_PORT_END=81",
        "WEB_SRV_PORT_80_TCP=tcp://10.0.0.2:80", "WEB_SRV_PORT_80_TCP_ADDR=10.0.0.2",
        "WEB_SRV_PORT_80_TCP_PORT=80", "WEB_SRV_PORT_80_TCP_PROTO=tcp",
        "WEB_SRV_PORT_81_UDP=udp://10.0.0.2:81", "WEB_SRV_PORT_81_UDP_ADDR=10.0.0.2",
        "WEB_SRV_PORT_81_UDP_PORT=81", "WEB_SRV_PORT_81_UDP_PROTO=udp",
        "WEB_SRV_PORT_443_TCP=tcp://10.0.0.2:443", "WEB_SRV_PORT_443_TCP_ADDR=10.0.0.2",
        "WEB_SRV_PORT_443_TCP_PORT=443", "WEB_SRV_PORT_443_TCP_PROTO=tcp",
        "WEB_SRV_NAME=/client/web-srv",
        "WEB_SRV_ENV_TOKEN=a=b=c", "WEB_SRV_ENV_EMPTY=",
    ]


def test_tcp_is_the_default_port_on_a_tie_and_no_ports_no_port_variables() -> None:
    assert link_env("db", "/c/db", "10.0.0.3", ("53/udp", "53/tcp"), ())[0] == \
        "DB_PORT=tcp://10.0.0.3:53"
    assert link_env("db", "/c/db", "10.0.0.3", (), ("A=1",)) == ["DB_NAME=/c/db",
                                                                  "DB_ENV_A=1"]
