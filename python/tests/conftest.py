"""Shared fixtures: the repository's example environments, scratch environments, and a check
that nothing a test started outlives it."""

import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ECHO = os.path.join(REPO, "environments", "echo")
COUNTER = os.path.join(REPO, "environments", "counter")
BASE_IMAGE = os.environ.get("RAYFINE_BASE_IMAGE", "rayfine-test/python:bookworm")


def docker_ok():
    try:
        return subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture
def make_env(tmp_path):
    """Writes an environment folder with this env.py and returns its path."""

    def make(source, name="scratch"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "env.py").write_text(textwrap.dedent(source))
        return str(folder)

    return make


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def container_exists(container_id):
    return subprocess.run(["docker", "inspect", container_id], capture_output=True).returncode == 0


def run_python(code, timeout=120, **popen):
    """Runs `code` in a fresh interpreter; returns the finished process."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, **popen)
