#!/usr/bin/env python3
"""The Python peer of kin-bench-spawn-sync (tools/bench/spawn_sync.cpp): subprocess.run with
capture_output=True and input=b"" (stdin a pipe closed at once, stdout and stderr captured, as
kin::spawn_sync's default stdio and Node's spawnSync), one child after another.

Started by the benchmark as `python3 spawn_sync_python.py --serve`: prints `ready`, then runs
one command per line on stdin,
  run <n> <stdout bytes expected> <program> [args...]
(blank-separated, so no word may contain a blank) and answers
  done <n done> <elapsed ns> <user us> <system us> <bad children>
where a bad child exited other than with status 0, wrote to stderr, or wrote other than the
expected number of bytes to stdout; elapsed runs from the first subprocess.run to the return of
the last, and user/system are this process's CPU time over the same span. Exits when stdin
closes.

By hand: `python3 spawn_sync_python.py <n> <runs> <program> [args...]` prints one `#` line per
run (after one unreported warm-up of n/10) and the median, as kin-bench-spawn-sync's `#` lines
do.
"""
import os
import statistics
import subprocess
import sys
import time


def run(n, expect_out, argv):
    bad = 0
    c0 = os.times()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        r = subprocess.run(argv, capture_output=True, input=b"")
        if r.returncode != 0 or len(r.stdout) != expect_out or r.stderr:
            bad += 1
    elapsed = time.perf_counter_ns() - t0
    c1 = os.times()
    user_us = round((c1.user - c0.user) * 1e6)
    sys_us = round((c1.system - c0.system) * 1e6)
    return n, elapsed, user_us, sys_us, bad


def serve():
    print("ready", flush=True)
    # One command at a time: the benchmark waits for each answer before sending the next.
    for line in sys.stdin:
        w = line.split()
        if len(w) < 4 or w[0] != "run":
            sys.exit(f"spawn_sync_python.py: bad command {line!r}")
        print("done %d %d %d %d %d" % run(int(w[1]), int(w[2]), w[3:]), flush=True)


def by_hand(args):
    if len(args) < 3:
        sys.exit("usage: spawn_sync_python.py <n> <runs> <program> [args...]")
    n, runs, argv = int(args[0]), int(args[1]), args[2:]
    expect_out = len(subprocess.run(argv, capture_output=True, input=b"").stdout)
    run(max(1, n // 10), expect_out, argv)
    rates = []
    for i in range(1, runs + 1):
        _, ns, user_us, sys_us, bad = run(n, expect_out, argv)
        if bad:
            sys.exit(f"spawn_sync_python.py: {bad} children went wrong")
        rates.append(n * 1e9 / ns)
        print(
            f"# spawn_sync python run {i}: n={n} wall_ms={ns / 1e6:.1f} "
            f"spawns/s={n * 1e9 / ns:.1f} us/spawn={ns / 1e3 / n:.1f} "
            f"parent_cpu_us/spawn={(user_us + sys_us) / n:.1f}",
            flush=True,
        )
    print(f"# spawn_sync python median: spawns/s={statistics.median(rates):.1f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve()
    else:
        by_hand(sys.argv[1:])
