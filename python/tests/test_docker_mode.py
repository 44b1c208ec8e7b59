"""The package in Docker mode: build an image, load it with env_vars, call sync and async, and
leave no container however the interpreter ends."""

import asyncio
import os
import subprocess
import sys
import time

import pytest

import rayfine
import rayfine.aio
from conftest import BASE_IMAGE, COUNTER, container_exists, docker_ok, run_python

pytestmark = pytest.mark.skipif(os.environ.get("CI") != "true" and not docker_ok(), reason="no Docker engine with the offline base image (bash .ci/setup)")


@pytest.fixture(scope="module")
def counter_image():
    tag = "rayfine-pytest/counter:%d" % os.getpid()
    lines = []
    built = rayfine.build_image_from_env(COUNTER, tag, base_image=BASE_IMAGE, progress=lambda stage, line: lines.append((stage, line)))
    assert built == tag and any(stage == "server" for stage, _ in lines)
    yield tag
    # No container of the image first: the engine only untags an image a running container uses,
    # and it would stay behind, untagged, once that container went (a failed start's container
    # left to the interpreter's exit would be one).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and subprocess.run(["docker", "ps", "-aq", "--filter", "ancestor=" + tag], capture_output=True, text=True).stdout.strip():
        time.sleep(0.2)
    left = subprocess.run(["docker", "ps", "-a", "--filter", "ancestor=" + tag], capture_output=True, text=True).stdout
    assert len(left.strip().splitlines()) <= 1, "containers of %s still there:\n%s" % (tag, left)
    # The image before its base: an image in use by another is only untagged.
    for image in (tag, tag + "-base"):
        rayfine.remove_image(image)
        assert subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0, image
    rayfine.remove_image(tag)  # one that is gone is not an error


def test_an_image_is_loaded_with_env_vars_and_called_sync_and_async(counter_image):
    env = rayfine.load_env(counter_image, env_vars={"COUNTER_NAME": "docker"}, mem_limit="256m")
    container = env.container_id
    assert env.mode == "docker" and container_exists(container)
    assert env.increment(times=3) == 3
    assert env.get()["name"] == "docker"

    async def more():
        aenv = rayfine.aio.get_environment(env.id)
        values = await asyncio.gather(*(aenv.increment() for _ in range(50)))
        return sorted(values)

    assert asyncio.run(more()) == list(range(4, 54))
    env.cleanup()
    assert not container_exists(container)


def test_hosts_name_the_engines_an_image_runs_on(counter_image):
    # The local engine named twice, once by its socket: placement picks one, the image is there.
    env = rayfine.load_env(counter_image, env_vars={"COUNTER_NAME": "hosts"}, hosts="local,unix:///var/run/docker.sock")
    try:
        assert env.mode == "docker" and env.increment() == 1
    finally:
        env.cleanup()


def test_a_failing_constructor_in_a_container_is_start_failed(counter_image):
    with pytest.raises(rayfine.StartFailed) as failed:
        rayfine.load_env(counter_image)
    assert "COUNTER_NAME" in str(failed.value)


@pytest.mark.parametrize("ending", ["normal", "sigkill"])
def test_no_container_is_left_however_the_interpreter_ends(counter_image, ending):
    code = """
import sys, time, rayfine
env = rayfine.load_env(%r, env_vars={"COUNTER_NAME": "x"})
print(env.container_id, flush=True)
if %r == "sigkill":
    time.sleep(60)
""" % (counter_image, ending)
    if ending == "normal":
        done = run_python(code)
        assert done.returncode == 0, done.stderr
        container = done.stdout.split()[0]
    else:
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        container = child.stdout.readline().split()[0]
        child.kill()
        child.communicate(timeout=20)
    deadline = time.monotonic() + 30
    while container_exists(container) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not container_exists(container)


def test_an_exception_in_the_progress_callback_stops_the_build_and_is_raised():
    tag = "rayfine-pytest/stopped:%d" % os.getpid()

    class Enough(Exception):
        pass

    def progress(stage, line):
        raise Enough(line)

    try:
        started = time.monotonic()
        with pytest.raises(Enough):
            rayfine.build_image_from_env(COUNTER, tag, base_image=BASE_IMAGE, progress=progress)
        assert time.monotonic() - started < 60
        inspect = subprocess.run(["docker", "image", "inspect", tag], capture_output=True)
        assert inspect.returncode != 0, "the build went on to tag the image"
    finally:
        # The engine ends the build at its next step once its client has gone; until it has,
        # the removal waits (so as not to prune a cached layer the build is still taking).
        for image in (tag, tag + "-base"):
            rayfine.remove_image(image)
