"""Pickup latency of `ccci serve`: from a request commit landing to its claim commit.

    python bench/pickup.py [--count 20] [--poll-interval 5] [--scenarios watch,remote,poll]

Three scenarios, one `ccci serve` each, on a registry with a bare remote (tmp dir):

* watch:  `ccci request` commits in the serve's own clone (and pushes); the watcher wakes it.
* remote: a bot clone pushes the request to the remote; only the periodic fetch finds it.
* poll:   like watch, but `serve --no-watch`: polling only.

Requests name commits the `static` fixture lacks, so each is claimed and then rejected at
fetch: no Docker is needed (DOCKER_HOST points at a socket that does not exist, to prove
it). Requests go one at a time. Each verdict restarts serve's timer, so each request waits
a pause after the previous verdict; the pauses are spread evenly over one interval
(k + 0.5) * P / N, in shuffled order, so arrival phases are uniform by construction, as
real arrivals are on average: twenty random pauses instead gave polling medians of 0.33
and 0.71 of P in two runs that should both give 0.5.
Commit times come from one observer thread that reads the clone's and the remote's
`refs/heads/main` every 5 ms (git's own commit dates have 1 s resolution).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.util.timeutil import new_run_id
from testbed.fixtures import build_recipe
from tests.helpers import (
    STATIC_OPTIONS,
    RemoteRegistry,
    ServeProcess,
    git,
    isolate_environment,
    recipe_entry,
    request_doc,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
OBSERVE_EVERY_S = 0.005
IDLE_WINDOW_INTERVALS = 3  # the idle pass rate is measured over this many poll intervals
RECIPE = "static"
SCENARIOS = {
    "watch": "request committed in the watched clone",
    "remote": "request pushed to the remote by a bot",
    "poll": "request committed in the clone, serve --no-watch",
}
NO_DOCKER = "unix:///nonexistent/ccci-bench-pickup-needs-no-docker.sock"


def read_ref(git_dir: Path, ref: str = "refs/heads/main") -> str | None:
    """The ref's commit, read from the files git writes atomically (no subprocess)."""
    try:
        return (git_dir / ref).read_text().strip() or None
    except FileNotFoundError:
        pass
    try:
        for line in (git_dir / "packed-refs").read_text().splitlines():
            sha, _, name = line.partition(" ")
            if name == ref:
                return sha
    except FileNotFoundError:
        pass
    return None


@dataclass
class RefObserver:
    """Notes (monotonic time, commit) each time a branch tip changes, every 5 ms."""

    git_dir: Path
    seen: list[tuple[float, str]] = field(default_factory=list)

    def poll(self, now: float) -> None:
        sha = read_ref(self.git_dir)
        if sha and (not self.seen or self.seen[-1][1] != sha):
            self.seen.append((now, sha))


class Observer:
    def __init__(self, clone: Path, remote: Path) -> None:
        self.clone = RefObserver(clone / ".git")
        self.remote = RefObserver(remote)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ref-observer", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            self.clone.poll(now)
            self.remote.poll(now)
            time.sleep(OBSERVE_EVERY_S)

    def start(self) -> Observer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def landing_times(repo: Path, observed: list[tuple[float, str]]) -> dict[str, tuple[float, str]]:
    """Commit -> (first time a tip containing it was seen, subject)."""
    out: dict[str, tuple[float, str]] = {}
    previous: str | None = None
    for moment, sha in observed:
        span = f"{previous}..{sha}" if previous else sha
        for line in git(repo, "log", "--format=%H%x00%s", span).splitlines():
            commit, _, subject = line.partition("\0")
            out.setdefault(commit, (moment, subject))
        previous = sha
    return out


def find(landed: dict[str, tuple[float, str]], *needles: str) -> float | None:
    times = [moment for moment, subject in landed.values() if all(n in subject for n in needles)]
    return min(times) if times else None


