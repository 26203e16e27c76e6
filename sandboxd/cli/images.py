"""``sbx``'s image commands (commit, import, images, rmi, pull, push, load, save, tag,
history, login, logout, build, export) and the ``sbx image`` group."""
from __future__ import annotations

import os
import sys
from typing import Any

import click

from ..errors import SandboxError
from .app import (CONTEXT, SbxGroup, argument, complete_containers, complete_images,
                  confirm_prune, daemon_host, each, open_client, option, print_inspect,
                  print_pruned, print_rows, sbx)
from .common import EXIT_DAEMON, CliError, Progress, connection, follow, local


@sbx.command(context_settings=CONTEXT)
@option("-c", "--change", "changes", multiple=True,
        help="Apply Dockerfile instruction to the created image")
@option("-m", "--message", default="", help="Commit message")
@argument("container", shell_complete=complete_containers)
@argument("reference", metavar="[REPOSITORY[:TAG]]", required=False)
def commit(changes: tuple[str, ...], message: str, container: str,
           reference: str | None) -> int:
    """Create a new image from a container's changes (not one run with --rm)."""
    with open_client() as client:
        result = client.call("container.commit", {"id": container, "name": reference,
                                                  "message": message,
                                                  "changes": list(changes)})
    click.echo(result["id"])
    return 0


@sbx.command("import", context_settings=CONTEXT)
@option("-c", "--change", "changes", multiple=True,
        help="Apply Dockerfile instruction to the created image")
@option("-m", "--message", default="", help="Set commit message for imported image")
@argument("file", metavar="FILE|-")
@argument("reference", metavar="REPOSITORY[:TAG]")
def import_(changes: tuple[str, ...], message: str, file: str, reference: str) -> int:
    """Import the contents from a tarball to create a filesystem image."""
    source = sys.stdin.buffer if file == "-" else open(file, "rb")
    try:
        return _import(source, reference, message=message, changes=list(changes))
    finally:
        if source is not sys.stdin.buffer:
            source.close()


def _import(source: Any, reference: str, message: str = "",
            cmd: list[str] | None = None, changes: list[str] | None = None) -> int:
    """Send the tar stream ``source`` to ``image.import``; print the image id."""
    from ..api import CHUNK
    with open_client() as client:
        params: dict[str, Any] = {"name": reference}
        if message:
            params["message"] = message
        if changes:
            params["changes"] = changes
        if cmd is not None:
            params["cmd"] = cmd
        attachment = client.stream("image.import", params)
        while chunk := source.read(CHUNK):
            attachment.send(chunk)
        attachment.close_stdin()
        _, _, result = attachment.collect()
    # entries the unpacker refused (``..``, links out, devices): said, not silently lost
    for warning in result.get("warnings") or ():
        click.echo(f"WARNING: not imported: {warning}", err=True)
    click.echo(result["id"])
    return 0


@sbx.command(context_settings=CONTEXT)
@option("-a", "--all", "show_all", is_flag=True, help="Show all images")
@option("-q", "--quiet", is_flag=True, help="Only show image IDs")
@option("--format", "fmt", metavar="TEMPLATE", help="Format output using a Go template")
@option("--no-trunc", is_flag=True, help="Don't truncate output")
@option("--digests", is_flag=True, help="Show digests")
@option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
        help="Filter output based on conditions provided (dangling, label, reference, "
             "before, since)")
