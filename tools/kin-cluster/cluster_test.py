#!/usr/bin/env python3
"""Runs kin-cluster end to end, on 127.0.0.1 only.

usage: cluster_test.py KIN_CLUSTER KIN_CLUSTER_HELLO GROUP [shared|round-robin]

Groups (those marked MODE take the scheduling mode):
  serve MODE     10 000 connections, eight at a time, all answered, by more than one worker;
                 the live-connection count is back to 0 afterwards
  kill-worker    a worker killed with SIGKILL under load (round-robin): only requests it was
                 serving may fail, none begun after it was reaped; it is respawned, and the new
                 one takes connections
  crash-loop     workers that exit at once are respawned after 100, 200, 400 ... ms up to
                 --backoff-max, then the crash-loop guard stops kin-cluster (status 1); deaths
                 further apart than --crash-window are respawned for ever
  reload MODE    SIGHUP under a continuous client loop makes no request fail, and each reload
                 replaces every worker (new pids, next generation); several in a row
  status MODE    SIGUSR1's status (one line per worker) and the live-connection counts as idle
                 connections are opened, answered and closed
  activation     socket-activated workers (--activation) on a TCP and a Unix listener, and
                 kin-cluster itself started with LISTEN_FDS/LISTEN_PID
  node MODE      --node with an ordinary Node.js cluster app (skipped without Node.js)
  stop MODE      SIGTERM refuses new connections, answers the requests in flight and exits 0
                 with no child left; --grace ends the drain; a second SIGTERM kills at once;
                 SIGINT stops too
  usage          usage errors exit 2 and start nothing; a port in use or a missing program
                 exits 1

Every check ends with no process of kin-cluster's left: this script is a child subreaper, so a
worker that outlives kin-cluster becomes its child and is found, killed and reported.
Exit status: 0 all passed, 1 a check failed, 77 skipped.
"""
import collections
import ctypes
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))
ACTIVATION_SERVER = os.path.join(HERE, "activation_server.py")
NODE_APP = os.path.join(HERE, "node_app.js")
MODES = ("shared", "round-robin")

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
# A request in flight: its headers not ended yet (the worker waits for the rest).
PARTIAL, REST = REQUEST[:-2], REQUEST[-2:]
BODY = re.compile(rb"(hello from|activated|node) (\d+)\n")
LISTENING = re.compile(r"kin-cluster: listening on (127\.0\.0\.1:(\d+)|unix:(.+))")
STARTED = re.compile(r"kin-cluster: started (\d+) workers? \(pids ([\d ]+)\)")
WORKER = re.compile(r"kin-cluster: worker (\d+) pid (\d+) gen (\d+) (\S+) connections (\d+|-)")
TOTAL = re.compile(r"kin-cluster: total connections (\d+|-)")
RESPAWN = re.compile(r"respawn in (\d+) ms")


class Failure(Exception):
    pass


def check(condition, what):
    if not condition:
        raise Failure(what)


# ---------------------------------------------------------------------------------------------
# Processes


def become_subreaper():
    """Orphans of our descendants (a worker kin-cluster left behind) become our children."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def proc_stat(pid):
    """(state, ppid, start time) of `pid`, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces: the fields after it are safe.
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[19])


def children_of(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st and st[1] == pid:
                kids.append(int(entry))
    return kids


def gone(pid, start, timeout=5):
    """True once process `pid` (started at `start`) has exited and been reaped; a zombie that
    was handed to us (its parent exited) is reaped here."""
    deadline = time.monotonic() + timeout
    while True:
        st = proc_stat(pid)
        if st is None or st[2] != start:
            return True
        if st[0] == "Z" and st[1] == os.getpid():
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return True
            except ChildProcessError:
                pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def sweep():
    """Kills and reaps every child of ours but the running kin-clusters; returns the pids and
    command lines of those that were alive, but for those a failed check killed."""
    ours = {c.proc.pid for c in Cluster.running}
    alive = []
    for pid in children_of(os.getpid()):
        if pid in ours:
            continue
        st = proc_stat(pid)
        if st and st[0] != "Z" and pid not in Cluster.killed:
            alive.append((pid, cmdline(pid)))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return alive


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def environ_of(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)


class Lines:
    """The lines of a pipe, read by a thread as they come, each with its arrival time."""

    def __init__(self, pipe):
        self.lines = []
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self.thread.start()

    def _read(self, pipe):
        for raw in iter(pipe.readline, b""):
            with self.cond:
                self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))
                self.cond.notify_all()
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def __len__(self):
        with self.cond:
            return len(self.lines)

    def wait_for(self, pattern, start=0, timeout=10, what=None):
        """The index and match of the first line at `start` or later that matches."""
        deadline = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                while i < len(self.lines):
                    m = pattern.search(self.lines[i][1])
                    if m:
                        return i, m
                    i += 1
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    why = "the pipe closed" if self.closed else f"{timeout} s passed"
                    raise Failure(f"no line like {what or pattern.pattern!r}: {why}")
                self.cond.wait(left)

    def texts(self, start=0, end=None):
        with self.cond:
            return [t for _, t in self.lines[start:end]]


class Status:
    def __init__(self, workers, total):
        self.workers = workers  # [{id, pid, gen, state, connections}]
        self.total = total

    @property
    def pids(self):
        return {w["pid"] for w in self.workers}

    def __str__(self):
        rows = ", ".join(f"#{w['id']} pid {w['pid']} gen {w['gen']} {w['state']} "
                         f"conn {w['connections']}" for w in self.workers)
        return f"[{rows}] total {self.total}"


