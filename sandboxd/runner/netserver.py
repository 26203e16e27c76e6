"""The network server: the one process that does the daemon's network kernel work.

Started once by exec (``python -m sandboxd.runner.netserver --fd N``), single-threaded,
it talks to its owner (:class:`sandboxd.network.NetworkService`) over a SOCK_SEQPACKET
socket with the fork server's framing (msgpack messages). Requests ``{"op", "rid", ...}``
get ``{"rid", "ok"}`` or ``{"rid", "error"}``, one at a time, in order.

Why a process of its own, and why it never forks: making a network namespace and
configuring interfaces inside it needs a thread in that namespace. The daemon may have
threads, so it must not unshare or setns (rule 1). This process has one thread, so it
can simply step in and out: ``unshare(CLONE_NEWNET)``, bind-mount its new namespace on
``<root>/netns/<name>`` (as ``ip netns add`` does on /run/netns), open a netlink socket
there (a netlink socket stays in the namespace it was made in), then ``setns`` back to
the namespace it started in. No fork, no pyroute2 ``NetNS`` helper processes. The
requests of a prepare (veth, addresses, routes, links up) go through :mod:`.rtnl`, plain
netlink messages: one namespace with a veth costs ~1 ms here (~4.5 ms through pyroute2,
CPU taken from the container starts it runs beside). The rarer host-side work (bridges,
dumps, deletions) uses pyroute2 on a socket opened at start.

Operations:

``bridge {name, address, prefixlen, mac}``
    Make the bridge (or adopt an existing one), give it the gateway address, set it up.
``bridge_del {name}``
``prepare {path, veth?, bridge?, address?, prefixlen?, gateway?, mac?, dns?}``
    A new namespace bound on ``path`` with ``lo`` up and ``net.ipv4.ping_group_range``
    open to every group (ping without NET_RAW); with ``veth``: a veth pair whose
    host end ``veth`` is a port of ``bridge`` and whose other end is created straight in
    the namespace as ``eth0`` with ``mac``, ``address/prefixlen``, up, and a default
    route via ``gateway`` (none when ``gateway`` is empty: an internal network). With
    ``dns``: a UDP socket and a listening TCP socket made inside the namespace, bound
    to the embedded resolver's 127.0.0.11:53, come with the reply (SCM_RIGHTS) for the
    daemon to serve (:mod:`sandboxd.dns`): a socket stays in the namespace it was made
    in, wherever its owner lives, so the daemon answers there without entering it.
``prepare_many {items: [prepare's fields, ...]}``
    Each in turn, stopping at the first that fails (undone, as a lone ``prepare``'s
    failure); returns ``{made, fd_counts, error}``: how many were made, how many fds each
    of those sent (in order, with the reply), and the failure's error or nil. A pool's
    refill: one request for several namespaces.
``release {path, veth?}``
    Delete the veth (both ends go) and unmount and unlink the namespace file.
``sweep {release: [[path, veth], ...], veths}``
    The namespaces of ended containers, released lazily: only each file goes, and the
    kernel destroys the namespace, and the veth in it, once nothing uses it any more (a
    worker of its own, 20-40 ms later), instead of this server waiting the ~25 ms a
    veth's deletion takes; the veth is remembered as dying. Then which of ``veths``
    (dying ones, or plugged into a namespace released lazily) no longer exist; they are
    forgotten. Returns ``{failed: [[path, message], ...], gone: [...]}``; the caller
    frees the addresses of gone veths only then.
``plug {path, veth, bridge, ifname, address, prefixlen, mac, dns?}``
    One more veth into the existing namespace bound on ``path`` (``network connect``):
    host end ``veth`` on ``bridge``, the peer ``ifname`` inside with ``mac`` and
    ``address/prefixlen``, up; no route (the default one stays with ``eth0``). With
    ``dns``, the resolver's two sockets as ``prepare`` makes them (a namespace of the
    default bridge joining its first user network).
``unplug {veth}``
    Delete a veth made by ``plug`` (or a namespace's own, leaving the namespace, or a
    dying one that something still holds).
``netfilter {prefix, bridges: [[bridge, subnet, internal], ...], masq}``
    Our netfilter chains set to the rule set of :mod:`sandboxd.runner.masq` for these
    bridges: isolation always; with ``masq`` (the daemon's ``--ip-masq``) also IPv4
    forwarding on and masquerade. At exit the chains go and forwarding is put back
    as it was.
``cleanup {prefix, keep_links, netns_dir, keep_netns}``
    Delete every link named ``prefix*`` not in ``keep_links`` and every namespace file
    in ``netns_dir`` not in ``keep_netns``; returns what it removed.
``routes {}``
    The host's IPv4 routes, ``[[cidr, device], ...]``, all tables.

Everything this process makes is remembered; when its owner's socket closes (the daemon
stopped or died) it removes all of it, so no bridge, veth or namespace outlives the
daemon. It holds an exclusive ``flock`` on ``--lock`` (a file in the daemon's root)
from before its first answer until that cleanup is done: a daemon restarted at once
after a crash gets a server that waits for the old one, instead of adopting a bridge
the old one is about to delete.
"""
from __future__ import annotations