@argument("repository", required=False, metavar="[REPOSITORY[:TAG]]")
def images(show_all: bool, quiet: bool, fmt: str | None, no_trunc: bool,
           digests: bool, filters: tuple[str, ...], repository: str | None) -> int:
    """List images."""
    import time
    from ..filters import IMAGE_FILTER_KEYS, parse_filters
    from ..model import ImageRecord
    from ..render import IMAGES_DIGESTS_TABLE, IMAGES_TABLE, IMAGE_HEADERS, image_row
    parsed = local(parse_filters, filters, IMAGE_FILTER_KEYS)
    if repository:                    # Docker: the argument is one more reference filter
        parsed.setdefault("reference", []).append(repository)
    with open_client() as client:
        result = client.call("image.list", {"all": show_all, "filters": parsed})
    records = [ImageRecord.from_dict(i) for i in result["images"]]
    now = time.time()
    if quiet:
        seen = []
        for r in records:
            shown = r.id if no_trunc else r.id.split(":", 1)[-1][:12]
            if shown not in seen:
                seen.append(shown)
                click.echo(shown)
        return 0
    rows = [row for r in records for row in image_row(r, now, trunc=not no_trunc)]
    print_rows(fmt, rows, IMAGES_DIGESTS_TABLE if digests else IMAGES_TABLE,
                IMAGE_HEADERS)
    return 0


@sbx.command(context_settings=CONTEXT)
@option("-f", "--force", is_flag=True, help="Force removal of the image")
@argument("images", nargs=-1, required=True, shell_complete=complete_images)
def rmi(force: bool, images: tuple[str, ...]) -> int:
    """Remove one or more images."""
    def remove(client: Any, name: str) -> str:
        result = client.images.remove(name, force=force)
        lines = [f"Untagged: {t}" for t in result.get("untagged") or ()]
        lines += [f"Deleted: {d}" for d in result.get("deleted") or ()]
        return "\n".join(lines)
    return each(images, remove)


@sbx.command(context_settings=CONTEXT)
@option("-q", "--quiet", is_flag=True, help="Suppress verbose output")
@option("--platform", metavar="OS/ARCH[/VARIANT]",
        help="Set platform if server is multi-platform capable [default: this machine's]")
@argument("name", metavar="NAME[:TAG|@DIGEST]")
def pull(quiet: bool, platform: str | None, name: str) -> int:
    """Download an image from a registry (Docker Hub for a name without one)."""
    params = {"name": name, **({"platform": platform} if platform else {})}
    if not quiet and "@" not in name and ":" not in name.rpartition("/")[2]:
        click.echo("Using default tag: latest")
    with open_client() as client:
        result = follow(client.stream("image.pull", params),
                         None if quiet else Progress(sys.stdout))
    click.echo(result["name"])
    return 0


@sbx.command(context_settings=CONTEXT)
@option("-q", "--quiet", is_flag=True, help="Suppress verbose output")
@argument("name", metavar="NAME[:TAG]", shell_complete=complete_images)
def push(quiet: bool, name: str) -> int:
    """Upload an image to a registry."""
    with open_client() as client:
        result = follow(client.stream("image.push", {"name": name}),
                         None if quiet else Progress(sys.stdout))
    if quiet:
        click.echo(name)
    return 0 if result.get("digest") else 1


@sbx.command(context_settings=CONTEXT)
@option("-i", "--input", "path", metavar="FILE",
        help="Read from tar archive file, instead of STDIN")
@option("-q", "--quiet", is_flag=True, help="Suppress the load output")
def load(path: str | None, quiet: bool) -> int:
    """Load images from a tar archive (an OCI layout or a docker save archive)."""
    from ..api import CHUNK
    if path is None and sys.stdin.isatty():
        raise CliError("requested load from stdin, but stdin is empty: give -i FILE or "
                       "redirect a tar", 1)
    source = sys.stdin.buffer if path is None else _open_input(path)
    try:
        with open_client() as client:
            attachment = client.stream("image.load", {})
            while chunk := source.read(CHUNK):
                attachment.send(chunk)
            attachment.close_stdin()
            result = follow(attachment, None)
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    for image in result["images"]:
        for tag in image["tags"]:
            click.echo(f"Loaded image: {tag}")
        if not image["tags"]:
            click.echo(f"Loaded image ID: {image['id']}")
    return 0


def _open_input(path: str) -> Any:
    try:
        return open(path, "rb")
    except OSError as e:
        raise CliError(f"open {path}: {e.strerror}", 1) from None