class Cluster:
    """One kin-cluster in a session of its own, its stdout and stderr read as they come, and
    every child it was seen with remembered, so that a check can tell none is left."""

    running = []
    killed = set()  # pids a failed check killed

    def __init__(self, exe, args, env=None, pass_fds=(), prefix=()):
        environment = dict(os.environ if env is None else env)
        for var in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NODE_UNIQUE_ID",
                    "NODE_CHANNEL_FD", "KIN_CHANNEL_FD"):
            environment.pop(var, None)
        self.args = [*prefix, exe, *args]
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env=environment, pass_fds=pass_fds)
        Cluster.running.append(self)
        self.out = Lines(self.proc.stdout)
        self.err = Lines(self.proc.stderr)
        self.seen = {}  # pid -> start time of every child seen
        self.pids = []
        self.addresses = []
        self.ports = []

    # -- reading ------------------------------------------------------------------------------

    def started(self, timeout=30):
        """Waits for the "started N workers" line; returns the pids, and keeps the listening
        lines before it."""
        i, m = self.out.wait_for(STARTED, timeout=timeout, what="kin-cluster: started N workers")
        self.pids = [int(p) for p in m.group(2).split()]
        check(len(self.pids) == int(m.group(1)), f"pid count in {self.out.texts(i, i + 1)}")
        for text in self.out.texts(0, i):
            lm = LISTENING.fullmatch(text)
            check(lm, f"unexpected line before the started line: {text!r}")
            self.addresses.append(lm.group(1))
            if lm.group(2):
                self.ports.append(int(lm.group(2)))
        self.track()
        return self.pids

    @property
    def port(self):
        check(self.ports, f"no TCP listener announced: stdout {self.out.texts()}")
        return self.ports[0]

    def stderr_tail(self, n=25):
        lines = self.err.texts()
        return "\n    ".join([""] + lines[-n:])

    def fail(self, what):
        raise Failure(f"{what}\n  kin-cluster {' '.join(self.args)}\n  "
                      f"exit status {self.proc.poll()}; last stderr lines:{self.stderr_tail()}")

    def expect(self, condition, what):
        if not condition:
            self.fail(what)

    def track(self):
        """The children now, remembered for the final check."""
        kids = children_of(self.proc.pid)
        for pid in kids:
            st = proc_stat(pid)
            if st:
                self.seen.setdefault(pid, st[2])
        return set(kids)

    def live_children(self):
        """The children that are not zombies."""
        return {p for p in self.track() if (proc_stat(p) or ("Z",))[0] != "Z"}

    def status(self, timeout=10):
        """Sends SIGUSR1 and parses the status it prints to stderr."""
        mark = len(self.err)
        self.expect(self.proc.poll() is None, "kin-cluster exited before SIGUSR1")
        self.proc.send_signal(signal.SIGUSR1)
        try:
            end, m = self.err.wait_for(TOTAL, start=mark, timeout=timeout,
                                       what="kin-cluster: total connections N")
        except Failure as e:
            self.fail(f"status after SIGUSR1: {e}")
        workers = []
        for text in self.err.texts(mark, end):
            wm = WORKER.search(text)
            if wm:
                workers.append({"id": int(wm.group(1)), "pid": int(wm.group(2)),
                                "gen": int(wm.group(3)), "state": wm.group(4),
                                "connections": wm.group(5) if wm.group(5) == "-"
                                else int(wm.group(5))})
        total = m.group(1) if m.group(1) == "-" else int(m.group(1))
        self.track()
        return Status(workers, total)

    def wait_status(self, predicate, what, timeout=15):
        """Polls the status until `predicate` holds for it."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if predicate(st):
                return st
            if time.monotonic() > deadline:
                self.fail(f"{what}: not within {timeout} s; last status {st}")
            time.sleep(0.1)

    # -- ending -------------------------------------------------------------------------------

    def send(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout, what="kin-cluster to exit"):
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"waiting for {what}: still running after {timeout} s")
        self.out.thread.join(5)
        self.err.thread.join(5)
        return self.proc.returncode

    def stop(self, sig=signal.SIGTERM, timeout=15):
        """Sends `sig`, expects status 0 and no child left."""
        self.track()
        self.send(sig)
        status = self.wait(timeout, f"exit after {signal.Signals(sig).name}")
        self.expect(status == 0, f"exit status {status} after {signal.Signals(sig).name}")
        self.no_child_left()

    def no_child_left(self):
        check(self.proc.poll() is not None, "no_child_left before kin-cluster exited")
        left = [(pid, cmdline(pid)) for pid, start in self.seen.items() if not gone(pid, start)]
        self.expect(not left, f"processes left after kin-cluster exited: {left}")
        Cluster.running.remove(self)

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        for pid, start in self.seen.items():
            st = proc_stat(pid)
            if st and st[2] == start:
                Cluster.killed.add(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self in Cluster.running:
            Cluster.running.remove(self)


def run(args, timeout=15):
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def udp_request(port, timeout=10):
    """Sends datagrams to 127.0.0.1:`port` until one is answered "udp PID"; the pid."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        while time.monotonic() < deadline:
            s.sendto(b"ping", ("127.0.0.1", port))
            try:
                data, _ = s.recvfrom(100)
            except socket.timeout:
                continue
            m = re.fullmatch(rb"udp (\d+)", data)
            if m:
                return int(m.group(1))
    raise Failure(f"no answer to a datagram on UDP port {port} in {timeout} s")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Clients


class ClientError(Failure):
    """A request that went wrong: refused, reset, timed out, an empty or short answer."""


