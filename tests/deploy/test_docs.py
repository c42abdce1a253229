"""The docs check (issue 18): what README.md and docs/*.md show in code blocks works.

- Every documented `mailfilter ...` command (a line of an `sh` block, or a `$ ` line of an
  output block; `mf` is install.md's alias) is parsed by the real command-line parser (a
  renamed command or option fails here), and each one is either run here, against a temp
  config and generated benign files named as in the docs, or listed in NOT_RUN with the
  reason. A command documented anew fails this test until it is put in one of the two.
- Postfix snippets (code blocks in the docs and deploy/postfix/*) are checked with
  `postconf -c DIR -n` / `-M` on a temp config directory: a malformed line, a bad field
  count or an unknown parameter (Postfix's "unused parameter" warning) fails.
- TOML blocks load as settings; systemd units and drop-ins pass `systemd-analyze verify`.

CI runs this with the README's test command. Postfix and systemd checks skip where those
are not installed, unless CI is set (then they fail)."""

from __future__ import annotations

import hashlib
import json
import logging
import mailbox
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from factories import jpeg, message, message_bytes, png

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
ENTRY_IDS = ("2Q47XF2X1NL0K8Y2F", "2Q47XF3XR9D97Y30S")  # the ids quarantine.md shows

# Paths the docs use that belong to the operator's machine, and where they are here.
PATHS = {"/srv/lists/ncmec.xml": "ncmec.xml", "/srv/lists/iwf-md5.txt": "iwf-md5.txt",
         "/tmp/stand-in.png": "stand-in.png",
         "/root/case-114/2Q47XF2X1NL0K8Y2F.eml": "case-114/2Q47XF2X1NL0K8Y2F.eml",
         "/root/case-114/tip.xml": "case-114/tip.xml", "ID": ENTRY_IDS[0]}


@dataclass(frozen=True)
class Expect:
    """How a documented command is run: the exit codes it may end with, and text its
    output (stdout + stderr) must contain."""

    exits: tuple[int, ...] = (0,)
    output: tuple[str, ...] = ()


RUN: dict[str, Expect] = {
    "hash photo.jpg": Expect(output=("photo.jpg  ", "JPEG  frames 1\n  md5      ",
                                     "\n  pdq      ", "\n  gridhist ")),
    "hash clip.mp4": Expect(output=("clip.mp4  160x120 mp4/h264", "\n  vpdq     ",
                                    " features (pdq,quality,seconds)")),
    "scan --hashes known.hma mail.mbox": Expect(exits=(1,), output=(
        "mail.mbox:2: match (1 image, 0 other files)\n",
        "pdq match in list 'known.hma' at distance 0\n", "2 messages, 1 image, 0 other files, "
        "1 matched, 0 unscannable, 0 errors, ")),
    "hashes import --list ncmec --format ncmec-xml ncmec-hashes.xml": Expect(),
    "hashes import --list te --format te-csv threatexchange.csv": Expect(),
    "hashes import --list iwf-md5 --format md5 iwf-md5.txt": Expect(),
    "hashes add --list own known/*.jpg": Expect(),
    "hashes stats": Expect(output=("ncmec", "iwf-md5")),
    "check-config --config bad.toml": Expect(exits=(2,), output=(
        'mailfilter: bad.toml: [policy] on_match = "drop": expected one of quarantine, '
        "reject, tag\n",)),
    "hashes import --list ncmec ncmec.xml": Expect(),
    "hashes import --list iwf-md5 list.md5": Expect(),
    "hashes import --list hma export.hma": Expect(),
    "hashes add --list own --label case-1234 image.jpg clip.mp4 …": Expect(),
    "hashes export --list ncmec | head -1": Expect(output=('{"list":"ncmec",',)),
    "check-config": Expect(output=("[smtp]",)),
    "check-config # the effective settings, or what is wrong": Expect(output=("[smtp]",)),
    "hashes import --list ncmec --format ncmec-xml /srv/lists/ncmec.xml": Expect(),
    "hashes import --list iwf-md5 --format md5 /srv/lists/iwf-md5.txt": Expect(),
    "hashes add --list test-stand-in --label test /tmp/stand-in.png": Expect(),
    "quarantine list # the entry, with its match in test-stand-in": Expect(output=(
        "2 entries (0 on legal hold",)),
    "quarantine show ID # ID from the list": Expect(output=(f"entry {ENTRY_IDS[0]} on ",)),
    "hashes remove --list test-stand-in": Expect(),
    "quarantine list": Expect(output=("2 entries (",)),
    f"quarantine show {ENTRY_IDS[0]}": Expect(output=(f"entry {ENTRY_IDS[0]} on ",
                                                       "\nMatches (1)\n",
                                                       ", pdq, distance 0, labels ",
                                                       "\nAttachments (", "\nhistory\n")),
    f'quarantine hold {ENTRY_IDS[1]} --reason "LE request 2025-114"': Expect(output=(
        f"{ENTRY_IDS[1]}: on legal hold\n",)),
    f"quarantine delete {ENTRY_IDS[1]} --yes": Expect(exits=(2,), output=(
        f"mailfilter: {ENTRY_IDS[1]} is on legal hold: it cannot be deleted (unhold it "
        "first if the hold has ended)\n",)),
    f"quarantine export {ENTRY_IDS[0]} --to /root/case-114/{ENTRY_IDS[0]}.eml": Expect(
        output=(f" of {ENTRY_IDS[0]} to case-114/{ENTRY_IDS[0]}.eml\n",)),
    "quarantine purge --dry-run": Expect(output=("would purge 0 entries received before",)),
    f"quarantine report {ENTRY_IDS[0]} --format cybertip-xml --to /root/case-114/tip.xml":
        Expect(),
}