def _stream_out(method: str, params: dict[str, Any], output: str | None,
                what: str) -> None:
    """Write the data ``method`` streams back (a tar) to the file ``output``, or to
    STDOUT when that is not a terminal; a file a failure left half-written is removed.
    ``what`` names the action in errors ("save image")."""
    if output is None and sys.stdout.isatty():
        raise CliError("cowardly refusing to save to a terminal. Use the -o flag or "
                       "redirect", 1)
    try:
        out = sys.stdout.buffer if output is None else open(output, "wb")
    except OSError as e:
        raise CliError(f"failed to {what}: open {output}: {e.strerror}", 1) from None
    ok = False
    try:
        with open_client() as client:
            attachment = client.stream(method, params)
            for event, data in attachment:
                if event == "data":
                    out.write(data)
            attachment.result()
        ok = True
    finally:
        if output is not None:
            out.close()
            if not ok:
                os.unlink(output)      # no half-written archive left behind
        else:
            out.flush()


@sbx.command(context_settings=CONTEXT)
@option("-o", "--output", metavar="FILE", help="Write to a file, instead of STDOUT")
@argument("images", nargs=-1, required=True, shell_complete=complete_images)
def save(output: str | None, images: tuple[str, ...]) -> int:
    """Save one or more images to a tar archive (streamed to STDOUT by default)."""
    _stream_out("image.save", {"names": list(images)}, output, "save image")
    return 0


@sbx.command(context_settings=CONTEXT)
@argument("source", metavar="SOURCE_IMAGE[:TAG]", shell_complete=complete_images)
@argument("target", metavar="TARGET_IMAGE[:TAG]")
def tag(source: str, target: str) -> int:
    """Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE."""
    with open_client() as client:
        client.call("image.tag", {"source": source, "target": target})
    return 0


HISTORY_HEADERS = {"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT",
                   "CreatedBy": "CREATED BY", "Size": "SIZE", "Comment": "COMMENT"}
HISTORY_TABLE = ("table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t"
                 "{{.Comment}}")


@sbx.command(context_settings=CONTEXT)
@option("--format", "fmt", metavar="TEMPLATE", help="Format output using a Go template")
@option("-H", "--human/--no-human", default=True,
        help="Print sizes and dates in human readable format")
@option("--no-trunc", is_flag=True, help="Don't truncate output")
@option("-q", "--quiet", is_flag=True, help="Only show image IDs")
@argument("image", shell_complete=complete_images)
def history(fmt: str | None, human: bool, no_trunc: bool, quiet: bool, image: str) -> int:
    """Show the history of an image."""
    import time
    from ..render import human_duration, human_size, rfc3339, truncate
    with open_client() as client:
        entries = client.call("image.history", {"name": image})["history"]
    now = time.time()
    rows = []
    for e in entries:
        shown = e["id"] if no_trunc else e["id"].split(":", 1)[-1][:12]
        created = e["created"]
        by = e["created_by"] if no_trunc else truncate(e["created_by"], 45)
        rows.append({"ID": shown or "<missing>",
                     "CreatedSince": human_duration(now - created) + " ago"
                     if human else rfc3339(created),
                     "CreatedAt": rfc3339(created), "CreatedBy": by,
                     "Size": human_size(e["size"]) if human else str(e["size"]),
                     "Comment": e["comment"]})
    if quiet:
        for row in rows:
            click.echo(row["ID"])
        return 0
    print_rows(fmt, rows, HISTORY_TABLE, HISTORY_HEADERS)
    return 0


