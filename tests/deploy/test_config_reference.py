"""docs/configuration.md is generated from the settings code (and the example file's
comments): it must be what the generator makes now, and the generator must refuse a
setting nobody described."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from mailfilter.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from settings_reference import (
    EXAMPLE,
    OUTPUT,
    UndocumentedSetting,
    main,
    parse_example,
    reference_markdown,
)


def test_configuration_reference_is_up_to_date() -> None:
    assert OUTPUT.read_text(encoding="utf-8") == reference_markdown(EXAMPLE.read_text()), (
        "docs/configuration.md is out of date: run "
        "`python tools/settings_reference.py --write`")


def test_every_setting_is_in_the_reference() -> None:
    text = OUTPUT.read_text(encoding="utf-8")
    for section, info in Settings.model_fields.items():
        assert f"## [{section}]" in text
        model = info.annotation
        assert model is not None
        for name, field in model.model_fields.items():
            key = field.alias or name
            assert re.search(rf"^- `{key}`: .*`MAILFILTER_{section.upper()}__{key.upper()}`",
                             text, re.M), f"[{section}] {key} missing"


def test_an_undescribed_setting_fails_the_generator() -> None:
    text = EXAMPLE.read_text()
    stripped = re.sub(r"(?m)^# Prometheus /metrics.*\n", "", text)
    assert stripped != text
    with pytest.raises(UndocumentedSetting, match=r"\[metrics\] listen"):
        reference_markdown(stripped)
    missing = re.sub(r"(?m)^cache_ttl = .*\n", "", text)
    with pytest.raises(UndocumentedSetting, match=r"\[store\] cache_ttl"):
        reference_markdown(missing)


# Keys written directly under another key, without a comment of their own, share that
# key's comment. These are the ones meant that way; a key added under another without a
# comment shows up here and must get its own comment (or be added here if the shared
# comment really describes it).
SHARED_COMMENTS = {
    ("smtp", ("tls_cert", "tls_key")),
    ("smtp", ("next_hop_starttls", "next_hop_verify")),
    ("smtp", ("next_hop_pool_size", "next_hop_idle_time")),
    ("report", ("to", "from")),
    ("report", ("webhook_url", "webhook_secret")),
    ("report", ("reporter_name", "reporter_email")),
    ("report", ("retry_min", "retry_max")),
}


def test_only_intended_keys_share_a_comment() -> None:
    groups: dict[tuple[str, int], list[str]] = {}
    for (section, key), doc in parse_example(EXAMPLE.read_text()).items():
        groups.setdefault((section, doc.group), []).append(key)
    shared = {(section, tuple(keys)) for (section, _), keys in groups.items() if len(keys) > 1}
    assert shared == SHARED_COMMENTS


def test_comment_blocks_describe_the_keys_below_them() -> None:
    keys = parse_example('[smtp]\n# A shared note.\ntls_cert = ""\ntls_key = ""\n\n'
                         '# Alone.\nadd_header = true\n[store]\n# Computed.\n# path = "/x"\n')
    assert keys[("smtp", "tls_cert")].description == "A shared note."
    assert keys[("smtp", "tls_key")].group == keys[("smtp", "tls_cert")].group
    assert keys[("smtp", "add_header")].description == "Alone."
    assert keys[("store", "path")].commented and keys[("store", "path")].value == '"/x"'


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("# old\n")
    assert main(["--check", "--output", str(stale)]) == 1
    assert main(["--write", "--output", str(stale)]) == 0
    assert main(["--check", "--output", str(stale)]) == 0
