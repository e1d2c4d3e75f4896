"""A registry clone on disk: reading documents, and committing changes with push-and-retry."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.registry import documents
from controller.registry.documents import Canonical, Request, SnapshotIndex
from controller.registry.git import PushRejected, git, git_plain, identity_env
from controller.registry.settings import SETTINGS_FILE, Settings, load_settings
from controller.registry.settings_generate import init_template
from controller.registry.settings_schema import defaults
from controller.util import names
from controller.util.errors import BadInput, ExternalError
from controller.util.files import write_whole
from controller.util.locks import exclusive
from controller.util.names import REGISTRY_DIRS
from controller.util.retry import REGISTRY_PUSH, call_with_retries
from controller.util.yamlio import dump_document, update_document

log = logging.getLogger(__name__)

# A mutation writes files under the registry root and returns the paths it touched
# (relative), or None when, on a fresh look at the registry, there is nothing to do.
Mutation = Callable[[Path], list[str] | None]


_DEFAULT_IDENTITY = defaults()["identity"]

# What keeps a clone of a year of results cheap to commit in: every commit, fast-forward and
# status writes git's index, one entry per tracked file (100 000 after a year). Split, a write
# is the few changed entries; the shared rest is rewritten now and then. Git splits the index on
# its next write once this is set, so setting it costs nothing more. An operator's own value
# stays.
SPLIT_INDEX = "core.splitindex"


@dataclass(frozen=True)
class Identity:
    name: str = _DEFAULT_IDENTITY["name"]
    email: str = _DEFAULT_IDENTITY["email"]

    @classmethod
    def of(cls, settings: Settings) -> Identity:
        return cls(settings.identity.name, settings.identity.email)


class DirtyClone(BadInput):
    """The clone cannot follow its remote without touching someone's uncommitted work."""