def parse_response(data):
    """The pid in a complete HTTP/1.1 200 answer with Connection: close."""
    if not data:
        raise ClientError("empty response")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise ClientError(f"short response (no end of headers): {data[:120]!r}")
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 200"):
        raise ClientError(f"status line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get(b"content-length")
    if length is None or int(length) != len(body):
        raise ClientError(f"short response: Content-Length {length!r}, body {body!r}")
    if headers.get(b"connection", b"").lower() != b"close":
        raise ClientError(f"no Connection: close in {head!r}")
    m = BODY.fullmatch(body)
    if not m:
        raise ClientError(f"body {body!r}")
    return int(m.group(2))


def read_to_end(s):
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk


def exchange(s, request=REQUEST):
    """Sends `request` on connected socket `s` and reads the answer to the end; the pid."""
    try:
        s.sendall(request)
        return parse_response(read_to_end(s))
    except ConnectionRefusedError:
        raise ClientError("refused")
    except ConnectionResetError:
        raise ClientError("reset")
    except BrokenPipeError:
        raise ClientError("broken pipe")
    except socket.timeout:
        raise ClientError("timed out")
    except OSError as e:
        raise ClientError(f"{e}")


def connect(address, timeout=10):
    if isinstance(address, int):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        target = ("127.0.0.1", address)
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = address
    s.settimeout(timeout)
    try:
        s.connect(target)
    except ConnectionRefusedError:
        s.close()
        raise ClientError("refused")
    except socket.timeout:
        s.close()
        raise ClientError("connect timed out")
    except OSError as e:
        s.close()
        raise ClientError(f"connect: {e}")
    return s


def request(address, path="/", timeout=10):
    """One request on a new connection (a port on 127.0.0.1, or a Unix socket's path)."""
    s = connect(address, timeout)
    try:
        return exchange(s, REQUEST.replace(b" / ", f" {path} ".encode(), 1))
    finally:
        s.close()


class Load:
    """`clients` threads making one request per new connection, `total` in all or until
    finish(); every answer's pid and the time its request began, and every failure, recorded."""

    def __init__(self, address, total=None, clients=8, deadline=50):
        self.address = address
        self.total = total
        self.lock = threading.Lock()
        self.issued = 0
        self.answers = []  # (monotonic time the request began, pid)
        self.failed = []  # (monotonic time the request began, what went wrong)
        self.stopping = threading.Event()
        self.deadline = time.monotonic() + deadline
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self):
        while not self.stopping.is_set() and time.monotonic() < self.deadline:
            with self.lock:
                if self.total is not None and self.issued >= self.total:
                    return
                self.issued += 1
            began = time.monotonic()
            try:
                pid = request(self.address)
                with self.lock:
                    self.answers.append((began, pid))
            except ClientError as e:
                with self.lock:
                    self.failed.append((began, str(e)))

    def failures(self, since=0.0):
        """How many requests begun at `since` or later failed, by kind of failure."""
        with self.lock:
            return collections.Counter(what.split(":")[0] for t, what in self.failed
                                       if t >= since)

    @property
    def done(self):
        with self.lock:
            return len(self.answers)

    def wait_answers(self, n, timeout=30):
        deadline = time.monotonic() + timeout
        while self.done < n:
            check(time.monotonic() < deadline,
                  f"only {self.done} answers of {n} within {timeout} s "
                  f"(failures {dict(self.failures())})")
            time.sleep(0.01)

    def wait_answers_since(self, since, n, timeout=30):
        """Waits for `n` answers to requests begun at `since` or later."""
        deadline = time.monotonic() + timeout
        while sum(self.pids(since).values()) < n:
            check(time.monotonic() < deadline,
                  f"fewer than {n} answers within {timeout} s (failures {dict(self.failures())})")
            time.sleep(0.01)

    def join(self, timeout=60):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        check(not any(t.is_alive() for t in self.threads), f"clients still busy after {timeout} s")

    def finish(self):
        self.stopping.set()
        self.join()

    def pids(self, since=0.0):
        """How many answers each pid gave, to requests begun at `since` or later."""
        with self.lock:
            return collections.Counter(pid for t, pid in self.answers if t >= since)

    def no_failures(self, what, since=0.0):
        """Checks that every request begun at `since` or later was answered."""
        failures = self.failures(since)
        n = sum(failures.values())
        with self.lock:
            samples = [w for t, w in self.failed if t >= since][:10]
            made = sum(1 for t, _ in self.answers if t >= since) + n
        check(n == 0, f"{what}: {n} of {made} requests failed {dict(failures)}, e.g. {samples}")


def idle_connections(port, k):
    """K connections that send nothing (kin-cluster-hello holds them open)."""
    conns = []
    try:
        for _ in range(k):
            conns.append(connect(port))
    except ClientError:
        for s in conns:
            s.close()
        raise
    return conns


def still_open(s):
    """True when nothing (no answer, no end of stream, no error) came on idle connection `s`."""
    readable, _, _ = select.select([s], [], [], 0)
    return not readable


# ---------------------------------------------------------------------------------------------
# The checks


class Context:
    def __init__(self, exe, hello):
        self.exe = exe
        self.hello = hello

    def cluster(self, *args, program=None, **kw):
        return Cluster(self.exe, [*args, "--", *(program or [self.hello])], **kw)


def first_generation(c, n):
    """Started with `n` workers, all of them kin-cluster's children, all ready."""
    pids = c.started()
    c.expect(len(pids) == n, f"started {len(pids)} workers, wanted {n}")
    c.expect(c.live_children() == set(pids),
             f"children {sorted(c.live_children())}, announced {sorted(pids)}")
    return c.wait_status(lambda st: len(st.workers) == n and
                         all(w["state"] == "ready" for w in st.workers),
                         f"{n} workers ready")


def check_serve(ctx, mode):
    n, total = 4, 10_000
    c = ctx.cluster("--mode", mode, "--workers", str(n), "--listen", "127.0.0.1:0")
    first_generation(c, n)
    started = time.monotonic()
    load = Load(c.port, total=total, deadline=50)
    load.join(timeout=55)
    took = time.monotonic() - started
    load.no_failures(f"{mode}: {total} connections")
    c.expect(load.done == total, f"{load.done} answers of {total} in {took:.1f} s")
    pids = load.pids()
    c.expect(set(pids) <= set(c.pids), f"answers from {dict(pids)}, workers {c.pids}")
    c.expect(len(pids) > 1, f"{mode}: every answer from one worker: {dict(pids)}")
    if mode == "round-robin":
        # Handed in turn to ready workers: each gets its share, give or take.
        c.expect(len(pids) == n and min(pids.values()) >= total // (2 * n),
                 f"round-robin: answers per worker {dict(pids)}")
    # Every connection was closed: the live count is back to zero everywhere.
    c.wait_status(lambda st: st.total == 0 and all(w["connections"] == 0 for w in st.workers),
                  "the connection count back to 0 after the clients closed")
    c.stop()
    print(f"  {mode}: {total} connections in {took:.1f} s, answers per worker {dict(pids)}")


