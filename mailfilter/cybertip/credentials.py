"""The CyberTipline password: read from `[cybertip] password_file` each time it is used
(so a changed password needs no reload, and it never sits in the settings that
`check-config` prints), and only from a file no one but its owner can read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mailfilter.cybertip.client import CybertipClient
from mailfilter.settings import Settings

__all__ = ["CredentialsError", "client_of", "read_password"]


class CredentialsError(Exception):
    """The password file is missing, unreadable, readable by others or empty."""


def read_password(path: Path) -> str:
    """The first line of `path`, without its line break. Refused when the file is not a
    regular file owned by the user reading it (or root), or when its group or others
    have any permission on it: the password files reports in mailfilter's name."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise CredentialsError(f"{path}: cannot read the password file: "
                               f"{exc.strerror}") from None
    try:
        info = os.fstat(fd)  # of the file opened, not of whatever the path names now
        if not stat.S_ISREG(info.st_mode):
            raise CredentialsError(f"{path}: the password file is not a regular file")
        if info.st_uid not in (os.geteuid(), 0):
            raise CredentialsError(f"{path}: the password file belongs to uid "
                                   f"{info.st_uid}, not to the user mailfilter runs as")
        if info.st_mode & 0o077:
            raise CredentialsError(
                f"{path}: the password file has mode {stat.S_IMODE(info.st_mode):o}: "
                "others than its owner may read it (chmod 600)")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            text = fh.read(4096).decode("utf-8", "strict")
    except UnicodeDecodeError:
        raise CredentialsError(f"{path}: the password file is not UTF-8") from None
    finally:
        os.close(fd)
    password = text.splitlines()[0] if text else ""
    if not password:
        raise CredentialsError(f"{path}: the password file is empty")
    return password


def client_of(settings: Settings) -> CybertipClient:
    """The client for `[cybertip]`, with the password read from its file now."""
    c = settings.cybertip
    if not c.username or not c.password_file:
        raise CredentialsError("[cybertip] username and password_file are needed")
    return CybertipClient(c.url, c.username, read_password(Path(c.password_file)),
                          timeout=c.timeout)
