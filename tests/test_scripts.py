"""The scripts touch only what they made.

* scripts/install-system-deps.sh never stops a service or kills a process (on a
  user's machine those are their database and their Prometheus), and a package
  install runs under a policy-rc.d that denies service starts, so nothing is
  started either.
* scripts/kafka-jars.sh replaces only a jar directory it made, never what a user
  keeps under the directory they name.

The scripts run with a PATH of stand-ins: real coreutils, and recording stubs for
apt-get, mvn and every command that could stop something (systemctl, service,
pkill, killall, kill). Nothing on this machine is installed, started or stopped.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install-system-deps.sh"
JARS_SCRIPT = SCRIPT.with_name("kafka-jars.sh")
BASH = shutil.which("bash") or "/bin/bash"
REAL = (
    "ls",
    "grep",
    "tee",
    "chmod",
    "rm",
    "sort",
    "env",
    "cat",
    "printf",
    "mktemp",
    "mkdir",
    "mv",
    "touch",
    "find",
)
PRESENT = ("postgres", "java", "mvn", "prometheus", "promtool", "chromium")
STOPPERS = ("systemctl", "service", "pkill", "killall", "kill", "sudo")

APT_GET = """#!{bash}
echo "apt-get $*" >> "{log}"
if [ "$1" = install ]; then
  if [ -x "$HELIOSDB_CDC_POLICY_RC_D" ]; then
    "$HELIOSDB_CDC_POLICY_RC_D" postgresql start; echo "policy-rc.d exit $?" >> "{log}"
  else
    echo "no policy-rc.d" >> "{log}"
  fi
fi
"""


def _exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _sandbox(tmp_path: Path, present: tuple[str, ...]) -> tuple[dict[str, str], Path, Path]:
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "calls.log"
    log.touch()
    for name in REAL:
        real = shutil.which(name)
        if real is not None:
            (bin_ / name).symlink_to(real)
    for name in present:
        _exe(bin_ / name, "#!/bin/sh\nexit 0\n")
    for name in STOPPERS:
        _exe(bin_ / name, f'#!/bin/sh\necho "{name} $*" >> "{log}"\n')
    _exe(bin_ / "id", "#!/bin/sh\necho 0\n")  # as root: no sudo
    _exe(bin_ / "apt-get", APT_GET.format(bash=BASH, log=log))
    policy = tmp_path / "policy-rc.d"
    env = {"PATH": str(bin_), "HOME": str(tmp_path), "HELIOSDB_CDC_POLICY_RC_D": str(policy)}
    return env, log, policy


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BASH, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_nothing_missing_touches_nothing(tmp_path: Path) -> None:
    env, log, policy = _sandbox(tmp_path, PRESENT)
    res = _run(env)
    assert res.returncode == 0, res.stderr
    assert log.read_text() == "", "the script ran a command it should not have"
    assert not policy.exists()


def test_install_denies_service_starts_and_stops_nothing(tmp_path: Path) -> None:
    env, log, policy = _sandbox(tmp_path, tuple(p for p in PRESENT if p != "chromium"))
    res = _run(env)
    assert res.returncode == 0, res.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "apt-get update -qq"
    assert calls[1] == "apt-get install -y -qq --no-install-recommends chromium"
    assert calls[2] == "policy-rc.d exit 101"  # a package's service start is refused
    assert len(calls) == 3, calls  # no systemctl, service, pkill, killall, kill
    assert not policy.exists(), "the policy-rc.d written for the install was left behind"


@pytest.mark.parametrize("content", ["#!/bin/sh\nexit 0\n", "#!/bin/sh\n# the admin's own\nexit 101\n"])
def test_an_existing_policy_rc_d_is_left_alone(tmp_path: Path, content: str) -> None:
    env, log, policy = _sandbox(tmp_path, tuple(p for p in PRESENT if p != "mvn"))
    _exe(policy, content)
    res = _run(env)
    assert res.returncode == 0, res.stderr
    assert policy.read_text() == content
    calls = log.read_text().splitlines()
    assert calls[1] == "apt-get install -y -qq --no-install-recommends maven"
    assert len(calls) == 3, calls
    assert os.access(policy, os.X_OK)


# -- scripts/kafka-jars.sh ---------------------------------------------------------------------
MVN = """#!{bash}
# copies one jar to -DoutputDirectory=..., as dependency:copy-dependencies would
for a in "$@"; do case "$a" in -DoutputDirectory=*) out="${{a#-DoutputDirectory=}}";; esac; done
echo jar > "$out/kafka_2.13.jar"
echo "mvn" >> "{log}"
"""


def _jars_sandbox(tmp_path: Path) -> tuple[dict[str, str], Path]:
    env, log, _ = _sandbox(tmp_path, ("java",))
    _exe(Path(env["PATH"]) / "mvn", MVN.format(bash=BASH, log=log))
    return env, log


def _run_jars(env: dict[str, str], dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BASH, str(JARS_SCRIPT), str(dest)], env=env, capture_output=True, text=True, timeout=60
    )


def test_kafka_jars_fills_its_directory(tmp_path: Path) -> None:
    env, log = _jars_sandbox(tmp_path)
    dest = tmp_path / "kafka"
    (dest / "libs").mkdir(parents=True)
    (dest / "libs" / "old.jar").write_text("a partial download")  # jars only: replaced
    res = _run_jars(env, dest)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == str(dest / "libs")
    assert sorted(p.name for p in (dest / "libs").iterdir()) == [
        ".complete",
        ".heliosdb-cdc-kafka-jars",
        "kafka_2.13.jar",
    ]
    assert log.read_text() == "mvn\n"


def test_kafka_jars_never_removes_what_it_did_not_make(tmp_path: Path) -> None:
    env, log = _jars_sandbox(tmp_path)
    dest = tmp_path / "mine"
    (dest / "libs").mkdir(parents=True)
    (dest / "libs" / "notes.txt").write_text("the user's")
    res = _run_jars(env, dest)
    assert res.returncode == 1
    assert f"{dest / 'libs'} exists and was not made by" in res.stderr
    assert (dest / "libs" / "notes.txt").read_text() == "the user's"
    assert log.read_text() == "", "downloaded although the directory cannot be used"
