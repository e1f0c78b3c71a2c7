"""Checks docker-compose.yml against the binaries CI builds: it parses, every environment
variable given to a valo-oauth service is one `valo-oauth settings` lists, every command of
those services is a subcommand of the binary, and every flag given to the fake Salesforce is
one its --help lists. There is no Docker engine in CI: this keeps the file in step instead.

Usage: python compose_check.py COMPOSE_FILE VALO_OAUTH_BINARY FAKE_SALESFORCE_BINARY
"""

import re
import subprocess
import sys

import yaml


def main(compose_path: str, service_bin: str, fake_bin: str) -> int:
    with open(compose_path, encoding="utf-8") as f:
        compose = yaml.safe_load(f)
    known = set(subprocess.run([service_bin, "settings"], check=True, capture_output=True,
                               text=True).stdout.split())
    service_help = subprocess.run([service_bin, "--help"], check=True, capture_output=True,
                                  text=True).stdout
    fake_help = subprocess.run([fake_bin, "--help"], check=True, capture_output=True,
                               text=True).stdout
    fake_flags = set(re.findall(r"--[a-z][a-z-]*", fake_help))
    problems = []
    services = compose.get("services") or {}
    if not services:
        problems.append("no services")
    for name, service in services.items():
        build = service.get("build")
        target = build.get("target") if isinstance(build, dict) else None
        if build is None or target == "fake-salesforce":
            if target == "fake-salesforce":
                for arg in service.get("command") or []:
                    flag = arg.split("=", 1)[0]
                    if flag not in fake_flags:
                        problems.append(f"{name}: fake-salesforce has no flag {flag}")
            continue
        env = service.get("environment") or {}
        keys = env.keys() if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        for key in keys:
            if key not in known:
                problems.append(f"{name}: {key} is not a setting of valo-oauth")
        for word in service.get("command") or []:
            if not re.search(rf"^\s+{re.escape(word)}\s", service_help, re.MULTILINE):
                problems.append(f"{name}: valo-oauth has no command {word}")
    for problem in problems:
        print(f"docker-compose.yml: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"docker-compose.yml: {len(services)} services checked against the binaries")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
