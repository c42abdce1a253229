"""Settings: read once from a TOML file and `MAILFILTER_SECTION__KEY` overrides, validated
into frozen typed values.

A bad value fails at start with one line naming where it came from (file or environment
variable), the key, the bad value and what was expected, e.g.

    /etc/mailfilter/mailfilter.toml: [match] pdq_max_distance = 300: expected a number less
    than or equal to 256
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mailfilter import signals
from mailfilter.cybertip.document import IncidentType
from mailfilter.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/mailfilter/mailfilter.toml")
ENV_PREFIX = "MAILFILTER_"

# --- value types -----------------------------------------------------------------------

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")

_DURATION_UNITS = {
    "ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0,
}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")

_COUNT_SUFFIX = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3}
_COUNT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*$")


def _parse_size(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size such as 50MB, 512KiB or a number of bytes")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("expected a size of 0 bytes or more")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise ValueError("expected a size such as 50MB, 512KiB or a number of bytes")


def _parse_duration(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 500ms, 5m or a number of seconds")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("expected a duration of 0 or more")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m and m.group(2) in _DURATION_UNITS:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError("expected a duration such as 30s, 500ms, 5m or a number of seconds")


def _parse_count(value: object) -> int:
    """Whole numbers that may be written with a k/M/G suffix (pixel counts)."""
    if isinstance(value, bool):
        raise ValueError("expected a whole number such as 100000000 or 100M")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _COUNT_RE.match(value)
        if m:
            return int(float(m.group(1)) * _COUNT_SUFFIX[m.group(2).lower()])
    raise ValueError("expected a whole number such as 100000000 or 100M")


def _check_host_port(value: str) -> str:
    split_host_port(value)  # raises ValueError with the expectation
    return value


def _check_optional_host_port(value: str) -> str:
    return _check_host_port(value) if value else value


def split_host_port(value: str) -> tuple[str, int]:
    """`host:port` or `[v6addr]:port` into its parts; ValueError with the expectation."""
    expected = "expected host:port, e.g. 127.0.0.1:10025 or [::1]:10025"
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^\s:\[\]]+):(\d{1,5})", value.strip())
    if not m:
        raise ValueError(expected)
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        raise ValueError(expected + " (port 1-65535)")
    return host, port


def _check_networks(value: tuple[str, ...]) -> tuple[str, ...]:
    for net in value:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ValueError(f"expected IP networks such as 127.0.0.0/8, got {net!r}") from None
    return value


def _check_redis_url(value: str) -> str:
    if value and not re.match(r"^(redis|rediss|unix)://", value):
        raise ValueError(
            "expected a redis://, rediss:// or unix:// URL, or empty for the local store"
        )
    return value


def _check_email(value: str) -> str:
    if value and not re.fullmatch(r"[^@\s]+@[^@\s]+", value):
        raise ValueError("expected an email address such as abuse@example.org")
    return value


def _check_emails(value: tuple[str, ...]) -> tuple[str, ...]:
    for v in value:
        _check_email(v)
    return value


def _check_webhook_url(value: str) -> str:
    if value and not re.match(r"^https?://[^\s/?#]+", value):
        raise ValueError("expected an http:// or https:// URL, or empty for no webhook")
    return value


@dataclass(frozen=True, slots=True)
class MilterListen:
    """Where the milter listens: a TCP host and port, or a Unix socket path."""

    host: str | None = None
    port: int | None = None
    path: Path | None = None


def parse_milter_listen(value: str) -> MilterListen:
    """`milter.listen` in the spellings milter admins know: ours, `inet:HOST:PORT`, and
    Sendmail's and OpenDKIM's, `inet:PORT@HOST`, `inet6:PORT@HOST`, `inet:PORT` (every
    interface, as in Sendmail: `allowed_clients` still applies), `unix:PATH`, `local:PATH`."""
    kind, _, rest = value.strip().partition(":")
    expected = ("expected inet:host:port, inet:port@host, inet6:port@host, inet:port, "
                f"unix:/path or local:/path, got {value!r}")
    if kind in ("unix", "local"):
        if not rest:
            raise ValueError(expected)
        return MilterListen(path=Path(rest))
    if kind not in ("inet", "inet6"):
        raise ValueError(expected)
    if "@" in rest:  # PORT@HOST
        port_text, _, host = rest.partition("@")
        host = host.strip("[]")
    elif rest.isdigit():  # PORT: every interface
        port_text, host = rest, "::" if kind == "inet6" else "0.0.0.0"
    else:
        try:
            host, port = split_host_port(rest)
        except ValueError:
            raise ValueError(expected) from None
        return MilterListen(host=host, port=port)
    if not (port_text.isdigit() and 0 < int(port_text) < 65536 and host):
        raise ValueError(expected)
    return MilterListen(host=host, port=int(port_text))


def _check_milter_listen(value: str) -> str:
    if value:
        parse_milter_listen(value)  # raises ValueError with the spellings it takes
    return value


Size = Annotated[int, BeforeValidator(_parse_size)]
Duration = Annotated[float, BeforeValidator(_parse_duration)]
Count = Annotated[int, BeforeValidator(_parse_count)]
HostPort = Annotated[str, AfterValidator(_check_host_port)]
OptionalHostPort = Annotated[str, AfterValidator(_check_optional_host_port)]
Networks = Annotated[tuple[str, ...], AfterValidator(_check_networks)]


def default_state_dir() -> Path:
    """/var/lib/mailfilter for a system service (root or a dedicated user with that
    directory); otherwise the user's XDG state directory, so a laptop run needs no setup."""
    system = Path("/var/lib/mailfilter")
    if os.geteuid() == 0 or (system.is_dir() and os.access(system, os.W_OK)):
        return system
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "mailfilter"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


