"""Cold vs quick of the same upgrade (heavy-init v1 -> v2) on the test bed's swarm: time to
the verdict and wall time, side by side.

    python bench/quick_vs_cold.py [--runs 3] [--seed-rows N] [--recipe-name bench-heavy] [--keep]

The fixture is `heavy-init` (testbed/recipes/heavy-init): its first boot on empty volumes does
schema steps and seeds SEED_ROWS rows from real work, tens of seconds as an SSO app's first boot;
a start on its own data serves at once and v2's migration writes no rows. That is the case quick
exists for: cold pays the first boot every time, quick upgrades data that is already there.

Set-up (tmp dir under /var/tmp, own state dir): a registry on a bare remote with the fixture under
`--recipe-name` (default `bench-heavy`, so its warm app never collides with the tests' on a shared
engine), and again as `<name>-hot` with `hot: true`, SEED_ROWS from ccci.yaml (`recipes.<name>.env`)
when `--seed-rows` is given. For each, a cold run of v1 seeds the canonical, `ccci canonical
rewarm` takes its snapshot (and deploys the hot one). Then, --runs times, each variant of
VARIANTS on v2, a PR head (cold, quick, hot quick), each `ccci request` + `ccci run` in a subprocess:
- time to verdict: from the start of `ccci run` until the run's verdict commit is on the remote
  (a thread watches the bare remote's log every 0.1 s): what a maintainer waits for;
- wall: until `ccci run` exits, the housekeeping after the verdict and its commit included.
Phases are read from the result files, the first boot's own duration from the cold app's log
("seeded in X s"). Every run must pass as the mode asked; anything else stops the benchmark. At
the end `ccci leaks` must exit 0, then the warm app's volumes and the tmp dir are removed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.util import names
from controller.util.paths import StateDir
from testbed.fixtures import RECIPES, build_recipe
from tests.helpers import RemoteRegistry, isolate_environment, read_yaml, recipe_entry

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTBED_ENV = Path(os.environ.get("CCCI_TESTBED_DIR", "/var/lib/ccci-testbed")) / "env"
RUN_TIMEOUT_S = 1800
SEEDED = re.compile(r"seeded in ([0-9.]+) s")


def testbed_docker_host() -> str:
    """DOCKER_HOST from the environment, else from the test bed's env file."""
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    if TESTBED_ENV.is_file():
        for line in TESTBED_ENV.read_text().splitlines():
            key, sep, value = line.strip().removeprefix("export ").partition("=")
            if sep and key == "DOCKER_HOST":
                return value.strip("'\"")
    raise SystemExit(f"no DOCKER_HOST and no {TESTBED_ENV}: run scripts/testbed up first")


def ccci(state: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "controller", "--state-dir", str(state), *args],
                          capture_output=True, text=True, cwd=REPO_ROOT, check=False,
                          timeout=RUN_TIMEOUT_S)
    if check and proc.returncode != 0:
        raise SystemExit(f"ccci {shlex.join(args)} exited {proc.returncode}:\n"
                         f"{proc.stdout.strip()}\n{proc.stderr.strip()}")
    return proc


class Watch:
    """A thread that calls `look` every `interval` seconds until it returns a number of seconds
    (kept as `seconds`) or `stop` is called: the probes below watch a run from outside."""

    interval = 1.0

    def __init__(self) -> None:
        self.seconds: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=type(self).__name__, daemon=True)

    def look(self) -> float | None:
        raise NotImplementedError

    def _loop(self) -> None:
        while self.seconds is None and not self._stop.is_set():
            self.seconds = self.look()
            self._stop.wait(self.interval)

    def start(self) -> Watch:
        self._thread.start()
        return self

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join()
        return self.seconds


class FirstInitProbe(Watch):
    """Reads "seeded in X s" from a cold app's service log while its run is in flight (the
    log goes with the app at teardown)."""

    def __init__(self, service: str) -> None:
        import docker

        super().__init__()
        self.service = service
        self.client = docker.from_env(timeout=30)

    def look(self) -> float | None:
        try:
            for svc in self.client.services.list(filters={"name": self.service}):
                found = SEEDED.search(b"".join(svc.logs(stdout=True, stderr=True)).decode(errors="replace"))
                if found:
                    return float(found.group(1))
        except Exception:  # the service comes and goes: try again next second
            pass
        return None

    def stop(self) -> float | None:
        seconds = super().stop()
        self.client.close()
        return seconds


