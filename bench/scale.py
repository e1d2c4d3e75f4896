"""A year of history: what commands and a serve pass cost with 50 000 results, beside 50.

    python bench/scale.py [--results 50,50000] [--recipes 200] [--repeat 3] [--keep DIR]

For each size, a registry of `--recipes` recipes and that many runs — each a request commit, a
`running` claim and a verdict, as the controller writes them (realistic result documents, spread
over a year of `results/<YYYY-MM>/`, some promoting a canonical) — is written with `git
fast-import` into a bare remote, and a controller clone is made. Then, side by side, medians of:
`ccci status --json` (first with no cache, then warm), one `ccci serve --once` pass that claims a
new request (its ref is a commit the recipe lacks, so the run is claimed, then rejected at
fetch: no Docker), `ccci request`, `ccci audit`, a fresh clone, a fetch of one new commit, and a
commit and push of one file.

Writing a year takes git fast-import 3 to 5 minutes on this machine kind (each of 150 000
commits writes a new month tree of thousands of entries). `--keep DIR` builds into DIR and
leaves it there; a later run with the same DIR reuses each remote it finds (and says so).
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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.registry.results import AssertOutcome, Phase, RunResult
from controller.util.yamlio import dump_document
from testbed.fixtures import build_recipe
from tests.helpers import git, isolate_environment

REPO_ROOT = Path(__file__).resolve().parent.parent
IDENTITY = ("ccci", "ccci@localhost")
HUMAN = ("Bot", "bot@example.org")


def settings(recipes: int, source: Path) -> str:
    lines = ["base_domain: ci.test", "authority: {cold: ['*'], quick: ['*']}", "sweep: {max_tests: 0}",
             "limits: {disk_min_free_gb: 0}", "recipes:"]
    lines += [f"  r{i:03d}: {{source: {source}}}" for i in range(recipes)]
    return "\n".join(lines) + "\n"


_TEMPLATES: dict[tuple[str, str], str] = {}
_RUN, _RECIPE, _REF = "20000101T000000-placeholder-abcdef", "placeholder", "f" * 40


def result_doc(run: str, recipe: str, ref: str, mode: str, outcome: str, moment: dt.datetime) -> str:
    """As the controller writes it; rendered once per mode and outcome, then filled in (the
    YAML dumper costs milliseconds a document, and a year has 100 000 of them)."""
    key = (mode, outcome)
    if key not in _TEMPLATES:
        _TEMPLATES[key] = _render(_RUN, _RECIPE, _REF, mode, outcome, dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    finished = moment + dt.timedelta(minutes=3)
    return (_TEMPLATES[key].replace(_RUN, run).replace(f"{_RECIPE}-abcdef", f"{recipe}-{run[-6:]}")
            .replace(f"recipe: {_RECIPE}", f"recipe: {recipe}").replace(_REF, ref)
            .replace(_REF[:12], ref[:12]).replace("2000-01-01T00:00:00Z", f"{moment:%Y-%m-%dT%H:%M:%SZ}")
            .replace("2000-01-01T00:03:00Z", f"{finished:%Y-%m-%dT%H:%M:%SZ}"))


def _render(run: str, recipe: str, ref: str, mode: str, outcome: str, moment: dt.datetime) -> str:
    finished = moment + dt.timedelta(minutes=3)
    result = RunResult(run=run, recipe=recipe, ref=ref, mode=mode, requested_mode=mode, outcome=outcome,
                       started_at=f"{moment:%Y-%m-%dT%H:%M:%SZ}", gating=mode == "cold",
                       finished_at=None if outcome == "running" else f"{finished:%Y-%m-%dT%H:%M:%SZ}",
                       requested_by="alice", app=f"{recipe}-{run[-6:]}", controller="ci01:4242")
    if outcome != "running":
        result.phases = [Phase(n, "ok", s) for n, s in (("fetch", 0.4), ("policy", 0.01), ("deploy", 2.1),
                                                        ("converge", 31.0), ("asserts", 4.2), ("teardown", 6.0))]
        result.asserts = [AssertOutcome(n, outcome == "pass", d) for n, d in (
            ("converged", "app 1/1; db 1/1"), ("no-restart-loop", "no failed tasks"),
            ("healthchecks", "healthy: app, db"), ("http", "http://127.0.0.1:20456 GET / → 200"),
            ("commit", f"running tasks carry ccci.commit={ref[:12]}"),
            ("custom:tests/ccci-assert", "exit 0 in 1.2 s: 5000 notes"))]
    return dump_document(result.to_document())


def blob(text: str) -> bytes:
    data = text.encode()
    return b"data %d\n" % len(data) + data + b"\n"


def write_history(bare: Path, runs: int, recipes: int, source: Path) -> None:
    """`git fast-import` a year of runs: three commits each (the verdict consumes the request), a
    promotion now and then."""
    start = dt.datetime(2025, 12, 1, tzinfo=dt.UTC)
    step = dt.timedelta(days=365) / max(runs, 1)
    rng = random.Random(42)
    proc = subprocess.Popen(["git", "fast-import", "--quiet"], cwd=bare, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    out = proc.stdin
    mark = 0

    def commit(who: tuple[str, str], when: dt.datetime, message: str, files: dict[str, str | None]) -> None:
        nonlocal mark
        mark += 1
        stamp = int(when.timestamp())
        out.write(f"commit refs/heads/main\nmark :{mark}\n".encode())
        out.write(f"author {who[0]} <{who[1]}> {stamp} +0000\ncommitter {who[0]} <{who[1]}> {stamp} +0000\n".encode())
        out.write(blob(message)[:-1] + b"\n")
        if mark > 1:
            out.write(f"from :{mark - 1}\n".encode())
        for path, text in files.items():
            if text is None:
                out.write(f"D {path}\n".encode())
            else:
                out.write(f"M 100644 inline {path}\n".encode() + blob(text))
        out.write(b"\n")

    commit(HUMAN, start - dt.timedelta(days=1), "registry", {
        "ccci.yaml": settings(recipes, source), **{f"{d}/.gitkeep": "" for d in ("requests", "results",
                                                                                  "canonicals", "snapshots-index")}})
    promoted: set[str] = set()
    for i in range(runs):
        moment = start + step * i
        recipe = f"r{rng.randrange(recipes):03d}"
        run = f"{moment:%Y%m%dT%H%M%S}-{recipe}-{i:06x}"
        ref = f"{rng.getrandbits(160):040x}"
        mode = "quick" if rng.random() < 0.3 else "cold"
        outcome = "pass" if rng.random() < 0.8 else "fail"
        month = f"{moment:%Y-%m}"
        rel = f"results/{month}/{run}.yaml"
        commit(HUMAN, moment, f"[{mode}] {recipe}@{ref[:7]} requested by alice (run {run})",
               {f"requests/{run}.yaml": f"recipe: {recipe}\nref: '{ref}'\nmode: {mode}\nrequested_by: alice\n"})
        commit(IDENTITY, moment, f"[{mode}] {recipe}@{ref[:7]} running (run {run})",
               {rel: result_doc(run, recipe, ref, mode, "running", moment)})
        files: dict[str, str | None] = {rel: result_doc(run, recipe, ref, mode, outcome, moment),
                                        f"requests/{run}.yaml": None}  # the verdict consumes its request
        subject = f"[{mode}] {recipe}@{ref[:7]} {outcome} (run {run})"
        if mode == "cold" and outcome == "pass" and recipe not in promoted:
            promoted.add(recipe)
            doc = json.loads(json.dumps({"recipe": recipe, "source": str(source), "known_good": ref,
                                         "domain": f"warm-{recipe}.ci.test", "promoted_by_run": run,
                                         "promoted_at": f"{moment:%Y-%m-%dT%H:%M:%SZ}"}))
            files[f"canonicals/{recipe}.yaml"] = dump_document(doc)
            text = str(files[rel]).replace("advanced: false", "advanced: true").replace(
                "before:\n", "before:\n").replace("after:\n", f"after: '{ref}'\n")
            files[rel] = text
            subject += "; canonical advanced"
        commit(IDENTITY, moment + dt.timedelta(minutes=3), subject, files)
    out.close()
    if proc.wait() != 0:
        raise SystemExit("git fast-import failed")


def timed(argv: list[str], *, env: dict[str, str] | None = None, check: bool = True) -> float:
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=REPO_ROOT, check=False)
    took = time.monotonic() - started
    if check and proc.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return took


def ccci(state: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "controller", "--state-dir", str(state), "--log-level", "WARNING", *args]


def measure(work: Path, runs: int, recipes: int, repeat: int, source: Path) -> dict[str, float]:
    base = work / f"n{runs}"
    bare = base / "remote.git"
    figures: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)

    if (bare / "HEAD").exists():
        print(f"reusing {bare}", file=sys.stderr)
        for leftover in base.iterdir():
            if leftover != bare:
                shutil.rmtree(leftover)
    else:
        bare.mkdir(parents=True)
        git(bare, "init", "-q", "--bare", "--initial-branch=main")
        started = time.monotonic()
        write_history(bare, runs, recipes, source)
        add("fast-import (setup)", time.monotonic() - started)
    clone = base / "controller"
    add("git clone (fresh)", timed(["git", "clone", "-q", str(bare), str(clone)]))
    for k in range(repeat):
        state = base / f"state-{k}"
        add("ccci status --json (no cache)", timed(ccci(state, "status", "--registry", str(clone), "--json")))
        add("ccci status --json", timed(ccci(state, "status", "--registry", str(clone), "--json")))
        add("ccci status --recipe r007", timed(ccci(state, "status", "--registry", str(clone), "--recipe", "r007")))
        bot = base / f"bot-{k}"
        if not bot.exists():
            git(base, "clone", "-q", str(bare), str(bot))
            # A bot files from a clone it has filed from before: its first write splits the
            # clone's git index (core.splitIndex), once, which is not what a request costs.
            subprocess.run(ccci(state, "request", "--registry", str(bot), "--recipe", "r001", "--ref",
                                f"{random.getrandbits(160):040x}", "--by", "alice"),
                           check=True, capture_output=True)
        ref = f"{random.getrandbits(160):040x}"
        add("ccci request", timed(ccci(state, "request", "--registry", str(bot), "--recipe", "r001", "--ref", ref,
                                       "--by", "alice")))
        add("git fetch (one new commit)", timed(["git", "-C", str(clone), "fetch", "-q"]))
        (bot / "requests" / f"bench-{k}.txt").write_text(f"{time.time_ns()}\n")
        git(bot, "add", "-A")
        add("git commit + push (one file)", timed(["sh", "-c", f"git -C {shlex.quote(str(bot))} commit -qm one && "
                                                               f"git -C {shlex.quote(str(bot))} push -q"]))
        add("ccci serve --once (claims one request)", timed(ccci(state, "serve", "--registry", str(clone), "--once",
                                                                "--no-watch")))
    add("ccci audit", timed(ccci(base / "state-audit", "audit", "--registry", str(clone))))
    return {name: statistics.median(values) for name, values in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="50,50000")
    parser.add_argument("--recipes", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="build here and keep it; reuse what a last run left")
    args = parser.parse_args()
    sizes = [int(n) for n in args.results.split(",")]
    work = args.keep.absolute() if args.keep else Path(tempfile.mkdtemp(prefix="ccci-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    for scratch in ("home", "no-engine.sock"):
        shutil.rmtree(work / scratch, ignore_errors=True)
    isolate_environment(work, DOCKER_HOST=f"unix://{work}/no-engine.sock")
    recipe = work / "recipes" / "static"
    source = recipe if (recipe / ".git").exists() else build_recipe("static", recipe, versions=[1]).path
    table = {n: measure(work, n, args.recipes, args.repeat, source) for n in sizes}
    command = "python bench/scale.py " + shlex.join(sys.argv[1:])
    print(f"## Scale: a year of history (`{command}`)\n")
    print(f"{dt.datetime.now(dt.UTC):%Y-%m-%d}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"git {subprocess.run(['git', '--version'], capture_output=True, text=True).stdout.split()[-1]}; "
          f"{args.recipes} recipes, 3 commits per run; medians of {args.repeat}\n")
    print("| | " + " | ".join(f"{n} results" for n in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    rows = list(dict.fromkeys(name for n in sizes for name in table[n]))
    for name in rows:
        print(f"| {name} | " + " | ".join(f"{table[n][name]:.2f} s" if name in table[n] else "reused"
                                          for n in sizes) + " |")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
