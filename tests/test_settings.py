from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from mailfilter.errors import ConfigError
from mailfilter.settings import Settings, effective_toml, load_settings, split_host_port

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "mailfilter.example.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mf.toml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ or {})
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_need_no_file() -> None:
    loaded = load_settings(None, {})
    assert loaded.settings.smtp.listen == "127.0.0.1:10025"
    assert loaded.settings.store.redis_url == ""
    assert loaded.settings.match.pdq_max_distance == 31


def test_example_file_is_valid_and_matches_defaults() -> None:
    loaded = load_settings(EXAMPLE, {})
    assert loaded.source == str(EXAMPLE)
    # The example documents the defaults; it must not silently change them.
    assert loaded.settings == load_settings(None, {}).settings


def test_example_file_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    for section, model in Settings.model_fields.items():
        assert f"[{section}]" in text, f"[{section}] missing from the example config"
        sub = model.annotation
        assert sub is not None
        for name, field in sub.model_fields.items():
            key = field.alias or name
            assert re.search(rf"^#? ?{key} = ", text, re.M), f"[{section}] {key} undocumented"


def test_wrong_type_names_file_key_value_and_expectation(tmp_path: Path) -> None:
    message = _error(tmp_path, '[match]\npdq_max_distance = "many"\n')
    where = tmp_path / "mf.toml"
    assert message == f'{where}: [match] pdq_max_distance = "many": expected an integer'


def test_out_of_range(tmp_path: Path) -> None:
    message = _error(tmp_path, "[match]\npdq_max_distance = 300\n")
    assert "[match] pdq_max_distance = 300" in message
    assert "256" in message


def test_unknown_key(tmp_path: Path) -> None:
    message = _error(tmp_path, '[smtp]\nlisten = "127.0.0.1:25"\nlisen = "x"\n')
    assert message.endswith('[smtp] lisen = "x": unknown key')


def test_unknown_section(tmp_path: Path) -> None:
    assert _error(tmp_path, "[smpt]\nlisten = 1\n").endswith("[smpt]: unknown section")


