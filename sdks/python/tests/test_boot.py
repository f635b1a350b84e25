"""The boot script's check and serve modes, run as the platform runs them:
``/usr/bin/python3 -I -S ignite_boot.py <mode>`` with ``IGNITE_APP_DIR``.

Run: cd sdks/python/tests && /usr/bin/python3 -m unittest test_boot
"""

import json
import os
import shutil
import signal
import subprocess
import unittest

from harness import F, Served, boot_command, boot_env, remove_app, run_boot, write_app

NO_HANDLER = "main.py defines no handler: decorate your handler with @ignite.main\n"


class Check(unittest.TestCase):
    def check(self, main_py, files=None):
        app = write_app(main_py, files)
        self.addCleanup(remove_app, app)
        return run_boot("check", app), app

    def test_a_registered_handler(self):
        done, app = self.check("""
            import ignite

            @ignite.main
            async def handler(req, ctx):
                return {}
        """)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout,
                         f"the handler is main.handler ({app}/main.py:4)\n")

    def test_no_handler(self):
        done, _ = self.check("import ignite\n\ndef handler(req, ctx):\n    pass\n")
        self.assertEqual((done.returncode, done.stderr), (1, NO_HANDLER))

    def test_a_syntax_error_prints_its_traceback(self):
        done, app = self.check("import ignite\n\ndef handler(req, ctx)\n    pass\n")
        self.assertEqual(done.returncode, 1)
        self.assertIn("SyntaxError", done.stderr)
        self.assertIn(f'File "{app}/main.py", line 3', done.stderr)
        self.assertNotIn("ignite_boot.py", done.stderr)

    def test_an_import_error_prints_its_traceback(self):
        done, _ = self.check("import ignite\nimport no_such_package\n")
        self.assertEqual(done.returncode, 1)
        self.assertIn("ModuleNotFoundError: No module named 'no_such_package'", done.stderr)
        self.assertIn("Traceback (most recent call last):", done.stderr)
        self.assertNotIn("ignite_boot.py", done.stderr)

    def test_an_exception_at_import(self):
        done, _ = self.check("""
            import ignite
            def connect():
                raise ConnectionError("no database")
            connect()
        """)
        self.assertEqual(done.returncode, 1)
        self.assertIn("in connect", done.stderr)
        self.assertIn("ConnectionError: no database", done.stderr)

    def test_sys_exit_at_import(self):
        done, _ = self.check("import sys\nsys.exit(3)\n")
        self.assertEqual(done.returncode, 1)
        self.assertIn("main.py exited while it was being imported (sys.exit(3))", done.stderr)

    def test_no_main_py(self):
        app = write_app("")
        self.addCleanup(remove_app, app)
        os.remove(os.path.join(app, "main.py"))
        done = run_boot("check", app)
        self.assertEqual(done.returncode, 1)
        self.assertEqual(done.stderr, f"no main.py in {app}: a Python app's handler lives in "
                         "main.py, decorated with @ignite.main\n")

    def test_two_handlers(self):
        done, _ = self.check("""
            import ignite

            @ignite.main
            def first(req, ctx):
                pass

            @ignite.main
            def second(req, ctx):
                pass
        """)
        self.assertEqual(done.returncode, 1)
        self.assertIn("RuntimeError: @ignite.main is used twice: on main.first (", done.stderr)
        self.assertIn("and on main.second (", done.stderr)

    def test_packages_and_app_modules_are_importable(self):
        done, _ = self.check("""
            import ignite, helper, vendored

            @ignite.main
            def handler(req, ctx):
                return helper.X + vendored.Y
        """, {"helper.py": "X = 1\n", ".packages/vendored/__init__.py": "Y = 2\n"})
        self.assertEqual(done.returncode, 0, done.stderr)

    def test_no_module_of_the_app_stands_in_for_the_sdk_or_what_it_uses(self):
        shadow = "raise ImportError('the app shadowed me')\n"
        done, _ = self.check("""
            import ignite

            @ignite.main
            def handler(req, ctx):
                pass
        """, {"ignite.py": shadow, ".packages/ignite/__init__.py": shadow, "asyncio.py": shadow})
        self.assertEqual(done.returncode, 0, done.stderr)

    def test_usage(self):
        for args in ([], ["nope"]):
            done = subprocess.run(boot_command("x")[:-1] + args, capture_output=True, text=True,
                                  timeout=10)
            self.assertEqual(done.returncode, 64)
            self.assertIn("usage:", done.stderr)


