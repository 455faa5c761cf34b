#!/usr/bin/env python3
"""The cluster benchmark: the same hello-world Node.js cluster app (cluster_app.js, 2 workers)
under Node's own primary and under `kin-cluster --node`, in round-robin and shared mode, and
kin-cluster-hello (a kin::cluster_worker) under kin-cluster in both modes, all driven by wrk with
the same settings: requests/s and p99 latency.

    cluster_bench.py [options] KIN_CLUSTER KIN_CLUSTER_HELLO

KIN_CLUSTER and KIN_CLUSTER_HELLO are the built programs (build-bench/tools/kin-cluster/...);
a configuration whose program is missing is reported as skipped. Options: --runs N (1; with
more, each figure is the median of N and the configurations alternate run by run), --duration
SECONDS (10, per measured wrk run), --warmup SECONDS (2, one unreported wrk run after each
start), --threads T and --connections C (wrk's -t and -c: 2 and 16), --workers N (2), --only
NAME[,NAME] (those configurations alone), --node PATH (node), --wrk PATH (wrk).

Every configuration runs on a free 127.0.0.1 port: the server is started in a session of its
own, polled with a connect and a GET until it answers 200 (at most 20 s), warmed up, measured
with `wrk --latency -H 'Connection: close'` (every request a new connection, so that the
primary, which only deals with accepting, takes part in each), then stopped with SIGTERM (at most
10 s, then SIGKILL); the benchmark checks that nothing of the session is left (workers may have
process groups of their own) and kills what is as a last resort (reported). Output: a `#` line
per run (with the CPU time per request of wrk and, on Linux, of the primary and of the workers
during the measured run, from /proc), then per comparison a `#` line with every run and a line
`BENCH <name> <unit> kin=<median> node=<median> ratio=<kin/node>`: requests/s (higher is better)
and p99 latency in ms (lower is better). Exits 1 when a run failed or a server did not stop
cleanly (its figures are still given), else 0.
"""
import argparse
import ctypes
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "cluster_app.js")

# name -> (kind, mode): kind node_primary (node cluster_app.js), node_kin (kin-cluster --node),
# kin (kin-cluster with kin-cluster-hello); mode round-robin or shared.
CONFIGS = {
    "node_primary_rr": ("node_primary", "round-robin"),
    "node_primary_shared": ("node_primary", "shared"),
    "node_kin_rr": ("node_kin", "round-robin"),
    "node_kin_shared": ("node_kin", "shared"),
    "kin_rr": ("kin", "round-robin"),
    "kin_shared": ("kin", "shared"),
}

# (BENCH name, unit, kin configuration, node configuration, figure): requests/s and p99.
COMPARISONS = [
    ("cluster_node_rr", "requests/s", "node_kin_rr", "node_primary_rr", "rps"),
    ("cluster_node_shared", "requests/s", "node_kin_shared", "node_primary_shared", "rps"),
    ("cluster_kin_worker_rr", "requests/s", "kin_rr", "node_primary_rr", "rps"),
    ("cluster_kin_worker_shared", "requests/s", "kin_shared", "node_primary_shared", "rps"),
    # The "kin workers >= 3x Node's round-robin figure", for kin-cluster's shared mode.
    ("cluster_kin_worker_shared_vs_node_rr", "requests/s", "kin_shared", "node_primary_rr", "rps"),
    ("cluster_node_rr_p99", "ms", "node_kin_rr", "node_primary_rr", "p99"),
    ("cluster_node_shared_p99", "ms", "node_kin_shared", "node_primary_shared", "p99"),
    ("cluster_kin_worker_rr_p99", "ms", "kin_rr", "node_primary_rr", "p99"),
    ("cluster_kin_worker_shared_p99", "ms", "kin_shared", "node_primary_shared", "p99"),
]


