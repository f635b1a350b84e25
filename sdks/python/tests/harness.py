"""A small stand-in for the agent, for the SDK's own tests: writes an app, starts the boot
script, and speaks frames to an instance over its pipes, every wait bounded."""

import os
import select
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

SDK = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, SDK)

from ignite import _frames as F  # noqa: E402

PYTHON = "/usr/bin/python3"
BOOT = os.path.join(SDK, "ignite_boot.py")
TIMEOUT = 10.0


def write_app(main_py, files=None):
    """A temporary app directory with this main.py (dedented) and any other files."""
    app = tempfile.mkdtemp(prefix="ignite-py-app-")
    with open(os.path.join(app, "main.py"), "w") as f:
        f.write(textwrap.dedent(main_py))
    for name, text in (files or {}).items():
        path = os.path.join(app, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
    return app


def remove_app(app):
    shutil.rmtree(app, ignore_errors=True)


def boot_command(mode):
    return [PYTHON, "-I", "-S", BOOT, mode]


def boot_env(app, **extra):
    env = {"IGNITE_APP_DIR": app}
    env.update(extra)
    return env


def run_boot(mode, app, **kwargs):
    """Runs the boot script to completion: a CompletedProcess with text output."""
    return subprocess.run(boot_command(mode), env=boot_env(app), capture_output=True, text=True,
                          timeout=TIMEOUT, **kwargs)


class Channel:
    """The agent's side of one instance: `to_fd` is its stdin, `from_fd` its stdout, `err_fd`
    its stderr."""

    def __init__(self, to_fd, from_fd, err_fd):
        self.to_fd = to_fd
        self.from_fd = from_fd
        self.err_fd = err_fd
        self.reader = F.FrameReader()
        self.frames = []
        self.stderr = b""
        os.set_blocking(err_fd, False)
        self.eof = False

    def send(self, frame):
        data = frame if isinstance(frame, (bytes, bytearray)) else F.encode(frame)
        os.write(self.to_fd, data)

    def invoke(self, id, body=b"{}", **fields):
        invoke = dict(id=id, execution_id=f"01JTEST{id:019d}", function_id="acme/tiny",
                      deadline_unix_ms=0, env=[], method="POST", path="/", query="",
                      headers=[("content-type", "application/json")], body=body)
        invoke.update(fields)
        self.send(F.Invoke(**invoke))

    def read(self, timeout=TIMEOUT):
        """The next frame, or None at end of file."""
        deadline = time.monotonic() + timeout
        while not self.frames:
            if self.eof:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no frame within {timeout} s; stderr: {self.read_stderr()!r}")
            ready, _, _ = select.select([self.from_fd], [], [], left)
            if not ready:
                continue
            data = os.read(self.from_fd, 65536)
            if not data:
                self.eof = True
                self.reader.eof()
                continue
            self.frames += self.reader.feed(data)
        return self.frames.pop(0)

    def answer(self, timeout=TIMEOUT):
        """The next frame that is not a Log."""
        while True:
            frame = self.read(timeout)
            if type(frame) is not F.Log:
                return frame

    def read_stderr(self):
        while True:
            try:
                data = os.read(self.err_fd, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            self.stderr += data
        return self.stderr.decode(errors="replace")

    def close(self):
        for fd in (self.to_fd, self.from_fd, self.err_fd):
            try:
                os.close(fd)
            except OSError:
                pass


class Served:
    """An instance in serve mode."""

    def __init__(self, app, env=None, prefix=()):
        self.proc = subprocess.Popen([*prefix, *boot_command("serve")], env=env or boot_env(app),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.channel = Channel(self.proc.stdin.fileno(), self.proc.stdout.fileno(),
                               self.proc.stderr.fileno())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass

    def wait(self):
        return self.proc.wait(TIMEOUT)
