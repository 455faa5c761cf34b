#!/usr/bin/env python3
"""Compare `kin-run` with Node's child_process.spawnSync, the oracle.

    python3 test/kin_run_vs_node.py PATH-TO-KIN-RUN
    python3 test/kin_run_vs_node.py --check-node [N]   (runs only Node, N times per case, and
                                                        checks that its answers are the same)

Every case runs one command through kin-run and through a small Node program that calls
spawnSync with the matching options, then compares kin-run's one line of JSON with what
JSON.stringify made of Node's result: as text (the pid replaced: 0 stays 0, any other pid
becomes PID) and as parsed objects. It also checks that kin-run exits with the child's
status, 128 + the signal's number, or 127 when nothing could be run.

Exit status: 0 when every case passes, 1 on any mismatch, 77 (skip) without node.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

# The oracle. The case arrives as JSON in the last argument:
#   {"file": ..., "args": [...], "options": {timeout, killSignal, maxBuffer, cwd,
#    env: [[K, V], ...], clearEnv, input: PATH, shell}}
# and the answer is one line with the keys in kin-run's order; spawnSync throwing (an unknown
# signal, say) is answered with {"thrown": CODE}.
NODE_DRIVER = r"""
'use strict';
const cp = require('child_process');
const fs = require('fs');
const c = JSON.parse(process.argv[process.argv.length - 1]);
const o = c.options || {};
const opts = {encoding: 'utf8'};
if (o.timeout !== undefined) opts.timeout = o.timeout;
if (o.killSignal !== undefined)
  opts.killSignal = /^[0-9]+$/.test(o.killSignal) ? Number(o.killSignal) : o.killSignal;