class BenchError(Exception):
    pass


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def become_subreaper():
    """On Linux, orphaned descendants (a worker whose primary died) become our children, so that
    we can reap them rather than leave zombies to an init that may not reap."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def reap_orphans():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def proc_stats(sid):
    """{pid: (state, CPU seconds)} of the processes of session sid, from /proc (Linux)."""
    found = {}
    tick = os.sysconf("SC_CLK_TCK")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold blanks: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[3]) == sid:
            found[int(d)] = (fields[0], (int(fields[11]) + int(fields[12])) / tick)
    return found


def session_members(sid):
    """The live (not zombie) processes of session sid: the server and every worker, whatever
    process group the server gave them (kin-cluster gives each worker its own). Without /proc,
    the processes of group sid."""
    if os.path.isdir("/proc/self"):
        return [pid for pid, (state, _) in proc_stats(sid).items() if state != "Z"]
    try:
        os.killpg(sid, 0)
        return [sid]
    except ProcessLookupError:
        return []
    except PermissionError:
        return [sid]


def cpu_split(sid, before, after):
    """CPU seconds spent between two proc_stats snapshots by the session's leader (the primary)
    and by the other processes (the workers) that were in both."""
    primary = workers = 0.0
    for pid, (_, cpu) in after.items():
        if pid in before:
            if pid == sid:
                primary += cpu - before[pid][1]
            else:
                workers += cpu - before[pid][1]
    return primary, workers


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while len(data) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


class Server:
    def __init__(self, name, argv, env, port):
        self.name = name
        self.port = port
        self.log = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                cwd=HERE,
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=self.log,
                start_new_session=True,
            )
        except OSError as e:
            self.log.close()
            raise BenchError(f"cannot start {argv[0]}: {e}")

    def output(self):
        self.log.seek(0)
        text = self.log.read().decode(errors="replace").strip()
        return "\n".join("#   " + line for line in text.splitlines()[-20:])

    def wait_ready(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.output()
                raise BenchError(
                    f"{self.name} exited with status {self.proc.returncode} before answering"
                    + ("\n" + out if out else "")
                )
            if answers(self.port):
                return
            time.sleep(0.05)
        raise BenchError(
            f"{self.name} did not answer on 127.0.0.1:{self.port} within {timeout:g} s"
        )

    def stop(self):
        """SIGTERM, wait (bounded), then make sure no process of the session is left. Returns a
        note when something had to be killed, else None."""
        notes = []
        sid = self.proc.pid  # started with start_new_session: session and group id
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                notes.append("did not exit within 10 s of SIGTERM")
        if self.proc.poll() is not None and self.proc.returncode not in (0, -signal.SIGTERM):
            notes.append(f"exited with status {self.proc.returncode}")
        # Workers may outlive their primary by a moment (a Node worker leaves when its IPC
        # channel closes): give them up to 5 s.
        deadline = time.monotonic() + (5 if self.proc.poll() is not None else 0)
        while True:
            reap_orphans()
            left = session_members(sid)
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if left:
            notes.append(f"processes left in its session, killed: {left}")
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.killpg(sid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            notes.append("still running after SIGKILL")
        time.sleep(0.1)
        reap_orphans()
        self.log.close()
        return "; ".join(notes) if notes else None


LATENCY_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def run_wrk(args, port, seconds):
    argv = [
        args.wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "--latency",
        "-H",
        "Connection: close",
        f"http://127.0.0.1:{port}/",
    ]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish within {seconds + 30} s")
    if r.returncode != 0:
        raise BenchError(f"wrk failed (status {r.returncode}): {r.stderr.strip()}")
    out = r.stdout
    rps = re.search(r"^Requests/sec:\s*([0-9.]+)", out, re.M)
    p99 = re.search(r"^\s*99%\s+([0-9.]+)(us|ms|s|m|h)\s*$", out, re.M)
    p50 = re.search(r"^\s*50%\s+([0-9.]+)(us|ms|s|m|h)\s*$", out, re.M)
    total = re.search(r"^\s*(\d+) requests in", out, re.M)
    if not (rps and p99 and p50 and total):
        raise BenchError("cannot read wrk's output:\n" + out)
    errors = []
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        for what, n in zip(("connect", "read", "write", "timeout"), sock.groups()):
            if int(n):
                errors.append(f"{what}={n}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors.append(f"non-2xx={non2xx.group(1)}")
    return {
        "rps": float(rps.group(1)),
        "p99": float(p99.group(1)) * LATENCY_UNITS[p99.group(2)],
        "p50": float(p50.group(1)) * LATENCY_UNITS[p50.group(2)],
        "requests": int(total.group(1)),
        "errors": errors,
    }


def command(args, name, port):
    kind, mode = CONFIGS[name]
    env = dict(os.environ)
    env.pop("NODE_UNIQUE_ID", None)
    env.pop("NODE_CLUSTER_SCHED_POLICY", None)
    env["PORT"] = str(port)
    if kind == "node_primary":
        env["NODE_CLUSTER_SCHED_POLICY"] = "rr" if mode == "round-robin" else "none"
        return [args.node, APP, str(args.workers)], env
    base = [args.kin_cluster, "--workers", str(args.workers), "--mode", mode, "--grace", "5"]
    if kind == "node_kin":
        return base + ["--node", "--", args.node, APP], env
    return base + ["--listen", f"127.0.0.1:{port}", "--", args.kin_cluster_hello], env


def missing(args, name):
    kind, _ = CONFIGS[name]
    need = [args.node] if kind == "node_primary" else [args.kin_cluster]
    if kind == "node_kin":
        need.append(args.node)
    if kind == "kin":
        need.append(args.kin_cluster_hello)
    for prog in need:
        path = shutil.which(prog) if os.sep not in prog else prog
        if not path or not os.access(path, os.X_OK):
            return prog
    return None


def run_one(args, name, i):
    port = free_port()
    argv, env = command(args, name, port)
    server = Server(name, argv, env, port)  # raises BenchError when it cannot start
    try:
        server.wait_ready()
        run_wrk(args, port, args.warmup)
        linux = os.path.isdir("/proc/self")
        before = proc_stats(server.proc.pid) if linux else {}
        wrk0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = run_wrk(args, port, args.duration)
        wrk1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        after = proc_stats(server.proc.pid) if linux else {}
    except BenchError:
        note = server.stop()
        if note:
            print(f"# cluster {name} run {i}: stop: {note}", flush=True)
        raise
    note = server.stop()
    result["stop_note"] = note
    errs = " errors: " + ",".join(result["errors"]) if result["errors"] else ""
    n = max(1, result["requests"])
    wrk_cpu = wrk1.ru_utime + wrk1.ru_stime - wrk0.ru_utime - wrk0.ru_stime
    cpu = f" wrk={wrk_cpu * 1e6 / n:.1f}"
    if before and after:
        primary, workers = cpu_split(server.proc.pid, before, after)
        cpu = f" primary={primary * 1e6 / n:.1f} workers={workers * 1e6 / n:.1f}" + cpu
    cpu = " cpu_us/req:" + cpu
    print(
        f"# cluster {name} run {i}: requests/s={result['rps']:.1f} p50_ms={result['p50']:.2f} "
        f"p99_ms={result['p99']:.2f} requests={result['requests']}{errs}{cpu} "
        f"loadavg: {loadavg()}",
        flush=True,
    )
    if note:
        print(f"# cluster {name} run {i}: stop: {note}", flush=True)
    return result


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("kin_cluster", metavar="KIN_CLUSTER")
    p.add_argument("kin_cluster_hello", metavar="KIN_CLUSTER_HELLO")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--only", default="")
    p.add_argument("--node", default="node")
    p.add_argument("--wrk", default="wrk")
    args = p.parse_args()
    for opt in ("runs", "duration", "warmup", "threads", "connections", "workers"):
        if getattr(args, opt) < 1:
            p.error(f"--{opt} wants a positive integer")
    # The servers run from this directory: a program given by a relative path is resolved now.
    for opt in ("kin_cluster", "kin_cluster_hello", "node", "wrk"):
        if os.sep in getattr(args, opt):
            setattr(args, opt, os.path.abspath(getattr(args, opt)))
    names = list(CONFIGS)
    if args.only:
        names = args.only.split(",")
        for n in names:
            if n not in CONFIGS:
                p.error(f"unknown configuration '{n}' ({', '.join(CONFIGS)})")

    if not shutil.which(args.wrk):
        sys.exit(
            f"cluster_bench.py: wrk not found ('{args.wrk}'). It is Debian's and Ubuntu's package "
            "wrk: apt-get update && apt-get install -y wrk (or build it from "
            "https://github.com/wg/wrk and pass --wrk PATH)."
        )
    become_subreaper()
    version = subprocess.run([args.wrk, "--version"], capture_output=True, text=True)
    wrk_version = (version.stdout or version.stderr).splitlines()[0].split(" [")[0]
    try:
        node_version = subprocess.run(
            [args.node, "--version"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        node_version = "missing"
    print(
        f"# cluster: {wrk_version} -t{args.threads} -c{args.connections} -d{args.duration}s "
        f"--latency -H 'Connection: close' (after a {args.warmup} s warm-up), "
        f"{args.workers} workers, node {node_version}, {args.runs} run(s); "
        f"nproc={os.cpu_count()} loadavg: {loadavg()}",
        flush=True,
    )

    results = {n: [] for n in names}
    skipped = {}
    for n in names:
        prog = missing(args, n)
        if prog:
            skipped[n] = f"{prog} not found"
            print(f"# cluster {n}: skipped ({prog} not found)", flush=True)
    failed = 0
    # Run by run, every configuration in turn, so that the machine's noise hits all of them.
    for i in range(1, args.runs + 1):
        for n in names:
            if n in skipped:
                continue
            try:
                r = run_one(args, n, i)
                results[n].append(r)
                if r["stop_note"]:
                    failed += 1
            except BenchError as e:
                failed += 1
                print(f"# cluster {n} run {i}: FAILED: {e}", flush=True)

    if args.runs > 1:
        for n in names:
            if results[n]:
                rps = statistics.median(r["rps"] for r in results[n])
                p99 = statistics.median(r["p99"] for r in results[n])
                print(f"# cluster {n} median: requests/s={rps:.1f} p99_ms={p99:.2f}")
    for name, unit, kin, node, fig in COMPARISONS:
        if kin not in results or node not in results:
            continue
        k = [r[fig] for r in results[kin]]
        v = [r[fig] for r in results[node]]
        if not k or not v:
            why = skipped.get(kin) or skipped.get(node) or "no successful run"
            print(f"# {name} {unit}: skipped ({why})")
            continue
        fmt = "%.1f" if fig == "rps" else "%.2f"
        print(
            f"# {name} {unit} runs: kin ({kin}): {' '.join(fmt % x for x in k)} | "
            f"node ({node}): {' '.join(fmt % x for x in v)}"
        )
        km, vm = statistics.median(k), statistics.median(v)
        print(f"BENCH {name} {unit} kin={fmt % km} node={fmt % vm} ratio={km / vm:.3f}")
    sys.stdout.flush()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
