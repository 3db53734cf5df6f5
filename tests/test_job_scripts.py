"""The long-job scripts of tools/jobs: valid bash, and no shell function run through an external command
(``/usr/bin/time on python ...`` exits 127 at once: the protocol comparison of session 10 and
``search_pays.sh`` both had it, and a background job that dies at once wastes a session's compute)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

JOBS = Path(__file__).resolve().parents[1] / "tools" / "jobs"
SCRIPTS = sorted(JOBS.glob("*.sh"))
FUNCTION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(\)\s*\{", re.MULTILINE)
# an external wrapper and the command word it runs: /usr/bin/time [-f FMT], taskset -c CPUS, nohup, setsid, timeout N
WRAPPED = re.compile(r"(?:/usr/bin/time(?:\s+-f\s+\"[^\"]*\")?|\btaskset\s+-c\s+\S+|\bnohup|\bsetsid|\btimeout\s+\S+)"
                     r"\s+([A-Za-z_][A-Za-z0-9_./-]*)")


def test_there_are_job_scripts():
    assert {p.name for p in SCRIPTS} >= {"common.sh", "campaign_v2.sh", "protocol_study.sh", "search_pays.sh"}


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_job_script_is_valid_bash(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def shell_functions() -> set[str]:
    return {name for script in SCRIPTS for name in FUNCTION.findall(script.read_text())}


def test_no_shell_function_is_run_through_an_external_command():
    functions = shell_functions()
    assert {"pinned", "synth", "row", "on"} <= functions  # the parser sees the scripts' own helpers
    bad = [f"{script.name}:{n}: {line.strip()}" for script in SCRIPTS
           for n, line in enumerate(script.read_text().splitlines(), 1)
           if not line.lstrip().startswith("#")
           for word in WRAPPED.findall(line) if word in functions]
    assert not bad, "a wrapper cannot run a shell function (exit 127):\n" + "\n".join(bad)


def test_the_check_catches_the_session_10_bug():
    line = '/usr/bin/time -f "$name wall %e s, peak RSS %M KB" on python tools/train.py'
    assert WRAPPED.findall(line) == ["on"] and "on" in shell_functions()
