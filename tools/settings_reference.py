"""The configuration reference (docs/configuration.md), generated from the settings code.
A tool of the repository, not part of the installed package.

Sections, keys, types, limits and which keys need a restart come from the code
(`mailfilter.settings`, `mailfilter.app.RESTART_KEYS`); the description of each key and
its default as written in TOML come from the comments and values of
config/mailfilter.example.toml, which a test already checks against the code (every key
there, every default equal). So nothing is written twice, and a key added to the code
without a description fails `tests/deploy/test_config_reference.py`.

    python tools/settings_reference.py            # print the reference
    python tools/settings_reference.py --write    # rewrite docs/configuration.md
    python tools/settings_reference.py --check    # exit 1 when the file is out of date
"""

from __future__ import annotations

import argparse
import re
import sys
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import annotated_types
from pydantic import AfterValidator, BaseModel, BeforeValidator
from pydantic.fields import FieldInfo

from mailfilter import settings as s
from mailfilter import signals

__all__ = ["ExampleKey", "UndocumentedSetting", "parse_example", "reference_markdown"]

REPO: Final = Path(__file__).resolve().parents[1]
EXAMPLE: Final = REPO / "config" / "mailfilter.example.toml"
OUTPUT: Final = REPO / "docs" / "configuration.md"

# Defaults computed at start (they depend on the user running mailfilter): described in
# words, since printing what this machine computes would make the file differ by machine.
COMPUTED_DEFAULTS: Final = {
    ("store", "path"): "/var/lib/mailfilter when run as root or when that directory is "
                       "writable (a system service), else $XDG_STATE_HOME/mailfilter "
                       "(~/.local/state/mailfilter)",
    ("quarantine", "path"): "the [store] path default (not its configured value) + "
                            "/quarantine",
}

# The value types of settings.py, by the name of the validator that parses them (looked
# up by name, so a validator renamed in settings.py falls back to the plain type).
_VALIDATOR_TYPES: Final = {
    "_parse_size": "size: `50MB`, `512KiB`, `1GiB` or a number of bytes",
    "_parse_duration": "duration: `30s`, `500ms`, `5m`, `1h`, `1d` or a number of seconds",
    "_parse_count": "count: a whole number, optionally with k/M/G (`100M`)",
    "_check_host_port": "`host:port` or `[IPv6]:port`",
    "_check_optional_host_port": "`host:port`, or empty to turn it off",
    "_check_networks": "list of IP networks (CIDR)",
    "_check_redis_url": "`redis://`, `rediss://` or `unix://` URL, or empty",
    "_check_email": "email address (or empty)",
    "_check_emails": "list of email addresses",
    "_check_webhook_url": "`http://` or `https://` URL, or empty",
    "_check_cybertip_url": "`https://` URL (`http://` only to 127.0.0.1, ::1, localhost)",
    "_check_milter_listen": "`inet:host:port`, `inet:port@host`, `inet6:port@host`, "
                            "`inet:port` (every interface), `unix:/path` or `local:/path`, "
                            "or empty to turn it off",
    "_known_signals": "list of signal types: "
                      + ", ".join(f"`{name}`" for name in signals.NAMES),
}
_VALIDATORS: Final[dict[Callable[..., Any], str]] = {
    func: text for name, text in _VALIDATOR_TYPES.items()
    if (func := getattr(s, name, None)) is not None
}

