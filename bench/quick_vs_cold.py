"""Cold vs quick of the same `notes` upgrade (v1 -> v2) on the test bed's swarm.

    python bench/quick_vs_cold.py [--runs 3] [--seed-rows 5000000] [--seed-rows-via settings|recipe]
                                  [--recipe-name bench-notes] [--keep]

Set-up (tmp dir under /var/tmp, own state dir): a registry on a bare remote with the `notes`
fixture under `--recipe-name` (default `bench-notes`, so the warm app `warm-bench-notes`
never collides with the tests' `warm-notes` on a shared engine) and SEED_ROWS=N, given in
ccci.yaml (`recipes.<name>.env`, the default) or in the fixture's own `.env.sample`
(`--seed-rows-via recipe`); every run checks that the app really holds N notes. The default
N makes the first init (inserts and index builds) most of a cold run on this machine kind;
much more and the fixture's healthcheck, which scans every note, nears its 4 s timeout.
A cold run of v1 seeds the canonical, `ccci canonical rewarm` takes its snapshot. Then,
--runs times: a cold run of v2 and a quick run of v2, each `ccci request` + `ccci run` in a
subprocess, timed around `ccci run`; phases are read from the result files, and the first
init's own duration from the cold app's log ("seeded in X s"). Every run must pass (and the
quick ones really run quick); anything else stops the benchmark. At the end `ccci leaks`
must exit 0, then the warm app's volumes and generated secret and the tmp dir are removed.
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
from testbed.fixtures import RecipeRepo, build_recipe
from tests.helpers import NOTES_OPTIONS, RemoteRegistry, git, isolate_environment, read_yaml, recipe_entry

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


class FirstInitProbe:
    """Reads "seeded in X s" from a cold app's service log while its run is in flight (the
    log goes with the app at teardown)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.seconds: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="first-init-probe", daemon=True)

    def _loop(self) -> None:
        import docker

        client = docker.from_env(timeout=30)
        try:
            while self.seconds is None and not self._stop.wait(1.0):
                try:
                    for svc in client.services.list(filters={"name": self.service}):
                        text = b"".join(svc.logs(stdout=True, stderr=True)).decode(errors="replace")
                        found = SEEDED.search(text)
                        if found:
                            self.seconds = float(found.group(1))
                except Exception:  # the service comes and goes: try again next second
                    continue
        finally:
            client.close()

    def start(self) -> FirstInitProbe:
        self._thread.start()
        return self

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join()
        return self.seconds


@dataclass
class Run:
    label: str  # cold | quick | seed cold v1
    run_id: str
    wall_s: float
    result: dict[str, Any]
    first_init_s: float | None = None

    def phases(self) -> dict[str, float]:
        """Seconds per phase name (a name that occurs twice is summed)."""
        out: dict[str, float] = {}
        for phase in self.result.get("phases") or []:
            out[phase["name"]] = out.get(phase["name"], 0.0) + float(phase["seconds"])
        return out


def notes_repo(dest: Path, seed_rows: int, *, in_recipe: bool) -> RecipeRepo:
    """The notes fixture at v1 and v2. With `in_recipe`, each version's `.env.sample` says
    SEED_ROWS itself (as a recipe author would), instead of ccci.yaml's `env` saying it."""
    repo = build_recipe("notes", dest, versions=[1])
    for version in (1, 2):
        if version == 2:
            repo.commit_version(2)
        if in_recipe:
            sample = dest / ".env.sample"
            lines = [f"SEED_ROWS={seed_rows}" if line.startswith("SEED_ROWS=") else line
                     for line in sample.read_text().splitlines()]
            sample.write_text("\n".join(lines) + "\n")
            git(dest, "commit", "-q", "--amend", "--no-edit", "--", ".env.sample")
            git(dest, "tag", "-f", f"{version}.0.0")
            repo.versions[version] = git(dest, "rev-parse", "HEAD")
    return repo


def seeded_notes(result: dict[str, Any]) -> int | None:
    """How many notes the app reported to the recipe's own assert ("notes vN: 123 notes")."""
    for outcome in result.get("asserts") or []:
        if str(outcome.get("name", "")).startswith("custom:"):
            found = re.search(r"(\d+) notes", str(outcome.get("detail", "")))
            if found:
                return int(found.group(1))
    return None


def result_of(clone: Path, run_id: str) -> dict[str, Any]:
    paths = list((clone / "results").glob(f"*/{run_id}.yaml"))
    if not paths:
        raise SystemExit(f"{run_id}: no result file in {clone}/results")
    doc: dict[str, Any] = read_yaml(paths[0])
    return doc


