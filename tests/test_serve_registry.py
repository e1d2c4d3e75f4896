"""The serve loop on real git: claims, rejections of bad input, authority, no leaked processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.registry.documents import Request
from controller.registry.store import Registry
from controller.util.errors import BadInput
from testbed.fixtures import build_recipe
from tests import helpers
from tests.helpers import HEX_A, RemoteRegistry, request_doc, results_in, wait_for

STAMP = "20261129T120000"


def _rid(recipe: str, n: int) -> str:
    return f"{STAMP}-{recipe}-{n:06x}"


def bad_input_corpus() -> dict[str, tuple[bytes, str]]:
    """{file name: (bytes, text the rejection must contain)} — at least 20 kinds of bad."""
    good = request_doc("static").encode()
    bomb = b"a: &a [x, x, x, x, x, x, x, x, x]\n" + b"".join(
        b"%c: &%c [*%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c]\n" % ((ord("b") + i,) * 2 + (ord("a") + i,) * 9)
        for i in range(8))
    cases: list[tuple[str, bytes, str]] = [
        (_rid("static", 1), b"recipe: [unclosed\nref: x\n", "malformed YAML"),
        (_rid("static", 2), bomb, "anchors and aliases"),
        (_rid("static", 3), b"recipe: static\nnote: '" + b"x" * (10 * 1024 * 1024) + b"'\n", "byte limit"),
        (_rid("static", 4), good + b"pr: seven\n", "at 'pr'"),
        (_rid("static", 5), good.replace(b"mode: cold", b"mode: 3"), "at 'mode'"),
        (_rid("static", 6), good.replace(b"mode: cold", b"mode: warm"), "at 'mode': 'warm' is not one of"),
        (_rid("static", 7), good.replace(b"recipe: static", b"recipe: ../etc"), "at 'recipe'"),
        (_rid("static", 8), good.replace(b"recipe: static", b"recipe: a/b"), "at 'recipe'"),
        (_rid("static", 9), good.replace(b"ref: '" + HEX_A.encode() + b"'", b"ref: main"), "at 'ref'"),
        (_rid("static", 10), good.replace(b"ref: '" + HEX_A.encode() + b"'", b"ref: abc123"), "at 'ref'"),
        (_rid("static", 11), good.replace(b"ref: '" + HEX_A.encode() + b"'\n", b""), "at 'ref': is missing"),
        (_rid("static", 12), good.replace(b"requested_by: alice\n", b""), "at 'requested_by': is missing"),
        (_rid("static", 13), good + b"mode: quick\n", "duplicate key"),
        (_rid("static", 14), request_doc("static", by="mallory").encode(), "authority.cold"),
        (_rid("static", 15), request_doc("static", mode="quick", by="bob").encode(), "authority.quick"),
        ("hello", good, "at '(file name)'"),
        ("20261129T120000-..-abc123", good, "at '(file name)'"),
        (_rid("static", 16), b"- a\n- list\n", "expected a mapping"),
        (_rid("static", 17), b"", "the file is empty"),
        (_rid("static", 18), b"\xff\xfe\x00garbage", "not UTF-8"),
        (_rid("nothere", 19), request_doc("nothere").encode(), "not configured under 'recipes'"),
        (_rid("static", 20), good + b"colour: red\n", "unknown key 'colour'"),
        (_rid("static", 21), good + b"---\n" + good, "exactly one YAML document"),
        (_rid("static", 22), good.replace(b"alice", b"al ice; rm -rf /"), "at 'requested_by'"),
        (_rid("other", 23), good, "does not match the run id's recipe"),
        (_rid("static", 24), request_doc("static").encode().replace(b"'" + HEX_A.encode() + b"'", b"1" * 40),
         "at 'ref'"),
    ]
    return {f"{name}.yaml": (raw, expected) for name, raw, expected in cases}


@pytest.fixture
def static_registry(git_remote: RemoteRegistry, tmp_path: Path) -> tuple[RemoteRegistry, Path]:
    recipe = build_recipe("static", tmp_path / "recipes" / "static")
    git_remote.set_recipes(f"  static: {{source: {recipe.path}, timeout_s: 60, stability_s: 1}}\n",
                           extra="")
    # Only alice may request cold; nobody quick — the authority cases need a closed list.
    text = (git_remote.base / "seed" / "ccci.yaml")
    del text
    git_remote.edit({"ccci.yaml": helpers.SETTINGS_HEAD.replace("cold: ['*']", "cold: [alice]")
                     .replace("quick: ['*']", "quick: [alice]")
                     + f"recipes:\n  static: {{source: {recipe.path}, timeout_s: 60, stability_s: 1}}\n"})
    return git_remote, recipe.path


def test_bad_input_corpus_is_rejected_and_serve_keeps_serving(
    static_registry: tuple[RemoteRegistry, Path], state_dir: Path, tmp_path: Path
) -> None:
    remote, _recipe = static_registry
    corpus = bad_input_corpus()
    assert len(corpus) >= 20
    before = {p for p in tmp_path.parent.rglob("*") if "evil" in p.name or p.name == "etc"}
    clone = remote.clone("controller")
    serve = helpers.ServeProcess(clone, state_dir, "--poll-interval", "0.3")
    try:
        work = remote.clone("bot")
        for name, (raw, _expected) in corpus.items():
            (work / "requests" / name).write_bytes(raw)
        helpers.git(work, "add", "-A")
        helpers.git(work, "commit", "-qm", "bad requests")
        helpers.git(work, "push", "-q", "origin", "main")

        def all_answered() -> bool:
            helpers.git(work, "pull", "-q", "--rebase")
            return len(results_in(work)) >= len(corpus)

        wait_for(all_answered, 120, "a result for every bad request")
        # Still serving: a well-formed request (for a commit the recipe lacks) is claimed,
        # then rejected with the reason.
        good = f"{STAMP}-static-ffffff.yaml"
        (work / "requests" / good).write_text(request_doc("static", ref="b" * 40))
        helpers.git(work, "add", "-A")
        helpers.git(work, "commit", "-qm", "good request")
        helpers.git(work, "push", "-q", "origin", "main")

        def answered_good() -> dict | None:
            helpers.git(work, "pull", "-q", "--rebase")
            doc = results_in(work).get(good[:-5])
            return doc if doc and doc["outcome"] != "running" else None

        final = wait_for(answered_good, 60, "the good request's final result")
        assert serve.proc.poll() is None, serve.log()
    finally:
        assert serve.stop() == 0, serve.log()
    results = results_in(work)
    from controller.util.names import result_id_for

    for name, (_raw, expected) in corpus.items():
        doc = results[result_id_for(name)]
        assert doc["outcome"] in ("rejected", "error"), (name, doc)
        assert expected in doc["error"], (name, doc["error"])
        assert "requests/" in doc["error"] or "request" in doc["error"], doc["error"]
    assert final["outcome"] == "rejected" and "has no commit" in final["error"]
    subjects = helpers.log_subjects(work)
    assert any(s.startswith("[cold] static@bbbbbbb running") for s in subjects)
    assert sum(1 for s in subjects if s.startswith("[reject]")) >= len(corpus)
    # Nothing outside the registry: no path a request named got created anywhere.
    after = {p for p in tmp_path.parent.rglob("*") if "evil" in p.name or p.name == "etc"}
    assert after == before
    tracked = helpers.git(work, "ls-files").splitlines()
    assert all(p.split("/")[0] in ("ccci.yaml", "requests", "results", "canonicals",
                                   "snapshots-index", "sweep") for p in tracked), tracked


def test_no_leaked_child_processes_after_500_git_operations(
    static_registry: tuple[RemoteRegistry, Path], state_dir: Path
) -> None:
    remote, _recipe = static_registry
    clone = remote.clone("controller")
    serve = helpers.ServeProcess(clone, state_dir, "--poll-interval", "0.01")
    heartbeat = state_dir / "serve" / f"{serve.proc.pid}.json"
    try:
        work = remote.clone("bot")
        for n in range(5):  # some claims and rejections among the polls
            (work / "requests" / f"{STAMP}-static-{n + 0xa00:06x}.yaml").write_text(
                request_doc("static", ref=f"{n:040x}"))
        helpers.git(work, "add", "-A")
        helpers.git(work, "commit", "-qm", "requests")
        helpers.git(work, "push", "-q", "origin", "main")

        def ops() -> int | None:
            try:
                doc = json.loads(heartbeat.read_text())
            except (OSError, ValueError):
                return None
            return doc["git_operations"] if doc["git_operations"] >= 500 else None

        count = wait_for(ops, 180, "500 git operations in the serve process")
        children = helpers.child_pids(serve.proc.pid)
        # A pass may be running one git command right now: sample until the tree is empty.
        leftover = wait_for(lambda: not helpers.child_pids(serve.proc.pid) or None, 10,
                            f"no child processes (had {children})", interval=0.01)
        assert leftover
        assert count >= 500
    finally:
        assert serve.stop() == 0, serve.log()


def test_broken_settings_hold_the_queue_and_raise_an_alert(
    static_registry: tuple[RemoteRegistry, Path], state_dir: Path
) -> None:
    remote, _recipe = static_registry
    remote.edit({"ccci.yaml": "base_domain: [not, a, domain]\n",
                 f"requests/{STAMP}-static-00000a.yaml": request_doc("static")})
    clone = remote.clone("controller")
    from controller.flows.context import Context
    from controller.registry.store import Registry
    from controller.util.errors import BadInput

    with pytest.raises(BadInput, match=r"ccci\.yaml: at 'base_domain'"):
        Context.open(Registry(clone), __import__("controller.util.paths").util.paths.StateDir(state_dir))
    proc = helpers.ccci("--state-dir", str(state_dir), "serve", "--registry", str(clone), "--once")
    assert proc.returncode == 2
    assert "ccci.yaml: at 'base_domain'" in proc.stderr
    assert results_in(clone) == {}


def test_a_controller_bug_costs_one_request_not_the_daemon(
    static_registry: tuple[RemoteRegistry, Path], state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection at one exact point: `decide` blows up for one request only."""
    from controller.flows import runs
    from controller.flows.context import Context
    from controller.flows.serve import run_until_idle
    from controller.registry.store import Registry
    from controller.util.paths import StateDir

    remote, _recipe = static_registry
    poisoned, fine = f"{STAMP}-static-0000b1", f"{STAMP}-static-0000b2"
    remote.edit({f"requests/{poisoned}.yaml": request_doc("static", ref="e" * 40),
                 f"requests/{fine}.yaml": request_doc("static", ref="f" * 40)})
    clone = remote.clone("controller")
    real_decide = runs.decide

    def decide(ctx: Context, request: Request) -> runs.Decision:
        if request.run_id == poisoned:
            raise RuntimeError("injected bug")
        return real_decide(ctx, request)

    monkeypatch.setattr(runs, "decide", decide)
    run_until_idle(Context.open(Registry(clone), StateDir(state_dir)), poll_interval=0.2)
    results = results_in(clone)
    assert results[poisoned]["outcome"] == "error"
    assert "unexpected error in the controller while dispatching: RuntimeError: injected bug" in \
        results[poisoned]["error"]
    assert results[fine]["outcome"] == "rejected" and "has no commit" in results[fine]["error"]


