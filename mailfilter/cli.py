"""The operator's command line: `mailfilter COMMAND ...` (also `python -m mailfilter`).

Exit codes: 0 success; 1 `scan` found a match; 2 an error (bad config, unreadable file,
a file that failed to hash, a command whose stage is not built yet). Command output goes
to stdout, logs and progress to stderr.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

import click

from mailfilter import __version__
from mailfilter.errors import ConfigError, NotBuiltYet
from mailfilter.logs import setup_logging
from mailfilter.settings import LoadedSettings, effective_toml, load_settings

P = ParamSpec("P")
R = TypeVar("R")

EXIT_OK = 0
EXIT_MATCH = 1
EXIT_ERROR = 2


def _fail(message: str) -> NoReturn:
    click.echo(f"mailfilter: {message}", err=True)
    sys.exit(EXIT_ERROR)


def _handles_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn our own errors into one line on stderr and exit 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, NotBuiltYet) as exc:
            _fail(str(exc))

    return wrapper


config_option = click.option(
    "--config", "-c", "config_path", type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML settings file (default /etc/mailfilter/mailfilter.toml if present, "
    "else built-in defaults). MAILFILTER_SECTION__KEY variables override it.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON lines.")


def _load(config_path: Path | None, service: bool = False) -> LoadedSettings:
    """Settings, and logging set up from them. Only the service logs at the configured
    level by default; one-shot commands log warnings unless --log-level asks for more."""
    loaded = load_settings(config_path)
    ctx = click.get_current_context()
    opts: dict[str, Any] = ctx.find_root().meta
    setup_logging(
        opts.get("log_level") or (loaded.settings.logging.level if service else "warning"),
        opts.get("log_format") or loaded.settings.logging.format,
    )
    return loaded


def _not_built(what: str, issue: str) -> NoReturn:
    raise NotBuiltYet(f"'{what}' is not built yet ({issue}); nothing was done")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mailfilter")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="Log line format (default: [logging] format, text).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default=None, help="Log level (default: [logging] level, info).")
@click.pass_context
def cli(ctx: click.Context, log_format: str | None, log_level: str | None) -> None:
    """mailfilter: fingerprint every image in mail and stop known abusive images."""
    ctx.meta["log_format"] = log_format
    ctx.meta["log_level"] = log_level
    setup_logging(log_level or "warning", "json" if log_format == "json" else "text")


@cli.command("check-config")
@config_option
@_handles_errors
def check_config(config_path: Path | None) -> None:
    """Validate a settings file and print the effective settings."""
    loaded = _load(config_path)
    click.echo(f"# {loaded.source}: valid")
    click.echo(effective_toml(loaded.settings), nl=False)


@cli.command()
@config_option
@_handles_errors
def serve(config_path: Path | None) -> None:
    """Run the SMTP proxy (and the milter listener if configured)."""
    _load(config_path, service=True)
    _not_built("serve", "the SMTP proxy")


@cli.command("hash")
@json_option
@config_option
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@_handles_errors
def hash_command(as_json: bool, config_path: Path | None, files: tuple[Path, ...]) -> None:
    """Fingerprint image files (exact hashes, PDQ, gridhist).

    Exit 0 when every file was fingerprinted, 2 when any could not be read or decoded.
    """
    from mailfilter.frontend.hash_command import fingerprint_files, hash_record, hash_text

    settings = _load(config_path).settings
    failed = False
    for path, outcome in fingerprint_files(files, settings):
        record = hash_record(path, outcome)
        failed = failed or "error" in record
        click.echo(json.dumps(record) if as_json else hash_text(record))
    sys.exit(EXIT_ERROR if failed else EXIT_OK)


@cli.command()
@json_option
@config_option
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@_handles_errors
def scan(as_json: bool, config_path: Path | None, paths: tuple[Path, ...]) -> None:
    """Scan .eml files, directories of them, mbox files and Maildirs.

    Exit 0: nothing matched; 1: a match; 2: an error.
    """
    _load(config_path)
    _not_built("scan", "message extraction")


@cli.group()
def hashes() -> None:
    """Manage hash lists: import, add, stats, export."""


@hashes.command("import")
@config_option
@click.option("--list", "list_name", required=True, help="Name of the list to load into.")
@click.option("--format", "fmt", default=None,
              type=click.Choice(["pdq", "te-csv", "md5", "sha1", "sha256", "hma", "ncmec-xml",
                                 "jsonl"]),
              help="Input format (auto-detected when left out).")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@_handles_errors
def hashes_import(config_path: Path | None, list_name: str, fmt: str | None, file: Path) -> None:
    """Load a hash list file into the store."""
    _load(config_path)
    _not_built("hashes import", "the hash store")


@hashes.command("add")
@config_option
@click.option("--list", "list_name", required=True, help="Name of the list to add to.")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@_handles_errors
def hashes_add(config_path: Path | None, list_name: str, images: tuple[Path, ...]) -> None:
    """Enroll images the operator holds into a list."""
    _load(config_path)
    _not_built("hashes add", "the hash store")


@hashes.command("stats")
@config_option
@json_option
@_handles_errors
def hashes_stats(config_path: Path | None, as_json: bool) -> None:
    """Sizes per list and algorithm."""
    _load(config_path)
    _not_built("hashes stats", "the hash store")


@hashes.command("export")
@config_option
@click.option("--list", "list_name", default=None, help="Only this list.")
@_handles_errors
def hashes_export(config_path: Path | None, list_name: str | None) -> None:
    """Dump lists as JSON lines (the `jsonl` import format)."""
    _load(config_path)
    _not_built("hashes export", "the hash store")


@cli.group()
def quarantine() -> None:
    """Inspect and act on quarantined messages (never shows image content)."""


def _quarantine_command(name: str, takes_id: bool, help_text: str) -> None:
    def body(config_path: Path | None, **_: Any) -> None:
        _load(config_path)
        _not_built(f"quarantine {name}", "quarantine and reports")

    fn: Callable[..., None] = _handles_errors(body)
    if takes_id:
        fn = click.argument("message_id")(fn)
    fn = config_option(fn)
    quarantine.command(name, help=help_text)(fn)


for _name, _takes_id, _help in (
    ("list", False, "List quarantined messages."),
    ("show", True, "Show a quarantined message's metadata and matches."),
    ("release", True, "Deliver a quarantined message to its original recipients."),
    ("delete", True, "Delete a quarantined message."),
    ("purge", False, "Delete entries older than the retention period."),
    ("report", True, "Write a report (json or cybertip-xml) for a quarantined message."),
    ("export", True, "Write the raw quarantined message to a file."),
):
    _quarantine_command(_name, _takes_id, _help)


def main() -> None:
    cli(prog_name="mailfilter")
