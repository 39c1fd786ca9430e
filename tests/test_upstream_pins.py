"""The transport is read against exact versions of python-engineio and
python-socketio: any other installed version, or a changed upstream function
that it copies or overrides, fails here with what to re-read."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from realtime import upstream

ROOT = Path(__file__).resolve().parent.parent


def test_setup_cfg_pins_exactly_the_versions_the_transport_was_read_against() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    requires = [re.sub(r"\[.*?\]", "", line.strip())  # extras aside: redis[hiredis]==X pins redis==X
                for line in config["options"]["install_requires"].splitlines() if line.strip()]
    for dist, version in upstream.PINS.items():
        assert f"{dist}=={version}" in requires, f"setup.cfg must pin {dist}=={version} (realtime/upstream.py PINS)"


def test_installed_upstream_code_is_what_the_transport_was_read_against() -> None:
    problems = upstream.drift()
    assert not problems, (
        "The transport overrides or copies upstream code that is not as it was read. "
        "Follow docs/transport.md (raising a pin) for each:\n  " + "\n  ".join(problems)
    )


def test_a_changed_upstream_function_is_named(monkeypatch) -> None:
    name = next(iter(upstream.FINGERPRINTS))
    monkeypatch.setitem(upstream.FINGERPRINTS, name, "0" * 16)
    assert any(line.startswith(name) for line in upstream.drift())
