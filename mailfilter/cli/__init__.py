"""The operator's command line: `mailfilter COMMAND ...` (also `python -m mailfilter`).

Exit codes: 0 success; 1 `scan` found a match, or `quarantine` found no such entry on
this instance; 2 an error (bad config, unreadable file, a file that failed to hash, a
refused quarantine action). Command output goes
to stdout, logs and progress to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import ClassVar

import click

from mailfilter import __version__
from mailfilter.cli.command_line import (
    EXIT_ERROR,
    EXIT_MATCH,
    EXIT_OK,
    config_option,
    handles_errors,
    json_option,
    load_for_command,
)
from mailfilter.errors import ConfigError
from mailfilter.logs import setup_logging
from mailfilter.matching.formats import FORMATS


class _LazyGroup(click.Group):
    """Command groups of their own modules (`hashes`, `quarantine`, `demo`) are imported
    when they are run or asked for their help: their imports (the store, Redis, the
    quarantine) cost more than half a second, which `mailfilter --help` should not pay.
    Their one-line help is given here so the top-level help needs none of them
    (tests/test_cli.py checks it is theirs)."""

    LAZY: ClassVar[dict[str, tuple[str, str, str]]] = {  # name: module, attribute, help
        "hashes": ("mailfilter.cli.hashes", "hashes",
                   "Manage hash lists: import, add, stats, export, remove."),
        "quarantine": ("mailfilter.cli.quarantine", "quarantine",
                       "Inspect and act on quarantined messages (never shows message or "
                       "image content)."),
        "demo": ("mailfilter.cli.demo", "demo",
                 "Run the whole filter once on this machine: embedded store, a local sink "
                 "as..."),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY:
            import importlib

            module, attr, _help = self.LAZY[cmd_name]
            command = getattr(importlib.import_module(module), attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in self.LAZY:
                rows.append((name, self.LAZY[name][2]))
                continue
            command = super().get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(formatter.width)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=_LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
@handles_errors
def check_config(config_path: Path | None) -> None:
    """Validate a settings file and print the effective settings; every problem on a line
    of its own (exit 2) otherwise, also those `serve` would refuse."""
    from mailfilter.settings import effective_toml, redis_layout, service_problems

    loaded = load_for_command(config_path)
    problems = service_problems(loaded.settings, loaded.source)
    if problems:
        raise ConfigError(*problems)
    click.echo(f"# {loaded.source}: valid")
    if loaded.settings.store.redis_url:
        click.echo(f"# store: redis {redis_layout(loaded.settings.store)}")
    click.echo(effective_toml(loaded.settings), nl=False)


@cli.command()
@config_option
@handles_errors
def serve(config_path: Path | None) -> None:
    """Run the SMTP proxy (and the milter listener if configured)."""
    from mailfilter.app import serve as run_service

    loaded = load_for_command(config_path, service=True)
    opts = click.get_current_context().find_root().meta
    sys.exit(run_service(loaded, config_path, opts.get("log_level"), opts.get("log_format")))


@cli.command("hash")
@json_option
@config_option
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@handles_errors
def hash_command(as_json: bool, config_path: Path | None, files: tuple[Path, ...]) -> None:
    """Fingerprint files: exact hashes of any file, PDQ and gridhist of images, vPDQ of videos.

    Exit 0 when every file was fingerprinted, 2 when any could not be read, or was an image
    or video that could not be decoded.
    """
    from mailfilter.cli.hash import fingerprint_files, hash_record, hash_text

    settings = load_for_command(config_path).settings
    failed = False
    for path, outcome in fingerprint_files(files, settings):
        record = hash_record(path, outcome)
        failed = failed or "error" in record
        click.echo(json.dumps(record) if as_json else hash_text(record))
    sys.exit(EXIT_ERROR if failed else EXIT_OK)


@cli.command()
@json_option
@config_option
@click.option("--hashes", "hash_files", multiple=True,
              type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Match against this list file (any import format) instead of the "
              "configured store; may be given more than once.")
@click.option("--hashes-format", "hashes_format", default=None,
              type=click.Choice(list(FORMATS)),
              help="Format of the --hashes files (auto-detected when left out).")
@click.option("--verbose", "-v", is_flag=True, help="Also print clean messages.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@handles_errors
def scan(as_json: bool, config_path: Path | None, hash_files: tuple[Path, ...],
         hashes_format: str | None, verbose: bool, paths: tuple[Path, ...]) -> None:
    """Scan .eml files, directories of them, mbox files and Maildirs.

    Exit 0: nothing matched; 1: a match; 2: an error (unreadable path, bad settings).
    """
    from mailfilter.cli.scan import load_scan_index, run_scan

    settings = load_for_command(config_path).settings
    index = load_scan_index(settings, hash_files, hashes_format)
    summary = run_scan(paths, settings, index, as_json=as_json, verbose=verbose,
                       out=sys.stdout, err=sys.stderr)
    if as_json:
        click.echo(json.dumps({"summary": summary.as_dict()}), err=True)
    else:
        click.echo(summary.line())
    if summary.errors:
        sys.exit(EXIT_ERROR)
    sys.exit(EXIT_MATCH if summary.matches else EXIT_OK)




def main() -> None:
    cli(prog_name="mailfilter")