class Registry:
    """One local clone of a registry. Every write holds the clone's lock."""

    def __init__(self, root: Path, identity: Identity | None = None) -> None:
        self.root = root.absolute()
        if not (self.root / ".git").exists():
            raise BadInput(f"{root}: not a git repository (the registry must be a git clone)")
        self.identity = identity or Identity()
        self._lock_path = self.root / ".git" / "ccci.lock"
        # Present from a mutation's first write until its commit (or undo): left behind, it says
        # a writer died in between, and only then is the (history-sized) `git status` worth it.
        self._writing_path = self.root / ".git" / "ccci-writing"
        self._branch: str | None = None
        self._remote: str | bool | None = False
        self._tuned = False

    # -- facts about the clone -------------------------------------------------------------

    def git(self, *args: str, strip: bool = True, stdin: bytes | None = None) -> str:
        return git(self.root, *args, strip=strip, stdin=stdin)

    @property
    def branch(self) -> str:
        if self._branch is None:
            self._branch = self.git("symbolic-ref", "--short", "HEAD")
        return self._branch

    @property
    def remote(self) -> str | None:
        if self._remote is False:
            remotes = self.git("remote").split()
            self._remote = "origin" if "origin" in remotes else (remotes[0] if remotes else None)
        return self._remote if isinstance(self._remote, str) else None

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def settings(self) -> Settings:
        return load_settings(self.root)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with exclusive(self._lock_path, what=f"registry clone {self.root}"):
            yield

    # -- syncing with the remote -----------------------------------------------------------

    def tune_for_history(self) -> None:
        """Once per process: set SPLIT_INDEX where the clone's own config does not say (a fresh
        clone and one made before this ccci alike). Only speed depends on it: a failure is
        logged, and the clone works as it is."""
        if self._tuned:
            return
        self._tuned = True
        try:
            self.git("config", "--local", "--get", SPLIT_INDEX)
            return  # set, by us or by the operator
        except ExternalError as exc:
            if exc.returncode != 1:  # 1: not set
                log.warning("clone settings not checked: %s", exc.message)
                return
        try:
            self.git("config", "--local", SPLIT_INDEX, "true")
        except ExternalError as exc:
            log.warning("split index not set for a long history: %s", exc.message)
            return
        log.info("%s: git's index is split from its next write (a long history)", self.root)

    def _upstream(self) -> str | None:
        if not self.remote:
            return None
        ref = f"{self.remote}/{self.branch}"
        try:
            self.git("rev-parse", "--verify", "--quiet", f"refs/remotes/{ref}")
        except ExternalError:
            return None
        return ref

    def discard_uncommitted(self) -> None:
        """Only commits count: a file the controller wrote but never committed (it crashed in
        between) would otherwise pass for a claim or a verdict. Undo such leftovers when a writer
        left its marker (it died between its first write and its commit)."""
        if not self._writing_path.exists():
            return
        self._discard()
        self._writing_path.unlink(missing_ok=True)

    def _discard(self) -> None:
        dirty = self.git("status", "--porcelain", "--untracked-files=all", "--", *REGISTRY_DIRS)
        if not dirty:
            return
        log.warning("discarding uncommitted registry changes (a crash left them): %s",
                    ", ".join(line[3:] for line in dirty.splitlines()[:10]))
        # Only folders HEAD has: a registry older than one of them (sweep/) has nothing to check out.
        tracked = self.git("ls-tree", "--name-only", "HEAD", "--", *REGISTRY_DIRS).split()
        if tracked:
            self.git("checkout", "--quiet", "HEAD", "--", *tracked)
        self.git("clean", "--quiet", "-fd", "--", *REGISTRY_DIRS)

    def committed(self, rel: str) -> bool:
        """`rel` is in the clone's last commit (a file in the work tree alone counts for nothing)."""
        return bool(self.git("ls-files", "--", rel))

    def drop_uncommitted(self, rel: str) -> None:
        """A file in the controller's folders that no commit knows (a crash before the marker
        existed, a stray copy): it would pass for an answer, so it goes, loudly."""
        if (self.root / rel).exists() and not self.committed(rel):
            log.warning("discarding uncommitted registry changes: %s (no commit has it)", rel)
            (self.root / rel).unlink()

    def human_changes(self) -> list[str]:
        """Uncommitted changes outside the controller's folders (someone edited ccci.yaml in
        this clone): never the controller's to discard."""
        # Only the top-level entries outside the controller's folders are looked at, named one by
        # one: an exclude pathspec still walks a year of results (100 000 files) for untracked ones.
        tracked = self.git("ls-tree", "-z", "--name-only", "HEAD").split("\0")
        tops = {p.name for p in self.root.iterdir()} | set(tracked)
        outside = sorted(t for t in tops if t and t != ".git" and t not in REGISTRY_DIRS)
        if not outside:
            return []
        status = self.git("--literal-pathspecs", "status", "--porcelain", "--untracked-files=all", "--",
                          *outside, strip=False)
        return [line[3:] for line in status.splitlines()
                if line[3:] and not line[3:].startswith(tuple(f"{d}/" for d in REGISTRY_DIRS))]

    def sync(self) -> None:
        """Fetch, then put local commits on top of the remote; push what is still unpushed.
        DirtyClone, moving nothing, when the remote moved and a person's uncommitted work is
        in the way."""
        with self.locked():
            self.tune_for_history()
            self.discard_uncommitted()
            if not self.remote:
                return
            self.git("fetch", "--quiet", self.remote)
            upstream = self._upstream()
            if upstream is None:
                return
            ahead = self.git("rev-list", "--count", f"{upstream}..HEAD")
            behind = self.git("rev-list", "--count", f"HEAD..{upstream}")
            if behind != "0":
                changed = self.human_changes()
                if changed:
                    raise DirtyClone(
                        f"{self.root}: uncommitted changes to {', '.join(changed[:5])} and the remote "
                        "moved: the controller will not move its clone over them; commit and push "
                        "them from this clone (or move them away) — better, edit ccci.yaml in a "
                        "clone of your own and push, and leave this one to the controller")
                if ahead == "0":
                    self.git("merge", "--ff-only", "--quiet", upstream)
                else:
                    self._replay_onto(upstream)
            if self.git("rev-list", "--count", f"{upstream}..HEAD") != "0":
                with contextlib.suppress(ExternalError):
                    self._push()

    def _replay_onto(self, upstream: str) -> None:
        """Rebase local commits; a commit that conflicts with the remote is dropped, loudly."""
        try:
            self.git("rebase", "--quiet", upstream)
            return
        except ExternalError:
            with contextlib.suppress(ExternalError):
                self.git("rebase", "--abort")
        local = self.git("rev-list", "--reverse", f"{upstream}..HEAD").split()
        self.git("reset", "--quiet", "--hard", upstream)
        for commit in local:
            try:
                self.git("cherry-pick", "--allow-empty", commit)
            except ExternalError:
                with contextlib.suppress(ExternalError):
                    self.git("cherry-pick", "--abort")
                log.warning("dropped local registry commit %s: it conflicts with the remote", commit)

    def _push(self) -> None:
        assert self.remote
        self.git("push", "--quiet", self.remote, f"HEAD:refs/heads/{self.branch}")

    # -- committing ------------------------------------------------------------------------

    def transact(
        self, mutate: Mutation, message: str | Callable[[], str], *, must_publish: bool = False
    ) -> str | None:
        """Apply `mutate` on a fresh view of the registry, commit, push; on a rejected push
        undo, fetch, and re-apply (the mutation re-checks). Returns the commit or None."""
        env = identity_env(self.identity.name, self.identity.email)

        def commit(touched: list[str] | None) -> str | None:
            """Plumbing, not `git commit`: only the touched paths are staged and looked at, and
            the tree is rebuilt only along them (`git commit` would stat every file of the clone,
            and a year of results is 100 000 of them)."""
            if not touched:
                return None
            self.git("update-index", "--add", "--remove", "-z", "--stdin",
                     stdin="".join(f"{rel}\0" for rel in touched).encode())
            tree = self.git("write-tree")
            parent = self.head()
            if tree == self.git("rev-parse", f"{parent}^{{tree}}"):
                return None
            text = message() if callable(message) else message
            sha = git(self.root, "commit-tree", tree, "-p", parent, "-m", text, env=env)
            self.git("update-ref", "-m", f"ccci: {text.splitlines()[0][:200]}", "HEAD", sha, parent)
            return sha

        def attempt() -> str | None:
            with self.locked():
                self.sync()
                write_whole(self._writing_path, "")
                try:
                    committed = commit(mutate(self.root))
                except BaseException:
                    self._discard()  # half a mutation never stays for the next one to trip on
                    self._writing_path.unlink(missing_ok=True)
                    raise
                self._writing_path.unlink(missing_ok=True)
                if committed is None:
                    return None
                sha = committed
                if not self.remote:
                    return sha
                try:
                    self._push()
                    return sha
                except PushRejected:
                    # The remote moved first: drop our commit so the next attempt re-applies
                    # the mutation on top of what it fetches.
                    self.git("reset", "--quiet", "--hard", "HEAD~1")
                    raise
                except ExternalError:
                    if must_publish:
                        # A claim nobody else can see does not count: take it back.
                        self.git("reset", "--quiet", "--hard", "HEAD~1")
                        raise
                    log.warning("registry remote unreachable; %s stays local until the next sync",
                                sha[:12])
                    return sha

        try:
            # Only a rejected push earns another attempt here: the remote answered, so a fresh
            # attempt can win. Any other failure, even a temporary one, goes to the caller, who
            # knows whether the change may wait for the next sync.
            return call_with_retries(REGISTRY_PUSH, attempt, only=PushRejected)
        except PushRejected:
            raise ExternalError(f"could not push to the registry remote after {REGISTRY_PUSH.attempts} "
                                "attempts", temporary=True) from None

    # -- documents -------------------------------------------------------------------------

    def read_request(self, file_name: str) -> Request:
        path = self.root / names.REQUESTS_DIR / file_name
        if path.is_symlink() or not path.is_file():
            raise BadInput(f"{names.REQUESTS_DIR}/{file_name}: not a regular file")
        return documents.read_request(path)

    def result(self, run_id: str) -> dict[str, Any] | None:
        rel = names.result_rel(run_id)
        path = self.root / rel
        if not path.is_file():
            return None
        return documents.read_result(path, rel)

    def canonical(self, recipe: str) -> Canonical | None:
        rel = names.canonical_rel(recipe)
        path = self.root / rel
        if not path.is_file():
            return None
        return documents.parse_canonical(path.read_bytes()[: documents.DOC_MAX_BYTES + 1], rel)

    def snapshot_index(self, app: str, host: str) -> SnapshotIndex | None:
        """`host`'s entry for `app`, or None."""
        return self._snapshot_index_at(names.snapshot_index_rel(host, app))

    def legacy_snapshot_index(self, app: str) -> SnapshotIndex | None:
        """The entry a single-host registry kept at `snapshots-index/<app>.yaml`, or None."""
        return self._snapshot_index_at(names.legacy_snapshot_index_rel(app))

    def _snapshot_index_at(self, rel: str) -> SnapshotIndex | None:
        path = self.root / rel
        if path.is_symlink() or not path.is_file():
            return None
        return documents.parse_snapshot_index(path.read_bytes()[: documents.DOC_MAX_BYTES + 1], rel)

    def index_hosts(self) -> list[str]:
        """The hosts that have a folder in `snapshots-index/` (their snapshots, one file per app)."""
        root = self.root / names.SNAPSHOT_INDEX_DIR
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir()
                      if p.is_dir() and not p.is_symlink() and names.HOST_RE.match(p.name))

    def snapshot_indexes(self, app: str) -> dict[str, SnapshotIndex]:
        """{host: its entry for `app`} over the fleet; an unreadable entry is left out, loudly."""
        found = {}
        for host in self.index_hosts():
            try:
                entry = self.snapshot_index(app, host)
            except BadInput as exc:
                log.warning("%s", exc.message)
                continue
            if entry is not None:
                found[host] = entry
        return found

    def legacy_index_apps(self) -> list[str]:
        """Apps with an entry in the single-host layout (`snapshots-index/<app>.yaml`)."""
        root = self.root / names.SNAPSHOT_INDEX_DIR
        if not root.is_dir():
            return []
        return sorted(p.stem for p in root.glob("*.yaml") if p.is_file() and names.APP_RE.match(p.stem))

    # -- writes ----------------------------------------------------------------------------

    def file_request(self, request: Request, *, label: str | None = None) -> str | None:
        rel = request.rel_path

        def write(root: Path) -> list[str] | None:
            path = root / rel
            # An answered request has left requests/; its result says it was filed.
            if path.exists() or (root / names.result_rel(request.run_id)).exists():
                raise BadInput(f"{rel}: a request with this run id already exists")
            path.parent.mkdir(parents=True, exist_ok=True)
            write_whole(path, dump_document(request.to_document()))
            return [rel]

        label = label or request.mode
        message = (f"[{label}] {request.recipe}@{request.ref[:7]} requested by {request.requested_by} "
                   f"(run {request.run_id})")
        return self.transact(write, message)


def updated_text(root: Path, rel: str, updates: dict[str, Any]) -> str:
    """The new text of `rel` with `updates` applied (round-trip), for a combined commit."""
    path = root / rel
    if path.exists():
        return update_document(path.read_text(), updates)
    return dump_document(updates)


def init_registry(path: Path, *, base_domain: str | None = None) -> None:
    """Create a registry (a commented ccci.yaml and the four folders) with one first commit."""
    if path.exists() and any(path.iterdir()):
        raise BadInput(f"{path}: exists and is not empty; `ccci init` creates a new registry")
    path.mkdir(parents=True, exist_ok=True)
    git_plain("init", "--quiet", "--initial-branch=main", str(path))
    (path / SETTINGS_FILE).write_text(init_template(base_domain))
    for sub in REGISTRY_DIRS:
        (path / sub).mkdir(exist_ok=True)
        (path / sub / ".gitkeep").write_text("")
    git(path, "add", "--all")
    identity = Identity()
    git(path, "commit", "--quiet", "--no-verify", "-m", "ccci: new registry",
        env=identity_env(identity.name, identity.email))
