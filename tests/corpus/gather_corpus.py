"""Assemble the real-world corpus: test messages of public mail libraries, copied out of git
snapshots of their repositories into one flat directory (one message per file), and write
ORIGIN.md (repository, commit, path and licence of every message).

The messages themselves are not committed (they are other projects' files; the test skips
without them): a developer or CI job that has the snapshots runs

    python tests/corpus/gather_corpus.py --mirrors /work/.mirror --out tests/corpus/messages

and `tests/corpus/test_real_world.py` reads `tests/corpus/messages` (or
`$MAILFILTER_REAL_WORLD_CORPUS`). Mailbox files are split into their messages (the
comparison is per message); byte-identical messages (libraries copy each other's fixtures)
are kept once; files over `--max-bytes` are left out and listed in ORIGIN.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import mailbox
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Source:
    repo: str  # owner/name
    licence: str
    include: tuple[str, ...]  # fnmatch patterns over paths in the repository
    exclude: tuple[str, ...] = ()
    mbox: tuple[str, ...] = ()  # patterns of files that are mailboxes, split per message
    note: str = ""


SOURCES: tuple[Source, ...] = (
    Source("jstedfast/MimeKit", "MIT", (
        "UnitTests/TestData/messages/*", "UnitTests/TestData/partial/*.eml",
        "UnitTests/TestData/dkim/*.msg", "UnitTests/TestData/tnef/*.eml",
        "UnitTests/TestData/smime/thunderbird-signed.txt", "UnitTests/TestData/mbox/*.mbox.txt",
    ), mbox=("*.mbox.txt",),
        note="jwz.mbox.txt is 4 MiB or more and not in the snapshot"),
    Source("mikel/mail", "MIT", ("spec/fixtures/emails/*",), ("*/.gitattributes",)),
    Source("SpamScope/mail-parser", "Apache-2.0", ("tests/mails/*",)),
    Source("zbateson/mail-mime-parser", "BSD-2-Clause", ("tests/_data/emails/*.txt",),
           ("tests/_data/emails/files/*",)),
    Source("nodemailer/mailparser", "MIT", ("test/fixtures/*.eml",)),
    Source("postalsys/postal-mime", "MIT-0", ("test/fixtures/*.eml",)),
    Source("jhillyerd/enmime", "MIT", (
        "testdata/mail/*.raw", "testdata/low-quality/*.raw", "testdata/parts/*.raw",
        "dsn/testdata/*.raw",
    )),
    Source("stalwartlabs/mail-parser", "Apache-2.0 OR MIT", (
        "resources/eml/*.eml", "resources/maildir/*/cur/*", "resources/maildir/*/new/*",
        "resources/maildir/cur/*", "resources/maildir/new/*",
    )),
    Source("mailgun/flanker", "Apache-2.0", ("tests/fixtures/messages/*", "tests/fixtures/*.eml")),
    Source("apache/james-mime4j", "Apache-2.0 (mimetools-testmsgs: Perl MIME-tools, Artistic)",
           ("core/src/test/resources/testmsgs/*.msg",
            "core/src/test/resources/mimetools-testmsgs/*.msg")),
    Source("php-mime-mail-parser/php-mime-mail-parser", "MIT", ("tests/mails/*",)),
    Source("ikvk/imap_tools", "Apache-2.0", ("tests/messages/*.eml",)),
    Source("rspamd/rspamd", "Apache-2.0", ("test/functional/messages/*.eml",)),
    Source("axllent/mailpit", "MIT", ("internal/storage/testdata/*.eml",)),
    Source("mailgun/talon", "Apache-2.0", ("tests/fixtures/*.eml",)),
    Source("apache/spamassassin", "Apache-2.0", (
        "t/data/nice/*", "t/data/dkim/*", "t/data/spam/extracttext/*",
        "t/data/spam/olevbmacro/*", "t/data/spam/badmime*", "t/data/spam/badctype*",
        "t/data/spam/base64.txt", "t/data/spam/gtube*.eml",
    ), note="the numbered spam samples of t/data/spam are left out on purpose"),
    Source("haraka/Haraka", "MIT", ("test/mail_specimen/*.txt",)),
    Source("MailCore/mailcore2", "BSD-3-Clause", (
        "unittest/data/summary/input/*", "unittest/data/parser/input/*",
    ), note="parser/input/mbox/jwz is the jwz test mailbox, one file per message"),
    Source("Webklex/php-imap", "MIT", ("tests/messages/*.eml",)),
    Source("laminas/laminas-mail", "BSD-3-Clause", (
        "test/_files/*.eml", "test/_files/test.mbox/*",
    ), mbox=("test/_files/test.mbox/*",)),
    Source("coddingtonbear/django-mailbox", "MIT", ("django_mailbox/tests/messages/*",)),
    Source("stalwartlabs/mail-auth", "Apache-2.0 OR MIT", (
        "resources/arc/*.txt", "resources/arf/*.eml", "resources/dkim/*.txt",
        "resources/dkim2/emails/*.eml", "resources/dmarc-feedback/*.eml",
        "resources/tlsrpt/*.eml",
    )),
    Source("apache/commons-email", "Apache-2.0", (
        "commons-email2-core/src/test/resources/eml/*.eml",)),
    Source("zone-eu/mailsplit", "MIT OR EUPL-1.2", ("test/fixtures/*.eml",)),
)

# Files that sit among the messages but are not messages (a library's expected outputs).
NOT_MESSAGES = ("*.json", "*.xml", "*.out", "*.html", "*.md", "*.py", "*.js", "*.list",
                "*_decoded*", "*.golden", "*.png", "*.jpg", "*.gif", "*.pdf")


@dataclass
class Gathered:
    # (file name, source, commit, path in the repository)
    kept: list[tuple[str, Source, str, str]] = field(default_factory=list)
    duplicates: list[tuple[Source, str, str]] = field(default_factory=list)  # src, path, kept as
    too_large: list[tuple[Source, str, int]] = field(default_factory=list)
    missing: list[tuple[Source, str]] = field(default_factory=list)


def _git(git_dir: Path, *args: str) -> bytes:
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], check=True,
                          capture_output=True).stdout


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def _matches(path: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def _split_mbox(data: bytes) -> list[bytes]:
    with tempfile.NamedTemporaryFile(suffix=".mbox") as tmp:
        tmp.write(data)
        tmp.flush()
        box = mailbox.mbox(tmp.name, create=False)
        try:
            return [box.get_bytes(key) for key in box.iterkeys()]
        finally:
            box.close()


def gather(mirrors: Path, out: Path, max_bytes: int) -> Gathered:
    out.mkdir(parents=True, exist_ok=True)
    seen: dict[str, str] = {}
    result = Gathered()
    for src in SOURCES:
        git_dir = mirrors / src.repo.replace("/", "+") / "repo"
        if not git_dir.is_dir():
            print(f"no snapshot of {src.repo} under {mirrors}", file=sys.stderr)
            continue
        commit = _git(git_dir, "rev-parse", "HEAD").decode().strip()
        listing = _git(git_dir, "ls-tree", "-r", "-l", "-z", "HEAD").split(b"\0")
        short = _slug(src.repo.split("/")[1])
        for entry in listing:
            if not entry:
                continue
            meta, path_b = entry.split(b"\t", 1)
            path = path_b.decode("utf-8", "surrogateescape")
            _mode, kind, obj, size = meta.decode().split()
            if kind != "blob" or not _matches(path, src.include) or _matches(
                    path, src.exclude + NOT_MESSAGES):
                continue
            if not size.isdigit() or subprocess.run(
                    ["git", "--git-dir", str(git_dir), "cat-file", "-e", obj],
                    capture_output=True).returncode != 0:
                result.missing.append((src, path))
                continue
            if int(size) > max_bytes:
                result.too_large.append((src, path, int(size)))
                continue
            data = _git(git_dir, "cat-file", "blob", obj)
            base = f"{short}__{_slug(path)}"
            pieces = (_split_mbox(data) if _matches(path, src.mbox)
                      else [data])
            for n, piece in enumerate(pieces):
                name = f"{base}__{n:04d}.eml" if len(pieces) > 1 else base
                shown = f"{path}#{n}" if len(pieces) > 1 else path
                digest = hashlib.sha256(piece).hexdigest()
                if digest in seen:
                    result.duplicates.append((src, shown, seen[digest]))
                    continue
                seen[digest] = name
                (out / name).write_bytes(piece)
                result.kept.append((name, src, commit, shown))
    return result


def origin_markdown(g: Gathered, commits: dict[str, str]) -> str:
    lines = [
        "# Where the real-world corpus comes from",
        "",
        "Test messages of public mail libraries, gathered by `gather_corpus.py` from git",
        "snapshots of the repositories below (the files are not committed here; each is",
        "its project's, under its licence). One file per message; mailboxes are split",
        "(`__NNNN.eml` = the NNNth message); byte-identical copies are kept once.",
        "",
        "| repository | commit | licence | messages | note |",
        "|---|---|---|---|---|",
    ]
    counts: dict[str, int] = {}
    for _name, src, _commit, _path in g.kept:
        counts[src.repo] = counts.get(src.repo, 0) + 1
    for src in SOURCES:
        if src.repo in commits:
            lines.append(f"| {src.repo} | {commits[src.repo][:12]} | {src.licence} | "
                         f"{counts.get(src.repo, 0)} | {src.note} |")
    lines += ["", f"{len(g.kept)} messages; {len(g.duplicates)} duplicates left out; "
              f"{len(g.too_large)} files over the size cap and {len(g.missing)} files "
              "missing from the snapshots left out.", ""]
    if g.too_large or g.missing:
        lines += ["## Left out", ""]
        lines += [f"- {s.repo} `{p}`: {n} bytes, over the cap" for s, p, n in g.too_large]
        lines += [f"- {s.repo} `{p}`: not in the snapshot (4 MiB or more)" for s, p in g.missing]
        lines.append("")
    lines += ["## Messages", "", "| file | repository | path |", "|---|---|---|"]
    lines += [f"| {name} | {src.repo} | `{path}` |" for name, src, _c, path in g.kept]
    return "\n".join(lines) + "\n"


def main() -> None:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"))
    ap.add_argument("--out", type=Path, default=here / "messages")
    ap.add_argument("--origin", type=Path, default=here / "ORIGIN.md")
    ap.add_argument("--max-bytes", type=int, default=2 * 1024 * 1024)
    args = ap.parse_args()
    g = gather(args.mirrors, args.out, args.max_bytes)
    commits = {c_src.repo: commit for _n, c_src, commit, _p in g.kept}
    args.origin.write_text(origin_markdown(g, commits))
    total = sum((args.out / name).stat().st_size for name, *_ in g.kept)
    print(f"{len(g.kept)} messages ({total / 1e6:.1f} MB), {len(g.duplicates)} duplicates, "
          f"{len(g.too_large)} too large, {len(g.missing)} missing")


if __name__ == "__main__":
    main()