def ccci_cli(state: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "controller", "--state-dir", str(state), *args],
                          capture_output=True, text=True, cwd=REPO_ROOT, check=False, timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"ccci {shlex.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def result_outcome(clone: Path, run_id: str) -> str | None:
    for path in (clone / "results").glob(f"*/{run_id}.yaml"):
        try:
            for line in path.read_text().splitlines():
                if line.startswith("outcome:"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            return None
    return None


def wait_until(probe: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Scenario:
    name: str
    registry: RemoteRegistry
    base: Path
    poll_interval: float
    rng: random.Random
    ref_base: int
    samples: list[float] = field(default_factory=list)
    idle_passes_per_min: float = 0.0

    def run(self, count: int) -> list[float]:
        clone = self.registry.clone(f"controller-{self.name}")
        bot = self.registry.clone(f"bot-{self.name}") if self.name == "remote" else None
        state = self.base / f"state-{self.name}"
        client_state = self.base / f"client-state-{self.name}"
        state.mkdir()
        client_state.mkdir()
        extra = ["--no-watch"] if self.name == "poll" else []
        serve = ServeProcess(clone, state, "--poll-interval", str(self.poll_interval), *extra,
                             log_path=self.base / f"serve-{self.name}.log")
        observer = Observer(clone, self.registry.bare).start()
        try:
            wait_until(lambda: list((state / "serve").glob("*.json")), 60, "serve's first pass")
            pauses = [(k + 0.5) * self.poll_interval / count for k in range(count)]
            self.rng.shuffle(pauses)
            self.one_request(0, 0.0, clone, bot, client_state, observer)  # warms caches; not counted
            self.idle_passes_per_min = self.idle_pass_rate(state)
            print(f"  {self.name}: {self.idle_passes_per_min:.0f} passes/min while idle", file=sys.stderr)
            for n in range(1, count + 1):
                pickup = self.one_request(n, pauses[n - 1], clone, bot, client_state, observer)
                self.samples.append(pickup)
                print(f"  {self.name} #{n}: {pickup * 1000:.0f} ms", file=sys.stderr)
        finally:
            observer.stop()
            code = serve.stop()
        if code != 0:
            raise SystemExit(f"serve ({self.name}) exited {code}; log: {serve.log_path}")
        return self.samples

    def idle_pass_rate(self, state: Path) -> float:
        """Registry passes per minute with nothing to do (the timer alone gives 60/P), from the
        heartbeat serve writes after every pass."""
        def passes() -> int:
            heartbeats = list((state / "serve").glob("*.json"))
            return int(json.loads(heartbeats[0].read_text())["passes"]) if heartbeats else 0

        window = IDLE_WINDOW_INTERVALS * self.poll_interval
        time.sleep(1.0)  # let the pass that followed the warm-up verdict finish
        before, started = passes(), time.monotonic()
        time.sleep(window)
        return (passes() - before) * 60 / (time.monotonic() - started)

    def one_request(self, n: int, pause: float, clone: Path, bot: Path | None, client_state: Path,
                    observer: Observer) -> float:
        time.sleep(pause)
        ref = f"{self.ref_base + n:040x}"
        if bot is None:
            run_id = ccci_cli(client_state, "request", "--registry", str(clone), "--recipe", RECIPE,
                              "--ref", ref, "--by", "bench")
            landed_in, watched = clone, observer.clone
        else:
            git(bot, "pull", "-q", "--ff-only", "origin", "main")
            run_id = new_run_id(RECIPE)
            (bot / "requests" / f"{run_id}.yaml").write_text(request_doc(RECIPE, ref=ref, by="bot"))
            git(bot, "add", "--", f"requests/{run_id}.yaml")
            git(bot, "commit", "-qm", f"[cold] {RECIPE}@{ref[:7]} requested by bot (run {run_id})")
            git(bot, "push", "-q", "origin", "main")
            landed_in, watched = self.registry.bare, observer.remote
        wait_until(lambda: result_outcome(clone, run_id) not in (None, "running"), 120,
                   f"the verdict on {run_id}")
        outcome = result_outcome(clone, run_id)
        if outcome != "rejected":
            raise SystemExit(f"{run_id}: expected a rejection of a missing commit, got {outcome}")
        time.sleep(0.05)  # let the observer see the final tip
        requested = find(landing_times(landed_in, list(watched.seen)), "requested by", f"(run {run_id})")
        claimed = find(landing_times(clone, list(observer.clone.seen)),
                       f"[cold] {RECIPE}@{ref[:7]} running (run {run_id})")
        if requested is None or claimed is None:
            raise SystemExit(f"{run_id}: request or claim commit not observed "
                             f"(requested={requested}, claimed={claimed})")
        return claimed - requested


def quantile(samples: list[float], q: int) -> float:
    """The q-th percentile (inclusive method: stays inside the observed range)."""
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def report(results: dict[str, Scenario], poll_interval: float, count: int, argv: list[str]) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()
    lines = [
        f"Command: `{shlex.join(['python', 'bench/pickup.py', *argv])}`",
        f"Date: {now}. Machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux "
        f"{platform.release().split('-')[0]}, Python {platform.python_version()}; load average "
        f"at the end {load[0]:.1f}.",
        "",
        "| scenario | poll interval | median pickup | p90 | median / poll interval | idle passes / min |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, scenario in results.items():
        samples = scenario.samples
        median = statistics.median(samples)
        lines.append(f"| {name}: {SCENARIOS[name]} | {poll_interval:g} s | {median * 1000:.0f} ms | "
                     f"{quantile(samples, 90) * 1000:.0f} ms | {median / poll_interval:.3f} | "
                     f"{scenario.idle_passes_per_min:.0f} |")
    lines += [
        "",
        f"{count} requests per scenario, one at a time, at phases of the poll timer spread evenly "
        "over one interval.",
        "- pickup: from the request commit's landing (in the serve's clone for watch and poll, "
        "in the remote for remote) to the claim commit (`outcome: running`) in the serve's clone.",
        "- watch: the file watcher wakes the loop (after a 0.1 s debounce); the rest is one "
        "fetch, the pending scan and the claim's own commit.",
        "- remote: nothing local changes, so the next periodic fetch finds it: expect about half "
        "the interval on average, a full interval at worst.",
        "- poll: the same request as watch with the watcher off: the interval alone sets the delay.",
        "- median / poll interval: 0.5 is what uniform arrival against a fixed timer gives; "
        "near 0 means the interval does not matter.",
        f"- idle passes / min: registry passes (fetch + scan) with nothing to do, over "
        f"{IDLE_WINDOW_INTERVALS} intervals; the timer alone gives {60 / poll_interval:g}, more "
        "means something else wakes the loop.",
    ]
    busy = [name for name, scenario in results.items()
            if scenario.idle_passes_per_min > 2 * 60 / poll_interval]
    if busy:
        lines.append(f"- WARNING: {', '.join(busy)}: the loop passes far more often than its timer "
                     "while idle, so something else wakes it; a pickup there is not set by the "
                     "interval.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20, help="timed requests per scenario")
    parser.add_argument("--poll-interval", type=float, default=5.0, help="serve --poll-interval (s)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {', '.join(SCENARIOS)}")
    parser.add_argument("--seed", type=int, default=1, help="seed of the order of the pauses")
    parser.add_argument("--keep", action="store_true", help="keep the tmp dir (logs, clones)")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown or not names or args.count < 2 or args.poll_interval <= 0:
        parser.error(f"bad --scenarios/--count/--poll-interval ({', '.join(unknown) or 'values'})")
    tmp = Path(tempfile.mkdtemp(prefix="ccci-bench-pickup-"))
    try:
        isolate_environment(tmp, DOCKER_HOST=NO_DOCKER, CCCI_LOG_LEVEL="INFO")  # no Docker needed
        static = build_recipe(RECIPE, tmp / "recipes" / RECIPE, versions=[1])
        registry = RemoteRegistry.create(tmp / "registry")
        registry.set_recipes(recipe_entry(RECIPE, static.path, **STATIC_OPTIONS))
        rng = random.Random(args.seed)
        results = {}
        for index, name in enumerate(names):
            print(f"scenario {name}: {SCENARIOS[name]}", file=sys.stderr)
            scenario = Scenario(name, registry, tmp, args.poll_interval, rng, 0xB3AC4 << 32 | index << 16)
            scenario.run(args.count)
            results[name] = scenario
        print(report(results, args.poll_interval, args.count, sys.argv[1:] if argv is None else argv))
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