if (o.maxBuffer !== undefined) opts.maxBuffer = o.maxBuffer;
if (o.cwd !== undefined) opts.cwd = o.cwd;
if (o.clearEnv || o.env) {
  const env = o.clearEnv ? {} : {...process.env};
  for (const [k, v] of (o.env || [])) env[k] = v;
  opts.env = env;
}
if (o.input !== undefined) opts.input = fs.readFileSync(o.input);
if (o.shell) opts.shell = true;
let r;
try {
  r = cp.spawnSync(c.file, c.args, opts);
} catch (e) {
  process.stdout.write(JSON.stringify({thrown: e.code || String(e)}) + '\n');
  process.exit(0);
}
process.stdout.write(JSON.stringify({
  pid: r.pid, status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr,
  error: r.error ? r.error.code : null,
}) + '\n');
"""

KEYS = ["pid", "status", "signal", "stdout", "stderr", "error"]
PY = sys.executable or "python3"
PROCESS_LIMIT = 30  # seconds for one kin-run or node process; a hang is a failure
# kin-run and node get the same environment, with three variables of the test's own in a
# known order (the env-* cases override the middle one).
CHILD_ENV = dict(os.environ, KIN_CMP_FIRST="1", KIN_CMP_MIDDLE="2", KIN_CMP_LAST="3")


class Case:
    """argv: PROGRAM and ARGS. opts: timeout, kill_signal, max_buffer, cwd, env (list of
    (K, V)), clear_env, input (a path), shell. kind: "exact" (the whole result must match),
    "loose-maxbuf" (status, signal and error must match and both stdouts be at least 1 MiB:
    read boundaries decide the rest), "enoexec" (the deliberate difference).
    max_elapsed: kin-run must have returned within that many seconds."""

    def __init__(self, name, argv, kind="exact", max_elapsed=None, **opts):
        self.name = name
        self.argv = argv
        self.kind = kind
        self.max_elapsed = max_elapsed
        self.opts = opts

    def kin_args(self, kin):
        o = self.opts
        a = [kin]
        if "timeout" in o:
            a += ["--timeout", str(o["timeout"])]
        if "kill_signal" in o:
            a += ["--kill-signal", o["kill_signal"]]
        if "max_buffer" in o:
            a += ["--max-buffer", str(o["max_buffer"])]
        if "cwd" in o:
            a += ["--cwd", o["cwd"]]
        for k, v in o.get("env", []):
            a += ["--env", f"{k}={v}"]
        if o.get("clear_env"):
            a += ["--clear-env"]
        if "input" in o:
            a += ["--input", o["input"]]
        if o.get("shell"):
            a += ["--shell"]
        return a + ["--"] + self.argv

    def node_case(self):
        o = self.opts
        n = {}
        for ours, theirs in (("timeout", "timeout"), ("kill_signal", "killSignal"),
                             ("max_buffer", "maxBuffer"), ("cwd", "cwd"), ("input", "input")):
            if ours in o:
                n[theirs] = o[ours]
        if "env" in o:
            n["env"] = [list(kv) for kv in o["env"]]
        if o.get("clear_env"):
            n["clearEnv"] = True
        if o.get("shell"):
            n["shell"] = True
        return json.dumps({"file": self.argv[0], "args": self.argv[1:], "options": n})


def run(args, **kw):
    t0 = time.monotonic()
    try:
        p = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=PROCESS_LIMIT, env=CHILD_ENV, **kw)
        return p.returncode, p.stdout, p.stderr, time.monotonic() - t0
    except subprocess.TimeoutExpired as e:
        return None, e.stdout or b"", e.stderr or b"", time.monotonic() - t0


def run_node(node, driver, case):
    rc, out, err, _ = run([node, driver, case.node_case()])
    if rc != 0:
        raise RuntimeError(f"the node driver failed on {case.name} (exit {rc}): "
                           f"{err.decode(errors='replace')}")
    return out.decode("utf-8").rstrip("\n")


def normalize_pid_text(text):
    return re.sub(r'^\{"pid":([1-9][0-9]*),', '{"pid":"PID",', text)


def normalize_pid(obj):
    if isinstance(obj, dict) and isinstance(obj.get("pid"), int) and obj["pid"] != 0:
        obj = dict(obj, pid="PID")
    return obj


def short(text, limit=3000):
    if len(text) <= limit:
        return text
    return text[:limit] + f"... [{len(text) - limit} more characters]"


def first_difference(a, b):
    """Where two strings first differ, with a little context."""
    n = min(len(a), len(b))
    i = next((i for i in range(n) if a[i] != b[i]), n)
    lo = max(0, i - 40)
    return (f"lengths {len(a)} and {len(b)}, first difference at index {i}: "
            f"node {a[lo:i + 40]!r} vs kin {b[lo:i + 40]!r}")


def field_differences(node_obj, kin_obj):
    lines = []
    for k in KEYS:
        a, b = node_obj.get(k, "<missing>"), kin_obj.get(k, "<missing>")
        if a == b:
            continue
        if isinstance(a, str) and isinstance(b, str):
            lines.append(f"    {k}: {first_difference(a, b)}")
        else:
            lines.append(f"    {k}: node {short(repr(a), 200)} vs kin {short(repr(b), 200)}")
    extra = [k for k in kin_obj if k not in KEYS]
    if extra:
        lines.append(f"    kin has extra keys {extra}")
    if list(kin_obj) != KEYS and not extra:
        lines.append(f"    kin's key order {list(kin_obj)}")
    return lines


def expected_exit(obj):
    """The exit statuses kin-run may have, by its JSON: the status; 128 + the signal's number;
    128 + a real-time signal's number for a signal without a name (""); 127 if it did not run."""
    if obj.get("status") is not None:
        return [obj["status"]]
    if obj.get("signal") == "":
        return [128 + n for n in range(signal.SIGRTMIN, signal.SIGRTMAX + 1)]
    if obj.get("signal") is not None:
        num = getattr(signal, obj["signal"], None)
        return [] if num is None else [128 + int(num)]
    return [127]


def check_case(kin, node, driver, case):
    """Returns (ok, report lines, note lines, kin-run's elapsed seconds). A case with a timeout
    depends on how fast each child gets going on a loaded machine (what it printed before the
    timeout): one that differs is run again, up to three times in all."""
    attempts = 3 if "timeout" in case.opts else 1
    for attempt in range(1, attempts + 1):
        try:
            ok, report, notes, elapsed = compare_case(kin, node, driver, case)
        except Exception as e:  # a broken case or driver is a failure, not a traceback
            ok, report, notes, elapsed = (False, [f"FAIL {case.name}",
                                                  f"  error in the test: {e!r}"], [], 0.0)
        if ok or attempt == attempts:
            if ok and attempt > 1:
                notes = notes + [f"NOTE {case.name}: matched on attempt {attempt} of {attempts}"]
            return ok, report, notes, elapsed


