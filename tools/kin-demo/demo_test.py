#!/usr/bin/env python3
"""Runs kin-demo as the README does and checks it end to end.

usage: demo_test.py KIN_DEMO native|node

With each kind of worker: kin-demo on a free port with three workers answers 30 requests in
strict rotation over its workers with "Child <pid> handled it.\\n", and 120 more made eight at
a time; SIGTERM (or SIGINT) stops it with status 0 and leaves no worker behind; a worker that
dies is reported and skipped, and when none is left kin-demo exits 1; every descriptor
kin-demo (and a native worker, but for its channel) opens is close-on-exec. The native run also
checks the usage errors (status 2) and a port in use (status 1). The node run is skipped
(status 77) without Node.js.
"""
import concurrent.futures
import http.client
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time

SKIP = 77
LINE = re.compile(
    r"kin-demo: listening on http://127\.0\.0\.1:(\d+)/ with (\d+) workers? \(pids ([\d ]+)\)\n")
BODY = re.compile(r"Child (\d+) handled it\.\n")


class Failure(Exception):
    pass


def check(condition, what):
    if not condition:
        raise Failure(what)


class Demo:
    """One kin-demo process in a session of its own, so that a failed check can kill it and its
    workers together."""

    def __init__(self, exe, *args):
        self.proc = subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        line = self.read_line(timeout=30)
        m = LINE.fullmatch(line)
        check(m, f"unexpected first line: {line!r} (stderr: {self.stderr_so_far()!r})")
        self.port = int(m.group(1))
        self.pids = [int(p) for p in m.group(3).split()]
        check(len(self.pids) == int(m.group(2)), f"pid count in {line!r}")
        self.stderr = b""

    def read_line(self, timeout):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        data = b""
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            check(left > 0, f"no line on stdout within {timeout} s (got {data!r})")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1)
                check(chunk, f"stdout closed after {data!r} (exit {self.proc.poll()})")
                data += chunk
        return data.decode()

    def stderr_so_far(self):
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read().decode(errors="replace")

    def get(self, path="/"):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            check(r.status == 200, f"status {r.status}")
            check(r.getheader("Content-Length") == str(len(body)), "Content-Length")
            check(r.getheader("Connection") == "close", "Connection: close")
            m = BODY.fullmatch(body.decode())
            check(m, f"body {body!r}")
            return int(m.group(1))
        finally:
            conn.close()

    def stop(self, sig, timeout=10):
        self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failure(f"kin-demo still running {timeout} s after signal {sig}")
        self.stderr = err.decode(errors="replace")
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


def children_of(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name, in parentheses, may hold spaces: the fields after it are safe.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry))
    return kids