_KEY_RE: Final = re.compile(r"^(#\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
_SECTION_RE: Final = re.compile(r"^\[([A-Za-z_][A-Za-z0-9_]*)\]\s*$")


class UndocumentedSetting(Exception):
    """A setting of the code is not described in the example file (or not at all)."""


@dataclass
class ExampleKey:
    section: str
    key: str
    value: str  # as written in the example (TOML)
    commented: bool  # shown as `# key = value`: the default is computed at start
    description: str  # the comment block above it (shared by keys written together)
    group: int  # keys under one comment block share a group number


@dataclass
class _Block:
    comment: list[str] = field(default_factory=list)
    group: int = 0
    open: bool = False  # keys may still join this block (no blank line since the last)


def _section_keys(section: str) -> set[str]:
    info = s.Settings.model_fields.get(section)
    model = info.annotation if info is not None else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return set()
    return {f.alias or name for name, f in model.model_fields.items()}


def parse_example(text: str) -> dict[tuple[str, str], ExampleKey]:
    """The documented keys of an example file: each key's value and the comment block
    above it. `# key = value` lines of a real key count as keys (computed defaults);
    other comment lines are description."""
    found: dict[tuple[str, str], ExampleKey] = {}
    section = ""
    known: set[str] = set()
    block = _Block()
    groups = 0
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            block = _Block(group=block.group)  # a blank line ends a block
            continue
        m = _SECTION_RE.match(line)
        if m:
            section, known, block = m.group(1), _section_keys(m.group(1)), _Block()
            continue
        m = _KEY_RE.match(line)
        if section and m and m.group(2) in known:
            if not block.open:
                groups += 1
                block.group, block.open = groups, True
            key = m.group(2)
            found[(section, key)] = ExampleKey(
                section, key, m.group(3), m.group(1) is not None,
                " ".join(block.comment), block.group,
            )
            continue
        if line.startswith("#"):
            if block.open:  # a comment after keys starts the next block
                block = _Block()
            block.comment.append(line.lstrip("#").strip())
    return found


def _type_text(info: FieldInfo) -> str:
    for meta in info.metadata:
        if isinstance(meta, BeforeValidator | AfterValidator) and meta.func in _VALIDATORS:
            return _VALIDATORS[meta.func]
    annotation = info.annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{v}`" for v in typing.get_args(annotation))
    if origin is tuple:
        inner = typing.get_args(annotation)[0]
        if typing.get_origin(inner) is typing.Literal:
            return "list of " + ", ".join(f"`{v}`" for v in typing.get_args(inner))
        return "list of strings"
    names = {bool: "`true` or `false`", int: "integer", float: "number", str: "string",
             Path: "path"}
    text = names.get(annotation, str(annotation)) if isinstance(annotation, type) \
        else str(annotation)
    bounds = []
    for meta in info.metadata:
        if isinstance(meta, annotated_types.Ge):
            bounds.append(f"≥ {meta.ge}")
        elif isinstance(meta, annotated_types.Le):
            bounds.append(f"≤ {meta.le}")
        elif isinstance(meta, annotated_types.MaxLen):
            bounds.append(f"at most {meta.max_length} characters")
    return f"{text} {', '.join(bounds)}" if bounds else text


def _fields() -> Iterator[tuple[str, str, FieldInfo]]:
    for section, info in s.Settings.model_fields.items():
        model = info.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for name, f in model.model_fields.items():
            yield section, f.alias or name, f


def _restart_keys() -> set[tuple[str, str]]:
    from mailfilter.app import RESTART_KEYS  # the service's own list of what SIGHUP skips

    return {(section, key) for section, key in RESTART_KEYS}


def reference_markdown(example_text: str) -> str:
    """docs/configuration.md for the settings code and this example file's text.

    UndocumentedSetting when a key of the code has no description in the example or a
    computed default without a description here."""
    documented = parse_example(example_text)
    restart = _restart_keys()
    problems = []
    for section, key, info in _fields():
        doc = documented.get((section, key))
        if doc is None or not doc.description:
            problems.append(f"[{section}] {key}: no description in the example config")
        if info.default_factory is not None and (section, key) not in COMPUTED_DEFAULTS:
            problems.append(f"[{section}] {key}: computed default not described in "
                            "tools/settings_reference.py COMPUTED_DEFAULTS")
    if problems:
        raise UndocumentedSetting("; ".join(problems))

    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python tools/settings_reference.py --write` from the",
        "     settings code and config/mailfilter.example.toml; do not edit by hand.",
        "     tests/deploy/test_config_reference.py fails when this file is out of date. -->",
        "",
        "mailfilter reads one TOML file: `--config FILE`, else "
        f"`{s.DEFAULT_CONFIG_PATH}` when it exists, else the built-in defaults. "
        "Every key below can also be set from the environment as "
        f"`{s.ENV_PREFIX}SECTION__KEY` (the environment wins over the file); a value there "
        "is read as TOML when it is one (`31`, `true`, `[\"a\", \"b\"]`) and as a plain "
        "string otherwise (`127.0.0.1:10025`, `50MB`). A bad value stops mailfilter at "
        "start with one line naming the file or variable, the key, the value and what was "
        "expected; `mailfilter check-config [--config FILE]` checks a file and prints the "
        "effective settings.",
        "",
        "**SIGHUP** (`systemctl reload mailfilter`) reads the file again: keys marked "
        "*needs a restart* keep their old value until the service is restarted (a warning is "
        "logged); every other key applies to the next message. A file that does not "
        "validate is logged and ignored, and the running settings stay.",
        "",
        "The annotated example with every key: "
        "[config/mailfilter.example.toml](../config/mailfilter.example.toml).",
        "",
    ]
    current = ""
    last_group = -1
    for section, key, info in _fields():
        doc = documented[(section, key)]
        if section != current:
            current, last_group = section, -1
            if out[-1]:
                out.append("")
            out += [f"## [{section}]", ""]
        if doc.commented or info.default_factory is not None:
            default = COMPUTED_DEFAULTS[(section, key)]
        else:
            default = f"`{doc.value}`"
        applies = "needs a restart" if (section, key) in restart else "takes effect on SIGHUP"
        env = f"{s.ENV_PREFIX}{section.upper()}__{key.upper()}"
        if doc.group != last_group and last_group != -1:
            out.append("")
        if doc.group != last_group:
            last_group = doc.group
            shared = [k for k in documented.values()
                      if k.section == section and k.group == doc.group]
            out += [f"### `{'`, `'.join(k.key for k in shared)}`", "", doc.description, ""]
        out.append(f"- `{key}`: {_type_text(info)}; default {default}; `{env}`; {applies}")
    out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/settings_reference.py",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--example", type=Path, default=EXAMPLE)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the output file")
    mode.add_argument("--check", action="store_true",
                      help="exit 1 when the output file differs from what the code says")
    args = parser.parse_args(argv)
    try:
        text = reference_markdown(args.example.read_text(encoding="utf-8"))
    except UndocumentedSetting as exc:
        print(f"mailfilter: {exc}", file=sys.stderr)
        return 1
    if args.write:
        args.output.write_text(text, encoding="utf-8")
        return 0
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run python tools/settings_reference.py "
                  "--write", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
