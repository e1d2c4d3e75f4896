"""Comment to claim: from a `!testme` on a PR to the controller's claim commit, through the
webhook and through polling, beside the reference system's 30 s poll.

    python bench/forge.py [--count 20] [--poll-count 6] [--poll-interval 30]

One forge test server (tests/forge_server.py, held to Gitea's API document), one registry on a
bare remote (tmp dir), one `ccci serve`. Webhook: `ccci forge webhook` shares serve's clone, so
serve wakes on the request commit. Polling: `ccci forge poll --interval P` beside it. Comments
go one at a time; each names a PR head the `static` fixture lacks, so its run is claimed, then
rejected at fetch: no Docker is needed. Latency is from the comment (webhook: the delivery's
send; polling: the comment's creation) to the claim commit on the remote, observed every 5 ms.
Polling comments arrive at phases spread evenly over one interval, as real ones do on average.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed.fixtures import build_recipe
from tests.forge_server import FakeForge
from tests.helpers import RemoteRegistry, ServeProcess, isolate_environment

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO = "coop/static"
SECRET = "bench-secret"
OBSERVE_EVERY_S = 0.005


def settings(forge: FakeForge, recipe: Path, secrets: Path) -> str:
    return (f"base_domain: ci.test\nauthority: {{cold: ['org:coop']}}\nsweep: {{max_tests: 0}}\n"
            f"limits: {{disk_min_free_gb: 0, max_parallel_cold: 4}}\n"
            f"forge: {{url: '{forge.url}', token_file: {secrets / 'token'}, "
            f"webhook_secret_file: {secrets / 'secret'}}}\n"
            f"recipes:\n  static: {{source: {recipe}, forge_repo: {REPO}, timeout_s: 60}}\n")


def claimed_runs(bare: Path) -> set[str]:
    out = subprocess.run(["git", "--git-dir", str(bare), "ls-tree", "-r", "--name-only", "main", "results/"],
                         capture_output=True, text=True, check=False).stdout
    return {Path(line).stem for line in out.split()}


def wait_claim(bare: Path, before: set[str], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if claimed_runs(bare) - before:
            return time.monotonic()
        time.sleep(OBSERVE_EVERY_S)
    raise SystemExit("a comment was never claimed: see the serve and forge logs in the work dir")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20, help="webhook comments")
    parser.add_argument("--poll-count", type=int, default=6, help="polled comments")
    parser.add_argument("--poll-interval", type=float, default=30.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ccci-bench-forge-"))
    isolate_environment(work, DOCKER_HOST=f"unix://{work}/no-engine.sock")
    recipe = build_recipe("static", work / "recipes" / "static", versions=[1])
    secrets = work / "secrets"
    secrets.mkdir()
    with FakeForge("gitea") as forge:
        forge.org("coop", "carol")
        (secrets / "token").write_text(forge.token)
        (secrets / "secret").write_text(SECRET)
        remote = RemoteRegistry.create(work / "registry", settings(forge, recipe.path, secrets))
        clone = remote.clone("controller")
        state = work / "state"
        serve = ServeProcess(clone, state, "--poll-interval", str(args.poll_interval))
        port = free_port()
        webhook = subprocess.Popen(
            [sys.executable, "-m", "controller", "--state-dir", str(state), "forge", "webhook", "--registry",
             str(clone), "--listen", f"127.0.0.1:{port}"], cwd=REPO_ROOT,
            stdout=(work / "webhook.log").open("w"), stderr=subprocess.STDOUT)
        time.sleep(0)
        url = f"http://127.0.0.1:{port}/hooks"
        for _ in range(600):
            if b"listening" in (work / "webhook.log").read_bytes():
                break
            time.sleep(0.05)
        pr = 1
        webhook_s: list[float] = []
        try:
            for _ in range(args.count):
                pr += 1
                forge.pull(REPO, pr, f"{random.getrandbits(160):040x}")
                payload = forge.delivery(REPO, pr, "carol", "!testme")
                before = claimed_runs(remote.bare)
                started = time.monotonic()
                status, text = forge.send(url, SECRET, payload)
                if status != 200:
                    raise SystemExit(f"the webhook answered {status}: {text}")
                webhook_s.append(wait_claim(remote.bare, before, 60) - started)
        finally:
            webhook.terminate()
            webhook.wait(timeout=60)
        poller = subprocess.Popen(
            [sys.executable, "-m", "controller", "--state-dir", str(state), "forge", "poll", "--registry",
             str(clone), "--interval", str(args.poll_interval)], cwd=REPO_ROOT,
            stdout=(work / "poll.log").open("w"), stderr=subprocess.STDOUT)
        poll_s: list[float] = []
        try:
            time.sleep(2)  # its first look marks what is there
            phases = [(k + 0.5) * args.poll_interval / args.poll_count for k in range(args.poll_count)]
            random.shuffle(phases)
            for phase in phases:
                time.sleep(phase)
                pr += 1
                forge.pull(REPO, pr, f"{random.getrandbits(160):040x}")
                before = claimed_runs(remote.bare)
                started = time.monotonic()
                forge.add_comment(REPO, pr, "carol", "!testme")
                poll_s.append(wait_claim(remote.bare, before, args.poll_interval * 3) - started)
        finally:
            poller.terminate()
            poller.wait(timeout=60)
            serve.stop()
        if forge.violations:
            raise SystemExit(f"requests outside the API document: {forge.violations}")
    command = "python bench/forge.py " + shlex.join(sys.argv[1:])
    print(f"## Forge: comment to claim (`{command}`)\n")
    print(f"{dt.datetime.now(dt.UTC):%Y-%m-%d}, {platform.node()}, {platform.machine()}, "
          f"Python {platform.python_version()}; work dir {work}\n")
    print("| intake | comments | p50 | p90 | max |")
    print("|---|---|---|---|---|")
    for name, values in (("webhook (`ccci forge webhook`, shares serve's clone)", webhook_s),
                         (f"polling (`ccci forge poll --interval {args.poll_interval:g}`)", poll_s)):
        print(f"| {name} | {len(values)} | {statistics.median(values):.2f} s | {percentile(values, 0.9):.2f} s "
              f"| {max(values):.2f} s |")
    print("| reference system (polls every 30 s) | - | ≈ 15 s | ≈ 27 s | 30 s |")
    print("\nLatency runs from the webhook delivery's send (or the comment's creation, for polling) to the "
          "claim commit on the registry's remote.")


if __name__ == "__main__":
    main()