def _request_with_uncommitted_result(static_registry: tuple[RemoteRegistry, Path], hex6: str,
                                     outcome: str) -> tuple[str, Path]:
    """A committed request, and a controller clone where a result file for it exists that no
    commit has."""
    remote, _recipe = static_registry
    name = f"{STAMP}-static-{hex6}"
    remote.edit({f"requests/{name}.yaml": request_doc("static", ref="e" * 40)})
    clone = remote.clone("controller")
    leftover = clone / "results" / "2026-11" / f"{name}.yaml"
    leftover.parent.mkdir(parents=True)
    leftover.write_text(f"run: x\noutcome: {outcome}\nmode: cold\n")
    return name, clone


def test_uncommitted_leftovers_of_a_crash_do_not_pass_for_a_claim(
    static_registry: tuple[RemoteRegistry, Path], state_dir: Path
) -> None:
    """A controller killed between writing a result file and committing it left the file:
    the next pass must not take it for a claim."""
    name, clone = _request_with_uncommitted_result(static_registry, "0000c1", "running")
    (clone / ".git" / "ccci-writing").write_text("")  # the writer's marker: it died before its commit
    proc = helpers.ccci("--state-dir", str(state_dir), "serve", "--registry", str(clone), "--once")
    assert proc.returncode == 0, proc.stderr
    assert "discarding uncommitted registry changes" in proc.stderr
    result = results_in(clone)[name]
    assert result["outcome"] == "rejected" and "has no commit" in result["error"]
    assert helpers.git(clone, "status", "--porcelain") == ""
    assert not (clone / ".git" / "ccci-writing").exists()