def check_kill_worker(ctx):
    n = 3
    c = ctx.cluster("--mode", "round-robin", "--workers", str(n), "--listen", "127.0.0.1:0")
    first_generation(c, n)
    victim = c.pids[1]
    victim_start = proc_stat(victim)[2]
    load = Load(c.port, total=5000, deadline=50)
    load.wait_answers(800)
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    c.expect(gone(victim, victim_start, timeout=5),
             f"killed worker {victim} not reaped by kin-cluster")
    reaped_at = time.monotonic()
    load.join(timeout=55)
    # The requests the victim itself was serving die with it: at most one per client. Those
    # handed to it and not yet taken go to the others; and once it is reaped, nothing fails.
    lost = sum(load.failures().values())
    c.expect(lost <= 8, f"{lost} requests failed around a worker's death (at most the 8 in "
                        f"flight may): {dict(load.failures())}")
    load.no_failures("round-robin, requests begun after the killed worker was reaped",
                     since=reaped_at)
    c.expect(load.done + lost == 5000, f"{load.done} answers and {lost} failures of 5000")
    st = c.wait_status(lambda st: len(st.workers) == n and victim not in st.pids and
                       all(w["state"] == "ready" for w in st.workers),
                       f"{n} ready workers again, {victim} replaced")
    fresh = st.pids - set(c.pids)
    c.expect(len(fresh) == 1 and st.pids - fresh == set(c.pids) - {victim},
             f"after killing {victim} of {c.pids}: workers {st}")
    respawned = fresh.pop()
    c.expect(respawned in c.live_children(), f"respawned {respawned} not kin-cluster's child")
    later = load.pids(since=killed_at)
    if respawned not in later:
        # The load may have ended before the new worker was ready: it takes its turn now.
        answers = collections.Counter(request(c.port) for _ in range(3 * n))
        c.expect(respawned in answers, f"respawned worker {respawned} takes no connection: "
                                       f"{dict(answers)}")
    respawns = [t for t in c.err.texts() if RESPAWN.search(t)]
    c.expect(respawns, "no 'respawn in N ms' line after a worker was killed")
    c.stop()
    print(f"  {lost} of 5000 requests lost with the killed worker, "
          f"answers since the kill {dict(later)}")