class Serve(unittest.TestCase):
    def serve(self, main_py, files=None):
        app = write_app(main_py, files)
        self.addCleanup(remove_app, app)
        served = Served(app)
        self.addCleanup(served.__exit__)
        hello = served.channel.read()
        self.assertEqual(hello, F.Hello(1, "0.1.0"), served.channel.read_stderr())
        return served

    def test_fds_0_and_1_are_not_the_channel(self):
        served = self.serve("""
            import fcntl, os, sys, ignite

            @ignite.main
            def handler(req, ctx):
                fds = {}
                for name in os.listdir("/proc/self/fd"):
                    fd = int(name)
                    try:
                        st = os.fstat(fd)
                    except OSError:
                        continue
                    cloexec = bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
                    fds[fd] = [st.st_ino, cloexec]
                return {"fds": fds, "stdin": sys.stdin.read(), "line_buffered":
                        sys.stdout.line_buffering}
        """)
        to_agent = os.fstat(served.proc.stdout.fileno()).st_ino
        from_agent = os.fstat(served.proc.stdin.fileno()).st_ino
        log_pipe = os.fstat(served.proc.stderr.fileno()).st_ino
        served.channel.invoke(1)
        answer = served.channel.answer()
        got = json.loads(answer.body)
        fds = {int(k): v for k, v in got["fds"].items()}
        self.assertEqual(fds[1][0], log_pipe)
        self.assertEqual(fds[2][0], log_pipe)
        self.assertNotIn(fds[0][0], (to_agent, from_agent, log_pipe))
        self.assertEqual(got["stdin"], "")
        self.assertTrue(got["line_buffered"])
        channel = [fd for fd, (ino, _) in fds.items() if ino in (to_agent, from_agent)]
        self.assertEqual(len(channel), 2, fds)
        self.assertTrue(all(fds[fd][1] for fd in channel), "the channel is close-on-exec")

    def test_a_child_process_writing_to_stdout_writes_a_log_line(self):
        served = self.serve("""
            import subprocess, ignite

            @ignite.main
            def handler(req, ctx):
                subprocess.run(["/bin/echo", "IG from a child process"], check=True)
                return "ok"
        """)
        served.channel.invoke(1)
        self.assertEqual(served.channel.answer().body, b"ok")
        self.assertIn("IG from a child process\n", served.channel.read_stderr())

    def test_answers_match_their_requests_by_id_and_ctx_log_is_a_log_frame(self):
        served = self.serve("""
            import asyncio, ignite

            @ignite.main
            async def handler(req, ctx):
                ctx.log(f"started {ctx.execution_id}")
                await asyncio.sleep(req.field("sleep"))
                return req.field("name")
        """)
        served.channel.invoke(7, b'{"sleep": 0.3, "name": "slow"}')
        served.channel.invoke(8, b'{"sleep": 0, "name": "fast"}')
        frames = [served.channel.read() for _ in range(4)]
        logs = [f for f in frames if type(f) is F.Log]
        answers = [f for f in frames if type(f) is F.Response]
        self.assertEqual(sorted((f.id, f.line) for f in logs), [
            (7, "started 01JTEST0000000000000000007"), (8, "started 01JTEST0000000000000000008")])
        self.assertEqual([(a.id, a.body) for a in answers], [(8, b"fast"), (7, b"slow")])

    def test_logging_writes_to_stderr_at_info(self):
        served = self.serve("""
            import logging, ignite

            @ignite.main
            def handler(req, ctx):
                logging.getLogger("app").info("via logging")
                logging.getLogger("app").debug("not shown")
                return "ok"
        """)
        served.channel.invoke(1)
        served.channel.answer()
        stderr = served.channel.read_stderr()
        self.assertIn("INFO app: via logging\n", stderr)
        self.assertNotIn("not shown", stderr)

    def test_logging_at_import_time_is_shown_at_info(self):
        served = self.serve("""
            import logging, ignite
            logging.info("module-level info at import")

            @ignite.main
            def handler(req, ctx):
                logging.getLogger("app").info("info in the handler")
                return "ok"
        """)
        served.channel.invoke(1)
        served.channel.answer()
        stderr = served.channel.read_stderr()
        self.assertIn("module-level info at import", stderr)
        self.assertIn("info in the handler", stderr)

    def test_the_apps_own_logging_setup_is_kept(self):
        served = self.serve("""
            import logging, ignite
            logging.basicConfig(format="CUSTOM %(message)s", level=logging.DEBUG)

            @ignite.main
            def handler(req, ctx):
                logging.getLogger("app").debug("debug line")
                return "ok"
        """)
        served.channel.invoke(1)
        served.channel.answer()
        self.assertIn("CUSTOM debug line\n", served.channel.read_stderr())

    def test_shutdown_and_end_of_file_exit_0(self):
        main_py = "import ignite\n\n@ignite.main\ndef handler(req, ctx):\n    return 'x'\n"
        served = self.serve(main_py)
        served.channel.send(F.SHUTDOWN)
        self.assertEqual(served.wait(), 0)
        served = self.serve(main_py)
        served.proc.stdin.close()
        self.assertEqual(served.wait(), 0)

    def test_bytes_that_are_not_frames_end_the_instance_with_70(self):
        main_py = "import ignite\n\n@ignite.main\ndef handler(req, ctx):\n    return 'x'\n"
        for garbage in (b"hello\n", bytes(F.encode_hello(1, "x"))):
            served = self.serve(main_py)
            served.channel.send(garbage)
            self.assertEqual(served.wait(), 70)
            self.assertIn("ignite: ", served.channel.read_stderr())

    def test_a_tty_on_stdin_is_told_what_this_is(self):
        leader, follower = os.openpty()
        self.addCleanup(os.close, leader)
        app = write_app("import ignite\n")
        self.addCleanup(remove_app, app)
        done = subprocess.run(boot_command("serve"), env=boot_env(app), stdin=follower,
                              capture_output=True, text=True, timeout=10)
        os.close(follower)
        self.assertEqual(done.returncode, 64)
        self.assertIn("this is an Ignite handler", done.stderr)