@sbx.command(context_settings=CONTEXT)
@option("-u", "--username", metavar="USER", help="Username")
@option("-p", "--password", metavar="PASSWORD", help="Password")
@option("--password-stdin", is_flag=True, help="Take the password from stdin")
@argument("registry", metavar="[SERVER]", default="")
def login(username: str | None, password: str | None, password_stdin: bool,
          registry: str) -> int:
    """Log in to a registry (the daemon keeps the credentials for its pulls and pushes).

    Without a SERVER, Docker Hub (docker.io)."""
    if password_stdin:
        if password is not None:
            raise CliError("--password and --password-stdin are mutually exclusive",
                           EXIT_DAEMON)
        if username is None:
            raise CliError("Must provide --username with --password-stdin", EXIT_DAEMON)
        password = sys.stdin.read().rstrip("\r\n")
    elif password is not None:
        click.echo("WARNING! Using --password via the CLI is insecure. Use "
                   "--password-stdin.", err=True)
    interactive = sys.stdin.isatty()
    if username is None:
        if not interactive:
            raise CliError("Cannot perform an interactive login from a non TTY device",
                           1)
        username = click.prompt("Username", err=True)
    if password is None:
        if not interactive:
            raise CliError("Cannot perform an interactive login from a non TTY device",
                           1)
        password = click.prompt("Password", hide_input=True, err=True)
    if not username or not password:
        raise CliError("Error: a username and a password are required", 1)
    with open_client() as client:
        result = client.call("system.login", {"registry": registry, "username": username,
                                              "password": password})
    click.echo(result["status"])
    return 0


@sbx.command(context_settings=CONTEXT)
@argument("registry", metavar="[SERVER]", default="")
def logout(registry: str) -> int:
    """Log out from a registry (without a SERVER, Docker Hub)."""
    with open_client() as client:
        removed = client.call("system.logout", {"registry": registry})["removed"]
    shown = registry or "docker.io"
    click.echo(f"Removing login credentials for {shown}" if removed
               else f"Not logged in to {shown}")
    return 0


@sbx.command(context_settings=CONTEXT)
@option("-t", "--tag", "tags", multiple=True, metavar="NAME[:TAG]",
        help="Name and optionally a tag for the image (repeatable)")
@option("-f", "--file", "dockerfile", metavar="PATH",
        help="Name of the Dockerfile (default: CONTEXT/Dockerfile or CONTEXT/Sandboxfile)")
@option("--build-arg", "build_args", multiple=True, metavar="KEY=VALUE",
        help="Set build-time variables")
@option("--label", "labels", multiple=True, metavar="KEY=VALUE",
        help="Set metadata for the image")
@option("--no-cache", is_flag=True, help="Do not use cache when building the image")
@option("-q", "--quiet", is_flag=True,
        help="Suppress the build output and print image ID on success")
@option("--network", default="default", show_default=True,
        help="Networking mode for the RUN instructions (default: the default bridge; "
             "none, host or a network's name)")
@option("--add-host", "add_hosts", multiple=True, metavar="HOST:IP",
        help="Add a custom host-to-IP mapping to the RUN instructions' /etc/hosts")
@option("--ulimit", "ulimits", multiple=True, metavar="NAME=SOFT[:HARD]",
        help="Ulimit options of the RUN instructions")
@option("--shm-size", default=None, metavar="SIZE",
        help="Size of /dev/shm of the RUN instructions [default: 64m]")
@option("--pull", is_flag=True, help="Always attempt to pull a newer version of the image")
@option("--cache-from", "cache_from", multiple=True, metavar="IMAGE",
        help="Images to consider as cache sources (local images)")
