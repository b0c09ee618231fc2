#!/usr/bin/env python3
"""The README's commands, run the way a newcomer runs them.

A README whose first command fails is the first thing a new user meets, and CI never ran it
before (it ran `cargo test` only). This script keeps the README honest:

  resolve   every `cargo run` line in a ```sh block names exactly one binary with flags that
            exist (same check cargo makes, read from `cargo metadata`, so nothing is built);
  walk      the "Fresh machine" demo command runs literally; the `token mint` command the demo
            prints runs literally in a "second terminal"; the code it prints is pasted into the
            demo and must open the turnstile; the status command the demo prints must answer;
            Ctrl-C (SIGINT to the process group, as a terminal sends it) stops it with exit 0;
  test-command
            prints the README's test command, which .ci/run then runs.

Standard library only: it runs before anything else is installed.
"""

import json
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")

# A cold release build with fat LTO on a 2-core machine takes minutes; the walk waits this long
# for the demo's first hint before calling it a failure.
DEMO_START_TIMEOUT_S = 30 * 60
STEP_TIMEOUT_S = 60


def sh_blocks(text):
    """(heading, [command lines]) for every ```sh block; `\\` continuations are joined."""
    blocks, heading, inside, lines = [], "", False, []
    for line in text.splitlines():
        if not inside and line.startswith("#"):
            heading = line.lstrip("#").strip()
        if not inside and line.strip() == "```sh":
            inside, lines = True, []
            continue
        if inside and line.strip() == "```":
            inside = False
            joined, cur = [], ""
            for raw in lines:
                code = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
                if code.endswith("\\"):
                    cur += code[:-1] + " "
                    continue
                cur += code
                if cur.strip():
                    joined.append(cur.strip())
                cur = ""
            blocks.append((heading, joined))
            continue
        if inside:
            lines.append(line)
    return blocks


def fresh_machine_commands():
    blocks = [b for h, b in sh_blocks(open(README).read()) if h.lower().startswith("fresh machine")]
    if len(blocks) < 2 or len(blocks[0]) != 1 or len(blocks[1]) != 1:
        sys.exit("README: the 'Fresh machine' section must hold two ```sh blocks of one command each")
    return blocks[0][0], blocks[1][0]


def metadata():
    out = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def resolve(cmd, meta):
    """Why `cmd` (a `cargo run …` line) would not pick exactly one binary, or None."""
    args = shlex.split(cmd)[2:]
    if "--" in args:
        args = args[: args.index("--")]
    pkgs, bins, features, i = [], [], [], 0
    while i < len(args):
        a = args[i]
        val = lambda: args[i + 1]  # noqa: E731
        if a in ("-p", "--package"):
            pkgs.append(val()); i += 2; continue
        if a == "--bin":
            bins.append(val()); i += 2; continue
        if a in ("-F", "--features"):
            features += re.split(r"[ ,]+", val()); i += 2; continue
        if a.startswith("--features="):
            features += re.split(r"[ ,]+", a.split("=", 1)[1]); i += 1; continue
        i += 1
    by_id = {p["id"]: p for p in meta["packages"]}
    if pkgs:
        selected = [p for p in meta["packages"] if p["name"] in pkgs]
        if len(selected) != len(pkgs):
            return f"no such package among {sorted(p['name'] for p in meta['packages'])}"
    else:
        ids = meta.get("workspace_default_members") or meta["workspace_members"]
        selected = [by_id[i] for i in ids]
    for f in features:
        if f and not any(f in p["features"] for p in selected):
            return f"feature `{f}` is not a feature of {[p['name'] for p in selected]}"
    candidates = [
        (p["name"], t["name"]) for p in selected for t in p["targets"] if "bin" in t["kind"]
    ]
    if bins:
        missing = [b for b in bins if b not in [t for _, t in candidates]]
        return f"no binary {missing}" if missing else None
    default_runs = [p["default_run"] for p in selected if p.get("default_run")]
    if len(default_runs) == 1:
        return None
    if len(candidates) != 1:
        return f"cargo cannot determine which binary to run among {[t for _, t in candidates]}"
    return None