def compare_case(kin, node, driver, case):
    node_text = run_node(node, driver, case)
    kin_args = case.kin_args(kin)
    rc, out, err, elapsed = run(kin_args)
    cmd = shlex.join(kin_args)
    problems = []
    notes = []
    kin_text = out.decode("utf-8", errors="replace")
    if rc is None:
        problems.append(f"kin-run did not finish within {PROCESS_LIMIT} s (killed)")
    if not kin_text.endswith("\n") or kin_text.count("\n") != 1:
        problems.append("kin-run's stdout is not exactly one line ending in a newline")
    kin_text = kin_text.rstrip("\n")
    try:
        kin_obj = json.loads(kin_text)
        if not isinstance(kin_obj, dict):
            raise ValueError("not an object")
    except ValueError as e:
        kin_obj = None
        problems.append(f"kin-run's stdout is not a JSON object ({e})")
    node_obj = json.loads(node_text)
    if "thrown" in node_obj:
        raise RuntimeError(f"spawnSync threw {node_obj['thrown']} on {case.name}")

    if kin_obj is not None:
        if case.kind == "exact":
            text_same = normalize_pid_text(node_text) == normalize_pid_text(kin_text)
            obj_same = normalize_pid(node_obj) == normalize_pid(kin_obj)
            if not obj_same:
                problems.append("results differ:")
                problems += field_differences(normalize_pid(node_obj), normalize_pid(kin_obj))
            elif not text_same:
                problems.append("the JSON texts differ (the parsed objects are equal: "
                                "escaping or spacing is not JSON.stringify's): "
                                + first_difference(normalize_pid_text(node_text),
                                                   normalize_pid_text(kin_text)))
        elif case.kind == "loose-maxbuf":
            for k in ("status", "signal", "error"):
                if node_obj.get(k) != kin_obj.get(k):
                    problems.append(f"{k}: node {node_obj.get(k)!r} vs kin {kin_obj.get(k)!r}")
            if (kin_obj.get("pid") == 0) != (node_obj.get("pid") == 0):
                problems.append(f"pid: node {node_obj.get('pid')} vs kin {kin_obj.get('pid')}")
            for who, o in (("node", node_obj), ("kin", kin_obj)):
                s = o.get("stdout")
                if not isinstance(s, str) or len(s) < 1024 * 1024:
                    problems.append(f"{who}'s stdout is not at least 1 MiB "
                                    f"({len(s) if isinstance(s, str) else s!r})")
                elif s.strip("\0"):
                    problems.append(f"{who}'s stdout is not all NUL characters")
        elif case.kind == "enoexec":
            want = ('{"pid":0,"status":null,"signal":null,"stdout":null,"stderr":null,'
                    '"error":"ENOEXEC"}')
            if kin_text != want:
                problems.append(f"kin-run should report ENOEXEC exactly as {want}")
            if node_obj.get("status") != 0 or node_obj.get("stdout") != "ran-by-sh arg\n":
                problems.append("node was expected to run the file through /bin/sh")
            notes.append(f"NOTE {case.name}: deliberate difference: node (execvp) ran the "
                         f"file without #! through /bin/sh ({node_text}); kin-run reports "
                         f"ENOEXEC")

        want_rc = expected_exit(kin_obj)
        if rc is not None and rc not in want_rc:
            shown = want_rc[0] if len(want_rc) == 1 else f"{want_rc[0]}..{want_rc[-1]}"
            problems.append(f"kin-run exited {rc}; by its own JSON it should exit {shown}")

    if case.max_elapsed is not None and elapsed > case.max_elapsed:
        problems.append(f"kin-run took {elapsed:.2f} s, more than {case.max_elapsed} s")

    if not problems:
        return True, [], notes, elapsed
    report = [f"FAIL {case.name}", f"  command: {cmd}"]
    report += ["  " + p for p in problems]
    report.append(f"  node: {short(node_text)}")
    report.append(f"  kin:  {short(kin_text)}")
    if rc is not None:
        report.append(f"  kin-run exit status {rc}")
    if err:
        report.append(f"  kin-run stderr: {short(err.decode(errors='replace'), 1000)}")
    return False, report, notes, elapsed


# ---------------------------------------------------------------------------------------------
# The files the cases use, and the cases.