def test_unknown_enumeration_value(tmp_path: Path) -> None:
    message = _error(tmp_path, '[policy]\non_match = "drop"\n')
    assert message.endswith('[policy] on_match = "drop": expected one of quarantine, reject, tag')


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[smtp]\nlisten = "localhost"\n', "expected host:port"),
        ('[smtp]\nnext_hop = "127.0.0.1:70000"\n', "port 1-65535"),
        ('[images]\nmax_bytes = "12XB"\n', "expected a size"),
        ('[smtp]\ncommand_timeout = "soon"\n', "expected a duration"),
        ('[smtp]\nallowed_clients = ["10.0.0.0/33"]\n', "expected IP networks"),
        ('[store]\nredis_url = "http://x"\n', "redis://"),
        ('[report]\nto = ["nobody"]\n', "expected an email address"),
        ('[milter]\nlisten = "127.0.0.1:8891"\n', "inet:port@host"),
        ("[smtp]\nadd_header = 3\n", "expected true or false"),
    ],
)
def test_bad_values(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in _error(tmp_path, text)


def test_units() -> None:
    s = load_settings(None, {
        "MAILFILTER_IMAGES__MAX_BYTES": "2MiB",
        "MAILFILTER_SMTP__COMMAND_TIMEOUT": "500ms",
        "MAILFILTER_IMAGES__MAX_PIXELS": "40M",
        "MAILFILTER_STORE__CACHE_TTL": "2h",
    }).settings
    assert s.images.max_bytes == 2 * 1024 * 1024
    assert s.smtp.command_timeout == pytest.approx(0.5)
    assert s.images.max_pixels == 40_000_000
    assert s.store.cache_ttl == 7200


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[match]\npdq_max_distance = 20\n")
    env = {
        "MAILFILTER_MATCH__PDQ_MAX_DISTANCE": "25",
        "MAILFILTER_REPORT__TO": '["a@example.org", "b@example.org"]',
        "MAILFILTER_SMTP__NEXT_HOP": "[::1]:2525",
        "UNRELATED": "x",
    }
    s = load_settings(path, env).settings
    assert s.match.pdq_max_distance == 25
    assert s.report.to == ("a@example.org", "b@example.org")
    assert split_host_port(s.smtp.next_hop) == ("::1", 2525)


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    message = _error(tmp_path, "", {"MAILFILTER_POLICY__ON_ERROR": "panic"})
    assert message.startswith("environment MAILFILTER_POLICY__ON_ERROR: [policy] on_error")


def test_unknown_environment_key_is_refused(tmp_path: Path) -> None:
    message = _error(tmp_path, "", {"MAILFILTER_SMTP__LISTN": "127.0.0.1:1"})
    assert message.startswith("environment MAILFILTER_SMTP__LISTN") and "unknown key" in message


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.toml", {})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(_write(tmp_path, "[smtp\n"), {})


def test_settings_are_frozen() -> None:
    s = load_settings(None, {}).settings
    with pytest.raises(ValueError):
        s.smtp.listen = "0.0.0.0:25"  # type: ignore[misc]


def test_effective_toml_round_trips() -> None:
    s = load_settings(EXAMPLE, {}).settings
    again = Settings.model_validate(tomllib.loads(effective_toml(s)))
    assert again == s


@pytest.mark.parametrize(("value", "host", "port", "path"), [
    ("inet:127.0.0.1:8891", "127.0.0.1", 8891, None),
    ("inet:8891@127.0.0.1", "127.0.0.1", 8891, None),
    ("inet6:8891@::1", "::1", 8891, None),
    ("inet6:8891@[::1]", "::1", 8891, None),
    ("inet:8891", "0.0.0.0", 8891, None),
    ("inet6:8891", "::", 8891, None),
    ("unix:/run/m.sock", None, None, "/run/m.sock"),
    ("local:/run/m.sock", None, None, "/run/m.sock"),
])
def test_milter_listen_spellings(value: str, host: str | None, port: int | None,
                                 path: str | None) -> None:
    from mailfilter.settings import parse_milter_listen

    where = parse_milter_listen(value)
    assert (where.host, where.port, str(where.path) if where.path else None) == (host, port,
                                                                                 path)
    assert Settings.model_validate({"milter": {"listen": value}}).milter.listen == value


@pytest.mark.parametrize("value", ["tcp:8891", "inet:", "inet:99999@127.0.0.1", "inet:x@h",
                                   "unix:", "inet:8891@", "127.0.0.1:8891"])
def test_milter_listen_refused_with_the_spellings(value: str) -> None:
    with pytest.raises(ValueError, match="inet:port@host"):
        Settings.model_validate({"milter": {"listen": value}})


def test_the_quarantine_follows_the_state_directory(tmp_path: Path) -> None:
    """`store.path` moves the quarantine too unless `quarantine.path` is set (issue 18,
    item 6); the environment counts as the file does."""
    config = tmp_path / "mf.toml"
    config.write_text(f'[store]\npath = "{tmp_path / "state"}"\n')
    assert load_settings(config, {}).settings.quarantine.path == tmp_path / "state" / "quarantine"
    env = {"MAILFILTER_STORE__PATH": str(tmp_path / "other")}
    assert load_settings(None, env).settings.quarantine.path == tmp_path / "other" / "quarantine"
    config.write_text(f'[store]\npath = "{tmp_path / "state"}"\n[quarantine]\npath = "/q"\n')
    assert load_settings(config, {}).settings.quarantine.path == Path("/q")


# --- keys that moved ----------------------------------------------------------------------


def test_scan_deadline_read_from_its_deprecated_place(tmp_path: Path) -> None:
    """`[smtp] scan_timeout` (before the deadline became `[scan] timeout`) is still read,
    and named as deprecated; from the environment too."""
    loaded = load_settings(_write(tmp_path, '[smtp]\nscan_timeout = "5s"\n'), {})
    assert loaded.settings.scan.timeout == 5.0
    assert loaded.deprecated == (
        f"{tmp_path / 'mf.toml'}: [smtp] scan_timeout is deprecated, read as [scan] "
        "timeout; rename it",)
    assert "scan_timeout" not in effective_toml(loaded.settings)
    assert "[scan]\ntimeout = 5.0\n" in effective_toml(loaded.settings)
    env = load_settings(None, {"MAILFILTER_SMTP__SCAN_TIMEOUT": "7s"})
    assert env.settings.scan.timeout == 7.0
    assert env.deprecated[0].startswith("environment MAILFILTER_SMTP__SCAN_TIMEOUT: ")


def test_scan_deadline_new_place_wins(tmp_path: Path) -> None:
    text = '[smtp]\nscan_timeout = "5s"\n[scan]\ntimeout = "9s"\n'
    loaded = load_settings(_write(tmp_path, text), {})
    assert loaded.settings.scan.timeout == 9.0
    assert loaded.deprecated[0].endswith(
        "[smtp] scan_timeout is deprecated, ignored: [scan] timeout is set too")
    plain = load_settings(_write(tmp_path, '[scan]\ntimeout = "9s"\n'), {})
    assert (plain.settings.scan.timeout, plain.deprecated) == (9.0, ())
    assert Settings.model_validate({"smtp": {"scan_timeout": 3}}).scan.timeout == 3.0


def test_a_bad_deprecated_value_is_refused(tmp_path: Path) -> None:
    assert _error(tmp_path, '[smtp]\nscan_timeout = "soon"\n').endswith(
        '[smtp] scan_timeout = "soon": expected a duration such as 30s, 500ms, 5m or a number '
        "of seconds")


def test_commands_warn_about_deprecated_keys(tmp_path: Path) -> None:
    """`mailfilter check-config` (as every command and the service) logs a deprecated key
    it read; the effective settings show it in its new place."""
    import subprocess
    import sys

    path = _write(tmp_path, '[smtp]\nscan_timeout = "5s"\n')
    run = subprocess.run([sys.executable, "-m", "mailfilter", "check-config", "--config",
                          str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "[smtp] scan_timeout is deprecated, read as [scan] timeout" in run.stderr
    assert "[scan]\ntimeout = 5.0\n" in run.stdout


@pytest.mark.parametrize(
    ("store", "expected"),
    [
        ('redis_url = "redis://x/0"\nredis_sentinels = ["s1:26379"]\n',
         "[store] redis_sentinel_service = \"\": expected the name of the master"),
        ('redis_url = "redis://x/0"\nredis_sentinel_service = "m"\n',
         "[store] redis_sentinel_service = \"m\": set redis_sentinels too"),
        ('redis_sentinels = ["s1:26379"]\nredis_sentinel_service = "m"\n',
         "set redis_url to a redis:// or rediss:// URL too"),
        ('redis_url = "redis://x/0"\nredis_sentinels = ["s1"]\nredis_sentinel_service = "m"\n',
         "[store] redis_sentinels = [\"s1\"]: 's1': expected host:port"),
        ('redis_url = "redis://x/0"\nredis_sentinels = ["s1:26379"]\n'
         'redis_sentinel_service = "m"\nredis_cluster = true\n',
         "[store] redis_cluster = true: expected false when redis_sentinels is set"),
        ('redis_cluster = true\n', "expected false unless redis_url is a redis://"),
        ('redis_url = "unix:///run/redis.sock"\nredis_cluster = true\n',
         "expected false unless redis_url is a redis://"),
        ('redis_url = "redis://node:7000/3"\nredis_cluster = true\n', "names database 0"),
        ('redis_url = "redis://node:7000/0"\nredis_cluster_nodes = ["n2:7000"]\n',
         "[store] redis_cluster_nodes = [\"n2:7000\"]: expected [] unless redis_cluster = true"),
    ],
)
def test_redis_layout_combinations_refused(tmp_path: Path, store: str, expected: str) -> None:
    assert expected in _error(tmp_path, "[store]\n" + store)


def test_redis_layouts_shown_without_passwords(tmp_path: Path) -> None:
    from mailfilter.settings import redis_layout

    sentinel = load_settings(_write(tmp_path, (
        '[store]\nredis_url = "rediss://app:s3cret@ignored:6380/2"\n'
        'redis_sentinels = ["10.0.0.1:26379", "[::1]:26380"]\n'
        'redis_sentinel_service = "mf"\nredis_sentinel_password = "t0ps3cret"\n')), {})
    store = sentinel.settings.store
    assert redis_layout(store) == ("sentinel service 'mf' via 10.0.0.1:26379,[::1]:26380 "
                                   "(rediss://app:***@MASTER/2)")
    shown = effective_toml(sentinel.settings)
    assert 'redis_sentinel_password = "***"' in shown
    assert "s3cret" not in shown and "t0ps3cret" not in shown
    cluster = load_settings(None, {"MAILFILTER_STORE__REDIS_URL": "redis://u:pw@n1:7000",
                                   "MAILFILTER_STORE__REDIS_CLUSTER": "true"}).settings.store
    assert cluster.redis_cluster and redis_layout(cluster) == "cluster via redis://u:***@n1:7000"
