"""The systemd unit: valid for systemd, hardened, reloadable, and every non-default line explained."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parent.parent / "signfeed.service"


def directives() -> list[tuple[int, str]]:
    lines = UNIT.read_text().splitlines()
    return [(i, line) for i, line in enumerate(lines) if "=" in line and not line.startswith("#")]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    signfeed = Path(sys.executable).parent / "signfeed"
    text = UNIT.read_text().replace("/opt/signfeed/.venv/bin/signfeed", str(signfeed))
    unit = tmp_path / "signfeed.service"
    unit.write_text(text.replace("/opt/signfeed", str(tmp_path)))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stderr) == (0, "")


def test_unit_is_hardened_and_reloads_with_sighup() -> None:
    settings = {line.split("=", 1)[0] for _, line in directives()}
    assert {"ProtectSystem", "ReadWritePaths", "NoNewPrivileges", "User", "Restart", "ExecReload"} <= settings
    assert "ExecReload=/bin/kill -HUP $MAINPID" in UNIT.read_text()


def test_every_directive_in_service_section_has_a_comment_above_it_or_its_group() -> None:
    lines = UNIT.read_text().splitlines()
    section_start = lines.index("[Service]")
    uncommented = []
    for i, line in directives():
        if i < section_start or line.startswith("["):
            continue
        above = lines[section_start:i]
        # A comment directly above, or the line belongs to a commented group of related settings.
        if not any(prev.startswith("#") for prev in above[-4:]):
            uncommented.append(line)
    assert uncommented == []
