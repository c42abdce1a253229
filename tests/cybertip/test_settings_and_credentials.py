"""`[cybertip]` settings and the password file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailfilter.cybertip.credentials import CredentialsError, read_password
from mailfilter.errors import ConfigError
from mailfilter.settings import Settings, load_settings


def test_defaults() -> None:
    s = Settings().cybertip
    assert s.url == "https://exttest.cybertip.org/ispws"  # the test environment
    assert s.incident_type == "Child Pornography (possession, manufacture, and distribution)"
    assert (s.file_viewed_by_esp, s.auto_submit, s.lists, s.xsd) == (False, False, (), "")


@pytest.mark.parametrize(("text", "expected"), [
    ('url = "http://report.example.org/ispws"', "expected an https:// URL"),
    ('url = "ftp://x"', "expected an https:// URL"),
    ('incident_type = "Spam"', "expected one of Child Pornography"),
    ('reporter_email = "nobody"', "expected an email address"),
    ('timeout = "soon"', "expected a duration"),
])
def test_bad_values(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "mf.toml"
    config.write_text(f"[cybertip]\n{text}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config, {})
    assert f"[cybertip] {text.split(' =')[0]}" in str(info.value)
    assert expected in str(info.value)


def test_local_http_and_production() -> None:
    assert Settings.model_validate(
        {"cybertip": {"url": "http://127.0.0.1:8080/ispws/"}}).cybertip.url == (
        "http://127.0.0.1:8080/ispws")
    env = {"MAILFILTER_CYBERTIP__URL": "https://report.cybertip.org/ispws",
           "MAILFILTER_CYBERTIP__LISTS": '["ncmec"]'}
    s = load_settings(None, env).settings.cybertip
    assert (s.url, s.lists) == ("https://report.cybertip.org/ispws", ("ncmec",))


def test_the_password_file(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text("pä ss\nignored\n")
    path.chmod(0o600)
    assert read_password(path) == "pä ss"
    path.chmod(0o640)
    with pytest.raises(CredentialsError, match="mode 640"):
        read_password(path)
    path.chmod(0o604)
    with pytest.raises(CredentialsError, match="chmod 600"):
        read_password(path)
    path.chmod(0o400)
    assert read_password(path) == "pä ss"
    with pytest.raises(CredentialsError, match="cannot read"):
        read_password(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.write_text("")
    empty.chmod(0o600)
    with pytest.raises(CredentialsError, match="empty"):
        read_password(empty)
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(CredentialsError, match="cannot read"):
        read_password(link)  # a link could point anywhere
    with pytest.raises(CredentialsError, match="not a regular file"):
        read_password(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file away")
def test_a_password_file_of_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text("x\n")
    path.chmod(0o600)
    os.chown(path, 12345, -1)
    with pytest.raises(CredentialsError, match="uid 12345"):
        read_password(path)