def check_crash_loop(ctx):
    # One worker, so that the delays form one series: 100, 200, 400, 800, 1000 (the cap), then
    # the sixth death in the window is one more than --crash-limit 5. Each run of the worker
    # notes when it started (in nanoseconds), to show that the delays were waited.
    limit, cap_ms = 5, 1000
    tmp = tempfile.mkdtemp(prefix="kinc")
    starts_file = os.path.join(tmp, "starts")
    c = ctx.cluster("--workers", "1", "--listen", "127.0.0.1:0", "--crash-limit", str(limit),
                    "--crash-window", "30", "--backoff-max", str(cap_ms // 1000),
                    program=["/bin/sh", "-c", 'date +%s%N >> "$0"; exit 3', starts_file])
    try:
        status = c.wait(20, "the crash-loop stop")
        with open(starts_file) as f:
            starts = [int(line) / 1e9 for line in f]
    except FileNotFoundError:
        starts = []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    c.expect(status == 1, f"'sh -c exit 3' workers: exit status {status}, wanted 1")
    lines = c.err.lines
    respawns = [(t, int(RESPAWN.search(text).group(1))) for t, text in lines
                if RESPAWN.search(text)]
    delays = [d for _, d in respawns]
    crash = [i for i, (_, text) in enumerate(lines) if "crash loop" in text]
    c.expect(crash, "no 'crash loop' line")
    c.expect(delays, "no 'respawn in N ms' line")
    c.expect(delays[0] == 100, f"first respawn delay {delays[0]} ms, wanted 100: {delays}")
    c.expect(all(b == min(2 * a, cap_ms) for a, b in zip(delays, delays[1:])),
             f"respawn delays {delays} do not double up to {cap_ms} ms")
    c.expect(len(delays) == limit,
             f"{len(delays)} respawns before the crash-loop stop, wanted {limit} "
             f"(more than --crash-limit {limit} deaths stop it): {delays}")
    c.expect(len(starts) == limit + 1, f"{len(starts)} runs of the worker, wanted {limit + 1}")
    for d, t0, t1 in zip(delays, starts, starts[1:]):
        c.expect(t1 - t0 >= d / 1000,
                 f"a respawn announced {d} ms after a death started {1000 * (t1 - t0):.0f} ms "
                 f"after the run before")
    c.expect(crash[-1] > max(i for i, (_, text) in enumerate(lines) if RESPAWN.search(text)),
             "'crash loop' before the last respawn")
    c.no_child_left()

    # Two workers that exit at once, each slot with its own series of delays: the crash loop
    # counts the deaths of both.
    c = ctx.cluster("--workers", "2", "--listen", "127.0.0.1:0", "--crash-limit", "4",
                    "--crash-window", "30", "--backoff-max", "1", program=["/bin/false"])
    status = c.wait(20, "the crash-loop stop")
    c.expect(status == 1, f"/bin/false workers: exit status {status}, wanted 1")
    text = "\n".join(c.err.texts())
    delays = [int(m.group(1)) for m in RESPAWN.finditer(text)]
    c.expect("crash loop" in text, "no 'crash loop' line")
    c.expect(len(delays) == 4 and sorted(delays) == [100, 100, 200, 200],
             f"two workers, --crash-limit 4: respawn delays {delays}, wanted 100 and 200 each")
    c.no_child_left()

    # Deaths further apart than the window: respawned again and again, never a crash loop.
    c = ctx.cluster("--workers", "1", "--listen", "127.0.0.1:0", "--crash-limit", "2",
                    "--crash-window", "1", "--backoff-max", "1",
                    program=["/bin/sh", "-c", "sleep 0.5; exit 3"])
    deadline = time.monotonic() + 20
    while sum(1 for t in c.err.texts() if RESPAWN.search(t)) < 5:
        c.expect(c.proc.poll() is None, "stopped although no 3 deaths fell within 1 s")
        c.expect(time.monotonic() < deadline, "fewer than 5 respawns within 20 s")
        time.sleep(0.05)
    c.expect(not any("crash loop" in t for t in c.err.texts()),
             "crash loop with deaths more than --crash-window apart")
    c.stop()


def reload_and_wait(c, n, gen, seen_pids, timeout=40):
    """SIGHUP, then waits until exactly `n` ready workers of generation `gen`+1 are left."""
    c.send(signal.SIGHUP)
    st = c.wait_status(lambda st: len(st.workers) == n and
                       all(w["gen"] == gen + 1 and w["state"] == "ready" for w in st.workers),
                       f"reload to generation {gen + 1}: {n} ready workers of it and no other",
                       timeout=timeout)
    c.expect(not st.pids & seen_pids, f"generation {gen + 1} reuses a pid: {st}")
    return st


def check_reload(ctx, mode):
    n = 3
    c = ctx.cluster("--mode", mode, "--workers", str(n), "--listen", "127.0.0.1:0",
                    "--grace", "10")
    st = first_generation(c, n)
    c.expect(all(w["gen"] == 1 for w in st.workers), f"first generation: {st}")
    load = Load(c.port, deadline=55)
    try:
        load.wait_answers(200)
        seen = set(c.pids)
        old = {pid: proc_stat(pid)[2] for pid in seen}
        gen = 1
        for _ in range(4):
            st = reload_and_wait(c, n, gen, seen)
            gen += 1
            for pid, start in old.items():
                c.expect(gone(pid, start), f"old worker {pid} still there after the reload")
            # Once the old ones are gone, only the new generation answers.
            since = time.monotonic()
            load.wait_answers_since(since, 100)
            answered = set(load.pids(since))
            c.expect(answered <= st.pids,
                     f"answers after reload {gen - 1} from {answered}, generation {gen} is {st}")
            seen |= st.pids
            old = {pid: proc_stat(pid)[2] for pid in st.pids}
        # Two SIGHUPs at once: whatever kin-cluster makes of the second, it ends with one
        # generation of n ready workers, newer than before, and still refuses nothing.
        c.send(signal.SIGHUP)
        time.sleep(0.05)
        c.send(signal.SIGHUP)
        st = c.wait_status(lambda st: len(st.workers) == n and
                           len({w["gen"] for w in st.workers}) == 1 and
                           st.workers[0]["gen"] > gen and
                           all(w["state"] == "ready" for w in st.workers) and
                           not st.pids & seen,
                           "after two SIGHUPs in a row: one new generation of ready workers",
                           timeout=40)
        load.wait_answers_since(time.monotonic(), 100)
    finally:
        load.finish()
    load.no_failures(f"{mode}: requests during reloads")
    c.expect(load.done >= 1000, f"only {load.done} requests made across the reloads")
    c.stop()
    print(f"  {mode}: {load.done} requests across 6 SIGHUPs, none failed")


def check_status(ctx, mode):
    n, k = 3, 12
    c = ctx.cluster("--mode", mode, "--workers", str(n), "--listen", "127.0.0.1:0")
    st = first_generation(c, n)
    c.expect(st.pids == set(c.pids), f"status {st}, started {c.pids}")
    c.expect(len({w["id"] for w in st.workers}) == n, f"worker ids not distinct: {st}")
    c.expect(all(w["gen"] == 1 and w["connections"] == 0 for w in st.workers) and st.total == 0,
             f"fresh workers: {st}")
    conns = idle_connections(c.port, k)
    try:
        if mode == "round-robin":
            st = c.wait_status(lambda st: st.total == k, f"total connections {k}")
            c.expect(all(isinstance(w["connections"], int) and w["connections"] > 0
                         for w in st.workers), f"{k} connections not spread over {n}: {st}")
        else:
            st = c.wait_status(lambda st: st.total == k, f"total connections {k}")
        c.expect(sum(w["connections"] for w in st.workers) == k,
                 f"per-worker counts do not add up to {k}: {st}")
        # Held, not just not closed yet: after a second and a half of silence (longer than the
        # worker's one-second linger after an answer), a request on one is still answered.
        time.sleep(1.5)
        c.expect(all(still_open(s) for s in conns), "an idle connection was not held open")
        per_worker = {w["pid"]: w["connections"] for w in st.workers}
        # Ask on five of them, which says which worker holds each; closing them takes five off
        # that worker's count (an answered connection counts until the client closes it).
        closing = conns[:5]
        conns = conns[5:]
        for s in closing:
            try:
                pid = exchange(s)
            except ClientError as e:
                c.fail(f"a request on a connection idle for more than 1.5 s: {e}")
            c.expect(pid in per_worker, f"answer from {pid}, workers {per_worker}")
            per_worker[pid] -= 1
        st = c.status()
        c.expect(st.total == k, f"answered but still open connections not counted: {st}")
        for s in closing:
            s.close()
        st = c.wait_status(lambda st: st.total == k - 5 and
                           {w["pid"]: w["connections"] for w in st.workers} == per_worker,
                           f"after closing 5: total {k - 5}, per worker {per_worker}")
    finally:
        for s in conns:
            s.close()
    c.wait_status(lambda st: st.total == 0 and all(w["connections"] == 0 for w in st.workers),
                  "total connections 0 after closing them all")
    c.stop()


def check_activation(ctx):
    # kin-cluster binds a TCP and a Unix listener and starts socket-activated workers.
    tmp = tempfile.mkdtemp(prefix="kinc")
    path = os.path.join(tmp, "a.sock")
    listen = ["127.0.0.1:0", path]
    try:
        c = ctx.cluster("--activation", "--mode", "shared", "--workers", "2",
                        "--listen", listen[0], "--listen", listen[1], "--grace", "10",
                        program=[sys.executable, ACTIVATION_SERVER])
        pids = c.started()
        c.expect(len(pids) == 2 and c.live_children() == set(pids),
                 f"workers {pids}, children {c.live_children()}")
        c.expect(c.addresses[1:] == [f"unix:{path}"], f"listening lines {c.out.texts()}")
        # Each worker says what it was given: both descriptors, named by the --listen addresses
        # with ':' made '_' (a name in LISTEN_FDNAMES cannot hold ':').
        names = ":".join(a.replace(":", "_") for a in listen)
        for pid in pids:
            _, m = c.err.wait_for(re.compile(rf"activation_server: pid {pid} fds (\d+) names (.*)"),
                                  timeout=20, what=f"activation_server: pid {pid} ...")
            c.expect(m.group(1) == "2" and m.group(2) == names,
                     f"worker {pid} got {m.group(0)!r}, wanted 2 fds named {names!r}")
        for address in (c.port, path):
            load = Load(address, total=300)
            load.join()
            load.no_failures(f"activation workers on {address}")
            c.expect(set(load.pids()) <= set(pids), f"answers from {dict(load.pids())}")
        st = c.status()
        c.expect(len(st.workers) == 2 and all(w["connections"] == "-" for w in st.workers),
                 f"activation workers' connections should show as '-': {st}")
        # SIGTERM while a slow request is in the worker: it is answered, then status 0.
        s = connect(c.port)
        s.sendall(REQUEST.replace(b" / ", b" /slow ", 1))
        c.err.wait_for(re.compile(r"activation_server: pid \d+ serving /slow"), timeout=10)
        c.track()
        c.send(signal.SIGTERM)
        try:
            pid = parse_response(read_to_end(s))
        except (ClientError, OSError) as e:
            c.fail(f"request in flight at SIGTERM not answered: {e}")
        finally:
            s.close()
        c.expect(pid in pids, f"slow request answered by {pid}")
        status = c.wait(15)
        c.expect(status == 0, f"exit status {status} after SIGTERM")
        c.no_child_left()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # kin-cluster killed with SIGKILL: its activation workers, which have no channel whose end
    # would tell them, get SIGTERM from the kernel (the workers' parent_death_signal) and leave.
    c = ctx.cluster("--activation", "--mode", "shared", "--workers", "2",
                    "--listen", "127.0.0.1:0", program=[sys.executable, ACTIVATION_SERVER])
    pids = c.started()
    c.expect(c.live_children() == set(pids), f"workers {pids}, children {c.live_children()}")
    c.send(signal.SIGKILL)
    status = c.wait(10)
    c.expect(status == -signal.SIGKILL, f"exit status {status} after SIGKILL")
    c.no_child_left()
    # kin workers are not signalled: they see their channel end and finish the request in
    # flight before they go.
    c = ctx.cluster("--mode", "shared", "--workers", "1", "--listen", "127.0.0.1:0")
    first_generation(c, 1)
    s = connect(c.port)
    try:
        s.sendall(REQUEST[:10])
        c.wait_status(lambda st: st.total == 1, "the half-sent request's connection counted")
        c.track()
        c.send(signal.SIGKILL)
        # Not c.wait(): the worker holds kin-cluster's stdout and stderr until it exits.
        status = c.proc.wait(timeout=10)
        c.expect(status == -signal.SIGKILL, f"exit status {status} after SIGKILL")
        s.sendall(REQUEST[10:])
        pid = parse_response(read_to_end(s))
        c.expect(pid in c.pids, f"answered by {pid}, workers {c.pids}")
    except (ClientError, OSError) as e:
        c.fail(f"the request in flight when kin-cluster was killed: {e}")
    finally:
        s.close()
    c.no_child_left()

    # kin-cluster socket-activated itself: fd 3 is its listener. Both with kin workers
    # (round-robin), and passing it on to activation workers (shared).
    for mode, program in (("round-robin", [ctx.hello]),
                          ("shared", [sys.executable, ACTIVATION_SERVER])):
        with socket.socket() as lsock:
            lsock.bind(("127.0.0.1", 0))
            lsock.listen(64)
            port = lsock.getsockname()[1]
            extra = ["--activation"] if mode == "shared" else []
            c = Cluster(ctx.exe, [*extra, "--mode", mode, "--workers", "2", "--", *program],
                        prefix=[sys.executable, "-c", ACTIVATE, str(lsock.fileno())],
                        pass_fds=(lsock.fileno(),))
        pids = c.started()
        c.expect(c.ports == [port],
                 f"socket-activated kin-cluster announced {c.out.texts()}, was given port {port}")
        load = Load(port, total=200)
        load.join()
        load.no_failures(f"socket-activated kin-cluster ({mode})")
        c.expect(set(load.pids()) <= set(pids), f"answers from {dict(load.pids())}, {pids}")
        if mode == "round-robin":
            for pid in pids:
                env = environ_of(pid)
                leaked = {k: v for k, v in env.items() if k.startswith(b"LISTEN_")}
                c.expect(not leaked, f"kin worker {pid} inherited {leaked}")
        else:
            for pid in pids:
                _, m = c.err.wait_for(re.compile(rf"activation_server: pid {pid} fds (\d+) "
                                                 r"names (.*)"), timeout=10)
                c.expect(m.group(1) == "1" and m.group(2) == "web",
                         f"worker {pid} got {m.group(0)!r}, wanted 1 fd named 'web'")
        c.stop()


# Run as kin-cluster's own process before it: puts descriptor argv[1] at 3 and says so in
# LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES, then executes the rest of argv in the same process.
ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.set_inheritable(3, True)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="web")
os.execv(sys.argv[2], sys.argv[2:])
"""


def check_node(ctx, mode):
    node = shutil.which("node")
    port = free_port()
    udp_port = free_udp_port()
    env = dict(os.environ, PORT=str(port), UDP_PORT=str(udp_port))
    for var in ("NODE_UNIQUE_ID", "NODE_CHANNEL_FD", "NODE_OPTIONS"):
        env.pop(var, None)
    c = ctx.cluster("--node", "--mode", mode, "--workers", "2", "--grace", "10",
                    program=[node, NODE_APP], env=env)
    pids = c.started(timeout=40)
    # The listener is bound when the workers ask for it.
    c.out.wait_for(re.compile(rf"kin-cluster: listening on 127\.0\.0\.1:{port}$"), timeout=30)
    c.expect(len(pids) == 2 and c.live_children() == set(pids),
             f"node workers {pids}, children {c.live_children()}")
    load = Load(port, total=600, deadline=50)
    load.join(timeout=55)
    load.no_failures(f"--node {mode}")
    pids_seen = load.pids()
    c.expect(load.done == 600, f"{load.done} answers of 600")
    c.expect(set(pids_seen) <= set(pids),
             f"answers from {dict(pids_seen)}, kin-cluster's workers are {pids}")
    if mode == "round-robin":
        c.expect(set(pids_seen) == set(pids), f"round-robin: answers only from {dict(pids_seen)}")
    st = c.status()
    c.expect(st.pids == set(pids) and all(w["connections"] == "-" for w in st.workers),
             f"node workers in the status: {st}")
    # UDP: the workers' datagram socket is bound by kin-cluster and shared with both.
    udp_pid = udp_request(udp_port)
    c.expect(udp_pid in pids, f"a datagram answered by {udp_pid}, not one of {pids}")
    # A worker that leaves by itself (cluster.worker.disconnect()) is replaced at once.
    left = request(port, "/leave")
    c.expect(left in pids, f"/leave answered by {left}, not one of {pids}")
    c.wait_status(lambda st: len(st.workers) == 2 and left not in st.pids,
                  f"worker {left} replaced after it disconnected itself", timeout=30)
    load = Load(port, total=100, deadline=30)
    load.join(timeout=35)
    load.no_failures(f"--node {mode} after a worker left")
    c.stop(timeout=20)
    print(f"  node {mode}: answers per worker {dict(pids_seen)}; worker {left} left and was "
          f"replaced; UDP answered by {udp_pid}")
    if mode == "shared":
        check_closed_stdout(ctx, node, env, port)


def check_closed_stdout(ctx, node, env, port):
    # kin-cluster | head -1: its stdout closes after the first line, and with --node the
    # listening line comes later, when a worker asks. It must survive that (no SIGPIPE) and
    # still stop in order.
    proc = subprocess.Popen([ctx.exe, "--node", "--mode", "shared", "--workers", "1",
                             "--", node, NODE_APP], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        first = proc.stdout.readline()
        check(b"started 1 worker" in first, f"first line {first!r}")
        proc.stdout.close()
        deadline = time.monotonic() + 30
        pid = 0
        while not pid and time.monotonic() < deadline:
            try:
                pid = request(port, timeout=10)
            except ClientError:  # refused until the worker's listen() made kin-cluster bind it
                time.sleep(0.1)
        check(pid > 0, "no answer after stdout closed")
        check(proc.poll() is None, f"kin-cluster died (status {proc.returncode}) once its "
              "stdout was closed")
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(20)
        check(status == 0, f"exit status {status} after SIGTERM")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    print("  node: kin-cluster with its stdout closed keeps serving and stops with status 0")


def refused_soon(port, timeout=3):
    """True once a new connection to `port` is refused."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            connect(port, timeout=1).close()
        except ClientError as e:
            if str(e) == "refused":
                return True
        time.sleep(0.05)
    return False