class VerdictWatch(Watch):
    """Notes when the verdict commit of `run_id` first shows on the bare remote (its subject
    names the run with a final outcome; the request's and the claim's do not)."""

    interval = 0.1

    def __init__(self, remote: Path, run_id: str, started: float) -> None:
        super().__init__()
        self.remote, self.started = remote, started
        self.verdict = re.compile(rf" (?:pass|fail|error|rejected|aborted) \(run {re.escape(run_id)}\)")

    def look(self) -> float | None:
        subjects = subprocess.run(["git", "--git-dir", str(self.remote), "log", "-5", "--format=%s"],
                                  capture_output=True, text=True, check=False).stdout.splitlines()
        return time.monotonic() - self.started if any(self.verdict.search(s) for s in subjects) else None


@dataclass(frozen=True)
class Variant:
    """One column of the report: how a run of v2 is asked for. A new kind of run is one more
    entry in VARIANTS, and one more column."""

    label: str
    mode: str  # what `ccci request --mode` asks
    what: str  # one line for the report
    hot: bool = False  # of the fixture registered with `hot: true` (`<recipe-name>-hot`)

    def recipe(self, base: str) -> str:
        return f"{base}-hot" if self.hot else base


VARIANTS = (
    Variant("cold", "cold", "fresh volumes: the first boot, then v2"),
    Variant("quick", "quick", "restore, reattach v1 on its data, upgrade to v2"),
    Variant("hot quick", "quick", "v1 already running on its data (`hot: true`): upgrade to v2; "
            "restore and redeploy v1 after the verdict", hot=True),
)


@dataclass
class Run:
    label: str  # a variant's label, or the seed's
    run_id: str
    wall_s: float
    result: dict[str, Any]
    first_init_s: float | None = None
    verdict_s: float | None = None  # from the start of `ccci run` to the verdict on the remote

    def phases(self) -> dict[str, float]:
        """Seconds per phase name (a name that occurs twice is summed)."""
        out: dict[str, float] = {}
        for phase in self.result.get("phases") or []:
            out[phase["name"]] = out.get(phase["name"], 0.0) + float(phase["seconds"])
        return out


def seeded_rows(result: dict[str, Any]) -> int | None:
    """How many rows the app reported to the recipe's own assert ("heavy-init v2: 123 rows")."""
    for outcome in result.get("asserts") or []:
        if str(outcome.get("name", "")).startswith("custom:"):
            found = re.search(r"(\d+) rows", str(outcome.get("detail", "")))
            if found:
                return int(found.group(1))
    return None


