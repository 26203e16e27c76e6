"""The few rtnetlink requests the network server makes inside a new namespace, sent
over a plain netlink socket.

pyroute2 spends ~0.6 ms of CPU per request (and more to open its socket); a prepared
namespace needs five, on every container start's refill, competing with the starts for
the CPU. These are fixed-shape messages: a header, one struct, a few attributes.
Requests carry ``NLM_F_ACK``, so every one ends with the kernel's ``NLMSG_ERROR``
(0 = done); a failure raises ``OSError`` with the kernel's errno.

A socket stays in the network namespace it was made in: make the :class:`Rtnl` while
inside the namespace, use it from anywhere.
"""
from __future__ import annotations

import errno
import os
import socket
import struct

NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLMSG_ERROR = 2
RTM_NEWLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 18, 20, 24
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 10, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_GATEWAY = 5
IFF_UP = 0x1
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1

_HEADER = struct.Struct("=IHHII")           # nlmsghdr: len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")          # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBi")           # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")        # rtmsg: family .. type, flags


def _attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


class Rtnl:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def link_index(self, name: str) -> int:
        replies = self._request(RTM_GETLINK, 0, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
                                + _attr(IFLA_IFNAME, name.encode() + b"\0"))
        for kind, payload in replies:
            if kind == RTM_NEWLINK:
                return _IFINFO.unpack_from(payload)[2]
        raise OSError(errno.ENODEV, f"no link {name}")

    def add_veth(self, name: str, master: int, peer: str, peer_netns: int,
                 peer_mac: str) -> None:
        """A veth ``name``, up, a port of the bridge ``master`` (an ifindex); its peer
        ``peer`` is made straight in the namespace of the fd ``peer_netns`` with the MAC
        ``peer_mac`` ("02:42:..."), down."""
        peer_msg = (_IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
                    + _attr(IFLA_IFNAME, peer.encode() + b"\0")
                    + _attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns))
                    + _attr(IFLA_ADDRESS, bytes.fromhex(peer_mac.replace(":", ""))))
        info = _attr(IFLA_INFO_KIND, b"veth") + _attr(IFLA_INFO_DATA,
                                                      _attr(VETH_INFO_PEER, peer_msg))
        self._request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL,
                      _IFINFO.pack(socket.AF_UNSPEC, 0, 0, IFF_UP, IFF_UP)
                      + _attr(IFLA_IFNAME, name.encode() + b"\0")
                      + _attr(IFLA_MASTER, struct.pack("=I", master))
                      + _attr(IFLA_LINKINFO, info))

    def link_up(self, index: int) -> None:
        self._request(RTM_NEWLINK, 0, _IFINFO.pack(socket.AF_UNSPEC, 0, index, IFF_UP,
                                                   IFF_UP))

    def add_address(self, index: int, address: str, prefixlen: int) -> None:
        packed = socket.inet_aton(address)
        self._request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL,
                      _IFADDR.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
                      + _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed))

    def add_default_route(self, gateway: str) -> None:
        self._request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL,
                      _RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT,
                                  RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
                      + _attr(RTA_GATEWAY, socket.inet_aton(gateway)))

    def _request(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        self._seq += 1
        self.sock.send(_HEADER.pack(_HEADER.size + len(body), kind,
                                    NLM_F_REQUEST | NLM_F_ACK | flags, self._seq, 0) + body)
        replies = []
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, mtype, _flags, seq, _pid = _HEADER.unpack_from(data, offset)
                payload = data[offset + _HEADER.size:offset + length]
                offset += max(length + (-length % 4), _HEADER.size)
                if seq != self._seq:
                    continue
                if mtype == NLMSG_ERROR:
                    error = -struct.unpack_from("=i", payload)[0]
                    if error:
                        raise OSError(error, os.strerror(error))
                    return replies
                replies.append((mtype, payload))
