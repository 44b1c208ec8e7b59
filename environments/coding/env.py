"""Coding: the OpenEnv design's coding environment. Each step runs a piece of Python code.

`step(code)` runs `code` with this container's Python in a fresh process (isolated mode, `-I`: no
PYTHON* variables, no user site-packages, and neither the script's directory nor the working
directory on sys.path), in the episode's own temporary working directory, so files written by one
step are there for the next. The reward is 1.0 when the code exits with status 0, else 0.0.
Episodes never end by themselves (`done` is always False).

The code runs in a new session (its own process group). When it outlives `timeout_s` the whole
group is killed with SIGKILL, and so is whatever it left running after a normal exit: a forked
grandchild cannot outlive its step (one that calls setsid() itself can; the container is the
real boundary). Each of stdout and stderr keeps its first 64 KiB; the rest is read and dropped.

Rayfine's server creates one Actor per OpenEnv session and a session's calls come one at a time,
so the instance needs no lock. `close()`, which Rayfine calls when the session ends, removes the
working directory.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Dict, Optional

OUTPUT_LIMIT = 64 * 1024
MAX_TIMEOUT_S = 300.0


def _drain(pipe, out):
    """Reads `pipe` to its end into out["data"], keeping only the first OUTPUT_LIMIT bytes."""
    while True:
        chunk = os.read(pipe.fileno(), 65536)
        if not chunk:
            return
        out["data"] += chunk[:OUTPUT_LIMIT - len(out["data"])]
        out["total"] += len(chunk)


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left in the group


class Actor:
    def __init__(self):
        self.episode_id: Optional[str] = None
        self.step_count = 0
        self.root: Optional[str] = None  # the episode's directory: step.py and work/
        self.workdir: Optional[str] = None  # root/work, where the code runs

    def reset(self, seed: Optional[int] = None, episode_id: Optional[str] = None) -> Dict[str, Any]:
        """Starts an episode in a fresh, empty working directory; `seed` is unused."""
        self.close()
        self.episode_id = episode_id if episode_id is not None else str(uuid.uuid4())
        self.step_count = 0
        self.root = tempfile.mkdtemp(prefix="rayfine-coding-")
        self.workdir = os.path.join(self.root, "work")
        os.mkdir(self.workdir)
        return {"stdout": "", "stderr": "", "exit_code": 0, "timed_out": False,
                "metadata": {"episode_id": self.episode_id, "workdir": self.workdir},
                "reward": 0.0, "done": False}

    def step(self, code: str, timeout_s: float = 10.0) -> Dict[str, Any]:
        """Runs `code` as a Python script; kills it (and its children) after `timeout_s` seconds."""
        if not isinstance(code, str):
            raise ValueError("code must be a string, got %s" % type(code).__name__)
        # The range test also refuses NaN and the infinities.
        if (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float))
                or not 0 < timeout_s <= MAX_TIMEOUT_S):
            raise ValueError("timeout_s must be a number of seconds in (0, %g], got %r"
                             % (MAX_TIMEOUT_S, timeout_s))
        try:
            source = code.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("code must be valid Unicode text (it has a lone surrogate)") from None
        if self.root is None:
            self.reset()
        self.step_count += 1
        script = os.path.join(self.root, "step.py")
        with open(script, "wb") as f:
            f.write(source)

        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-I", script], cwd=self.workdir,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        out, err = {"data": bytearray(), "total": 0}, {"data": bytearray(), "total": 0}
        readers = [threading.Thread(target=_drain, args=args, daemon=True)
                   for args in ((proc.stdout, out), (proc.stderr, err))]
        timed_out = False
        try:
            for reader in readers:
                reader.start()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
        finally:
            # Kills the code if it is still running, and whatever it left running in its group;
            # the pipes then reach their end.
            _kill_group(proc.pid)
            proc.wait()
        duration = time.monotonic() - started
        for reader, pipe in zip(readers, (proc.stdout, proc.stderr)):
            reader.join(timeout=2)
            if not reader.is_alive():  # else a setsid() escapee holds it: leave it to the reader
                pipe.close()
        return {"stdout": out["data"].decode("utf-8", "replace"),
                "stderr": err["data"].decode("utf-8", "replace"),
                "exit_code": proc.returncode, "timed_out": timed_out,
                "metadata": {"step": self.step_count, "duration_s": round(duration, 4),
                             "stdout_truncated": out["total"] > OUTPUT_LIMIT,
                             "stderr_truncated": err["total"] > OUTPUT_LIMIT},
                "reward": 1.0 if proc.returncode == 0 else 0.0, "done": False}

    def state(self) -> Dict[str, Any]:
        """The episode's id, its step count and its working directory (None before reset)."""
        return {"episode_id": self.episode_id, "step_count": self.step_count,
                "workdir": self.workdir}

    def close(self) -> None:
        """Removes the episode's directory. Rayfine calls this when the session ends."""
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = self.workdir = None