def result_of(clone: Path, run_id: str, proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    paths = list((clone / "results").glob(f"*/{run_id}.yaml"))
    if not paths:
        raise SystemExit(f"{run_id}: no result file in {clone}/results; `ccci run` exited "
                         f"{proc.returncode}:\n{proc.stdout.strip()}\n{proc.stderr.strip()[-3000:]}")
    doc: dict[str, Any] = read_yaml(paths[0])
    return doc


def request_and_run(state: Path, clone: Path, remote: Path, recipe: str, ref: str, mode: str, label: str,
                    seed_rows: int) -> Run:
    run_id = ccci(state, "request", "--registry", str(clone), "--recipe", recipe, "--ref", ref,
                  "--mode", mode, "--by", "bench").stdout.strip()
    print(f"… {label}: run {run_id}", file=sys.stderr, flush=True)
    probe = FirstInitProbe(f"{names.cold_app(recipe, run_id)}_app").start() if mode == "cold" else None
    started = time.monotonic()
    watch = VerdictWatch(remote, run_id, started).start()
    proc = ccci(state, "run", "--no-rewarm", "--registry", str(clone), run_id, check=False)
    wall = time.monotonic() - started
    verdict = watch.stop()
    first_init = probe.stop() if probe else None
    result = result_of(clone, run_id, proc)
    problems = []
    if proc.returncode != 0 or result.get("outcome") != "pass":
        problems.append(f"outcome {result.get('outcome')} (exit {proc.returncode}): {result.get('error')}")
    if result.get("mode") != mode or result.get("fallback"):
        problems.append(f"ran as {result.get('mode')} (fallback {result.get('fallback')}), not {mode}")
    if (result.get("housekeeping") or {}).get("status", "done") != "done":
        problems.append(f"housekeeping {result.get('housekeeping')}")
    rows = seeded_rows(result)
    if not problems and rows != seed_rows:
        problems.append(f"the app holds {rows} rows, not SEED_ROWS={seed_rows}: the seed setting "
                        "did not reach it")
    if problems:
        raise SystemExit(f"{label} run {run_id} did not pass as asked: {'; '.join(problems)}\n"
                         f"{proc.stderr.strip()[-3000:]}")
    if mode == "cold" and first_init is None:
        raise SystemExit(f"{label} run {run_id}: no 'seeded in' line seen in the app's log")
    if verdict is None:
        raise SystemExit(f"{label} run {run_id}: its verdict commit never showed on the remote")
    print(f"✓ {label}: verdict {verdict:.1f} s, wall {wall:.1f} s", file=sys.stderr, flush=True)
    return Run(label, run_id, wall, result, first_init, verdict)


def leftover_objects(app_prefixes: tuple[str, ...], owner: str) -> list[str]:
    """Every Docker object of our apps (by the stack namespace or ccci labels) still there."""
    import docker

    client = docker.from_env(timeout=60)
    found = set()
    try:
        kinds = {"service": client.services, "network": client.networks, "config": client.configs,
                 "secret": client.secrets, "volume": client.volumes}
        for kind, collection in kinds.items():
            for obj in collection.list():
                attrs = obj.attrs
                labels = (attrs.get("Spec", {}).get("Labels") if kind in ("service", "config", "secret")
                          else attrs.get("Labels")) or {}
                name = getattr(obj, "name", "") or ""
                app = labels.get("ccci.app") or labels.get("com.docker.stack.namespace") or ""
                if labels.get("ccci.owner") == owner or app.startswith(app_prefixes) \
                        or name.startswith(app_prefixes):
                    found.add(f"{kind} {name}")
        for container in client.containers.list(all=True):
            labels = container.labels or {}
            app = labels.get("com.docker.stack.namespace") or labels.get("ccci.app") or ""
            if app.startswith(app_prefixes):
                found.add(f"container {container.name}")
    finally:
        client.close()
    return sorted(found)


def clean_up(state: Path, *recipes: str) -> list[str]:
    """`ccci leaks` must pass; then the warm apps (and their data) go. Returns what is still there."""
    problems = []
    leaks = ccci(state, "leaks", check=False)
    if leaks.returncode != 0:
        problems.append(f"ccci leaks exited {leaks.returncode}: "
                        f"{leaks.stdout.strip()} {leaks.stderr.strip()}")
    owner = StateDir(state).owner_id
    from controller.runtime import stack  # needs DOCKER_HOST, set by now

    for recipe in recipes:
        stack.undeploy(f"warm-{recipe}", remove_volumes=True)  # volumes and the generated secret
    left = leftover_objects(tuple(p for r in recipes for p in (f"warm-{r}", f"{r}-")), owner)
    if left:
        problems.append("left behind: " + ", ".join(left))
    return problems


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def seconds(value: float) -> str:
    return "-" if value != value else f"{value:.1f} s"


def with_runs(values: list[float]) -> str:
    """The median, then each run in order: `5.0 s (0.0, 5.0, 5.1)`."""
    if not values:
        return "-"
    runs = f" ({', '.join(f'{v:.1f}' for v in values)})" if len(values) > 1 else ""
    return f"{median(values):.1f} s{runs}"


def report(seed: list[Run], runs: dict[str, list[Run]], args: argparse.Namespace, rows: int,
           argv: list[str], started_at: dt.datetime) -> str:
    load = os.getloadavg()
    cold = runs["cold"]
    cold_verdict = median([r.verdict_s or 0.0 for r in cold])
    cold_wall = median([r.wall_s for r in cold])
    header = " | ".join(v.label for v in VARIANTS)
    lines = [
        f"Command: `{shlex.join(['python', 'bench/quick_vs_cold.py', *argv])}`",
        f"Date: {started_at:%Y-%m-%d %H:%M} UTC. Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Linux {platform.release().split('-')[0]}, Python {platform.python_version()}; load average "
        f"at the end {load[0]:.1f}. Fixture heavy-init v1 -> v2, SEED_ROWS={rows} (checked from the "
        f"app's assert output), {args.runs} runs each, in turns.",
        "",
        f"| median (then each run in order) | {header} |",
        "|---|" + "---:|" * len(VARIANTS),
        "| time to verdict (verdict commit on the remote) | "
        + " | ".join(with_runs([r.verdict_s or 0.0 for r in runs[v.label]]) for v in VARIANTS) + " |",
        "| … / cold's | "
        + " | ".join(f"{median([r.verdict_s or 0.0 for r in runs[v.label]]) / cold_verdict:.2f}"
                     for v in VARIANTS) + " |",
        "| wall (`ccci run`, housekeeping included) | "
        + " | ".join(with_runs([r.wall_s for r in runs[v.label]]) for v in VARIANTS) + " |",
        "| … / cold's | "
        + " | ".join(f"{median([r.wall_s for r in runs[v.label]]) / cold_wall:.2f}" for v in VARIANTS) + " |",
        "",
        "What each column runs: " + "; ".join(f"{v.label}: {v.what}" for v in VARIANTS) + ".",
        f"First boot inside the cold runs (the app's own log): {with_runs([r.first_init_s or 0.0 for r in cold])}.",
        "",
        "Where the time goes (median seconds per phase from the result files; phases after the "
        "verdict are housekeeping):",
        "",
        f"| phase | {header} |",
        "|---|" + "---:|" * len(VARIANTS),
    ]
    phase_names: list[str] = []
    for label_runs in runs.values():
        for run in label_runs:
            phase_names += [n for n in run.phases() if n not in phase_names]
    for name in phase_names:
        cells = [with_runs([r.phases()[name] for r in runs[v.label] if name in r.phases()]) for v in VARIANTS]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += [
        "",
        "Seed (not in the table): " + "; ".join(f"{r.label} {r.wall_s:.1f} s" for r in seed) + ".",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each variant")
    parser.add_argument("--seed-rows", type=int, default=None,
                        help="rows the first boot seeds (default: the fixture's .env.sample)")
    parser.add_argument("--recipe-name", default="bench-heavy", help="registry name of the fixture")
    parser.add_argument("--keep", action="store_true", help="keep the tmp dir (not the Docker objects)")
    args = parser.parse_args(argv)
    if args.runs < 1 or (args.seed_rows is not None and args.seed_rows < 1):
        parser.error("--runs and --seed-rows must be positive")
    started_at = dt.datetime.now(dt.UTC)
    tmp = Path(tempfile.mkdtemp(prefix="ccci-bench-quick-", dir="/var/tmp"))
    state = tmp / "state"
    state.mkdir()
    recipe = args.recipe_name
    failure: BaseException | None = None
    seed: list[Run] = []
    runs: dict[str, list[Run]] = {v.label: [] for v in VARIANTS}
    rows = args.seed_rows or fixture_seed_rows()
    try:
        isolate_environment(tmp, DOCKER_HOST=testbed_docker_host(), CCCI_STATE_DIR=str(state))
        # v2 is a PR head, not on main: a cold run of it is not promoted, so every quick run
        # starts from v1's known-good, which is current (a quick run is claimed only then).
        fixture = build_recipe("heavy-init", tmp / "recipes" / "heavy-init", versions=[1])
        v1, v2 = fixture.versions[1], fixture.branch_commit("pr-v2", 2)
        registry = RemoteRegistry.create(tmp / "registry")
        options: dict[str, object] = {"timeout_s": RUN_TIMEOUT_S - 60, "stability_s": 2}
        if args.seed_rows:
            options["env"] = f"{{SEED_ROWS: '{rows}'}}"
        registry.set_recipes(recipe_entry(recipe, fixture.path, **options)
                             + recipe_entry(f"{recipe}-hot", fixture.path, hot="true", **options))
        clone = registry.clone("controller")
        remote = registry.bare

        for name in (recipe, f"{recipe}-hot"):
            seeded = request_and_run(state, clone, remote, name, v1, "cold", f"seed cold v1 of {name}", rows)
            if not (seeded.result.get("canonical") or {}).get("advanced"):
                raise SystemExit(f"seed cold v1 did not seed the canonical: {seeded.result.get('canonical')}")
            print(f"… seed: canonical rewarm of {name}", file=sys.stderr, flush=True)
            started = time.monotonic()
            ccci(state, "canonical", "rewarm", name, "--registry", str(clone))
            seed += [seeded, Run(f"rewarm of {name}", "", time.monotonic() - started, {})]

        for n in range(args.runs):
            for variant in VARIANTS:
                runs[variant.label].append(request_and_run(
                    state, clone, remote, variant.recipe(recipe), v2, variant.mode,
                    f"{variant.label} v2 #{n + 1}", rows))
                if variant.hot and not (runs[variant.label][-1].result.get("upgrade") or {}).get("hot"):
                    raise SystemExit(f"{variant.label} #{n + 1} did not start from the running app: "
                                     f"{runs[variant.label][-1].result.get('upgrade')}")
    except BaseException as exc:
        failure = exc
    finally:
        problems = clean_up(state, recipe, f"{recipe}-hot") if "DOCKER_HOST" in os.environ else []
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if failure is not None:
        raise failure
    if problems:
        raise SystemExit("the benchmark left things behind: " + "; ".join(problems))
    print(report(seed, runs, args, rows, sys.argv[1:] if argv is None else argv, started_at))
    return 0


def fixture_seed_rows() -> int:
    """SEED_ROWS of the fixture's own .env.sample (v2's, which the measured runs deploy)."""
    sample = RECIPES / "heavy-init" / "2" / ".env.sample"
    for line in sample.read_text().splitlines():
        if line.startswith("SEED_ROWS="):
            return int(line.split("=", 1)[1])
    raise SystemExit(f"{sample}: no SEED_ROWS")


if __name__ == "__main__":
    sys.exit(main())