_MOVED_TO_A_CLUSTER = ("moving lists to a Redis Cluster needs one: run with these arguments "
                       "against a single Redis and a real cluster by tests/ha/test_layouts.py::"
                       "test_moving_lists_from_a_single_redis_to_a_cluster")

NOT_RUN: dict[str, str] = {
    "hashes export --config old.toml --list ncmec > ncmec.jsonl": _MOVED_TO_A_CLUSTER,
    "hashes import --config cluster.toml --list ncmec ncmec.jsonl": _MOVED_TO_A_CLUSTER,
    "quarantine reindex --config cluster.toml": _MOVED_TO_A_CLUSTER,
    "serve --config config/mailfilter.example.toml":
        "a service on fixed ports (10025, 9125) that runs until stopped; serve is run by "
        "tests/proxy/test_serve.py, and this example config is checked by "
        "test_example_config_of_the_quick_start below",
    "hashes import --list NAME [--format FORMAT] [--replace] [--json] FILE":
        "a synopsis with placeholders, not a command (its options are parsed here)",
    "demo": "the same command is run by tests/deploy/test_demo.py (5 s, loopback only)",
    "demo --dir /tmp/mf-demo >/dev/null": "run by tests/deploy/test_demo.py with --dir",
    "quarantine delete ID # it was a test":
        "typed on a terminal, it asks for confirmation; off a terminal it needs --yes "
        "(the README says so): `quarantine delete ... --yes` is run here",
    f"quarantine release {ENTRY_IDS[0]}":
        "needs a next hop (an SMTP server) and a terminal to confirm; release through "
        "Postfix is run by tests/milter/test_milter_as_documented.py and "
        "tests/quarantine/test_commands.py",
    f"quarantine submit {ENTRY_IDS[0]}":
        "files a report with NCMEC's CyberTipline (credentials, network) after a terminal "
        "confirmation; run against a stand-in NCMEC service by "
        "tests/quarantine/test_submit.py",
}


# --- what the docs show ---------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def blocks() -> list[Block]:
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            out.append(Block(doc, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)))
    return out


_COMMAND = re.compile(r"^(?:sudo )?(?:\S*/)?(?:mailfilter|mf) (.*)$")


def documented_commands() -> list[tuple[str, str]]:
    """(where, the command after `mailfilter`, whitespace normalised) in document order."""
    found = []
    for block in blocks():
        lines = block.text.splitlines()
        i = 0
        while i < len(lines):
            line, start = lines[i].strip(), i
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1] + " " + lines[i].strip()
            i += 1
            if block.lang == "sh":
                candidate = line
            elif line.startswith("$ "):
                candidate = line[2:]
            else:
                continue
            m = _COMMAND.match(candidate)
            if m:
                found.append((f"{block.where}+{start + 1}", " ".join(m.group(1).split())))
    return found