# --- sections ---------------------------------------------------------------------------

# Keys that moved: (old section, old key) -> (new section, new key). The old place is
# still read (the new one wins when both are set) and the loader names it as deprecated.
RENAMED_KEYS: Final[Mapping[tuple[str, str], tuple[str, str]]] = {
    ("smtp", "scan_timeout"): ("scan", "timeout"),
}


class SmtpSettings(_Section):
    listen: OptionalHostPort = "127.0.0.1:10025"  # empty: no SMTP proxy (milter only)
    next_hop: HostPort = "127.0.0.1:10026"
    protocol: Literal["smtp", "lmtp"] = "smtp"
    hostname: str = ""
    max_message_size: Size = 50 * 1000**2
    max_connections: int = Field(default=100, ge=1, le=100_000)
    max_concurrent_messages: int = Field(default=32, ge=1, le=10_000)
    allowed_clients: Networks = ("127.0.0.0/8", "::1/128")
    command_timeout: Duration = 300.0
    next_hop_timeout: Duration = 60.0
    tls_cert: str = ""
    tls_key: str = ""
    next_hop_starttls: Literal["never", "opportunistic", "required"] = "opportunistic"
    next_hop_verify: bool = True
    next_hop_pool_size: int = Field(default=4, ge=0, le=1000)
    next_hop_idle_time: Duration = 30.0
    add_header: bool = True
    shutdown_timeout: Duration = 60.0


class ScanSettings(_Section):
    # The whole scan of one message, in the service and in `mailfilter scan` alike.
    timeout: Duration = 60.0


def _check_host_ports(value: tuple[str, ...]) -> tuple[str, ...]:
    for item in value:
        try:
            split_host_port(item)
        except ValueError as exc:
            raise ValueError(f"{item!r}: {exc}") from None
    return value


