"""The template mode (the fork server), driven as the platform drives it: fd 3 is an AF_UNIX
SOCK_SEQPACKET socket whose other end has SO_PASSCRED, so every message arrives with its
sender's credentials.

Run: cd sdks/python/tests && /usr/bin/python3 -m unittest test_template
"""

import json
import os
import select
import signal
import socket
import struct
import subprocess
import time
import unittest

from harness import TIMEOUT, Channel, F, boot_command, boot_env, remove_app, write_app

_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid

MAIN = """
    import asyncio, os, random, socket, subprocess, sys, threading, time, ignite

    IMPORTED_IN = os.getpid()
    # What import-time code may leave behind: unflushed output, an open file, a socket, a
    # thread, an event loop.
    print("imported", end="")
    sys.stderr.write("import-time stderr line\\n")
    KEPT_FILE = os.open(__file__, os.O_RDONLY)
    os.read(KEPT_FILE, 7)  # its offset is 7 when the children are forked
    KEPT_SOCKET = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    KEPT_PIPE, _KEPT_WRITER = os.pipe()
    THREAD = threading.Thread(target=time.sleep, args=(3600,), daemon=True)
    THREAD.start()
    LOOP = asyncio.new_event_loop()

    @ignite.main
    async def handler(req, ctx):
        fds = {}
        for name in os.listdir("/proc/self/fd"):
            try:
                fds[int(name)] = os.fstat(int(name)).st_ino
            except OSError:
                pass
        try:
            KEPT_SOCKET.getsockname()
            socket_state = "open"
        except OSError as e:
            socket_state = e.errno
        print("printed by the child")
        return {
            "pid": os.getpid(),
            "random": random.random(),
            "imported_in": IMPORTED_IN,
            "fds": fds,
            "kept_file_reads": os.read(KEPT_FILE, 5).decode(),
            "kept_pipe_reads": os.read(KEPT_PIPE, 10).decode(),
            "kept_socket": socket_state,
            "thread_alive": THREAD.is_alive(),
            "fresh_loop": asyncio.get_running_loop() is not LOOP,
            "subprocess_status": subprocess.run(["/bin/sh", "-c", "exit 3"]).returncode,
            "sigchld": signal_name(),
            "sigint_raises": sigint_raises(),
        }

    def sigint_raises():
        import signal
        return signal.getsignal(signal.SIGINT) is signal.default_int_handler

    def signal_name():
        import signal
        handler = signal.getsignal(signal.SIGCHLD)
        return "default" if handler == signal.SIG_DFL else repr(handler)
"""


class Template:
    """The platform's side of a template: its socket end, the process, and the messages
    received (kind, payload, the sender's pid from its credentials)."""

    def __init__(self, main_py):
        self.app = write_app(main_py)
        with open(os.path.join(self.app, "main.py")) as f:
            self.main_py = f.read()
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.template_inode = os.fstat(theirs.fileno()).st_ino
        fd = theirs.fileno()

        def onto_fd_3():
            if fd == 3:
                os.set_inheritable(3, True)
            else:
                os.dup2(fd, 3)

        self.proc = subprocess.Popen(boot_command("template"), env=boot_env(self.app),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, preexec_fn=onto_fd_3,
                                     close_fds=False)
        theirs.close()
        self.queue = []
        self.children = []
        self.channels = []

    def close(self):
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for channel in self.channels:
            channel.close()
        try:
            self.sock.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        self.proc.stdout.close()
        self.proc.stderr.close()
        remove_app(self.app)

    def _receive(self, timeout):
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return False
        msg, ancdata, _flags, _ = self.sock.recvmsg(64, socket.CMSG_SPACE(_UCRED.size))
        if not msg:
            self.queue.append((None, b"", None))
            return True
        pid = None
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _UCRED.unpack(data[:_UCRED.size])[0]
        self.queue.append((msg[:1], msg[1:], pid))
        return True

    def expect(self, kind, timeout=TIMEOUT, where=None):
        """The first message of `kind` (b"r", b"p", b"x", b"e"; None for end of file), and
        optionally matching `where(payload)`: ``(payload, sender pid)``."""
        deadline = time.monotonic() + timeout
        while True:
            for i, (k, payload, pid) in enumerate(self.queue):
                if k == kind and (where is None or where(payload)):
                    del self.queue[i]
                    return payload, pid
            left = deadline - time.monotonic()
            if left <= 0 or (self.queue and self.queue[-1][0] is None and kind is not None):
                raise AssertionError(f"no {kind!r} message; got {self.queue}; template stderr: "
                                     f"{self.stderr()!r}")
            self._receive(left)

    def stderr(self):
        os.set_blocking(self.proc.stderr.fileno(), False)
        try:
            return (self.proc.stderr.read() or b"").decode(errors="replace")
        except (BlockingIOError, TypeError):
            return ""

    def fork(self):
        """Sends b"f" with a new instance's stdin, stdout and stderr; returns the child's pid
        (from its b"p" message, checked against its credentials) and a Channel to it."""
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        socket.send_fds(self.sock, [b"f"], [in_r, out_w, err_w])
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        payload, sender = self.expect(b"p")
        (pid,) = struct.unpack("<I", payload)
        self.children.append(pid)
        channel = Channel(in_w, out_r, err_r)
        self.channels.append(channel)
        return pid, sender, channel

    def exit_of(self, pid):
        """The raw wait status in the b"x" report for `pid`, and the report's sender."""
        payload, sender = self.expect(b"x", where=lambda p: struct.unpack("<Ii", p)[0] == pid)
        return struct.unpack("<Ii", payload)[1], sender