def argv_of(command: str) -> list[str]:
    """The arguments a shell would pass: comments, pipes and redirections cut off."""
    words = shlex.split(command.split(" #", 1)[0], comments=False)
    out = []
    for word in words:
        if word in ("|", ">/dev/null") or word.startswith((">", "2>")):
            break
        out.append(word)
    return out


def parse_check(argv: list[str]) -> None:
    """Resolve the command and parse its options with the real CLI (nothing runs)."""
    from mailfilter.cli import cli

    ctx = cli.make_context("mailfilter", list(argv))
    command: click.Command = cli
    while isinstance(command, click.Group):
        with warnings.catch_warnings():  # (click 8.2 deprecates protected_args, 9 drops it)
            warnings.simplefilter("ignore", DeprecationWarning)
            rest = [*ctx.protected_args, *ctx.args]
        name, sub, args = command.resolve_command(ctx, rest)
        assert sub is not None, f"no command {name!r}"
        try:
            ctx = sub.make_context(name or "", list(args), parent=ctx)
        except click.BadParameter:
            return  # a value check (a file that does not exist here): the syntax parsed
        command = sub


# --- the commands ---------------------------------------------------------------------------


def test_every_documented_command_is_run_or_has_a_reason() -> None:
    commands = {c for _, c in documented_commands()}
    assert len(commands) > 25  # (the extraction works)
    unclassified = sorted(commands - RUN.keys() - NOT_RUN.keys())
    assert not unclassified, f"documented but neither in RUN nor in NOT_RUN: {unclassified}"
    stale = sorted((RUN.keys() | NOT_RUN.keys()) - commands)
    assert not stale, f"no longer documented: {stale}"


@pytest.mark.parametrize("where,command", documented_commands())
def test_documented_command_parses(where: str, command: str) -> None:
    argv = [a for a in argv_of(command) if a != "…"]
    if "[" in command:  # a synopsis: its optional parts are written [--like THIS]
        argv = [a.strip("[]") for a in argv if a.strip("[]") and not a.strip("[]").isupper()]
        argv += ["FILE"]
    try:
        parse_check(argv)
    except click.UsageError as exc:
        pytest.fail(f"{where}: mailfilter {command}: {exc.format_message()}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a settings file and the files the docs name, generated benign."""
    d = tmp_path_factory.mktemp("docs-check")
    photo = jpeg(42)
    (d / "photo.jpg").write_bytes(photo)
    (d / "image.jpg").write_bytes(jpeg(43))
    (d / "stand-in.png").write_bytes(png(7))
    (d / "known").mkdir()
    (d / "known" / "a.jpg").write_bytes(jpeg(44))
    (d / "case-114").mkdir()
    from video_factories import clip
    (d / "clip.mp4").write_bytes(clip("h264.mp4", seconds=1.0, fps=10, width=160,
                                      height=120))
    box = mailbox.mbox(str(d / "mail.mbox"))
    box.add(message_bytes(message(subject="text only")))
    box.add(message_bytes(message(subject="holiday", attachments=[
        ("x.jpg", "image/jpeg", photo)])))
    box.close()
    (d / "bad.toml").write_text('[policy]\non_match = "drop"\n')
    (d / "mailfilter.toml").write_text(f"""
[smtp]
next_hop = "127.0.0.1:9"
[store]
path = "{d / 'store'}"
[quarantine]
path = "{d / 'quarantine'}"
[metrics]
listen = ""
""")
    pdq = json.loads(_mf(d, "hash", "--json", "photo.jpg").stdout)["pdq"]
    (d / "known.hma").write_text(f"pdq {pdq}\n")
    (d / "export.hma").write_text(f"pdq {pdq}\n")
    md5s = "".join(hashlib.md5(bytes([i])).hexdigest() + "\n" for i in range(3))
    (d / "iwf-md5.txt").write_text(md5s)
    (d / "list.md5").write_text(md5s)
    (d / "threatexchange.csv").write_text(
        "indicator,first_descriptor_id,added_on,labels\n"
        f"{pdq},1001,2021-03-04T05:06:07+0000,sample\n")
    ncmec = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<queryResult>\n<images count="1">\n'
        f'<image><id>1</id><member id="7">Example ESP</member><fingerprints><md5>'
        f"{hashlib.md5(b'x').hexdigest()}</md5><pdq>{pdq}</pdq></fingerprints></image>\n"
        "</images>\n</queryResult>\n")
    (d / "ncmec-hashes.xml").write_text(ncmec)
    (d / "ncmec.xml").write_text(ncmec)
    _quarantine_entries(d, photo)
    return d