class StoreSettings(_Section):
    redis_url: Annotated[str, AfterValidator(_check_redis_url)] = ""
    # PEM CA file a rediss:// server's certificate must chain to; empty: the system's CAs
    redis_ca_file: str = ""
    # Redis Sentinel (redis_connection.py): the sentinels asked for the master of
    # `redis_sentinel_service`; redis_url then gives the master's database, user and
    # password only (its host is ignored).
    redis_sentinels: Annotated[tuple[str, ...], AfterValidator(_check_host_ports)] = ()
    redis_sentinel_service: str = Field(default="", validate_default=True)
    redis_sentinel_password: str = ""
    # Redis Cluster: redis_url names any node; the others are discovered. More nodes to
    # start from when that one is down (a command run, an instance started, meanwhile).
    redis_cluster: bool = Field(default=False, validate_default=True)
    redis_cluster_nodes: Annotated[tuple[str, ...], AfterValidator(_check_host_ports)] = Field(
        default=(), validate_default=True)
    key_prefix: str = "mailfilter"
    path: Path = Field(default_factory=default_state_dir)
    reload_interval: Duration = 5.0
    cache_ttl: Duration = 86400.0

    @field_validator("redis_cluster_nodes", mode="after")
    @classmethod
    def _nodes_of_a_cluster(cls, value: tuple[str, ...], info: ValidationInfo
                            ) -> tuple[str, ...]:
        if value and info.data.get("redis_cluster") is False:
            raise ValueError("expected [] unless redis_cluster = true")
        return value

    # Field validators (not a model validator) so that each error names its key.
    @field_validator("redis_sentinel_service", mode="after")
    @classmethod
    def _service_with_sentinels(cls, value: str, info: ValidationInfo) -> str:
        if "redis_sentinels" not in info.data:
            return value  # the sentinels themselves were refused: one error is enough
        sentinels = info.data["redis_sentinels"]
        if sentinels and not value:
            raise ValueError("expected the name of the master the sentinels monitor "
                             "(sentinel.conf: sentinel monitor NAME ...) when "
                             "redis_sentinels is set")
        if value and not sentinels:
            raise ValueError("set redis_sentinels too (host:port of each sentinel), or "
                             "leave this empty")
        url = info.data.get("redis_url")
        if sentinels and url is not None and not re.match(r"^rediss?://", url):
            raise ValueError("set redis_url to a redis:// or rediss:// URL too: with "
                             "sentinels it gives the master's database, user and password "
                             "(redis://USER:PASSWORD@sentinel/0; its host is ignored)")
        return value

    @field_validator("redis_cluster", mode="after")
    @classmethod
    def _cluster_alone(cls, value: bool, info: ValidationInfo) -> bool:
        if not value:
            return value
        if info.data.get("redis_sentinels"):
            raise ValueError("expected false when redis_sentinels is set: a deployment "
                             "uses either Sentinel or Cluster")
        url = info.data.get("redis_url")
        if url is not None and not re.match(r"^rediss?://", url):
            raise ValueError("expected false unless redis_url is a redis:// or rediss:// "
                             "URL naming a cluster node")
        if url and urlsplit(url).path.strip("/") not in ("", "0"):
            raise ValueError("expected false unless redis_url names database 0 (a cluster "
                             "has no other)")
        return value