def check_resolve():
    meta = metadata()
    failures, checked = [], 0
    for heading, cmds in sh_blocks(open(README).read()):
        for cmd in cmds:
            if cmd.startswith("cargo run"):
                checked += 1
                why = resolve(cmd, meta)
                if why:
                    failures.append(f"README ({heading}): `{cmd}`: {why}")
    for f in failures:
        print(f, file=sys.stderr)
    print(f"readme: {checked} `cargo run` line(s) checked, {len(failures)} unresolved")
    return not failures


class Output:
    """Lines of a child's merged stdout+stderr, read without blocking, echoed with a prefix."""

    def __init__(self, proc, prefix):
        self.proc, self.prefix, self.lines, self.buf = proc, prefix, [], b""
        os.set_blocking(proc.stdout.fileno(), False)

    def pump(self, wait_s=0.2):
        r, _, _ = select.select([self.proc.stdout], [], [], wait_s)
        if not r:
            return
        chunk = self.proc.stdout.read() or b""
        self.buf += chunk
        *done, self.buf = self.buf.split(b"\n")
        for raw in done:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            print(f"{self.prefix}{line}", flush=True)

    def wait_for(self, pattern, timeout_s, start=0):
        deadline = time.monotonic() + timeout_s
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            for i in range(start, len(self.lines)):
                if rx.search(self.lines[i]):
                    return i
            if self.proc.poll() is not None:
                self.pump(0)
                break
            self.pump()
        for i in range(start, len(self.lines)):
            if rx.search(self.lines[i]):
                return i
        raise SystemExit(f"readme walk: no line matching /{pattern}/ within {timeout_s}s")


def run_literally(cmd):
    print(f"$ {cmd}", flush=True)
    done = subprocess.run(["bash", "-c", cmd], cwd="/tmp", capture_output=True, text=True,
                          timeout=STEP_TIMEOUT_S)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done


def walk():
    demo_cmd, _ = fresh_machine_commands()
    print(f"$ {demo_cmd}", flush=True)
    demo = subprocess.Popen(
        ["bash", "-c", demo_cmd], cwd=ROOT, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    out = Output(demo, "demo| ")
    try:
        at = out.wait_for(r"^Try it: mint an app code", DEMO_START_TIMEOUT_S)
        mint = out.wait_for(r"token mint ", STEP_TIMEOUT_S, at)
        mint_cmd = out.lines[mint].strip()
        status_at = out.wait_for(r"^status page: .*\((.*status --url \S+)\)", STEP_TIMEOUT_S)
        status_cmd = re.search(r"\((.*status --url \S+)\)", out.lines[status_at]).group(1)
        out.wait_for(r"^demo running", STEP_TIMEOUT_S)

        minted = run_literally(mint_cmd)
        if minted.returncode != 0:
            raise SystemExit(f"readme walk: the demo's mint command failed ({minted.returncode})")
        code = [l for l in minted.stdout.splitlines() if l.strip()][-1].strip()
        mark = len(out.lines)
        demo.stdin.write((code + "\n").encode())
        demo.stdin.flush()
        out.wait_for(r"\byou\b.*gate OPENED", STEP_TIMEOUT_S, mark)

        status = run_literally(status_cmd)
        if status.returncode not in (0, 1):
            raise SystemExit(f"readme walk: `{status_cmd}` could not reach the demo")

        os.killpg(demo.pid, signal.SIGINT)
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while demo.poll() is None and time.monotonic() < deadline:
            out.pump()
        out.pump(0)
        if demo.returncode != 0:
            raise SystemExit(f"readme walk: the demo did not stop cleanly on Ctrl-C ({demo.returncode})")
        out.wait_for(r"turnstile opened [1-9]", 1)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    print("readme walk: demo, the printed mint command, the pasted code and Ctrl-C all worked")


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "test-command":
        print(fresh_machine_commands()[1])
    elif what == "resolve":
        sys.exit(0 if check_resolve() else 1)
    elif what == "walk":
        walk()
    else:
        sys.exit("usage: readme_check.py resolve|walk|test-command")


if __name__ == "__main__":
    main()