def _quarantine_entries(d: Path, photo: bytes) -> None:
    """The two entries quarantine.md shows (same ids), as the proxy writes them."""
    from mailfilter.actions.quarantine import QuarantineStore, build_record, id_time
    from mailfilter.actions.records import QuarantineRecord
    from mailfilter.model import Envelope
    from mailfilter.settings import QuarantineSettings

    scanned = json.loads(_mf(d, "scan", "--json", "--hashes", "known.hma", "mail.mbox").stdout
                         .splitlines()[1])
    assert scanned["verdict"] == "match"
    store = QuarantineStore(QuarantineSettings(path=d / "quarantine"))
    raw = message_bytes(message(subject="holiday", attachments=[("beach.jpg", "image/jpeg",
                                                                 photo)]))
    for entry_id in ENTRY_IDS:
        received = id_time(entry_id)
        record = build_record(entry_id=entry_id, received=received, envelope=Envelope(
            "alice@example.org", ("bob@example.net",), client_addr="192.0.2.7"),
            result=None, action="quarantine", reason="match", policy={}, size=len(raw))
        data = {**record.to_json(), "subject": "holiday", "verdict": "match",
                "attachments": scanned["attachments"],
                "matches": [{**m, "mime_path": a["mime_path"]}
                            for a in scanned["attachments"] for m in a["matches"]]}
        store.write(entry_id, raw, QuarantineRecord.from_json(data), received, ())


def _mf_here(cwd: Path, argv: list[str]) -> tuple[int, str]:
    """`mailfilter ARGV` in this process (Click's runner: one import of everything instead
    of one per command); its exit status and what it wrote to stdout and stderr."""
    from click.testing import CliRunner

    from mailfilter.cli import cli

    here = Path.cwd()
    root = logging.getLogger()  # (each command sets up logging: give pytest's back)
    handlers, level = list(root.handlers), root.level
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, argv, env={"USER": "docs-check"}, input="")
    finally:
        os.chdir(here)
        root.handlers[:] = handlers
        root.setLevel(level)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout + result.stderr


def _mf(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailfilter", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL,
                          env={**os.environ, "USER": "docs-check",
                               "MAILFILTER_LOG_LEVEL": "warning"})


def test_documented_commands_run(workdir: Path) -> None:
    """Every command in RUN, in document order (later ones use what earlier ones made: the
    lists imported, the entry held), in one directory; every failure is reported."""
    failures = []
    for where, command in documented_commands():
        if command not in RUN:
            continue
        argv = []
        for arg in argv_of(command):
            arg = PATHS.get(arg, arg)
            if arg == "…":
                continue
            argv += sorted(str(p.relative_to(workdir)) for p in workdir.glob(arg)) \
                if "*" in arg else [arg]
        if "--config" not in argv:
            argv += ["--config", "mailfilter.toml"]
        code, out = _mf_here(workdir, argv)
        expect = RUN[command]
        if code not in expect.exits:
            failures.append(f"{where}: mailfilter {command}: exit {code}\n{out}")
        failures += [f"{where}: mailfilter {command}: {text!r} not in\n{out}"
                     for text in expect.output if text not in out]
    assert not failures, "\n".join(failures)


def test_example_config_of_the_quick_start(workdir: Path) -> None:
    run = _mf(REPO, "check-config", "--config", "config/mailfilter.example.toml")
    assert run.returncode == 0, run.stdout + run.stderr


# --- settings blocks ------------------------------------------------------------------------


@pytest.mark.parametrize("block", [b for b in blocks() if b.lang == "toml"],
                         ids=lambda b: b.where)
def test_toml_block_loads_as_settings(block: Block, tmp_path: Path) -> None:
    from mailfilter.errors import ConfigError
    from mailfilter.settings import load_settings

    config = tmp_path / "mailfilter.toml"
    config.write_text(block.text)
    try:
        load_settings(config)
    except ConfigError as exc:
        pytest.fail(f"{block.where}: {exc}")