class ForkServer(unittest.TestCase):
    def setUp(self):
        self.template = Template(MAIN)
        self.addCleanup(self.template.close)
        _, sender = self.template.expect(b"r")
        self.assertEqual(sender, self.template.proc.pid)

    def call(self, channel, id=1):
        self.assertEqual(channel.read(), F.Hello(1, "0.1.0"), channel.read_stderr())
        channel.invoke(id)
        answer = channel.answer()
        self.assertIs(type(answer), F.Response, answer)
        self.assertEqual(answer.id, id)
        return json.loads(answer.body)

    def test_children_report_their_pid_serve_on_their_pipes_and_are_reported_when_they_end(self):
        template = self.template
        pid_a, sender_a, a = template.fork()
        pid_b, sender_b, b = template.fork()
        # No pid namespace here: the credentials' pid is the pid the child put in its message.
        self.assertEqual(sender_a, pid_a)
        self.assertEqual(sender_b, pid_b)
        self.assertNotEqual(pid_a, pid_b)
        self.assertNotIn(template.proc.pid, (pid_a, pid_b))

        got_a, got_b = self.call(a), self.call(b)
        self.assertEqual((got_a["pid"], got_b["pid"]), (pid_a, pid_b))
        self.assertNotEqual(got_a["random"], got_b["random"])
        for got in (got_a, got_b):
            # Imported once, in the template; nothing of it is run again.
            self.assertEqual(got["imported_in"], template.proc.pid)
            # The template's socket is not among the child's descriptors. A file opened at
            # import was reopened: each child reads on from the offset it had at the fork, on
            # its own. The socket and the pipe the import made are detached.
            self.assertNotIn(template.template_inode, got["fds"].values())
            self.assertEqual(got["kept_file_reads"], template.main_py[7:12])
            self.assertEqual(got["kept_pipe_reads"], "")
            self.assertEqual(got["kept_socket"], 88)  # ENOTSOCK
            self.assertFalse(got["thread_alive"])
            self.assertTrue(got["fresh_loop"])
            self.assertEqual(got["subprocess_status"], 3)
            self.assertEqual(got["sigchld"], "default")
            # The template shields itself (default dispositions); a child has Python's own
            # SIGINT handler back.
            self.assertTrue(got["sigint_raises"])
        # What the child printed is its own stderr; the template's unflushed import-time
        # output was not copied into it.
        for channel in (a, b):
            stderr = channel.read_stderr()
            self.assertIn("printed by the child\n", stderr)
            self.assertNotIn("imported", stderr)
            self.assertNotIn("import-time", stderr)

        os.kill(pid_a, signal.SIGKILL)
        status, sender = template.exit_of(pid_a)
        self.assertEqual(sender, template.proc.pid)
        self.assertTrue(os.WIFSIGNALED(status))
        self.assertEqual(os.WTERMSIG(status), signal.SIGKILL)

        b.send(F.SHUTDOWN)
        status, _ = template.exit_of(pid_b)
        self.assertTrue(os.WIFEXITED(status))
        self.assertEqual(os.WEXITSTATUS(status), 0)

        # The template still forks after its children have gone.
        pid_c, _, c = template.fork()
        self.assertEqual(self.call(c)["pid"], pid_c)

        # The platform closes its end: the template exits 0.
        template.sock.close()
        self.assertEqual(template.proc.wait(TIMEOUT), 0)
        self.assertEqual(template.proc.stdout.read(), b"imported")
        self.assertEqual(template.stderr().count("import-time stderr line"), 1)

    def test_a_spare_is_forked_ahead_of_need_announced_and_handed_the_next_request(self):
        template = self.template
        # The spare announces itself (its own credentials carry its pid) before any request.
        payload, sender = template.expect(b"s")
        (spare,) = struct.unpack("<I", payload)
        self.assertEqual(sender, spare)
        self.assertNotEqual(spare, template.proc.pid)
        # The next request is served by that very process; a new spare follows.
        pid, _, channel = template.fork()
        self.assertEqual(pid, spare)
        self.call(channel)
        payload, _ = template.expect(b"s")
        self.assertNotEqual(struct.unpack("<I", payload)[0], spare)

    def test_every_exit_is_reported_when_many_end_at_once(self):
        template = self.template
        children = [template.fork() for _ in range(8)]
        for pid, _, channel in children:
            self.assertEqual(channel.read(), F.Hello(1, "0.1.0"))
        for _, _, channel in children:
            channel.send(F.SHUTDOWN)
        for pid, _, _ in children:
            status, _ = template.exit_of(pid)
            self.assertEqual(os.waitstatus_to_exitcode(status), 0)

    def test_closing_the_socket_with_reports_unread_ends_the_template_with_0(self):
        template = self.template
        pid, _, channel = template.fork()
        self.assertEqual(channel.read(), F.Hello(1, "0.1.0"))
        channel.send(F.SHUTDOWN)
        self.assertIsNone(channel.read())  # the child is gone; its b"x" is not read
        time.sleep(0.2)
        template.sock.close()
        self.assertEqual(template.proc.wait(TIMEOUT), 0, template.stderr())
        self.assertEqual(template.stderr(), "")

    def test_a_message_that_is_not_a_fork_is_answered_with_e(self):
        template = self.template
        r, w = os.pipe()
        socket.send_fds(template.sock, [b"f"], [r, w])
        os.close(r)
        os.close(w)
        payload, _ = template.expect(b"e")
        self.assertEqual(payload.decode(), "expected b'f' with 3 descriptors, got b'f' with 2")
        template.sock.send(b"zz")
        payload, _ = template.expect(b"e")
        self.assertEqual(payload.decode(), "expected b'f' with 3 descriptors, got b'zz' with 0")
        # And it still forks.
        pid, _, channel = template.fork()
        self.assertEqual(self.call(channel)["pid"], pid)