def _known_signals(names: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [n for n in names if n not in signals.BY_NAME]
    if unknown:
        raise ValueError(f"unknown algorithm {unknown[0]!r}; known: {', '.join(signals.NAMES)}")
    return names


class MatchSettings(_Section):
    pdq_max_distance: int = Field(default=31, ge=0, le=256)
    pdq_min_quality: int = Field(default=50, ge=0, le=100)
    gridhist_max_distance: float = Field(default=300.0, ge=0.0)  # 0: gridhist off
    # vPDQ: a video matches a listed one when at least this share (percent) of the listed
    # video's frames has a frame of the attachment within pdq_max_distance (padding a
    # listed video with other footage does not hide it) ...
    vpdq_listed_percent: float = Field(default=80.0, gt=0.0, le=100.0)
    # ... or at least this share of the attachment's sampled frames has a listed frame
    # within it (an excerpt of a listed video does not hide it either)
    vpdq_attachment_percent: float = Field(default=80.0, gt=0.0, le=100.0)
    # Signal types to match: any of pdq, gridhist, vpdq, md5, sha1, sha256 (signals.py)
    algorithms: Annotated[tuple[str, ...], AfterValidator(_known_signals)] = signals.NAMES


class ImageSettings(_Section):
    max_pixels: Count = Field(default=100_000_000, ge=1)
    max_bytes: Size = 50 * 1000**2
    max_frames: int = Field(default=64, ge=1, le=10_000)
    deadline: Duration = 10.0
    trim_borders: bool = True
    min_dimension: int = Field(default=50, ge=1)


class VideoSettings(_Section):
    max_bytes: Size = 200 * 1000**2
    # per frame: 4K is 8.3-8.9 M; a decoder keeps up to 16 reference frames, so this also
    # bounds its memory (16 x 9 M x 1.5 bytes: 216 MB)
    max_pixels: Count = Field(default=9_000_000, ge=1)
    frames_per_second: float = Field(default=1.0, gt=0.0, le=60.0)  # sampled on a time grid
    max_frames: int = Field(default=3600, ge=1, le=1_000_000)  # sampled frames per video
    deadline: Duration = 30.0


class ExtractSettings(_Section):
    max_depth: int = Field(default=10, ge=1, le=1000)
    max_parts: int = Field(default=1000, ge=1)
    max_decoded_bytes: Size = 200 * 1000**2
    max_archive_members: int = Field(default=1000, ge=0)
    max_expansion_ratio: float = Field(default=100.0, ge=1.0)
    max_images: int = Field(default=200, ge=1)
    # PDF pages are rendered (PDFium) where images are drawn, to see what a viewer shows:
    # at most this many pages with images per document (0: no rendering), each region at
    # most max_side pixels on its long side, within a pixel total and a deadline per document.
    pdf_render_max_pages: int = Field(default=50, ge=0, le=10_000)
    pdf_render_max_side: int = Field(default=1024, ge=64, le=8192)
    pdf_render_max_pixels: Count = Field(default=50_000_000, ge=1)
    pdf_render_deadline: Duration = 10.0


class WorkerSettings(_Section):
    processes: int = Field(default=0, ge=0, le=256)  # 0: one per CPU core
    memory_limit: Size = 1024**3
    max_tasks_per_worker: int = Field(default=1000, ge=0)  # 0: never recycle
    sandbox: Literal["auto", "require", "off"] = "auto"  # sandbox.py


class PolicySettings(_Section):
    on_match: Literal["quarantine", "reject", "tag"] = "quarantine"
    on_error: Literal["tempfail", "accept"] = "tempfail"
    on_unscannable: Literal["accept", "tag", "quarantine", "tempfail"] = "accept"
    on_ambiguous: Literal["scan-all", "tempfail", "reject", "quarantine"] = "scan-all"


class QuarantineSettings(_Section):
    path: Path = Field(default_factory=lambda: default_state_dir() / "quarantine")
    retention_days: int = Field(default=365, ge=1)
    # This instance's name in records and in the shared quarantine index; empty: host name.
    instance_name: str = Field(default="", max_length=200)


class ReportSettings(_Section):
    to: Annotated[tuple[str, ...], AfterValidator(_check_emails)] = ()
    from_: Annotated[str, AfterValidator(_check_email)] = Field(
        default="mailfilter@localhost", alias="from"
    )
    dir: str = ""
    webhook_url: Annotated[str, AfterValidator(_check_webhook_url)] = ""
    # (validated even when left out: a webhook_url needs it)
    webhook_secret: str = Field(default="", validate_default=True)
    webhook_timeout: Duration = 10.0
    reporter_name: str = ""
    reporter_email: Annotated[str, AfterValidator(_check_email)] = ""
    retry_min: Duration = 30.0
    retry_max: Duration = 3600.0

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @field_validator("webhook_secret", mode="after")
    @classmethod
    def _secret_for_webhook(cls, value: str, info: ValidationInfo) -> str:
        # An unsigned webhook would let anyone who finds the URL post fake reports.
        if info.data.get("webhook_url") and len(value) < 16:
            raise ValueError("expected a shared secret of at least 16 characters when "
                             "webhook_url is set")
        return value


def _check_cybertip_url(value: str) -> str:
    # Basic auth sends the password with every request: in clear text only to this host.
    parts = urlsplit(value)
    if parts.scheme == "https" and parts.hostname:
        return value.rstrip("/")
    if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "::1", "localhost"):
        return value.rstrip("/")
    raise ValueError("expected an https:// URL (http:// only to 127.0.0.1, ::1 or "
                     "localhost)")


class CybertipSettings(_Section):
    """NCMEC's CyberTipline reporting API (issue 19)."""

    url: Annotated[str, AfterValidator(_check_cybertip_url)] = (
        "https://exttest.cybertip.org/ispws")
    username: str = ""
    password_file: str = ""
    timeout: Duration = 60.0
    lists: tuple[str, ...] = ()
    incident_type: IncidentType = "Child Pornography (possession, manufacture, and distribution)"
    reporter_email: Annotated[str, AfterValidator(_check_email)] = ""
    company_template: str = ""
    terms_of_service: str = ""
    file_viewed_by_esp: bool = False
    xsd: str = ""
    auto_submit: bool = False


class MilterSettings(_Section):
    listen: Annotated[str, AfterValidator(_check_milter_listen)] = ""
    default_action: Literal["tempfail", "accept", "reject"] = "tempfail"