def request_and_run(state: Path, clone: Path, recipe: str, ref: str, mode: str, label: str,
                    seed_rows: int) -> Run:
    run_id = ccci(state, "request", "--registry", str(clone), "--recipe", recipe, "--ref", ref,
                  "--mode", mode, "--by", "bench").stdout.strip()
    print(f"… {label}: run {run_id}", file=sys.stderr, flush=True)
    probe = FirstInitProbe(f"{names.cold_app(recipe, run_id)}_app").start() if mode == "cold" else None
    started = time.monotonic()
    proc = ccci(state, "run", "--no-rewarm", "--registry", str(clone), run_id, check=False)
    wall = time.monotonic() - started
    first_init = probe.stop() if probe else None
    result = result_of(clone, run_id)
    problems = []
    if proc.returncode != 0 or result.get("outcome") != "pass":
        problems.append(f"outcome {result.get('outcome')} (exit {proc.returncode}): {result.get('error')}")
    if result.get("mode") != mode or result.get("fallback"):
        problems.append(f"ran as {result.get('mode')} (fallback {result.get('fallback')}), not {mode}")
    notes = seeded_notes(result)
    if not problems and notes != seed_rows:
        problems.append(f"the app holds {notes} notes, not SEED_ROWS={seed_rows}: the seed setting "
                        "did not reach it (with --seed-rows-via settings: is ccci.yaml's "
                        "recipes.<name>.env applied to the deploy?)")
    if problems:
        raise SystemExit(f"{label} run {run_id} did not pass as asked: {'; '.join(problems)}\n"
                         f"{proc.stderr.strip()[-3000:]}")
    if mode == "cold" and first_init is None:
        raise SystemExit(f"{label} run {run_id}: no 'seeded in' line seen in the app's log")
    print(f"✓ {label}: {wall:.1f} s", file=sys.stderr, flush=True)
    return Run(label, run_id, wall, result, first_init)


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


def clean_up(state: Path, recipe: str) -> list[str]:
    """`ccci leaks` must pass; then the warm app's data goes. Returns what is still there."""
    problems = []
    leaks = ccci(state, "leaks", check=False)
    if leaks.returncode != 0:
        problems.append(f"ccci leaks exited {leaks.returncode}: "
                        f"{leaks.stdout.strip()} {leaks.stderr.strip()}")
    owner = StateDir(state).owner_id
    from controller.runtime import stack  # needs DOCKER_HOST, set by now

    stack.undeploy(f"warm-{recipe}", remove_volumes=True)  # volumes and the generated secret
    left = leftover_objects((f"warm-{recipe}", f"{recipe}-"), owner)
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


