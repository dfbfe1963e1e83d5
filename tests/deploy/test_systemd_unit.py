"""deploy/systemd/stream-proxy.service, checked by systemd's own tools where they are
installed: `systemd-analyze verify` (every key known and well-formed, the command
there) and `systemd-analyze security --offline` (the sandbox it promises)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import ServerConfig
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "stream-proxy.service"
SHIPPED_COMMAND = "/opt/stream-proxy/.venv/bin/stream-proxy"
# systemd's exposure score, 0-100 (shown as 0.0-10.0; "OK" is below 2.0 shown).
EXPOSURE_LIMIT = 20


def _analyze() -> str:
    found = shutil.which("systemd-analyze")
    # The issue asks for this check where systemd is available; CI installs it.
    require(found is not None, "systemd-analyze is not installed")
    assert found is not None
    return found


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    """The shipped unit, its ExecStart pointed at this venv's stream-proxy (verify
    wants the command to exist); nothing else changed."""
    command = tmp_path / "stream-proxy"
    command.symlink_to(Path(sys.executable).parent / "stream-proxy")
    text = UNIT.read_text()
    assert SHIPPED_COMMAND in text
    copy = tmp_path / "stream-proxy.service"
    copy.write_text(text.replace(SHIPPED_COMMAND, str(command)))
    return copy


def test_systemd_analyze_verify_accepts_the_unit(unit: Path) -> None:
    result = subprocess.run([_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values too, warning about them: it must say nothing.
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_the_unit_is_sandboxed(unit: Path) -> None:
    result = subprocess.run(
        [_analyze(), "security", "--offline=true", f"--threshold={EXPOSURE_LIMIT}", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    settings = dict(re.findall(r"^(\w+)=(.*)$", UNIT.read_text(), re.MULTILINE))
    assert settings["DynamicUser"] == "yes" and settings["ProtectSystem"] == "strict"
    assert settings["NoNewPrivileges"] == "yes" and settings["CapabilityBoundingSet"] == ""
    assert "--workers" in settings["ExecStart"] and settings["KillSignal"] == "SIGTERM"
    # Long enough for the default drain: server.drain_delay + server.shutdown_timeout.
    assert int(settings["TimeoutStopSec"]) > ServerConfig.drain_delay + ServerConfig.shutdown_timeout
