"""Log rotation: the newest output is kept, within max-size x max-file, and readers see
every kept file in order, whatever rotates while they read."""
from __future__ import annotations

import os

from sandboxd import logs


def _write_lines(writer: logs.LogWriter, first: int, count: int) -> None:
    for i in range(first, first + count):
        writer.write(1, f"line-{i:05d}\n".encode())


def _stored(path: str) -> int:
    return sum(os.path.getsize(p) for p in logs.files(path))


def test_rotation_keeps_the_newest_within_the_cap(tmp_path):
    path = str(tmp_path / "output.log")
    w = logs.LogWriter(path, max_size=4096, max_file=3)
    _write_lines(w, 0, 5000)
    w.close()
    assert [os.path.basename(p) for p in logs.files(path)] == \
        ["output.log.2", "output.log.1", "output.log"]
    assert _stored(path) <= 3 * 4096
    with logs.Snapshot(path) as snap:
        lines = [e.data.decode() for e in snap.entries()]
        assert lines[-1] == "line-04999\n"
        numbers = [int(line[5:]) for line in lines]
        assert numbers == list(range(numbers[0], 5000))          # contiguous, in order
        assert snap.dropped["bytes"] > 0
        tail, short = snap.tail(2)
        assert [e.data for e in tail] == [b"line-04998\n", b"line-04999\n"] and not short
        everything, short = snap.tail(100000)
        assert short and len(everything) == len(lines)
        assert logs.dropped_note(snap, 0, short)
        assert not logs.dropped_note(snap, 0, False)


def test_lines_split_across_chunks_and_files_are_never_shown_in_part(tmp_path):
    """A pipe's chunks end anywhere in a line. After rotation dropped a line's start,
    readers leave out its rest (as Docker's line-based drivers never show a fragment);
    tail counts and returns whole lines, joined across chunks and files."""
    path = str(tmp_path / "output.log")
    w = logs.LogWriter(path, max_size=1024, max_file=2)
    text = b"".join(b"line-%05d\n" % i for i in range(2000))
    for start in range(0, len(text), 7):                 # 7-byte chunks: mid-line always
        w.write(1, text[start:start + 7])
    w.write(2, b"err-open")                              # a stream's last line, unended
    w.close()
    with logs.Snapshot(path) as snap:
        shown = b"".join(e.data for e in snap.entries() if e.stream == 1)
        assert shown.startswith(b"line-") and shown.endswith(b"line-01999\n")
        numbers = [int(line[5:]) for line in shown.splitlines()]
        assert numbers == list(range(numbers[0], 2000))
        for n in (1, 3, len(numbers) - 1):
            tail, short = snap.tail(n + 1)               # + the open stderr line
            assert tail[-1].data == b"err-open" and not short
            assert [e.data for e in tail[:-1]] == \
                [b"line-%05d\n" % i for i in range(2000 - n, 2000)]
        everything, short = snap.tail(100000)
        assert short and [e.data for e in everything if e.stream == 1] == \
            shown.splitlines(keepends=True)


def test_a_reader_is_not_disturbed_by_rotation(tmp_path):
    path = str(tmp_path / "output.log")
    w = logs.LogWriter(path, max_size=2048, max_file=4)
    _write_lines(w, 0, 300)
    with logs.Snapshot(path) as snap:
        _write_lines(w, 300, 300)            # rotates while the snapshot is open
        lines = [e.data for e in snap.entries()]
    assert lines[-1] == b"line-00299\n"      # up to what existed when it was opened
    w.close()


def test_a_chunk_larger_than_max_size_is_stored_in_pieces(tmp_path):
    path = str(tmp_path / "output.log")
    w = logs.LogWriter(path, max_size=4096, max_file=2)
    w.write(2, b"x" * 6000 + b"\n")
    w.close()
    assert _stored(path) <= 2 * 4096
    with logs.Snapshot(path) as snap:
        data = b"".join(e.data for e in snap.entries())
        assert data == b"x" * 6000 + b"\n" and snap.dropped is None


def test_one_file_is_truncated_in_place(tmp_path):
    path = str(tmp_path / "output.log")
    w = logs.LogWriter(path, max_size=4096, max_file=1)
    _write_lines(w, 0, 1000)
    w.close()
    assert logs.files(path) == [path] and os.path.getsize(path) <= 4096
    with logs.Snapshot(path) as snap:
        assert list(snap.entries())[-1].data == b"line-00999\n"


def test_unlimited_and_none(tmp_path):
    path = str(tmp_path / "a.log")
    w = logs.LogWriter(path, max_size=logs.UNLIMITED, max_file=1)
    _write_lines(w, 0, 2000)
    w.close()
    assert logs.files(path) == [path]
    quiet = str(tmp_path / "b.log")
    w = logs.LogWriter(quiet, keep=False)
    _write_lines(w, 0, 10)
    w.close()
    assert logs.files(quiet) == []


def test_since_filters_and_the_note_only_when_the_window_reaches_dropped_output(tmp_path):
    path = str(tmp_path / "output.log")
    w = logs.LogWriter(path, max_size=2048, max_file=2)
    _write_lines(w, 0, 1000)
    w.close()
    with logs.Snapshot(path) as snap:
        later = snap.dropped["until"] + 3600
        assert list(snap.entries(since=later)) == []
        assert not logs.dropped_note(snap, later, True)
        assert logs.dropped_note(snap, 0, True).startswith("sandboxd: ")


def test_a_write_the_host_refuses_is_said_once_and_not_raised(tmp_path, caplog):
    """A full disk (a real 64 KiB tmpfs) loses output from the log only: ``write``
    returns (the daemon's output callback goes on to hand the bytes to attached
    clients), warns once, and writes again once there is room."""
    import subprocess
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "sbx-test-logs", str(disk)],
                   check=True)
    w = logs.LogWriter(str(disk / "output.log"), max_size=logs.UNLIMITED)
    try:
        filler = disk / "filler"
        with caplog.at_level("WARNING", logger="sandboxd.logs"):
            w.write(1, b"before\n")
            with open(filler, "wb") as f:           # the disk fills up meanwhile
                try:
                    f.write(b"x" * (1 << 20))
                except OSError:
                    pass
            for _ in range(3):
                w.write(1, b"lost " * 2000 + b"\n")
        warned = [r.getMessage() for r in caplog.records if "not logged" in r.getMessage()]
        assert len(warned) == 1 and "No space left on device" in warned[0], warned
        filler.unlink()
        w.write(1, b"after\n")
        with logs.Snapshot(str(disk / "output.log")) as snap:
            kept = b"".join(e.data for e in snap.entries())
        assert kept.startswith(b"before\n") and kept.endswith(b"after\n")
    finally:
        w.close()
        subprocess.run(["umount", str(disk)], check=True)