import errno
import os
import re
import signal
import socket
import sys
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import InvalidArgument, SandboxError, SetupFailed
from . import masq
from . import syscalls as sc
from .channel import recv_message, send_message
from .rtnl import Rtnl

LOOPBACK_INDEX = 1          # the kernel gives every namespace's lo ifindex 1
DNS_ADDRESS = ("127.0.0.11", 53)   # Docker's embedded resolver, in each namespace
IFNAMSIZ = 15               # usable characters of a link name


class NetServer:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.ipr = IPRoute()
        self.rtnl = Rtnl()                        # the per-start requests (see .rtnl)
        self.bridges: set[str] = set()
        self.namespaces: dict[str, str] = {}      # path -> veth ("" without one)
        self.plugs: set[str] = set()              # veths made by plug
        self.dying: set[str] = set()              # veths left to the kernel (lazy release)
        self.masq_prefix = ""                     # whose chains we installed
        self.forward_was = ""                     # ip_forward before we turned it on
        self.reply_fds: list[int] = []            # sent with the current reply, then closed

    # -- main loop
    def serve(self) -> None:
        send_message(self.sock, {"event": "ready", "pid": os.getpid()})
        try:
            while True:
                try:
                    msg, fds = recv_message(self.sock)
                except (ConnectionError, OSError):
                    msg, fds = None, []
                for fd in fds:
                    os.close(fd)
                if msg is None or not self._handle(msg):
                    return
        finally:
            self._remove_everything()

    def _handle(self, msg: dict) -> bool:
        """Do one request and answer it; False when the owner is gone (the daemon died
        while it ran): time to clean up and exit."""
        rid = msg.get("rid", 0)
        self.reply_fds = []
        try:
            handler = getattr(self, "_op_" + str(msg.get("op")), None)
            if handler is None:
                raise InvalidArgument(f"network server: unknown op {msg.get('op')!r}")
            reply: dict[str, Any] = {"rid": rid, "ok": handler(msg)}
        except SandboxError as e:
            reply = {"rid": rid, "error": e.to_wire()}
        except Exception as e:                                  # a bug: still answer
            reply = {"rid": rid, "error": SetupFailed(
                f"network server: {msg.get('op')}: {type(e).__name__}: {e}").to_wire()}
        fds = self.reply_fds if "ok" in reply else []
        try:
            send_message(self.sock, reply, fds)
        except OSError:
            return False
        finally:
            for fd in self.reply_fds:
                os.close(fd)
            self.reply_fds = []
        return True

    # -- operations
    def _op_bridge(self, msg: dict) -> None:
        name = _link_name(msg["name"])
        index = self._index(name)
        try:
            if index is None:
                self.ipr.link("add", ifname=name, kind="bridge", address=msg["mac"])
                index = self._index(name)
            self.bridges.add(name)
            have = {(a.get("address"), a["prefixlen"])
                    for a in self.ipr.get_addr(index=index, family=socket.AF_INET)}
            if (msg["address"], msg["prefixlen"]) not in have:
                self.ipr.addr("add", index=index, address=msg["address"],
                              prefixlen=msg["prefixlen"])
            self.ipr.link("set", index=index, state="up")
        except NetlinkError as e:
            raise _failed(f"set up bridge {name} with {msg['address']}/{msg['prefixlen']}",
                          e.code) from None

    def _op_bridge_del(self, msg: dict) -> None:
        name = _link_name(msg["name"])
        self._delete_link(name)
        self.bridges.discard(name)

    def _op_prepare(self, msg: dict) -> None:
        path, veth = msg["path"], msg.get("veth") or ""
        if veth:
            _link_name(veth)
            bridge = self._index(msg["bridge"])
            if bridge is None:
                raise SetupFailed(f"bridge {msg['bridge']} does not exist; the network's "
                                  f"bridge was removed from outside: restart the daemon")
        nsfd, inside, dns = self._new_namespace(path, bool(msg.get("dns")))
        # The veth is ours once it is made: an undo must not delete a link that already
        # had its name (a refused add_veth).
        self.namespaces[path] = ""
        try:
            if veth:
                try:
                    # The peer is born inside the namespace: no name on the host, no move.
                    self.rtnl.add_veth(veth, bridge, "eth0", nsfd, msg["mac"])
                except OSError as e:
                    raise _failed(f"create veth {veth} on {msg['bridge']}",
                                  e.errno or 0) from None
                self.namespaces[path] = veth
            try:
                inside.link_up(LOOPBACK_INDEX)
                if veth:
                    eth0 = inside.link_index("eth0")
                    inside.add_address(eth0, msg["address"], msg["prefixlen"])
                    inside.link_up(eth0)
                    if msg.get("gateway"):
                        inside.add_default_route(msg["gateway"])
            except OSError as e:
                raise _failed(f"configure the namespace {path}", e.errno or 0) from None
            self._bind_dns(dns, path)         # 127.0.0.11 exists once lo is up
        except BaseException:
            self._release(path)
            raise
        finally:
            for sock in dns:
                sock.close()                  # a no-op for the detached ones
            inside.close()
            os.close(nsfd)

    def _op_prepare_many(self, msg: dict) -> dict[str, Any]:
        """``prepare`` for each of ``items`` in turn, stopping at the first that fails
        (undone, as a lone prepare's failure). The fds of all go with the reply."""
        fds: list[int] = []
        counts: list[int] = []
        error = None
        try:
            for item in msg["items"]:
                self.reply_fds = []
                try:
                    self._op_prepare(item)
                except SandboxError as e:
                    error = e.to_wire()
                    break
                except Exception as e:                      # a bug: the rest still count
                    error = SetupFailed(f"network server: prepare: {type(e).__name__}: "
                                        f"{e}").to_wire()
                    break
                counts.append(len(self.reply_fds))
                fds += self.reply_fds
        finally:
            for fd in self.reply_fds if error else ():
                os.close(fd)
            self.reply_fds = fds
        return {"made": len(counts), "fd_counts": counts, "error": error}

    def _op_release(self, msg: dict) -> None:
        self._release(msg["path"], msg.get("veth") or "")

    def _op_sweep(self, msg: dict) -> dict[str, list]:
        failed = []
        for path, veth in msg["release"]:
            try:
                veth = veth or self.namespaces.get(path, "")
                if veth:
                    self.dying.add(_link_name(veth))
                _unbind(path)
                self.namespaces.pop(path, None)
            except SandboxError as e:
                failed.append([path, e.message])
        # One lookup each, not a dump: this runs every few ms while containers come and go.
        gone = sorted(v for v in {_link_name(v) for v in msg["veths"]} if self._index(v) is None)
        self.dying.difference_update(gone)
        self.plugs.difference_update(gone)
        return {"failed": failed, "gone": gone}

    def _op_plug(self, msg: dict) -> None:
        veth, ifname = _link_name(msg["veth"]), _link_name(msg["ifname"])
        bridge = self._index(msg["bridge"])
        if bridge is None:
            raise SetupFailed(f"bridge {msg['bridge']} does not exist; the network's "
                              f"bridge was removed from outside: restart the daemon")
        nsfd = os.open(msg["path"], os.O_RDONLY | os.O_CLOEXEC)
        try:
            inside, dns = self._socket_in(nsfd, msg["path"], bool(msg.get("dns")))
            try:
                try:
                    self.rtnl.add_veth(veth, bridge, ifname, nsfd, msg["mac"])
                except OSError as e:
                    raise _failed(f"create veth {veth} on {msg['bridge']}",
                                  e.errno or 0) from None
                self.plugs.add(veth)
                try:
                    index = inside.link_index(ifname)
                    inside.add_address(index, msg["address"], msg["prefixlen"])
                    inside.link_up(index)
                except OSError as e:
                    self._op_unplug({"veth": veth})
                    raise _failed(f"configure {ifname} in {msg['path']}",
                                  e.errno or 0) from None
                try:
                    self._bind_dns(dns, msg["path"])
                except SetupFailed:
                    # The container may have taken 127.0.0.11:53 or its lo down: it is
                    # connected all the same, without the resolver (no fds come back).
                    self.reply_fds = []
            finally:
                for sock in dns:
                    sock.close()              # a no-op for the detached ones
                inside.close()
        finally:
            os.close(nsfd)

    def _op_unplug(self, msg: dict) -> None:
        veth = _link_name(msg["veth"])
        self._delete_link(veth)
        self.plugs.discard(veth)
        self.dying.discard(veth)

    def _op_netfilter(self, msg: dict) -> None:
        prefix, ip_masq = msg["prefix"], bool(msg.get("masq"))
        if self.masq_prefix not in ("", prefix):
            raise InvalidArgument(f"netfilter: this server already manages the chains "
                                  f"of prefix {self.masq_prefix}")
        self.masq_prefix = prefix
        masq.apply(prefix, [tuple(b) for b in msg["bridges"]], ip_masq)
        if ip_masq:
            if not self.forward_was:
                self.forward_was = _read_sysctl(masq.IP_FORWARD)
            _write_sysctl(masq.IP_FORWARD, "1")

    def _op_cleanup(self, msg: dict) -> dict:
        prefix, keep = msg["prefix"], set(msg.get("keep_links") or ())
        if not prefix:
            raise InvalidArgument("cleanup: an empty link prefix would match every link")
        # Only our exact name shapes (<prefix>0, <prefix>-<id>, <prefix>v<hex>): another
        # daemon's longer prefix may start with ours, and its links are not ours.
        ours = re.compile(re.escape(prefix) + r"(0|-[0-9a-f]+|v[0-9a-f]+)")
        links = []
        for link in self.ipr.get_links():
            name = link.get("ifname") or ""
            if ours.fullmatch(name) and name not in keep:
                self._delete_link(name)
                links.append(name)
        directory, kept = msg["netns_dir"], set(msg.get("keep_netns") or ())
        netns = []
        for entry in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
            if entry not in kept:
                _unbind(os.path.join(directory, entry))
                netns.append(entry)
        return {"links": links, "netns": netns}

    def _op_routes(self, msg: dict) -> list[list[str]]:
        names = {link["index"]: link.get("ifname") or "" for link in self.ipr.get_links()}
        routes = []
        for route in self.ipr.get_routes(family=socket.AF_INET):
            dst = route.get("dst") or "0.0.0.0"
            routes.append([f"{dst}/{route['dst_len']}", names.get(route.get("oif"), "")])
        return routes

    # -- helpers
    def _new_namespace(self, path: str, dns: bool = False
                       ) -> tuple[int, Rtnl, list[socket.socket]]:
        """A new network namespace bound on ``path``: an fd on it, a netlink socket in
        it and, with ``dns``, an unbound UDP and TCP socket in it. This process is back
        in its own namespace when this returns or raises."""
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
        except OSError as e:                  # not ours to unbind: leave it alone
            raise SetupFailed(f"create the network namespace file {path}: {e.strerror}",
                              {"step": "netns", "errno": e.errno or 0}) from None
        try:
            sc.unshare(sc.CLONE_NEWNET)
            try:
                sc.mount("/proc/thread-self/ns/net", path, None, sc.MS_BIND)
                _allow_ping()
                nsfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                inside = Rtnl()
                socks = _dns_sockets() if dns else []
            finally:
                self._go_home()
        except OSError as e:
            _unbind(path)
            raise SetupFailed(f"create the network namespace {path}: {e.strerror}",
                              {"step": "netns", "errno": e.errno or 0}) from None
        return nsfd, inside, socks

    def _bind_dns(self, dns: list[socket.socket], path: str) -> None:
        """Bind the resolver's sockets (made inside a namespace) to 127.0.0.11:53; they
        go with the reply."""
        for sock in dns:
            try:
                sock.bind(DNS_ADDRESS)
                if sock.type == socket.SOCK_STREAM:
                    sock.listen(64)
            except OSError as e:
                raise _failed(f"bind the resolver's {DNS_ADDRESS[0]}:53 in {path}",
                              e.errno or 0) from None
        self.reply_fds = [sock.detach() for sock in dns]

    def _socket_in(self, nsfd: int, path: str, dns: bool = False
                   ) -> tuple[Rtnl, list[socket.socket]]:
        """A netlink socket inside the namespace ``nsfd`` and, with ``dns``, an unbound
        UDP and TCP socket there (back home afterwards)."""
        try:
            sc.setns(nsfd, sc.CLONE_NEWNET)
        except OSError as e:
            raise SetupFailed(f"enter the network namespace {path}: {e.strerror}",
                              {"step": "netns", "errno": e.errno or 0}) from None
        try:
            socks = _dns_sockets() if dns else []
            return Rtnl(), socks
        finally:
            self._go_home()

    def _go_home(self) -> None:
        try:
            sc.setns(self.home, sc.CLONE_NEWNET)
        except OSError as e:
            # Staying in a container's namespace would put every later link there.
            print(f"network server: cannot return to its own network namespace: {e}; "
                  f"exiting", file=sys.stderr)
            os._exit(1)

    def _release(self, path: str, veth: str = "") -> None:
        veth = veth or self.namespaces.get(path, "")
        if veth:
            self._delete_link(veth)
        _unbind(path)
        self.namespaces.pop(path, None)

    def _index(self, name: str) -> int | None:
        try:
            return self.rtnl.link_index(name)
        except OSError as e:
            if e.errno == errno.ENODEV:
                return None
            raise _failed(f"look up link {name}", e.errno or 0) from None

    def _delete_link(self, name: str) -> None:
        try:
            self.ipr.link("del", ifname=name)
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise _failed(f"delete link {name}", e.code) from None

    def _remove_everything(self) -> None:
        for veth in list(self.plugs | self.dying):
            try:
                self._op_unplug({"veth": veth})
            except SandboxError as e:
                print(f"network server: cleanup of {veth}: {e}", file=sys.stderr)
        if self.masq_prefix:
            try:
                masq.remove(self.masq_prefix)
                if self.forward_was:
                    _write_sysctl(masq.IP_FORWARD, self.forward_was)
            except SandboxError as e:
                print(f"network server: removing the masquerade rules: {e}",
                      file=sys.stderr)
        for path in list(self.namespaces):
            try:
                self._release(path)
            except SandboxError as e:
                print(f"network server: cleanup of {path}: {e}", file=sys.stderr)
        for name in list(self.bridges):
            try:
                self._delete_link(name)
            except SandboxError as e:
                print(f"network server: cleanup of {name}: {e}", file=sys.stderr)
        self.ipr.close()
        self.rtnl.close()