BIG_CHILD = r"""
import os
def lines(tag):
    return b"".join(("%s %06d h\u00e9llo \u2603 \U0001d11e %s\n" % (tag, i, tag * (i % 50)))
                    .encode() for i in range(6000))
out, err = lines("o"), lines("e")
assert len(out) > 300000 and len(err) > 300000
step = 997  # cuts multibyte characters between writes (and so between reads)
for i in range(0, max(len(out), len(err)), step):
    for fd, data in ((1, out), (2, err)):
        chunk = data[i:i + step]
        while chunk:
            chunk = chunk[os.write(fd, chunk):]
"""

# A child that writes the bytes of argv[1] (hex) to stdout and of argv[2] to stderr.
WRITE_HEX = ("import os, sys; os.write(1, bytes.fromhex(sys.argv[1])); "
             "os.write(2, bytes.fromhex(sys.argv[2]))")

# Ill-formed UTF-8 (and a few well-formed edge cases) between bits of text.
UTF8_BATTERY = [
    "80", "bf", "80bf80", "c3", "c341", "e298", "e29841", "f09d84", "f09d8441",
    "c080", "c1bf", "e08080", "e09fbf", "f0808080", "f08fbfbf", "eda080", "edbfbf",
    "eda080edb080", "f4908080", "f5808080", "f888808080", "fc8480808080", "fe", "ff", "fffe",
    "c2c2a9", "e228a1", "e28228", "f0288cbc", "f09028bc", "f0288c28", "efbfbe", "efbfbf",
    "f48fbfbf", "00", "efbbbf", "c280c29f", "e0a080", "f0908080", "ed9fbf", "ee8080",
]


def utf8_battery(reverse=False):
    items = list(reversed(UTF8_BATTERY)) if reverse else UTF8_BATTERY
    return "".join(bytes(f"|{i}:", "ascii").hex() + h for i, h in enumerate(items)) + "7c0a"


