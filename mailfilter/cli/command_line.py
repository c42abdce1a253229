"""What every `mailfilter` subcommand shares: options, settings loading, exit codes and the
one-line error report that replaces a traceback."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

import click

from mailfilter.errors import ConfigError, ListFormatError, TemporaryFailure
from mailfilter.logs import setup_logging

if TYPE_CHECKING:  # (settings import pydantic: not needed to print --help)
    from mailfilter.settings import LoadedSettings

P = ParamSpec("P")
R = TypeVar("R")

EXIT_OK = 0
EXIT_MATCH = 1
EXIT_ERROR = 2

config_option = click.option(
    "--config", "-c", "config_path", type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML settings file (default /etc/mailfilter/mailfilter.toml if present, "
    "else built-in defaults). MAILFILTER_SECTION__KEY variables override it.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON.")


def counted(n: int, noun: str, plural: str = "") -> str:
    """`1 message`, `2 messages`; `plural` when it is not noun + s (entry, entries)."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def rate_text(per_second: float) -> str:
    """A rate for people: whole numbers from 10 up, two significant digits below (a short
    run is 0.38/s, not 0/s)."""
    return f"{per_second:.0f}" if per_second >= 10 else f"{per_second:.2g}"


def fail(message: str) -> NoReturn:
    """Each line of `message` on stderr as `mailfilter: LINE`, then exit 2."""
    for line in message.splitlines() or [""]:
        click.echo(f"mailfilter: {line}", err=True)
    sys.exit(EXIT_ERROR)


def handles_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Bad settings or input files, an unreachable store, unreadable files: one line per
    problem on stderr and exit 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, ListFormatError) as exc:
            fail(str(exc))
        except TemporaryFailure as exc:
            reason = exc.reason.replace("-", " ")  # store-unavailable -> store unavailable
            fail(f"{reason}: {exc.detail}" if exc.detail else reason)
        except OSError as exc:
            name = f"{exc.filename}: " if exc.filename else ""
            fail(f"{name}{exc.strerror or exc}")

    return wrapper


def load_for_command(config_path: Path | None, service: bool = False) -> LoadedSettings:
    """Settings, and logging set up from them. Only the service logs at the configured
    level by default; one-shot commands log warnings unless --log-level asks for more."""
    from mailfilter.settings import load_settings

    loaded = load_settings(config_path)
    opts: dict[str, Any] = click.get_current_context().find_root().meta
    setup_logging(
        opts.get("log_level") or (loaded.settings.logging.level if service else "warning"),
        opts.get("log_format") or loaded.settings.logging.format,
    )
    for line in loaded.deprecated:
        logging.getLogger("mailfilter.settings").warning(line)
    return loaded