def test_a_result_file_nobody_committed_does_not_answer_a_request(
    static_registry: tuple[RemoteRegistry, Path], state_dir: Path
) -> None:
    """Only commits count, even without a crash marker: a result file left in the clone's
    results/ (the controller's folder) that no commit has does not answer the request."""
    name, clone = _request_with_uncommitted_result(static_registry, "0000c2", "pass")
    proc = helpers.ccci("--state-dir", str(state_dir), "serve", "--registry", str(clone), "--once")
    assert proc.returncode == 0, proc.stderr
    assert "discarding uncommitted registry changes" in proc.stderr
    result = results_in(clone)[name]
    assert result["outcome"] == "rejected" and "has no commit" in result["error"]
    assert helpers.git(clone, "status", "--porcelain") == ""


def test_a_verdict_consumes_its_request_and_an_old_registrys_answered_requests_leave(
    static_registry: tuple[RemoteRegistry, Path], state_dir: Path
) -> None:
    """requests/ holds what waits or runs: a verdict removes its request in the same commit, and
    a registry kept by an older ccci (answered requests left in place) is tidied once at start —
    but a request whose result still says `running` stays."""
    remote, _recipe = static_registry
    old, flying, new = f"{STAMP}-static-0000d1", f"{STAMP}-static-0000d2", f"{STAMP}-static-0000d3"
    result = "run: {run}\nrecipe: static\nref: '{ref}'\nmode: cold\noutcome: {outcome}\n"
    remote.edit({f"requests/{old}.yaml": request_doc("static", ref="e" * 40),
                 f"results/2026-11/{old}.yaml": result.format(run=old, ref="e" * 40, outcome="pass"),
                 f"requests/{flying}.yaml": request_doc("static", ref="e" * 40),
                 f"results/2026-11/{flying}.yaml": result.format(run=flying, ref="e" * 40, outcome="running"),
                 f"requests/{new}.yaml": request_doc("static", ref="e" * 40)})
    clone = remote.clone("controller")
    proc = helpers.ccci("--state-dir", str(state_dir), "serve", "--registry", str(clone), "--once")
    assert proc.returncode == 0, proc.stderr
    left = helpers.git(remote.bare, "ls-tree", "--name-only", "main", "requests/").split()
    assert left == ["requests/.gitkeep", f"requests/{flying}.yaml"]
    assert results_in(clone)[new]["outcome"] == "rejected"
    # The verdict and the request's removal are one commit.
    verdict = helpers.git(remote.bare, "log", "-1", "--format=%H", "main", "--", f"requests/{new}.yaml")
    assert " rejected (run " in helpers.git(remote.bare, "log", "-1", "--format=%s", verdict)
    changed = helpers.git(remote.bare, "show", "--name-status", "--format=", verdict).splitlines()
    assert sorted(changed) == [f"D\trequests/{new}.yaml", f"M\tresults/2026-11/{new}.yaml"]
    tidied = helpers.git(remote.bare, "log", "--format=%s", "main", "--", f"requests/{old}.yaml").splitlines()
    assert tidied[0].startswith("ccci: answered requests leave requests/")
    # The same run id filed again (a webhook redelivered after the verdict) is refused: its
    # result says it was filed, though its request file is gone.
    with pytest.raises(BadInput, match="already exists"):
        Registry(clone).file_request(Request(run_id=new, recipe="static", ref="e" * 40, mode="cold",
                                             requested_by="alice"))