def make_files(d):
    def write(name, data, mode=0o644):
        p = os.path.join(d, name)
        with open(p, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())
        os.chmod(p, mode)
        return p

    os.mkdir(os.path.join(d, "dir"))
    os.mkdir(os.path.join(d, "pathA"))
    os.mkdir(os.path.join(d, "onlypath"))  # put first in the PATH of kin-run and node
    f = {
        "dir": os.path.join(d, "dir"),
        "pathA": os.path.join(d, "pathA"),
        "noexec": write("noexec.sh", "#!/bin/sh\necho should-not-run\n", 0o644),
        "badinterp": write("badinterp.sh", "#!/nonexistent/kin-interp\necho x\n", 0o755),
        "noshebang": write("noshebang", 'echo ran-by-sh "$1"\n', 0o755),
        "ok": write("ok.sh", '#!/bin/sh\necho "script:$1:$#"\n', 0o755),
        "big": write("big.py", BIG_CHILD),
        "text_in": write("text.in", "line one\nlíne twö ☃\n\nlast line without newline"),
        "empty_in": write("empty.in", b""),
        "binary_in": write("binary.in", bytes(range(256)) + b"\0\0\0" + bytes(range(255, -1, -1))),
        "mib_in": write("mib.in", bytes((i * 7 + i // 251) & 0xff for i in range(1024 * 1024))),
        "marker": os.path.join(d, "marker"),
        "orphans": os.path.join(d, "orphans"),
    }
    write("pathA/true", "#!/bin/sh\necho fake-true\n", 0o644)  # not executable
    write("onlypath/kin-cmp-only-in-path", "#!/bin/sh\necho found\n", 0o755)
    f["onlypath"] = os.path.join(d, "onlypath")
    f["interp_noexec"] = write("interp-noexec.sh", f"#!{f['noexec']}\necho x\n", 0o755)
    return f


def make_cases(f):
    sh = lambda script: ["sh", "-c", script]
    unicode_env = [("KIN_CMP_UNICODE", "héllo ☃")]
    control = ("".join(chr(c) for c in range(0, 0x20))  # NUL first: arguments cannot hold it
               + '\x7f"\\/\u2028\u2029\u0085\ufeff<>&\'\u00ad\U0010ffff')
    return [
        # exit statuses
        Case("exit-0", ["true"]),
        Case("exit-1", ["false"]),
        Case("exit-3", sh("exit 3")),
        Case("exit-255", sh("exit 255")),
        Case("stdout-and-stderr", sh("echo out; echo err >&2; echo out2; exit 4")),
        Case("args-verbatim", ["printf", "[%s]", "a b", "", 'c"d', "é", "$HOME", "*", "\\n"]),
        # signals
        Case("killed-sigkill", sh("echo partial; kill -9 $$")),
        Case("killed-sigterm", sh("kill -TERM $$")),
        Case("killed-sigusr1", sh("echo e >&2; kill -USR1 $$")),
        Case("sigpipe-default-in-child", sh("kill -PIPE $$; echo survived")),
        # what the child inherits: no blocked or ignored signals, only descriptors 0, 1, 2
        Case("signal-state-in-child", ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"]),
        Case("descriptors-in-child", ["ls", "/proc/self/fd"]),
        # programs that cannot run
        Case("missing-by-name", ["kin-no-such-program-4711"]),
        Case("missing-by-path", ["/nonexistent/kin-dir/prog"]),
        Case("directory", [f["dir"]]),
        Case("no-execute-permission", [f["noexec"]]),
        Case("missing-interpreter", [f["badinterp"]]),
        Case("interpreter-not-executable", [f["interp_noexec"]]),
        Case("no-shebang-enoexec", [f["noshebang"], "arg"], kind="enoexec"),
        Case("script-with-shebang", [f["ok"], "a b", ""]),
        Case("path-from-child-env-missing", sh("echo hi"), env=[("PATH", "/nonexistent")]),
        Case("path-skips-non-executable", ["true"],
             env=[("PATH", f["pathA"] + ":/usr/bin:/bin")]),
        Case("path-only-non-executable", ["true"], env=[("PATH", f["pathA"])]),
        Case("clear-env-default-path", ["env"], clear_env=True),
        Case("path-of-parent", ["kin-cmp-only-in-path"]),
        Case("path-of-parent-with-env", ["kin-cmp-only-in-path"], env=[("A", "1")]),
        # Node (libuv) searches the child's PATH, else the default /usr/bin:/bin, never the
        # parent's: with the environment cleared the program is not found.
        Case("clear-env-parent-path-not-searched", ["kin-cmp-only-in-path"], clear_env=True),
        # stdin
        Case("stdin-none", ["cat"]),
        Case("stdin-text", ["cat"], input=f["text_in"]),
        Case("stdin-empty", ["cat"], input=f["empty_in"]),
        Case("stdin-binary", ["cat"], input=f["binary_in"]),
        Case("stdin-binary-to-stderr", sh("cat >&2"), input=f["binary_in"]),
        Case("stdin-1mib-counted", ["wc", "-c"], input=f["mib_in"]),
        # writing stdin while reading stdout; 1 MiB out is exactly the default max buffer
        Case("stdin-1mib-echoed-at-default-limit", ["cat"], input=f["mib_in"]),
        Case("stdin-1mib-echoed-to-stderr", sh("cat >&2"), input=f["mib_in"],
             max_buffer=10000000),
        Case("epipe-true", ["true"], input=f["mib_in"]),
        # large output, both streams, multibyte characters cut between reads
        Case("large-interleaved", [PY, f["big"]], max_buffer=10000000),
        # timeouts
        Case("timeout-not-reached", sh("echo fast"), timeout=5000),
        Case("timeout-zero-is-none", sh("sleep 0.3; echo done"), timeout=0),
        Case("timeout-default-signal", sh("echo before; exec sleep 5"), timeout=400),
        Case("timeout-sigkill", sh("echo before; echo err >&2; exec sleep 5"), timeout=400,
             kill_signal="SIGKILL"),
        Case("timeout-numeric-9", sh("exec sleep 5"), timeout=300, kill_signal="9"),
        Case("timeout-lowercase-sigint", sh("exec sleep 5"), timeout=300, kill_signal="sigint"),
        Case("timeout-mixed-case-sighup", sh("exec sleep 5"), timeout=300, kill_signal="SigHup"),
        Case("timeout-trap-term-exit-0",
             sh('trap "exit 0" TERM; echo ready; while :; do sleep 0.05; done'), timeout=1500),
        # The grandchildren's pids go to a file, so that none outlives the test.
        Case("timeout-grandchild-holds-pipes",
             sh(f"sleep 3 & echo $! >> {shlex.quote(f['orphans'])}; echo started"), timeout=1000,
             max_elapsed=2.5),
        Case("grandchild-holds-pipes-no-timeout",
             sh(f"sleep 1 & echo $! >> {shlex.quote(f['orphans'])}; echo started")),
        # an EPIPE on the input, then a timeout or an overflow: the later error is reported
        Case("epipe-then-timeout", sh("exec 0<&-; exec sleep 5"), input=f["mib_in"], timeout=300),
        Case("epipe-then-maxbuf", sh("exec 0<&-; sleep 0.2; printf 0123456789; exec sleep 3"),
             input=f["mib_in"], max_buffer=4),
        # a signal Node has no name for: "signal" is ""
        Case("killed-realtime-signal", sh("kill -35 $$")),
        # max buffer (one write, then sleep: the reads cannot be split differently)
        Case("maxbuf-stdout", sh("printf 0123456789abcdef; exec sleep 3"), max_buffer=4),
        Case("maxbuf-stderr", sh("printf 0123456789abcdef >&2; exec sleep 3"), max_buffer=4),
        Case("maxbuf-both-together", sh("printf abc; printf def >&2; exec sleep 3"),
             max_buffer=4),
        Case("maxbuf-exact-stdout", ["printf", "abcd"], max_buffer=4),
        Case("maxbuf-exact-both", sh("printf ab; printf cd >&2"), max_buffer=4),
        Case("maxbuf-sigkill", sh("printf abcde; exec sleep 3"), max_buffer=4,
             kill_signal="SIGKILL"),
        Case("maxbuf-trap-term-exit-0",
             sh('trap "exit 0" TERM; printf 0123456789; while :; do sleep 0.05; done'),
             max_buffer=4),
        Case("maxbuf-zero-is-unlimited", ["printf", "abc"], max_buffer=0),
        Case("maxbuf-default-exceeded", ["head", "-c", "2000000", "/dev/zero"],
             kind="loose-maxbuf"),
        # environment
        Case("env-add", sh('echo "$FOO"'), env=[("FOO", "bar")]),
        Case("env-override", sh('echo "$HOME"'), env=[("HOME", "/kin/override")]),
        Case("env-inherited-whole", ["/usr/bin/env"]),
        Case("env-override-keeps-position", ["/usr/bin/env"],
             env=[("KIN_CMP_MIDDLE", "changed"), ("KIN_CMP_NEW", "4")]),
        Case("env-override-twice", ["/usr/bin/env"],
             env=[("KIN_CMP_NEW", "4"), ("KIN_CMP_FIRST", "x"), ("KIN_CMP_NEW", "5")]),
        Case("env-value-with-equals", sh('echo "$FOO"'), env=[("FOO", "a=b=c")]),
        Case("env-empty-value", sh('echo "[${FOO-unset}]"'), env=[("FOO", "")]),
        Case("env-unicode", sh('echo "$KIN_CMP_UNICODE"'), env=unicode_env),
        Case("clear-env-with-env", ["/usr/bin/env"], clear_env=True,
             env=[("A", "1"), ("B", "two words"), ("C", "x=y")]),
        Case("clear-env-duplicate-key", ["/usr/bin/env"], clear_env=True,
             env=[("A", "1"), ("B", "2"), ("A", "3")]),
        Case("clear-env-nothing", ["/usr/bin/env"], clear_env=True),
        # working directory
        Case("cwd", ["pwd"], cwd="/usr"),
        Case("cwd-relative-program", ["./ok.sh", "x"], cwd=os.path.dirname(f["ok"])),
        Case("cwd-missing", ["pwd"], cwd="/nonexistent/kin-dir"),
        Case("cwd-is-a-file", ["pwd"], cwd=f["text_in"]),
        # shell
        Case("shell-var-and-pipeline", ["echo $FOO | tr a-z A-Z"], shell=True,
             env=[("FOO", "bar")]),
        Case("shell-args-joined", ["echo", "$FOO", "|", "wc", "-c"], shell=True,
             env=[("FOO", "bar")]),
        Case("shell-dollar-zero", ["echo $0"], shell=True),
        Case("shell-exit-status", ["echo bye; exit 5"], shell=True),
        Case("shell-command-not-found", ["kin-no-such-command-4711"], shell=True),
        # text: unicode, ill-formed UTF-8, JSON escaping
        Case("unicode", sh('printf "h\\303\\251llo \\342\\230\\203 \\360\\235\\204\\236 '
                           '\\360\\237\\230\\200 \\360\\237\\221\\250\\342\\200\\215'
                           '\\360\\237\\221\\251\\n"; echo "héllo ☃ 𝄞 😀" >&2')),
        Case("utf8-bom-first", ["printf", "\\357\\273\\277bom"]),
        Case("utf8-invalid-battery", [PY, "-c", WRITE_HEX, utf8_battery(),
                                      utf8_battery(reverse=True)]),
        Case("utf8-truncated-2-at-end", [PY, "-c", WRITE_HEX, "6162c3", "c3"]),
        Case("utf8-truncated-3-at-end", [PY, "-c", WRITE_HEX, "6162e298", "e2"]),
        Case("utf8-truncated-4-at-end", [PY, "-c", WRITE_HEX, "6162f09d84", "f09d"]),
        Case("utf8-continuation-at-end", [PY, "-c", WRITE_HEX, "616280", "bfbf"]),
        Case("utf8-surrogate-at-end", [PY, "-c", WRITE_HEX, "eda0", "eda080"]),
        Case("json-escaping", [PY, "-c", WRITE_HEX, control.encode().hex(),
                               control[::-1].encode().hex()]),
        Case("json-escaping-in-args", ["printf", "%s", control[1:] + "é"]),
    ]


# ---------------------------------------------------------------------------------------------
# Checks of kin-run's own command line.

USAGE_OPTIONS = ["--timeout", "--kill-signal", "--max-buffer", "--cwd", "--env", "--clear-env",
                 "--input", "--shell"]


def check_command_line(kin, node, driver, files):
    failures = []
    rc, out, err, _ = run([kin, "--help"])
    text = out.decode(errors="replace")
    missing = [o for o in USAGE_OPTIONS if o not in text]
    if rc != 0 or missing:
        failures.append(["FAIL help", f"  command: {shlex.join([kin, '--help'])}",
                         f"  exit status {rc} (want 0); options missing from the usage text "
                         f"on stdout: {missing}", f"  stdout: {short(text, 2000)}"])

    marker = files["marker"]
    argv = ["sh", "-c", f"echo ran > {shlex.quote(marker)}"]
    thrown = run_node(node, driver, Case("x", argv, kill_signal="SIGFOO"))
    if json.loads(thrown) != {"thrown": "ERR_UNKNOWN_SIGNAL"}:
        failures.append(["FAIL unknown-kill-signal (node)",
                         f"  node was expected to throw ERR_UNKNOWN_SIGNAL: {thrown}"])
    if os.path.exists(marker):
        os.unlink(marker)
    for sig in ("SIGFOO", "sigfoo", "0", "99", "34", "KILL"):
        args = [kin, "--kill-signal", sig, "--"] + argv
        rc, out, err, _ = run(args)
        problems = []
        if rc != 2:
            problems.append(f"exit status {rc}, want 2")
        if not err.strip():
            problems.append("no message on stderr")
        if out:
            problems.append(f"something on stdout: {short(out.decode(errors='replace'), 500)}")
        if os.path.exists(marker):
            problems.append("the program ran")
            os.unlink(marker)
        if problems:
            failures.append([f"FAIL unknown-kill-signal {sig}", f"  command: {shlex.join(args)}"]
                            + ["  " + p for p in problems])
        if sig != "SIGFOO":
            # Node throws for these too; checked so the expectation rests on the oracle.
            t = run_node(node, driver, Case("x", argv, kill_signal=sig))
            if json.loads(t) != {"thrown": "ERR_UNKNOWN_SIGNAL"}:
                failures.append([f"FAIL unknown-kill-signal {sig} (node)",
                                 f"  node was expected to throw ERR_UNKNOWN_SIGNAL: {t}"])

    # An ignored SIGCHLD survives exec: kin-run must still run the program (as Node does).
    ignored = subprocess.run([kin, "--", "sh", "-c", "echo hi"], capture_output=True,
                             timeout=60, env=CHILD_ENV,
                             preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN))
    got = json.loads(ignored.stdout or b"{}")
    if ignored.returncode != 0 or got.get("stdout") != "hi\n" or got.get("error") is not None:
        failures.append(["FAIL sigchld-ignored-by-the-parent",
                         f"  exit status {ignored.returncode}, stdout {ignored.stdout!r}, "
                         f"stderr {ignored.stderr!r}"])

    for args in ([kin], [kin, "--"], [kin, "--timeout", "100", "--"]):
        rc, out, err, _ = run(args)
        if rc != 2 or not err.strip():
            failures.append(["FAIL missing-program", f"  command: {shlex.join(args)}",
                             f"  exit status {rc} (want 2), stderr "
                             f"{short(err.decode(errors='replace'), 500)!r}"])
    return failures


# ---------------------------------------------------------------------------------------------

def check_node_only(node, driver, cases, times):
    """Runs Node `times` times per case and reports answers that change between runs."""
    def one(case):
        texts = [run_node(node, driver, case) for _ in range(times)]
        if case.kind == "loose-maxbuf":
            objs = [json.loads(t) for t in texts]
            keys = [(o["status"], o["signal"], o["error"]) for o in objs]
            return case, texts, len(set(keys)) == 1
        norm = [normalize_pid_text(t) for t in texts]
        return case, texts, len(set(norm)) == 1 and '"thrown"' not in texts[0]

    bad = 0
    with ThreadPoolExecutor(4) as pool:
        for case, texts, same in pool.map(one, cases):
            print(f"{'ok  ' if same else 'DIFF'} {case.name}: {short(texts[0], 300)}")
            if not same:
                bad += 1
                for t in texts:
                    print(f"     {short(t, 600)}")
    print(f"{len(cases)} cases, {bad} not deterministic in node")
    return 1 if bad else 0


def kill_orphans(path):
    """Kills the grandchildren some cases leave behind (their pids are in `path`), checking
    first that each pid is still a sleep, so a recycled pid is never hit."""
    try:
        with open(path) as fh:
            pids = [int(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if not fh.read().startswith(b"sleep\0"):
                    continue
            os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass


def main():
    sys.stdout.reconfigure(errors="backslashreplace")
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    node = shutil.which("node")
    if not node:
        print("node not found: skipping the comparison with Node's spawnSync")
        return 77
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kin-run-vs-node-") as d:
        driver = os.path.join(d, "driver.js")
        with open(driver, "w") as fh:
            fh.write(NODE_DRIVER)
        files = make_files(d)
        CHILD_ENV["PATH"] = files["onlypath"] + ":" + CHILD_ENV.get("PATH", "/usr/bin:/bin")
        cases = make_cases(files)
        names = [c.name for c in cases]
        assert len(names) == len(set(names)), "case names must be unique"

        if sys.argv[1] == "--check-node":
            times = int(sys.argv[2]) if len(sys.argv) > 2 else 2
            return check_node_only(node, driver, cases, times)

        kin = os.path.abspath(sys.argv[1])
        if not os.access(kin, os.X_OK):
            print(f"kin-run not found at {kin}", file=sys.stderr)
            return 1

        # The slow cases (timeouts, sleeping children) first, so they overlap the rest.
        order = sorted(cases, key=lambda c: -(("timeout" in c.opts) + ("max_buffer" in c.opts)
                                              + ("sleep" in " ".join(c.argv))))
        failures, notes, passed = [], [], []
        with ThreadPoolExecutor(4) as pool:
            for case, (ok, report, case_notes, elapsed) in zip(
                    order, pool.map(lambda c: check_case(kin, node, driver, c), order)):
                notes += case_notes
                if ok:
                    passed.append(case.name)
                else:
                    failures.append(report)
        failures += check_command_line(kin, node, driver, files)
        kill_orphans(files["orphans"])

    if failures:
        print("(kin-run and node ran with the temporary directory's onlypath/ first in PATH, and "
              "KIN_CMP_FIRST=1 KIN_CMP_MIDDLE=2 KIN_CMP_LAST=3 added to the environment)\n")
    for report in failures:
        print("\n".join(report))
        print()
    for note in notes:
        print(note)
    print(f"{len(passed)} of {len(cases)} cases match node; "
          f"{len(failures)} failure(s) (command-line checks included); "
          f"{time.monotonic() - started:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