def gone(pid, timeout=2):
    """True once /proc has no process `pid` (a zombie still counts as there)."""
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def descriptors_without_cloexec(pid):
    """The descriptors above 2 of `pid` that are not close-on-exec."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                flags = next(int(line.split()[1], 8) for line in f if line.startswith("flags:"))
        except (OSError, StopIteration):
            continue  # closed meanwhile
        if int(fd) > 2 and not flags & 0o2000000:
            found.append((int(fd), os.readlink(f"/proc/{pid}/fd/{fd}")))
    return sorted(found)


def run(exe, args, timeout=10):
    p = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr


def requests_in_rotation(demo):
    seen = [demo.get() for _ in range(30)]
    n = len(demo.pids)
    check(seen[:n] == demo.pids, f"first answers {seen[:n]} not from workers {demo.pids} in turn")
    for i, pid in enumerate(seen):
        check(pid == demo.pids[i % n], f"request {i} answered by {pid}: {seen}")


def concurrent_requests(demo):
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        pids = list(pool.map(lambda _: demo.get(), range(120)))
    check(set(pids) == set(demo.pids), f"answers from {set(pids)}, workers {demo.pids}")


def stops_cleanly(exe, kind, sig):
    demo = Demo(exe, "--port", "0", "--workers", "3", "--worker", kind)
    try:
        check(sorted(children_of(demo.proc.pid)) == sorted(demo.pids),
              f"children {children_of(demo.proc.pid)}, announced {demo.pids}")
        requests_in_rotation(demo)
        concurrent_requests(demo)
        # Every descriptor kin-demo made is close-on-exec; a native worker has only its
        # channel (at 3) without it, as kin::fork placed it.
        stray = descriptors_without_cloexec(demo.proc.pid)
        check(not stray, f"kin-demo's descriptors without close-on-exec: {stray}")
        if kind == "native":
            for pid in demo.pids:
                stray = [fd for fd, _ in descriptors_without_cloexec(pid) if fd != 3]
                check(not stray, f"worker {pid}'s descriptors without close-on-exec: {stray}")
        status = demo.stop(sig)
        check(status == 0, f"exit status {status} after signal {sig}: {demo.stderr!r}")
        # Nothing to report but the stop: no worker died, no channel failed.
        check(demo.stderr == f"kin-demo: {signal.Signals(sig).name}: stopping\n",
              f"stderr: {demo.stderr!r}")
        for pid in demo.pids:
            check(gone(pid), f"worker {pid} left running")
    finally:
        demo.kill()


def survives_dead_workers(exe, kind):
    demo = Demo(exe, "--port", "0", "--workers", "3", "--worker", kind)
    try:
        demo.get()  # worker 0 took it; the next turn is worker 1's
        victim = demo.pids[1]
        os.kill(victim, signal.SIGKILL)
        check(gone(victim), f"killed worker {victim} not reaped")
        # Once the channel's end is seen, the dead worker is skipped.
        deadline = time.monotonic() + 5
        left = [demo.pids[0], demo.pids[2]]
        while True:
            try:
                pid = demo.get()
                break
            except (Failure, OSError):
                check(time.monotonic() < deadline, "no answer after a worker died")
        check(pid in left, f"answered by {pid}, not one of {left}")
        seen = [demo.get() for _ in range(6)]
        check(sorted(set(seen)) == sorted(left), f"answers {seen} after a death, from {left}")
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        try:
            _, err = demo.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            raise Failure("kin-demo still running with every worker dead")
        err = err.decode(errors="replace")
        check(demo.proc.returncode == 1, f"exit status {demo.proc.returncode} with no worker")
        check(f"worker {victim} was ended by signal {signal.SIGKILL.value}" in err, err)
        check("no worker left" in err, err)
    finally:
        demo.kill()


def usage_errors(exe):
    for args, what in [
        (["--port", "http"], "--port"),
        (["--port", "65536"], "--port"),
        (["--port", "-1"], "--port"),
        (["--port", ""], "--port"),
        (["--port"], "--port needs a value"),
        (["--workers", "0"], "--workers"),
        (["--workers", "two"], "--workers"),
        (["--worker", "python"], "--worker"),
        (["--frobnicate"], "unknown argument"),
    ]:
        status, out, err = run(exe, args)
        check(status == 2, f"{args}: exit status {status}, stderr {err!r}")
        check(what in err and "--help" in err, f"{args}: stderr {err!r}")
        check(out == "", f"{args}: stdout {out!r}")
    status, out, _ = run(exe, ["--help"])
    check(status == 0 and "--workers" in out, "--help")


def port_in_use(exe):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, out, err = run(exe, ["--port", str(port)])
    check(status == 1, f"port in use: exit status {status}, stderr {err!r}")
    check(f"cannot listen on 127.0.0.1:{port}: Address already in use" in err, err)
    check(out == "", f"port in use: stdout {out!r}")


def main():
    exe, kind = sys.argv[1], sys.argv[2]
    if kind == "node" and shutil.which("node") is None:
        print("node is not installed: skipped")
        return SKIP
    checks = [("stops on SIGTERM", lambda: stops_cleanly(exe, kind, signal.SIGTERM)),
              ("stops on SIGINT", lambda: stops_cleanly(exe, kind, signal.SIGINT)),
              ("survives dead workers", lambda: survives_dead_workers(exe, kind))]
    if kind == "native":
        checks += [("usage errors", lambda: usage_errors(exe)),
                   ("port in use", lambda: port_in_use(exe))]
    failed = 0
    for name, fn in checks:
        try:
            fn()
            print(f"ok: {name}")
        except Failure as e:
            failed += 1
            print(f"FAILED: {name}: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