def in_flight(port, k):
    """K connections whose requests are half sent."""
    conns = idle_connections(port, k)
    for s in conns:
        s.sendall(PARTIAL)
    return conns


def check_stop(ctx, mode):
    n, k = 2, 6
    # Requests in flight when SIGTERM comes are still served; new connections are refused;
    # then status 0.
    c = ctx.cluster("--mode", mode, "--workers", str(n), "--listen", "127.0.0.1:0",
                    "--grace", "20")
    first_generation(c, n)
    conns = in_flight(c.port, k)
    try:
        c.wait_status(lambda st: st.total == k, f"{k} connections in flight")
        c.track()
        c.send(signal.SIGTERM)
        c.expect(refused_soon(c.port), "new connections not refused after SIGTERM")
        c.expect(c.proc.poll() is None, "exited at SIGTERM with requests in flight")
        for s in conns:
            try:
                pid = exchange(s, REST)
            except ClientError as e:
                c.fail(f"a request in flight at SIGTERM was not answered: {e}")
            c.expect(pid in c.pids, f"answered by {pid}, not a worker of {c.pids}")
    finally:
        for s in conns:
            s.close()
    closed = time.monotonic()
    status = c.wait(10, "exit once the connections in flight are done")
    c.expect(status == 0, f"exit status {status} after SIGTERM")
    c.expect(time.monotonic() - closed < 8, "waited for --grace with nothing in flight")
    c.no_child_left()

    # --grace 1 ends the drain of a request that never completes.
    c = ctx.cluster("--mode", mode, "--workers", str(n), "--listen", "127.0.0.1:0",
                    "--grace", "1")
    first_generation(c, n)
    with in_flight(c.port, 1)[0]:
        c.wait_status(lambda st: st.total == 1, "a request in flight")
        c.track()
        t = time.monotonic()
        c.send(signal.SIGTERM)
        status = c.wait(10, "the end of --grace 1")
        took = time.monotonic() - t
    c.expect(status == 0, f"exit status {status} after SIGTERM and --grace")
    c.expect(0.7 <= took <= 8, f"with a request in flight and --grace 1, exited after {took:.1f} s")
    c.no_child_left()

    # A second SIGTERM kills at once, --grace 30 notwithstanding; and SIGINT stops too.
    c = ctx.cluster("--mode", mode, "--workers", str(n), "--listen", "127.0.0.1:0",
                    "--grace", "30")
    first_generation(c, n)
    with in_flight(c.port, 1)[0]:
        c.wait_status(lambda st: st.total == 1, "a request in flight")
        c.track()
        c.send(signal.SIGTERM)
        time.sleep(0.3)
        c.expect(c.proc.poll() is None, "exited at the first SIGTERM with a request in flight")
        t = time.monotonic()
        c.send(signal.SIGTERM)
        status = c.wait(5, "exit after a second SIGTERM")
    c.expect(status == 0, f"exit status {status} after two SIGTERMs")
    c.expect(time.monotonic() - t < 5, "a second SIGTERM did not end it at once")
    c.no_child_left()

    c = ctx.cluster("--mode", mode, "--workers", str(n), "--listen", "127.0.0.1:0")
    first_generation(c, n)
    c.expect(request(c.port) in c.pids, "no answer")
    c.stop(signal.SIGINT)