@option("--iidfile", metavar="FILE", help="Write the image ID to the file")
@option("--target", default="", metavar="STAGE", help="Build up to this stage")
@option("-m", "--memory", default=None, help="Memory limit of each RUN (e.g. 512m)")
@option("--cpus", default=None, help="Number of CPUs of each RUN")
@option("--pids-limit", type=int, default=None, help="Process limit of each RUN")
@argument("context", metavar="CONTEXT|-")
def build(tags: tuple[str, ...], dockerfile: str | None, build_args: tuple[str, ...],
          labels: tuple[str, ...], no_cache: bool, quiet: bool, network: str, target: str,
          memory: str | None, cpus: str | None, pids_limit: int | None,
          add_hosts: tuple[str, ...], ulimits: tuple[str, ...], shm_size: str | None,
          pull: bool, cache_from: tuple[str, ...], iidfile: str | None, context: str) -> int:
    """Build an image from a Dockerfile. CONTEXT is a local directory, or - for a
    Dockerfile on stdin and no context; -f - reads the Dockerfile from stdin (URLs are
    not supported)."""
    from ..buildcontext import prepare
    args: dict[str, str] = {}
    for item in build_args:
        key, eq, value = item.partition("=")
        if not eq:                   # Docker: KEY alone takes the client's value
            if key not in os.environ:
                continue
            value = os.environ[key]
        args[key] = value
    label_map = dict(item.partition("=")[::2] for item in labels)
    if "://" in context or context.startswith("git@"):
        raise CliError(f"unable to prepare context: {context}: remote contexts are not "
                       f"supported; clone or download it and give the directory", 1)
    stdin_text = sys.stdin.read() if context == "-" or dockerfile == "-" else None
    try:
        text, name, spool = prepare(None if context == "-" else context,
                                    None if dockerfile == "-" else dockerfile, stdin_text)
    except SandboxError as e:
        raise CliError(f"unable to prepare context: {e.message}", 1) from None
    params: dict[str, Any] = {"dockerfile": text, "dockerfile_name": name,
                              "tags": list(tags), "build_args": args, "no_cache": no_cache,
                              "network": network, "target": target, "labels": label_map,
                              "add_hosts": list(add_hosts), "ulimits": list(ulimits),
                              "pull": pull, "cache_from": list(cache_from)}
    for key, value in (("memory", memory), ("cpus", cpus), ("pids_limit", pids_limit),
                       ("shm_size", shm_size)):
        if value is not None:
            params[key] = value
    with connection(daemon_host()) as conn, spool:    # no model to import: a rebuild is quick
        attachment = conn.stream("image.build", params)
        while chunk := spool.read(1 << 20):
            attachment.send(chunk)
        attachment.close_stdin()
        for event, data in attachment:
            if event == "progress" and not quiet and isinstance(data, dict):
                sys.stdout.write(str(data.get("stream", "")))
                sys.stdout.flush()
        result = attachment.result()
    if iidfile:
        try:
            with open(iidfile, "w") as f:
                f.write(result["id"])
        except OSError as e:
            raise CliError(f"failed to write image ID to {iidfile}: {e.strerror}", 1) \
                from None
    if quiet:
        click.echo(result["id"])
    return 0


@sbx.command(context_settings=CONTEXT)
@option("-o", "--output", metavar="FILE", help="Write to a file, instead of STDOUT")
@argument("container", shell_complete=complete_containers)
def export(output: str | None, container: str) -> int:
    """Export a container's filesystem as a tar archive (its image's layers and its
    changes, flattened)."""
    _stream_out("container.export", {"id": container}, output, "export container")
    return 0


# ---------------------------------------------------------------- sbx image

@click.group(cls=SbxGroup, context_settings=CONTEXT)
def image() -> None:
    """Manage images."""


for _name, _func in (("import", import_), ("ls", images), ("rm", rmi), ("pull", pull),
                     ("push", push), ("load", load), ("save", save), ("tag", tag),
                     ("history", history), ("build", build)):
    image.alias(_name, _func)


@image.command("prune", context_settings=CONTEXT)
@option("-a", "--all", "all_unused", is_flag=True,
        help="Remove all unused images, not just dangling ones")
@option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
        help="Provide filter values (e.g. 'until=<timestamp>')")
@option("-f", "--force", is_flag=True, help="Do not prompt for confirmation")
def image_prune(all_unused: bool, filters: tuple[str, ...], force: bool) -> int:
    """Remove unused images."""
    from ..filters import PRUNE_FILTER_KEYS, parse_filters
    parsed = parse_filters(filters, PRUNE_FILTER_KEYS)
    if not force and not confirm_prune(
            "all images without at least one container associated to them"
            if all_unused else "all dangling images"):
        return 0
    with open_client() as client:
        result = client.images.prune(all=all_unused, filters=parsed)
    print_pruned("Deleted Images:", pruned_images(result), result.get("space_reclaimed", 0))
    return 0


def pruned_images(result: dict[str, Any]) -> list[str]:
    """``image.prune``'s result as Docker's report lists it."""
    return ([f"untagged: {t}" for t in result.get("untagged") or ()] +
            [f"deleted: {d}" for d in result.get("deleted") or ()])


