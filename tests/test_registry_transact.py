"""`Registry.transact` on real git remotes: a rejected push is undone, fetched and re-applied;
any other push failure is not retried; the attempts are bounded."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import tenacity

from controller.registry import store
from controller.registry.git import PushRejected
from controller.registry.store import Registry
from controller.util.errors import ExternalError
from tests.helpers import RemoteRegistry, git

MINE = "canonicals/mine.yaml"


def remote_subjects(remote: RemoteRegistry) -> list[str]:
    return git(remote.bare, "log", "--format=%s", "main").splitlines()


@pytest.fixture
def remote(tmp_path: Path) -> RemoteRegistry:
    return RemoteRegistry.create(tmp_path / "registry")


@pytest.fixture
def registry(remote: RemoteRegistry) -> Registry:
    return Registry(remote.clone("controller"))


def test_a_rejected_push_is_undone_fetched_and_reapplied(remote: RemoteRegistry, registry: Registry) -> None:
    saw_other: list[bool] = []

    def mutate(root: Path) -> list[str]:
        if not saw_other:
            # Someone else pushes between our fetch and our push: git rejects ours for real.
            remote.edit({"canonicals/other.yaml": "theirs\n"}, "someone else moved first")
        saw_other.append((root / "canonicals/other.yaml").exists())
        (root / MINE).write_text("mine\n")
        return [MINE]

    sha = registry.transact(mutate, "mine")
    assert saw_other == [False, True], "the second attempt re-applies on top of what it fetched"
    assert remote_subjects(remote)[:2] == ["mine", "someone else moved first"]
    assert sha == git(remote.bare, "rev-parse", "main") == registry.head()


def test_an_unreachable_remote_takes_back_a_change_that_must_be_published_without_retrying(
        tmp_path: Path, remote: RemoteRegistry, registry: Registry) -> None:
    before = registry.head()
    calls = 0

    def mutate(root: Path) -> list[str]:
        nonlocal calls
        calls += 1
        git(root, "remote", "set-url", "origin", str(tmp_path / "gone.git"))  # after the fetch
        (root / MINE).write_text("claim\n")
        return [MINE]

    with pytest.raises(ExternalError) as raised:
        registry.transact(mutate, "claim", must_publish=True)
    # git calls this failure temporary; a registry transaction still does not retry it.
    assert raised.value.temporary and not isinstance(raised.value, PushRejected)
    assert "git push" in raised.value.message, "raised as the push failed, not after more attempts"
    assert calls == 1
    assert registry.head() == before and not (registry.root / MINE).exists()


def test_an_unreachable_remote_keeps_a_change_local_when_it_need_not_be_published(
        tmp_path: Path, remote: RemoteRegistry, registry: Registry) -> None:
    remote_head = git(remote.bare, "rev-parse", "main")

    def mutate(root: Path) -> list[str]:
        git(root, "remote", "set-url", "origin", str(tmp_path / "gone.git"))
        (root / MINE).write_text("verdict\n")
        return [MINE]

    sha = registry.transact(mutate, "verdict")
    assert sha == registry.head() and (registry.root / MINE).read_text() == "verdict\n"
    assert git(remote.bare, "rev-parse", "main") == remote_head


def test_a_push_rejected_every_time_gives_up_after_the_policys_attempts(
        remote: RemoteRegistry, registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "REGISTRY_PUSH", dataclasses.replace(store.REGISTRY_PUSH, wait=tenacity.wait_none()))
    calls = 0

    def mutate(root: Path) -> list[str]:
        nonlocal calls
        calls += 1
        remote.edit({f"canonicals/other-{calls}.yaml": "theirs\n"}, f"other {calls}")
        (root / MINE).write_text("mine\n")
        return [MINE]

    with pytest.raises(ExternalError, match="could not push to the registry remote after 12 attempts") as raised:
        registry.transact(mutate, "mine")
    assert raised.value.temporary and calls == 12
    assert "mine" not in remote_subjects(remote)
    assert not (registry.root / MINE).exists(), "the last rejected commit was undone too"


def test_a_clone_gets_a_split_index_once_and_an_operators_choice_stays(remote: RemoteRegistry) -> None:
    made_before = Registry(remote.clone("before"))  # as `git clone` (or an older ccci) left it
    assert not list((made_before.root / ".git").glob("sharedindex.*"))

    def mutate(root: Path) -> list[str]:
        (root / MINE).write_text("mine\n")
        return [MINE]

    made_before.transact(mutate, "mine")
    assert git(made_before.root, "config", "--local", "core.splitIndex") == "true"
    assert list((made_before.root / ".git").glob("sharedindex.*")), "the commit's index write split it"
    assert git(made_before.root, "ls-files", MINE) == MINE and not git(made_before.root, "status", "--porcelain")
    # An operator who wants no split index keeps it so.
    theirs = remote.clone("theirs")
    git(theirs, "config", "core.splitIndex", "false")
    Registry(theirs).transact(mutate, "mine again")
    assert git(theirs, "config", "--local", "core.splitIndex") == "false"
    assert not list((theirs / ".git").glob("sharedindex.*"))


def test_human_changes_are_the_ones_outside_the_controllers_folders(registry: Registry) -> None:
    root = registry.root
    (root / "ccci.yaml").write_text((root / "ccci.yaml").read_text() + "# edited by a person\n")
    (root / "notes dir").mkdir()
    (root / "notes dir" / "todo.txt").write_text("x\n")  # untracked, a space in its name
    (root / "results" / "2026-12").mkdir(parents=True)
    (root / "results" / "2026-12" / "stray.yaml").write_text("x\n")  # the controller's folder: not theirs
    assert sorted(registry.human_changes()) == ['"notes dir/todo.txt"', "ccci.yaml"]
    git(root, "checkout", "-q", "ccci.yaml")
    (root / "ccci.yaml").unlink()  # a tracked file gone from the work tree counts too
    assert "ccci.yaml" in registry.human_changes()