def check_usage(ctx):
    tmp = tempfile.mkdtemp(prefix="kinc")
    marker = os.path.join(tmp, "started")
    program = ["--", "/bin/sh", "-c", f"touch {marker}; sleep 5"]
    try:
        for args, what in [
            (["--listen", "127.0.0.1:0"], "no program"),
            (["--listen", "127.0.0.1:0", "--"], "no program after --"),
            (["--activation", "--mode", "round-robin", "--listen", "127.0.0.1:0", *program],
             "--activation with round-robin"),
            (["--activation", "--node", "--mode", "shared", "--listen", "127.0.0.1:0",
              *program], "--activation with --node"),
            (["--listen", "127.0.0.1", *program], "--listen without a port"),
            (["--listen", "127.0.0.1:", *program], "--listen with an empty port"),
            (["--listen", "127.0.0.1:65536", *program], "--listen port out of range"),
            (["--listen", "127.0.0.1:http", *program], "--listen port not a number"),
            (["--listen", "300.1.2.3:80", *program], "--listen bad IPv4"),
            (["--listen", "localhost:80", *program], "--listen host not a literal"),
            (["--listen", "[::1", *program], "--listen unclosed ["),
            (["--listen", "", *program], "--listen empty"),
            (["--listen", "127.0.0.1:0", "--workers", "0", *program], "--workers 0"),
            (["--listen", "127.0.0.1:0", "--workers", "-1", *program], "--workers -1"),
            (["--listen", "127.0.0.1:0", "--workers", "two", *program], "--workers two"),
            (["--listen", "127.0.0.1:0", "--workers", "2x", *program], "--workers 2x"),
            (["--listen", "127.0.0.1:0", "--workers", "", *program], "--workers empty"),
            (["--listen", "127.0.0.1:0", "--workers", "99999999999999999999", *program],
             "--workers overflowing"),
            (["--listen", "127.0.0.1:0", "--workers"], "--workers without a value"),
            (["--listen", "127.0.0.1:0", "--mode", "fast", *program], "--mode fast"),
            (["--listen", "127.0.0.1:0", "--grace", "soon", *program], "--grace soon"),
            (["--listen", "127.0.0.1:0", "--grace", "-1", *program], "--grace -1"),
            (["--listen", "127.0.0.1:0", "--crash-limit", "x", *program], "--crash-limit x"),
            (["--listen", "127.0.0.1:0", "--frobnicate", *program], "unknown option"),
        ]:
            status, out, err = run([ctx.exe, *args])
            check(status == 2, f"{what}: {args}: exit status {status}, wanted 2; "
                               f"stderr {err.strip()!r}")
            check(err.strip(), f"{what}: {args}: nothing on stderr")
            check(out == "", f"{what}: {args}: stdout {out!r}")
            check(not os.path.exists(marker), f"{what}: {args}: the program was started")

        # A port in use: status 1, nothing started.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            status, out, err = run([ctx.exe, "--listen", f"127.0.0.1:{port}", *program])
        check(status == 1, f"port in use: exit status {status}, wanted 1; stderr {err!r}")
        check(err.strip(), "port in use: nothing on stderr")
        check(not os.path.exists(marker), "port in use: the program was started")

        # A program that does not exist cannot start: status 1.
        status, out, err = run([ctx.exe, "--listen", "127.0.0.1:0", "--",
                                os.path.join(tmp, "no-such-program")], timeout=30)
        check(status == 1, f"missing program: exit status {status}, wanted 1; stderr {err!r}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


GROUPS = {
    "serve": (True, check_serve),
    "kill-worker": (False, check_kill_worker),
    "crash-loop": (False, check_crash_loop),
    "reload": (True, check_reload),
    "status": (True, check_status),
    "activation": (False, check_activation),
    "node": (True, check_node),
    "stop": (True, check_stop),
    "usage": (False, check_usage),
}


def main():
    if len(sys.argv) < 4 or sys.argv[3] not in GROUPS:
        print(__doc__, file=sys.stderr)
        return 2
    exe, hello, group = sys.argv[1:4]
    takes_mode, fn = GROUPS[group]
    if takes_mode != (len(sys.argv) == 5) or (takes_mode and sys.argv[4] not in MODES):
        print(__doc__, file=sys.stderr)
        return 2
    if not os.path.isdir("/proc/self"):
        print("no /proc: skipped")
        return SKIP
    if group == "node" and shutil.which("node") is None:
        print("node is not installed: skipped")
        return SKIP
    become_subreaper()
    name = " ".join(sys.argv[3:])
    ctx = Context(exe, hello)
    failed = False
    try:
        fn(ctx, *sys.argv[4:])
    except Failure as e:
        failed = True
        text = str(e)
        if "last stderr lines" not in text:
            for c in Cluster.running:
                text += (f"\n  kin-cluster {' '.join(c.args)}\n  exit status {c.proc.poll()}; "
                         f"last stderr lines:{c.stderr_tail()}")
        print(f"FAILED: {name}: {text}")
    finally:
        for c in list(Cluster.running):
            c.kill()
        strays = sweep()
    if strays:
        failed = True
        print(f"FAILED: {name}: processes left behind: {strays}")
    if not failed:
        print(f"ok: {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