class MetricsSettings(_Section):
    listen: OptionalHostPort = "127.0.0.1:9125"


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class Settings(_Section):
    smtp: SmtpSettings = SmtpSettings()
    store: StoreSettings = StoreSettings()
    match: MatchSettings = MatchSettings()
    scan: ScanSettings = ScanSettings()
    images: ImageSettings = ImageSettings()
    video: VideoSettings = VideoSettings()
    extract: ExtractSettings = ExtractSettings()
    workers: WorkerSettings = WorkerSettings()
    policy: PolicySettings = PolicySettings()
    quarantine: QuarantineSettings = QuarantineSettings()
    report: ReportSettings = ReportSettings()
    cybertip: CybertipSettings = CybertipSettings()
    milter: MilterSettings = MilterSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        """Keys that moved are still read from their old place (`deprecated_keys` says
        so); the new place wins when both are given."""
        if not isinstance(data, dict):
            return data
        for (old_section, old_key), (new_section, new_key) in RENAMED_KEYS.items():
            old = data.get(old_section)
            if not isinstance(old, dict) or old_key not in old:
                continue
            value = old[old_key]
            data = {**data, old_section: {k: v for k, v in old.items() if k != old_key}}
            new = data.get(new_section)
            if new is None:
                new = {}
            if isinstance(new, dict) and new_key not in new:
                data[new_section] = {**new, new_key: value}
        return data

    @model_validator(mode="before")
    @classmethod
    def _quarantine_under_the_store(cls, data: Any) -> Any:
        """`store.path` is mailfilter's state directory: the quarantine goes under it
        (`STORE_PATH/quarantine`) unless `quarantine.path` says otherwise."""
        if not isinstance(data, dict):
            return data
        store, quarantine = data.get("store"), data.get("quarantine")
        if not isinstance(store, dict) or "path" not in store:
            return data
        if quarantine is None:
            quarantine = {}
        if isinstance(quarantine, dict) and "path" not in quarantine:
            data = {**data, "quarantine": {**quarantine,
                                           "path": str(Path(str(store["path"])) / "quarantine")}}
        return data


# --- loading ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadedSettings:
    settings: Settings
    source: str  # the file read, or "built-in defaults"
    # One line per deprecated key that was read (logged by the service and the commands).
    deprecated: tuple[str, ...] = ()


def _has_key(data: Mapping[str, Any], where: tuple[str, str]) -> bool:
    table = data.get(where[0])
    return isinstance(table, dict) and where[1] in table


def deprecated_keys(data: Mapping[str, Any], source: str,
                    env_sources: Mapping[tuple[str, ...], str] | None = None) -> list[str]:
    """A line for each key of `data` (the file and environment, before validation) that
    is read from its old place (`RENAMED_KEYS`)."""
    lines = []
    for (old_section, old_key), (new_section, new_key) in RENAMED_KEYS.items():
        if not _has_key(data, (old_section, old_key)):
            continue
        origin = (env_sources or {}).get((old_section, old_key), source)
        if _has_key(data, (new_section, new_key)):
            what = f"ignored: [{new_section}] {new_key} is set too"
        else:
            what = f"read as [{new_section}] {new_key}; rename it"
        lines.append(f"{origin}: [{old_section}] {old_key} is deprecated, {what}")
    return lines


def _env_value(raw: str) -> Any:
    """An environment value is read as a TOML value when it is one (31, true, ["a", "b"]),
    otherwise as a plain string (127.0.0.1:10025, 50MB)."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _describe_expectation(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "")
        return f"expected one of {expected.replace(' or ', ', ')}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return "expected a number " + str(err["msg"]).removeprefix("Input should be ")
    if kind.startswith("int_"):
        return "expected an integer"
    if kind.startswith("float_"):
        return "expected a number"
    if kind.startswith("bool"):
        return "expected true or false"
    if kind.startswith("string"):
        return "expected a string"
    if kind in ("tuple_type", "list_type"):
        return "expected a list"
    if kind == "model_type" or kind == "dict_type":
        return "expected a [section] table"
    return str(err["msg"])


# Values never shown (check-config, error lines): they end up in logs and tickets.
SECRET_KEYS = frozenset({("report", "webhook_secret"),
                         ("store", "redis_sentinel_password")})


def redact_url(url: str) -> str:
    """The URL with its password replaced (in the user part, or a `password=` query
    argument, which redis-py also takes), for logs, `check-config` and `stats`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "?"
    query = re.sub(r"(?i)((?:^|&)password=)[^&]*", r"\1***", parts.query)
    if parts.password is None:
        return url if query == parts.query else url.replace(parts.query, query, 1)
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if port is not None:
        host = f"{host}:{port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, query, ""))