def _dns_sockets() -> list[socket.socket]:
    """An unbound UDP and TCP socket in the current network namespace (they stay in it)."""
    return [socket.socket(socket.AF_INET, kind)
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM)]


def _link_name(name: str) -> str:
    if not name or len(name) > IFNAMSIZ or "/" in name or name.strip() != name:
        raise InvalidArgument(f"link name {name!r} must be 1-{IFNAMSIZ} characters, "
                              f"without '/' or spaces")
    return name


def _failed(what: str, code: int) -> SetupFailed:
    """``code``: the kernel's errno (pyroute2's ``NetlinkError.code``, or :mod:`.rtnl`'s
    ``OSError.errno``)."""
    return SetupFailed(f"{what}: {os.strerror(code)}", {"step": "network", "errno": code})


def _allow_ping() -> None:
    """Let every group open ICMP datagram sockets in the current network namespace, as
    Docker does: ``ping`` then works without CAP_NET_RAW (which containers lack by
    default) and without raw sockets. /proc/sys/net is per namespace: the file opened
    here is the new namespace's own."""
    with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
        f.write("0 2147483647")


def _read_sysctl(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _write_sysctl(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise SetupFailed(f"write {value} to {path}: {e.strerror}") from None


def _unbind(path: str) -> None:
    """Unmount a namespace file (if mounted) and remove it (if there)."""
    try:
        sc.umount2(path, sc.MNT_DETACH)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise SetupFailed(f"unmount the network namespace {path}: {e.strerror}",
                              {"step": "netns", "errno": e.errno or 0}) from None
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def main(argv: list[str] | None = None) -> None:
    import argparse
    parser = argparse.ArgumentParser(prog="sandboxd-netserver")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--lock", required=True)
    args = parser.parse_args(argv)
    import fcntl
    lock = os.open(args.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)          # released when this process exits
    # A Ctrl-C meant for the daemon must not skip the cleanup; the owner's EOF ends us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sock = socket.socket(fileno=args.fd)
    os.set_inheritable(sock.fileno(), False)
    NetServer(sock).serve()


if __name__ == "__main__":
    main()
