"""An image's labels (its config's ``Labels``) are merged under a container's own at
create, as Docker does: the container's win. They show in ``sbx inspect``'s
Config.Labels and match ``ps --filter label=``. Real daemon, real CLI, an image built
with ``LABEL``."""
from __future__ import annotations

import json
from pathlib import Path

from harness import Daemon

IMAGE = "sbx-labels-test:v1"
NAME = "sbx-labels-ctr"


def test_image_labels_under_container_labels(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        'FROM busybox\nLABEL team=image tier="from image" only.image=yes\n')
    daemon.sbx("build", "-t", IMAGE, str(tmp_path), check=True, timeout=120)
    daemon.sbx("rm", "-f", NAME)
    try:
        daemon.sbx("create", "--name", NAME, "--label", "tier=mine", "-l", "own=1", IMAGE,
                   "true", check=True)
        inspect = json.loads(daemon.sbx("inspect", NAME, check=True).out)[0]
        assert inspect["Config"]["Labels"] == {"team": "image", "tier": "mine",
                                               "only.image": "yes", "own": "1"}

        def listed(*filters: str) -> list[str]:
            args = [a for f in filters for a in ("--filter", f"label={f}")]
            return daemon.sbx("ps", "-a", "--format", "{{.Names}}", *args,
                              check=True).out.split()

        assert NAME in listed("team=image")
        assert NAME in listed("only.image")
        assert NAME in listed("tier=mine", "own=1")
        assert NAME not in listed("tier=from image")     # the container's label won
    finally:
        daemon.sbx("rm", "-f", NAME)
        daemon.sbx("rmi", IMAGE)
