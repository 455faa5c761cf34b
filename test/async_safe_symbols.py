#!/usr/bin/env python3
"""Fails if the async-signal-safe library needs a symbol that is not async-signal-safe.

Usage: async_safe_symbols.py NM STATIC_LIBRARY

Everything in lib/async_safe/ runs after fork() or inside a signal handler, where only the
functions signal-safety(7) lists may be called. This reads the library's undefined symbols
with `nm -u` and compares them with that list (plus the few compiler and C library helpers
that are safe by construction). A C++ symbol (operator new, a std:: function, an exception
helper) or a stdio call is reported by name.
"""
import subprocess
import sys

# signal-safety(7), the functions kin's child and handler code can reasonably need, and the
# raw syscall entry points glibc exports for them.
ASYNC_SIGNAL_SAFE = {
    "_exit", "_Exit", "abort", "access", "chdir", "close", "close_range", "dup", "dup2",
    "dup3", "execve", "execv", "execl", "fcntl", "fcntl64", "getpid", "getppid", "getuid",
    "geteuid", "getgid", "getegid", "kill", "open", "open64", "openat", "openat64", "pipe",
    "pipe2", "read", "write", "setgid", "setuid", "setsid", "setpgid", "setgroups",
    "sigaction", "sigemptyset", "sigfillset", "sigaddset", "sigdelset", "sigprocmask",
    "pthread_sigmask", "signal", "syscall", "getdents64", "umask", "ioctl", "raise",
    "lseek", "lseek64",
    "procctl",  # FreeBSD's PROC_PDEATHSIG_CTL: a system call
}
# Helpers that are not in the list but are safe: errno's location, stack protection, and the
# compiler's own memory primitives on plain buffers.
HELPERS = {
    "__errno_location", "__stack_chk_fail", "memcpy", "memmove", "memset", "strlen",
    "_GLOBAL_OFFSET_TABLE_",
}


def main() -> int:
    nm, library = sys.argv[1], sys.argv[2]
    out = subprocess.run([nm, "-u", "--format=just-symbols", library], check=True,
                         capture_output=True, text=True).stdout
    symbols = sorted({line.strip().split("@")[0] for line in out.splitlines() if line.strip()})
    # Sanitizer and coverage instrumentation add their own runtime calls; they are not code
    # kin calls, so sanitized builds skip them.
    instrumented = ("__asan_", "__ubsan_", "__sanitizer_", "__sancov_", "__tsan_", "__msan_",
                    "__lsan_")
    bad = [s for s in symbols
           if s not in ASYNC_SIGNAL_SAFE and s not in HELPERS and not s.startswith(instrumented)]
    print("undefined symbols:", " ".join(symbols) or "(none)")
    if bad:
        print("not async-signal-safe:", " ".join(bad), file=sys.stderr)
        return 1
    if not symbols:
        print("no undefined symbols: is this the right library?", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