class Detach(unittest.TestCase):
    """`_detach_inherited` on its own, with /proc's listing and without it (the template's
    probed list stands in)."""

    SCRIPT = """
import os, socket, stat, sys
sys.path.insert(0, sys.argv[1])
import ignite_boot
if sys.argv[2] == "no-proc":
    ignite_boot._listed_fds = lambda: None
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
path = os.path.join(sys.argv[1], "ignite_boot.py")
f = os.open(path, os.O_RDONLY)
os.read(f, 3)
inherited = ignite_boot._open_fds()
empty, writer = os.pipe()
os.close(writer)
ignite_boot._detach_inherited({empty}, empty, inherited)
print(stat.S_ISFIFO(os.fstat(sock.fileno()).st_mode), os.read(f, 4) == open(path, "rb").read()[3:7])
"""

    def test_sockets_are_detached_and_files_reopened(self):
        from harness import PYTHON, SDK
        for mode in ("proc", "no-proc"):
            with self.subTest(mode=mode):
                done = subprocess.run([PYTHON, "-I", "-S", "-c", self.SCRIPT, SDK, mode],
                                      capture_output=True, text=True, timeout=TIMEOUT)
                # (Without a listing the probed list finds them; reopening still reads the
                # file's path from /proc/self/fd/N, which this machine has.)
                self.assertEqual(done.stdout, "True True\n", done.stderr)


class Startup(unittest.TestCase):
    def test_an_app_that_fails_to_import_exits_1_without_ready(self):
        for main_py, expected in (
            ("import ignite\nraise RuntimeError('no database')\n", "RuntimeError: no database"),
            ("import ignite\n", "main.py defines no handler"),
        ):
            template = Template(main_py)
            self.addCleanup(template.close)
            self.assertEqual(template.proc.wait(TIMEOUT), 1)
            self.assertIn(expected, template.stderr())
            payload, _ = template.expect(None)
            self.assertEqual(payload, b"")

    def test_no_socket_on_fd_3(self):
        app = write_app("import ignite\n")
        self.addCleanup(remove_app, app)
        done = subprocess.run(boot_command("template"), env=boot_env(app), capture_output=True,
                              text=True, timeout=TIMEOUT)
        self.assertEqual(done.returncode, 64)
        self.assertIn("template mode needs the platform's socket on fd 3", done.stderr)


if __name__ == "__main__":
    unittest.main()