def report(seed: list[Run], colds: list[Run], quicks: list[Run], args: argparse.Namespace,
           argv: list[str], started_at: dt.datetime) -> str:
    load = os.getloadavg()
    cold_wall, quick_wall = median([r.wall_s for r in colds]), median([r.wall_s for r in quicks])
    lines = [
        f"Command: `{shlex.join(['python', 'bench/quick_vs_cold.py', *argv])}`",
        f"Date: {started_at:%Y-%m-%d %H:%M} UTC. Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Linux {platform.release().split('-')[0]}, Python {platform.python_version()}; load average "
        f"at the end {load[0]:.1f}. SEED_ROWS={args.seed_rows} (set in the "
        f"{'recipe' if args.seed_rows_via == 'recipe' else 'ccci.yaml'}, checked from the app's "
        f"assert output), {args.runs} runs each.",
        "",
        "| run of notes v2 | median wall (`ccci run`) | runs | quick / cold |",
        "|---|---:|---|---:|",
        f"| cold (fresh volumes: first init, then v2) | {seconds(cold_wall)} | "
        f"{', '.join(f'{r.wall_s:.1f}' for r in colds)} | |",
        f"| quick (upgrade v1 data in place) | {seconds(quick_wall)} | "
        f"{', '.join(f'{r.wall_s:.1f}' for r in quicks)} | {quick_wall / cold_wall:.2f} |",
        "",
        f"First init inside the cold runs (the app's own log: {args.seed_rows} inserts, two "
        f"index builds, 300 files): {with_runs([r.first_init_s or 0.0 for r in colds])}, "
        f"{median([r.first_init_s or 0.0 for r in colds]) / cold_wall:.0%} of the cold wall time.",
        "",
        "Where the time goes (median seconds per phase from the result files, then each run in "
        "order):",
        "",
        "| phase | cold | quick |",
        "|---|---:|---:|",
    ]
    names: list[str] = []
    for run in [*colds, *quicks]:
        names += [n for n in run.phases() if n not in names]
    for name in names:
        cold = [r.phases()[name] for r in colds if name in r.phases()]
        quick = [r.phases()[name] for r in quicks if name in r.phases()]
        lines.append(f"| {name} | {with_runs(cold)} | {with_runs(quick)} |")
    other_cold = [r.wall_s - sum(r.phases().values()) for r in colds]
    other_quick = [r.wall_s - sum(r.phases().values()) for r in quicks]
    lines.append(f"| outside phases (start-up, claim and result commits) | {with_runs(other_cold)} | "
                 f"{with_runs(other_quick)} |")
    lines += [
        "",
        "Seed (not in the table): " + "; ".join(f"{r.label} {r.wall_s:.1f} s" for r in seed) + ".",
        "- wall: `ccci run` as a subprocess, from start to exit, claim and result commits included.",
        "- cold converge: the fresh database's initdb, SEED_ROWS inserts, two indexes and 300 "
        "attachment files, then the stability window.",
        "- quick restore: the incremental restore of the last-known-good; the first quick run "
        "after the rewarm finds the volumes clean (0 s), every later one restores what the "
        "previous quick run's migration changed.",
        "- quick reattach + converge (reattach): v1 started on the snapshot's data; upgrade + "
        "converge: v2 (a stop-first update of both services) and its schema migration on that data.",
        "- asserts: the fixture's /health and /stats sum every note's body, so they grow with "
        "SEED_ROWS in both modes.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="cold and quick runs each")
    parser.add_argument("--seed-rows", type=int, default=5_000_000, help="notes seeded on first init")
    parser.add_argument("--seed-rows-via", choices=("settings", "recipe"), default="settings",
                        help="settings: ccci.yaml recipes.<name>.env (default); recipe: the "
                             "fixture's own .env.sample")
    parser.add_argument("--recipe-name", default="bench-notes", help="registry name of the fixture")
    parser.add_argument("--keep", action="store_true", help="keep the tmp dir (not the Docker objects)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.seed_rows < 1:
        parser.error("--runs and --seed-rows must be positive")
    started_at = dt.datetime.now(dt.UTC)
    tmp = Path(tempfile.mkdtemp(prefix="ccci-bench-quick-", dir="/var/tmp"))
    state = tmp / "state"
    state.mkdir()
    recipe = args.recipe_name
    failure: BaseException | None = None
    seed: list[Run] = []
    colds: list[Run] = []
    quicks: list[Run] = []
    try:
        isolate_environment(tmp, DOCKER_HOST=testbed_docker_host(), CCCI_STATE_DIR=str(state))
        rows = args.seed_rows
        in_recipe = args.seed_rows_via == "recipe"
        notes = notes_repo(tmp / "recipes" / "notes", rows, in_recipe=in_recipe)
        v1, v2 = notes.versions[1], notes.versions[2]
        registry = RemoteRegistry.create(tmp / "registry")
        options: dict[str, object] = {**NOTES_OPTIONS, "timeout_s": RUN_TIMEOUT_S - 60}
        if not in_recipe:
            options["env"] = f"{{SEED_ROWS: '{rows}'}}"
        registry.set_recipes(recipe_entry(recipe, notes.path, **options))
        clone = registry.clone("controller")

        seed.append(request_and_run(state, clone, recipe, v1, "cold", "seed cold v1", rows))
        if not (seed[0].result.get("canonical") or {}).get("advanced"):
            raise SystemExit(f"seed cold v1 did not seed the canonical: {seed[0].result.get('canonical')}")
        print("… seed: canonical rewarm", file=sys.stderr, flush=True)
        started = time.monotonic()
        ccci(state, "canonical", "rewarm", recipe, "--registry", str(clone))
        seed.append(Run("rewarm", "", time.monotonic() - started, {}))

        for n in range(args.runs):
            colds.append(request_and_run(state, clone, recipe, v2, "cold", f"cold v2 #{n + 1}", rows))
            quicks.append(request_and_run(state, clone, recipe, v2, "quick", f"quick v2 #{n + 1}", rows))
    except BaseException as exc:
        failure = exc
    finally:
        problems = clean_up(state, recipe) if "DOCKER_HOST" in os.environ else []
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if failure is not None:
        raise failure
    if problems:
        raise SystemExit("the benchmark left things behind: " + "; ".join(problems))
    print(report(seed, colds, quicks, args, sys.argv[1:] if argv is None else argv, started_at))
    return 0


if __name__ == "__main__":
    sys.exit(main())
