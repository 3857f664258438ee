"""``scripts/test_all_backends.sh`` (what ``.ci/run`` runs): settings that are
not numbers stop it at once, naming the value, before any suite starts; and
the constraints pin the pytest-xdist that spreads the suites over the cores."""

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "test_all_backends.sh")


@pytest.mark.parametrize("name, value, says", [
    ("TEST_WORKERS", "two", "TEST_WORKERS must be a whole number of processes"),
    ("TEST_WORKERS", "0", "TEST_WORKERS must be a whole number of processes"),
    ("EXTRAS_BEFORE_S", "1h", "EXTRAS_BEFORE_S must be whole seconds"),
])
def test_a_setting_that_is_not_a_number_stops_the_script_before_any_suite(name, value, says):
    env = dict(os.environ, **{name: value})
    proc = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert says in proc.stderr and f"'{value}'" in proc.stderr
    assert "===" not in proc.stdout  # (no part started: mypy is the first)


def test_the_test_extra_and_the_constraints_bring_pytest_xdist():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert '"pytest-xdist>=' in f.read()
    for name in ("constraints.txt", "constraints-floor.txt"):
        with open(os.path.join(ROOT, name)) as f:
            assert "pytest-xdist==" in f.read(), name
