"""The Dockerfile parser and lexer (sandboxd.images.dockerfile), .dockerignore matching
and the context tar (sandboxd.buildcontext), and the merged layer view
(sandboxd.images.view) over plain directories (no whiteout devices: those need root
and are covered by the integration tests)."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from sandboxd.errors import InvalidArgument, NotFound
from sandboxd.images import dockerfile as df
from sandboxd.buildcontext import Ignore, parse_ignore, prepare, write_context
from sandboxd.images.view import LayerView, write_tar


def test_parse_stages_continuations_comments_and_flags() -> None:
    parsed = df.parse("""\
# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM $BASE AS build
# a comment
RUN echo one \\
    # a comment inside the continuation
    && echo two
COPY --chown=1:2 --chmod=755 a b /dst/
from scratch
copy --from=build /out /
""")
    assert [a.text for a in parsed.args] == ["BASE=busybox"]
    assert parsed.warnings and "syntax=docker/dockerfile:1 ignored" in parsed.warnings[0]
    build, final = parsed.stages
    assert (build.name, build.base.text, final.name) == ("build", "$BASE AS build", "")
    run, copy = build.instructions
    assert run.keyword == "RUN" and run.text == "echo one     && echo two"
    assert copy.flags == (("chown", "1:2"), ("chmod", "755")) and copy.text == "a b /dst/"
    assert final.instructions[0].flag("from") == "build"
    assert parsed.steps() == 1 + 1 + 2 + 1 + 1


def test_parse_refusals_name_the_line() -> None:
    with pytest.raises(InvalidArgument) as e:
        df.parse("FROM busybox\nFRUM x\nHEALTHCHECK --every=1s CMD true\nRUN <<EOF\n"
                 "ONBUILD RUN x\n"
                 "RUN --mount=type=cache,target=/x true\nCOPY --bogus=1 a b\n")
    problems = e.value.details["problems"]
    assert problems[0] == "Dockerfile:2: unknown instruction FRUM"
    assert "Dockerfile:3" in problems[1] and "unknown flag --every" in problems[1]
    assert "heredocs" in problems[2] and "Dockerfile:4" in problems[2]
    assert "ONBUILD" in problems[3]
    assert "RUN --mount is not supported" in problems[4]
    assert "unknown flag --bogus" in problems[5]
    with pytest.raises(InvalidArgument, match="only ARG may come before it"):
        df.parse("RUN true\nFROM busybox\n")
    with pytest.raises(InvalidArgument, match="no FROM instruction"):
        df.parse("# nothing\n")
    with pytest.raises(InvalidArgument, match="duplicate stage name"):
        df.parse("FROM a AS x\nFROM b AS x\n")


def test_escape_directive() -> None:
    parsed = df.parse("# escape=`\nFROM busybox\nRUN dir c:\\ `\n  && echo ok\n")
    assert parsed.escape == "`"
    assert parsed.stages[0].instructions[0].text == "dir c:\\   && echo ok"


def test_words_quotes_and_expansion() -> None:
    env = {"A": "x", "EMPTY": "", "SP": "a b"}
    assert df.words("$A ${A}y '$A' \"$A z\" \\$A", env) == ["x", "xy", "$A", "x z", "$A"]
    assert df.words("${MISSING:-def} ${A:-def} ${A:+alt} ${EMPTY:+alt}end", env) == \
        ["def", "x", "alt", "end"]
    assert df.words('"${SP}"', env) == ["a b"]
    assert df.words("a\\ b c", env) == ["a b", "c"]
    with pytest.raises(InvalidArgument, match="unterminated"):
        df.words("'open", env)
    with pytest.raises(InvalidArgument, match="bad substitution"):
        df.words("${A/x/y}", env)


def test_variables_that_expand_past_a_mebibyte_are_refused() -> None:
    """``ENV A=$A$A`` doubles a value every line: the expansion stops at MAX_EXPANDED."""
    big = {"A": "x" * (600 << 10)}
    assert len(df.expand("$A", big)) == 600 << 10
    with pytest.raises(InvalidArgument, match="expand to more than 1048576 bytes"):
        df.expand("$A$A", big)
    with pytest.raises(InvalidArgument, match="expand to more than"):
        df.words('"${A}${A}"', big)


def test_assignments_args_commands_and_copy_sources() -> None:
    def ins(line: str) -> df.Instruction:
        return df.parse("FROM s\n" + line + "\n").stages[0].instructions[0]

    assert df.assignments(ins('ENV A=1 B="two words" C=$A'), {"A": "0"}) == \
        [("A", "1"), ("B", "two words"), ("C", "0")]
    assert df.assignments(ins("ENV LEGACY value with  spaces"), {}) == \
        [("LEGACY", "value with spaces")]
    assert df.assignments(ins('LABEL "com.x.y"="v 1" k=v'), {}) == \
        [("com.x.y", "v 1"), ("k", "v")]
    with pytest.raises(InvalidArgument, match="not a variable name"):
        df.assignments(ins("ENV 1A=x"), {})
    assert df.arg_items(ins("ARG A B=2"), {}) == [("A", None), ("B", "2")]
    assert df.command(ins("RUN echo $HOME"), ["/bin/sh", "-c"]) == \
        ["/bin/sh", "-c", "echo $HOME"]
    assert df.command(ins('CMD ["echo", "a b"]'), ["/bin/sh", "-c"]) == ["echo", "a b"]
    assert df.command(ins("CMD [not json"), ["sh", "-c"]) == ["sh", "-c", "[not json"]
    assert df.copy_sources(ins('COPY ["a b", "$D"]'), {"D": "/d/"}) == (["a b"], "/d/")
    assert df.copy_sources(ins("COPY x y z/"), {}) == (["x", "y"], "z/")
    with pytest.raises(InvalidArgument, match="a source and a destination"):
        df.copy_sources(ins("COPY onlyone"), {})


@pytest.mark.parametrize("patterns, path, excluded", [
    (["*.log"], "a.log", True),
    (["*.log"], "sub/a.log", False),
    (["**/*.log"], "sub/deep/a.log", True),
    (["**/*.log"], "a.log", True),
    (["logs"], "logs/x/y.txt", True),
    (["/logs/"], "logs/x", True),
    (["*", "!keep.txt"], "keep.txt", False),
    (["*", "!keep.txt"], "other.txt", True),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["a?c"], "abc", True),
    (["[ab]x"], "bx", True),
    (["[!ab]x"], "bx", False),
])
def test_dockerignore_matching(patterns: list[str], path: str, excluded: bool) -> None:
    assert Ignore(patterns).excluded(path) is excluded


def test_parse_ignore_cleans_lines() -> None:
    assert parse_ignore("# c\n\n /a/b/ \n!./c\n.\n") == ["a/b", "!c"]


def test_write_context_applies_dockerignore(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("a")
    (tmp_path / "src" / "a.pyc").write_text("compiled")
    (tmp_path / "node_modules" / "x").mkdir(parents=True)
    (tmp_path / "node_modules" / "x" / "y.js").write_text("y")
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "link").symlink_to("/etc/passwd")
    (tmp_path / ".dockerignore").write_text("**/*.pyc\nnode_modules\nDockerfile\n")
    text, name, spool = prepare(tmp_path)
    with spool, tarfile.open(fileobj=spool) as tar:
        names = set(tar.getnames())
        link = tar.getmember("link")
    assert (text, name) == ("FROM scratch\n", "Dockerfile")
    # the Dockerfile and .dockerignore are sent even when excluded
    assert names == {"src", "src/a.py", "Dockerfile", ".dockerignore", "link"}
    assert link.issym() and link.linkname == "/etc/passwd"      # a link, not followed
    with pytest.raises(InvalidArgument, match="no Dockerfile or Sandboxfile"):
        prepare(tmp_path / "src")
    with pytest.raises(InvalidArgument, match="not a directory"):
        write_context(tmp_path / "Dockerfile", io.BytesIO())


def _layers(tmp_path: Path) -> LayerView:
    lower = tmp_path / "lower"
    upper = tmp_path / "upper"
    (lower / "etc").mkdir(parents=True)
    (lower / "usr" / "bin").mkdir(parents=True)
    (lower / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n"
                                          "app:x:1000:1001::/home/app:/bin/sh\n")
    (lower / "etc" / "group").write_text("root:x:0:\nstaff:x:50:\n")
    (lower / "usr" / "bin" / "tool").write_text("lower tool")
    (lower / "bin").symlink_to("usr/bin")
    (lower / "abs").symlink_to("/etc")
    (lower / "escape").symlink_to("../../../../etc")
    (upper / "usr" / "bin").mkdir(parents=True)
    (upper / "usr" / "bin" / "tool").write_text("upper tool")
    (upper / "usr" / "bin" / "new").write_text("new")
    return LayerView([upper, lower])


def test_view_resolves_symlinks_inside_and_merges(tmp_path: Path) -> None:
    view = _layers(tmp_path)
    assert view.resolve("/bin/tool") == "/usr/bin/tool"
    assert view.resolve("/abs/passwd") == "/etc/passwd"
    assert view.resolve("/escape/passwd") == "/etc/passwd"      # .. stops at the root
    assert view.read("/bin/tool") == b"upper tool"
    assert view.listdir("/usr/bin") == ["new", "tool"]
    assert view.is_dir("/bin") and not view.exists("/nope")
    assert view.user_ids("app", None) == (1000, 1001)
    assert view.user_ids("app", "staff") == (1000, 50)
    assert view.user_ids("42", "7") == (42, 7)
    with pytest.raises(NotFound, match="unable to find user nobody"):
        view.user_ids("nobody", None)
    out = io.BytesIO()
    write_tar(view, out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        assert tar.extractfile("usr/bin/tool").read() == b"upper tool"
        assert tar.getmember("bin").issym()
        assert {"etc/passwd", "usr/bin/new", "abs", "escape"} <= set(tar.getnames())


def test_view_symlink_loop_is_refused(tmp_path: Path) -> None:
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    with pytest.raises(InvalidArgument, match="too many levels"):
        LayerView([tmp_path]).resolve("/a/x")


def test_unpack_context_refuses_entries_leading_outside(tmp_path: Path) -> None:
    from sandboxd.images.build import unpack_context
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("ok.txt", "../escaped.txt", "/abs.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "/"
        tar.addfile(link)
        through = tarfile.TarInfo("link/etc-owned")
        through.size = 1
        tar.addfile(through, io.BytesIO(b"x"))
    buf.seek(0)
    root = tmp_path / "builds"
    with pytest.raises(InvalidArgument) as e:
        unpack_context(buf, root)
    problems = " ".join(e.value.details["problems"])
    assert "../escaped.txt" in problems and "link/etc-owned" in problems
    assert list(root.iterdir()) == []                 # the half-made context is gone
    assert not (tmp_path / "escaped.txt").exists() and not Path("/etc-owned").exists()


def test_write_context_exception_inside_an_excluded_directory(tmp_path: Path) -> None:
    (tmp_path / "logs" / "old").mkdir(parents=True)
    (tmp_path / "logs" / "keep.txt").write_text("k")
    (tmp_path / "logs" / "drop.txt").write_text("d")
    (tmp_path / "logs" / "old" / "x.txt").write_text("x")
    (tmp_path / ".dockerignore").write_text("logs\n!logs/keep.txt\n")
    out = io.BytesIO()
    write_context(tmp_path, out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        assert set(tar.getnames()) == {".dockerignore", "logs/keep.txt"}


def test_healthcheck_instruction() -> None:
    def hc(text: str) -> dict:
        return df.healthcheck(df.parse(f"FROM busybox\n{text}\n").stages[0].instructions[0])

    assert hc("HEALTHCHECK NONE") == {"Test": ["NONE"]}
    assert hc('HEALTHCHECK --interval=1m30s --retries=2 CMD ["curl", "-f", "x"]') == {
        "Test": ["CMD", "curl", "-f", "x"], "Interval": 90_000_000_000, "Retries": 2}
    assert hc("HEALTHCHECK --timeout=500ms --start-period=2s --start-interval=1s CMD "
              "wget -q -O- localhost || exit 1") == {
        "Test": ["CMD-SHELL", "wget -q -O- localhost || exit 1"], "Timeout": 500_000_000,
        "StartPeriod": 2_000_000_000, "StartInterval": 1_000_000_000}
    for bad in ("HEALTHCHECK", "HEALTHCHECK true", "HEALTHCHECK --interval=soon CMD x",
                "HEALTHCHECK --retries=-1 CMD x", "HEALTHCHECK --interval=1s NONE"):
        with pytest.raises(InvalidArgument):
            hc(bad)