def _can_unshare_pid():
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        return subprocess.run([unshare, "--pid", "--fork", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@unittest.skipUnless(_can_unshare_pid(), "needs unshare(1) and permission for a pid namespace")
class Pid1(unittest.TestCase):
    """As pid 1 of a pid namespace (the sandbox), serve forks: the child serves, pid 1 reaps and
    exits with the child's status, 128 + n for a signal."""

    def test_the_handler_runs_under_an_init(self):
        app = write_app("""
            import os, ignite

            @ignite.main
            def handler(req, ctx):
                if req.field("abort", default=False):
                    os.abort()
                return {"pid": os.getpid(), "ppid": os.getppid()}
        """)
        self.addCleanup(remove_app, app)
        for abort, status in ((False, 0), (True, 128 + signal.SIGABRT)):
            served = Served(app, prefix=["unshare", "--pid", "--fork"])
            self.addCleanup(served.__exit__)
            self.assertIs(type(served.channel.read()), F.Hello)
            if abort:
                served.channel.invoke(1, b'{"abort": true}')
                self.assertIsNone(served.channel.read())
            else:
                served.channel.invoke(1)
                self.assertEqual(json.loads(served.channel.answer().body), {"pid": 2, "ppid": 1})
                served.channel.send(F.SHUTDOWN)
            self.assertEqual(served.wait(), status)


if __name__ == "__main__":
    unittest.main()
