#!/usr/bin/env python3
"""Runs a Node.js interop script with the node found on PATH, or skips (exit 77) without one.

Usage: run_node.py SCRIPT [ARGS...]
"""
import shutil
import subprocess
import sys


def main() -> int:
    node = shutil.which("node")
    if node is None:
        print("node not found on PATH: the Node.js interop test is skipped")
        return 77
    return subprocess.run([node, *sys.argv[1:]], stdin=subprocess.DEVNULL, timeout=120).returncode


if __name__ == "__main__":
    sys.exit(main())