def redis_layout(settings: StoreSettings) -> str:
    """Where the Redis store is, without passwords: for logs, `check-config`, `stats`."""
    url = redact_url(settings.redis_url)
    if settings.redis_sentinels:
        # The URL's host is not used: show only what is (scheme, user, database).
        parts = urlsplit(url)
        user = f"{parts.username}:***@" if parts.password is not None else (
            f"{parts.username}@" if parts.username else "")
        return (f"sentinel service {settings.redis_sentinel_service!r} via "
                f"{','.join(settings.redis_sentinels)} "
                f"({parts.scheme}://{user}MASTER{parts.path})")
    if settings.redis_cluster:
        return f"cluster via {','.join([url, *settings.redis_cluster_nodes])}"
    return url


def url_without_credentials(url: str) -> str:
    """Scheme, host, port and path only: a webhook may carry its token in any query
    argument, so no user, password or query is shown."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "?"
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


def redact(section: str, key: str, value: Any) -> Any:
    """A setting's value as it may be shown: secrets as ***, credentials in URLs hidden."""
    if not isinstance(value, str) or not value:
        return value
    if (section, key) in SECRET_KEYS:
        return "***"
    if (section, key) == ("store", "redis_url"):
        return redact_url(value)
    if (section, key) == ("report", "webhook_url"):
        return url_without_credentials(value)
    return value


def _format_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{...}"
    return _toml_value(value)


def _error_lines(
    exc: ValidationError, source: str, env_sources: Mapping[tuple[str, ...], str],
    moved: Mapping[tuple[str, ...], tuple[str, str]] | None = None,
) -> list[str]:
    """One line per problem, in the order of the file's sections. `moved`: new place ->
    the old place its value was read from (the line names the key as written)."""
    return [_error_line(err, source, env_sources, moved or {}) for err in exc.errors()]


def _error_line(
    err: Any, source: str, env_sources: Mapping[tuple[str, ...], str],
    moved: Mapping[tuple[str, ...], tuple[str, str]],
) -> str:
    loc = tuple(str(p) for p in err["loc"] if not isinstance(p, int))
    if loc[:2] in moved:
        loc = (*moved[loc[:2]], *loc[2:])
    origin = env_sources.get(loc[:2], source)
    if len(loc) >= 2:
        where = f"[{loc[0]}] {loc[1]}"
    elif loc and err["type"] == "extra_forbidden":
        return f"{origin}: [{loc[0]}]: unknown section"
    elif loc:
        where = f"[{loc[0]}]"
    else:
        where = "(top level)"
    shown = redact(loc[0], loc[1], err.get("input")) if len(loc) >= 2 else err.get("input")
    return f"{origin}: {where} = {_format_value(shown)}: {_describe_expectation(err)}"


def env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX):].partition("__")
        out[(section.lower(), key.lower())] = _env_value(raw)
    return out


def load_settings(
    path: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> LoadedSettings:
    """Read and validate settings; raise ConfigError with one line on any problem.

    `path` None means the default file if it exists, else the built-in defaults.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{source}: no such file") from None
        except PermissionError:
            raise ConfigError(f"{source}: permission denied") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    else:
        source = "built-in defaults"

    env_sources: dict[tuple[str, ...], str] = {}
    for (section, key), value in env_overrides(environ).items():
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{section}] is not a table")
        table[key] = value
        env_sources[(section, key)] = f"environment {ENV_PREFIX}{section.upper()}__{key.upper()}"

    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        moved: dict[tuple[str, ...], tuple[str, str]] = {
            new: old for old, new in RENAMED_KEYS.items()
            if _has_key(data, old) and not _has_key(data, new)}
        raise ConfigError(*_error_lines(exc, source, env_sources, moved)) from None
    return LoadedSettings(settings=settings, source=source,
                          deprecated=tuple(deprecated_keys(data, source, env_sources)))


def service_problems(settings: Settings, source: str) -> list[str]:
    """What `serve` refuses in settings that are each valid on their own (so that
    `check-config` says so too)."""
    problems = []
    if not settings.smtp.listen and not settings.milter.listen:
        problems.append(f"{source}: [smtp] listen and [milter] listen are both empty: "
                        "nothing to serve")
    return problems


def effective_toml(settings: Settings) -> str:
    """The settings as a TOML document, every key shown (what `check-config` prints), with
    secrets redacted (`redact`)."""
    lines: list[str] = []
    dumped = settings.model_dump(by_alias=True, mode="json")
    for section, values in dumped.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(redact(section, key, value))}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