# --- Postfix --------------------------------------------------------------------------------

_MASTER_SERVICE = re.compile(r"^\S+\s+(inet|unix|unix-dgram|fifo|pass)\s")
_MAIN_LINE = re.compile(r"^[a-z_][a-z0-9_]*\s*=")


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {tool} is not installed", pytrace=False)
        pytest.skip(f"{tool} not installed")
    return path


def split_postfix(text: str) -> tuple[str, str] | None:
    """(main.cf lines, master.cf lines) of a Postfix block; None when it is not one.
    `-o` lines without their service line get a stand-in smtpd line to hang on."""
    main: list[str] = []
    master: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if _MASTER_SERVICE.match(line):
            current = master
        elif _MAIN_LINE.match(line):
            current = main
        elif line[0].isspace():
            if current is None:
                master.append("smtp      inet  n       -       y       -       -       smtpd")
                current = master
        else:
            return None
        current.append(line)
    if not main and not master:
        return None
    return "\n".join(main) + "\n", "\n".join(master) + "\n"


def postfix_snippets() -> list[tuple[str, str, str]]:
    """(where, main.cf, master.cf) of every Postfix block in the docs and every snippet
    in deploy/postfix."""
    out = []
    for block in blocks():
        if block.lang == "":
            parts = split_postfix(block.text)
            if parts is not None:
                out.append((block.where, *parts))
    for snippet in sorted((REPO / "deploy" / "postfix").glob("*.cf")):
        parts = split_postfix(snippet.read_text())
        assert parts is not None, snippet
        out.append((str(snippet.relative_to(REPO)), *parts))
    return out


def test_postfix_snippets_are_found() -> None:
    names = [w for w, _, _ in postfix_snippets()]
    assert any(n.startswith("docs/milter.md") for n in names)
    assert any(n.startswith("README.md") for n in names)
    assert sum(n.startswith("deploy/postfix/") for n in names) == \
        len(list((REPO / "deploy" / "postfix").glob("*.cf")))


@pytest.mark.parametrize("where,main_cf,master_cf", postfix_snippets(),
                         ids=[w for w, _, _ in postfix_snippets()])
def test_postfix_snippet_passes_postconf(where: str, main_cf: str, master_cf: str,
                                         tmp_path: Path) -> None:
    postconf = _require("postconf")
    (tmp_path / "main.cf").write_text(main_cf)
    (tmp_path / "master.cf").write_text(master_cf)
    for flag in ("-n", "-M"):
        run = subprocess.run([postconf, "-c", str(tmp_path), flag], capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 0 and not run.stderr.strip(), \
            f"{where}: postconf {flag}:\n{run.stderr}\n--- main.cf\n{main_cf}" \
            f"--- master.cf\n{master_cf}"


# --- systemd --------------------------------------------------------------------------------


def test_systemd_units_and_dropins_verify(tmp_path: Path) -> None:
    """Every unit in deploy/systemd, with every drop-in beside it, as systemd loads them."""
    tool = _require("systemd-analyze")
    here = Path(sys.executable).with_name("mailfilter")
    if not here.exists():
        pytest.skip(f"{here} not installed")
    units = sorted(p for p in (REPO / "deploy" / "systemd").iterdir() if p.is_file())
    for unit in units:
        (tmp_path / unit.name).write_text(
            unit.read_text().replace("/opt/mailfilter/bin/mailfilter", str(here)))
    for dropins in (REPO / "deploy" / "systemd").glob("*.d"):
        shutil.copytree(dropins, tmp_path / dropins.name)
    run = subprocess.run([tool, "verify", *(u.name for u in units)], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "SYSTEMD_UNIT_PATH": f"{tmp_path}:"})
    assert run.returncode == 0 and not (run.stdout + run.stderr).strip(), \
        run.stdout + run.stderr



def test_the_parse_check_sees_drift() -> None:
    with pytest.raises(click.UsageError):
        parse_check(["hashes", "import", "--lists", "x", "file"])
    with pytest.raises(click.UsageError):
        parse_check(["quarantine", "relaese", "ID"])