@image.command("bootstrap", context_settings=CONTEXT)
@option("-t", "--tag", metavar="NAME[:TAG]",
        help="Name of the image [default: debian:SUITE, busybox:latest, "
             "testcontainers/ryuk:0.8.1]")
@option("--variant", default="minbase", show_default=True,
        help="debian: mmdebstrap's package set (extract, custom, essential, apt, "
             "required, minbase, buildd, important, standard)")
@option("--include", "include", multiple=True, metavar="PKG[,PKG...]",
        help="debian: more packages to install (repeatable)")
@option("--source", "sources", multiple=True, metavar="LINE|URL",
        help="debian: an apt source ('deb URL SUITE COMPONENTS' or a mirror URL) "
             "instead of this machine's (repeatable)")
@option("-q", "--quiet", is_flag=True, help="Suppress mmdebstrap's progress")
@argument("what", metavar="debian[:SUITE]|busybox|ryuk")
def image_bootstrap(tag: str | None, variant: str, include: tuple[str, ...],
                    sources: tuple[str, ...], quiet: bool, what: str) -> int:
    """Make a first image without a registry: Debian with mmdebstrap from this
    machine's apt sources (SUITE: this machine's, else stable), busybox from the
    busybox-static package, or ryuk: testcontainers' reaper (busybox, this machine's
    python3.11 and sandboxd's own Ryuk), tagged as testcontainers asks for it."""
    import subprocess
    import tempfile

    from ..rootfs import RYUK_CMD, RYUK_IMAGE, BootstrapError, host_codename, \
        mmdebstrap_command, write_busybox_tar, write_ryuk_tar
    distro, _, suite = what.partition(":")
    try:
        # Spooled first: a half-made root filesystem is never imported.
        with tempfile.TemporaryFile(prefix="sbx-bootstrap-") as spool:
            if distro == "busybox":
                if suite not in ("", "latest"):
                    raise BootstrapError("busybox: the version is this machine's "
                                         "busybox-static; give no :TAG (or -t for the name)")
                write_busybox_tar(spool)
                reference, cmd, message = tag or "busybox:latest", ["sh"], \
                    "sbx image bootstrap busybox (busybox-static)"
            elif distro == "ryuk":
                if suite:
                    raise BootstrapError("ryuk: give no :TAG (-t NAME[:TAG] names the "
                                         f"image; default {RYUK_IMAGE})")
                write_ryuk_tar(spool)
                reference, cmd, message = tag or RYUK_IMAGE, RYUK_CMD, \
                    "sbx image bootstrap ryuk (sandboxd.ryuk on python3.11)"
            elif distro == "debian":
                suite = suite or host_codename() or "stable"
                command = mmdebstrap_command(suite, variant, include,
                                             list(sources) or None, quiet)
                done = subprocess.run(command, stdout=spool,
                                      stderr=subprocess.DEVNULL if quiet else None)
                if done.returncode != 0:
                    raise BootstrapError(f"mmdebstrap exited with status {done.returncode}"
                                         f"{'' if quiet else ' (its messages are above)'}; "
                                         f"nothing was imported")
                reference, cmd = tag or f"debian:{suite}", ["bash"]
                message = f"sbx image bootstrap debian:{suite} (mmdebstrap --variant={variant})"
            else:
                raise BootstrapError(f"{what!r}: bootstrap makes debian[:SUITE], busybox "
                                     f"or ryuk")
            spool.seek(0)
            return _import(spool, reference, message=message, cmd=cmd)
    except BootstrapError as e:
        raise CliError(str(e), 1) from None


@image.command("inspect", context_settings=CONTEXT)
@option("-f", "--format", "fmt", metavar="TEMPLATE",
              help="Format output using a Go template")
@argument("names", nargs=-1, required=True, shell_complete=complete_images)
def image_inspect(fmt: str | None, names: tuple[str, ...]) -> int:
    """Display detailed information on one or more images."""
    return print_inspect(fmt, "image", names)
