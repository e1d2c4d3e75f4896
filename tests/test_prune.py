"""Prune on the real engine: removes what nothing needs, keeps warm data, live and warm images,
and everything a run in flight may be about to use."""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.flows import prune as prune_flow
from controller.flows.prune import PrunePolicy, plan_images
from controller.flows.warm_apps import write_warm_state
from controller.runtime.images import Image, normalise_ref
from controller.util import inflight
from controller.util.alerts import list_alerts
from controller.util.paths import StateDir
from tests import helpers

KEEP_TESTBED = ("ccci-test/*",)  # the test bed's images cannot be pulled again here


# -- pure decisions ----------------------------------------------------------------------------

def _img(ident: str, *tags: str) -> Image:
    return Image(ident, tuple(tags), 1)


def test_plan_images_removes_dangling_and_keeps_tagged_unless_asked() -> None:
    found = [_img("a"), _img("b"), _img("c", "x/unused:1")]
    remove, keep = plan_images(found, used_ids={"b"}, live_refs=set(), warm_refs={},
                               policy=PrunePolicy("dangling"), hold_tagged=None)
    assert [i.id for i, _ in remove] == ["a"]  # b is used by a container; c is tagged
    assert keep == []
    assert plan_images(found, used_ids=set(), live_refs=set(), warm_refs={},
                       policy=PrunePolicy("none"), hold_tagged=None) == ([], [])


def test_plan_images_unused_keeps_live_warm_pinned_and_in_flight_images() -> None:
    found = [_img("live", "x/live:1"), _img("warm", "x/warm:2"), _img("pin", "x/pinned:3"),
             _img("used", "x/used:1"), _img("free", "x/free:1")]
    policy = PrunePolicy("unused", keep_images=("x/pinned",))
    remove, keep = plan_images(found, used_ids={"used"}, live_refs={"x/live:1"},
                               warm_refs={"x/warm:2": "warm-notes"}, policy=policy, hold_tagged=None)
    assert [i.id for i, _ in remove] == ["free"]
    reasons = {i.id: why for i, why in keep}
    assert reasons == {"live": "a live service names it", "warm": "needed to reattach warm-notes",
                       "pin": "matches limits.prune_keep_images", "used": "a container uses it"}
    remove, keep = plan_images(found, used_ids={"used"}, live_refs={"x/live:1"}, warm_refs={},
                               policy=policy, hold_tagged="a run is in flight")
    assert remove == []
    assert dict((i.id, why) for i, why in keep)["free"] == "a run is in flight"


def test_normalise_ref_matches_engine_tags() -> None:
    assert normalise_ref("busybox") == "busybox:latest"
    assert normalise_ref("host:5000/x/y") == "host:5000/x/y:latest"
    assert normalise_ref("x/y:2@sha256:" + "0" * 64) == "x/y:2"


# -- the real engine ---------------------------------------------------------------------------

def _tar(content: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("marker")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


class Engine:
    """Images, a container, a service and volumes made for one test, all removed after it."""

    def __init__(self, prefix: str) -> None:
        import docker

        self.client: Any = docker.from_env(timeout=60)
        self.prefix = prefix
        self.services: list[Any] = []
        self.containers: list[Any] = []
        self.volumes: list[Any] = []
        self.image_ids: list[str] = []

    def import_image(self, name: str, content: bytes) -> str:
        repo, tag = f"{self.prefix}/{name}".split(":")
        self.client.api.import_image_from_data(_tar(content), repository=repo, tag=tag)
        image_id = str(self.client.images.get(f"{repo}:{tag}").id)
        self.image_ids.append(image_id)
        return image_id

    def image_exists(self, ref: str) -> bool:
        import docker

        try:
            self.client.images.get(ref)
            return True
        except docker.errors.ImageNotFound:
            return False

    def cleanup(self) -> None:
        for svc in self.services:
            svc.remove()
        for container in self.containers:
            container.remove(force=True)
        import docker

        for volume in self.volumes:
            with contextlib.suppress(docker.errors.NotFound):  # pruned: what the test wanted
                volume.remove(force=True)

        for image in self.client.images.list():
            for tag in image.tags:
                if tag.startswith(self.prefix + "/"):
                    self.client.images.remove(tag, force=True)
        for image_id in self.image_ids:
            with contextlib.suppress(docker.errors.ImageNotFound):  # pruned, or gone with its tag
                self.client.images.remove(image_id, force=True)
        self.client.close()


@pytest.fixture
def engine(docker_host: str) -> Iterator[Engine]:
    made = Engine(f"ccci-prune-test-{secrets.token_hex(3)}")
    try:
        yield made
    finally:
        made.cleanup()


def test_prune_removes_what_nothing_needs_and_keeps_warm_live_and_in_flight(
        engine: Engine, state_dir: Path) -> None:
    state = StateDir(state_dir).ensure()
    p = engine.prefix
    dangling = engine.import_image("img:1", b"first")
    engine.import_image("img:1", b"second")  # the first image loses its tag: dangling
    engine.import_image("unused:1", b"unused")
    engine.import_image("warm:1", b"warm")
    engine.import_image("pinned:1", b"pinned")
    engine.import_image("used:1", b"used")
    engine.containers.append(engine.client.containers.create(f"{p}/used:1", command=["/marker"]))
    # Its own image (not busybox's id, which any other container on the engine may be using).
    engine.import_image("live:1", b"live")
    engine.services.append(engine.client.services.create(
        f"{p}/live:1", command=["sleep", "3600"], name=f"{p}-live", mode={"Replicated": {"Replicas": 0}}))
    # A data-warm app with a last-known-good and the images its snapshot's commit runs.
    (state.snapshots / "warm-prunetest").mkdir(parents=True)
    write_warm_state(state, "warm-prunetest", images=[f"{p}/warm:1"])
    warm_volume = engine.client.volumes.create(f"warm-prunetest_{p}", labels={
        "ccci.managed": "true", "ccci.mode": "warm", "ccci.app": "warm-prunetest", "ccci.owner": state.owner_id})
    # A cold app whose controller died: only its labelled volume is left.
    dead_run = "20261129T000000-prunetest-abc123"
    cold_volume = engine.client.volumes.create(f"prunetest-abc123_{p}", labels={
        "ccci.managed": "true", "ccci.mode": "cold", "ccci.app": "prunetest-abc123", "ccci.run": dead_run,
        "ccci.owner": state.owner_id})
    engine.volumes += [warm_volume, cold_volume]
    workdir = state.root / "work" / dead_run
    workdir.mkdir(parents=True)
    (workdir / "compose.yml").write_text("services: {}\n")
    policy = PrunePolicy("unused", keep_images=(*KEEP_TESTBED, f"{p}/pinned"))

    def volume_names() -> set[str]:
        return {v.name for v in engine.client.volumes.list()}

    # A dry run removes nothing and says what would go.
    report = prune_flow.prune(state, policy, dry_run=True)
    planned = {(i.kind, i.name) for i in report.removed}
    assert ("app", "prunetest-abc123") in planned and ("image", f"{p}/unused:1") in planned
    assert ("workdir", str(workdir)) in planned
    assert engine.image_exists(dangling) and engine.image_exists(f"{p}/unused:1")
    assert cold_volume.name in volume_names() and workdir.exists()

    # A run in flight holds the gate: its possible images and work dirs stay.
    marker = inflight.begin(state, "20261129T000001-prunetest-def456", mode="cold")
    try:
        report = prune_flow.prune(state, policy)
    finally:
        marker.end()
    assert not report.failed, report.to_json()
    assert not engine.image_exists(dangling)
    assert engine.image_exists(f"{p}/unused:1") and workdir.exists()
    kept = {i.name: i.reason for i in report.kept}
    assert kept[f"{p}/unused:1"] == "a run is in flight and may be about to deploy it"
    assert cold_volume.name not in volume_names()  # its run is not the one in flight

    # Nothing in flight: what nothing needs goes; warm, live, used and pinned images stay.
    report = prune_flow.prune(state, policy)
    assert not report.failed, report.to_json()
    assert not engine.image_exists(f"{p}/unused:1") and not workdir.exists()
    kept = {i.name: i.reason for i in report.kept}
    assert kept[f"{p}/warm:1"] == "needed to reattach warm-prunetest"
    assert kept[f"{p}/pinned:1"] == "matches limits.prune_keep_images"
    assert kept[f"{p}/used:1"] == "a container uses it"
    assert next(v for k, v in kept.items() if f"{p}/live:1" in k) == "a live service names it"
    for image in ("warm:1", "pinned:1", "used:1", "live:1"):
        assert engine.image_exists(f"{p}/{image}"), image
    assert warm_volume.name in volume_names()  # warm data is never pruned
    for base in ("debian:bookworm", "busybox:latest", "python:bookworm", "postgres:15"):
        assert engine.image_exists(f"ccci-test/{base}")


def test_serve_prune_alerts_while_disk_stays_low(engine: Engine, state_dir: Path) -> None:
    state = StateDir(state_dir).ensure()
    prune_flow.prune_and_alert(state, PrunePolicy("dangling", min_free_gb=1e9))
    alerts = [a for a in list_alerts(state) if a["key"] == prune_flow.DISK_ALERT]
    assert alerts and "limits.disk_min_free_gb is 1e+09" in alerts[0]["message"]
    prune_flow.prune_and_alert(state, PrunePolicy("dangling", min_free_gb=0))
    assert not [a for a in list_alerts(state) if a["key"] == prune_flow.DISK_ALERT]


def test_prune_cli_reports_json_and_rejects_a_bad_mode(engine: Engine, state_dir: Path) -> None:
    dangling = engine.import_image("cli:1", b"one")
    engine.import_image("cli:1", b"two")
    proc = helpers.ccci("--state-dir", str(state_dir), "prune", "--dry-run", "--json", check=True)
    doc = json.loads(proc.stdout)
    assert doc["dry_run"] is True
    assert any(i["kind"] == "image" and i["name"] == dangling[:19] for i in doc["removed"])
    assert engine.image_exists(dangling)
    bad = helpers.ccci("--state-dir", str(state_dir), "prune", "--images", "all")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_serve_prunes_at_start_and_reports_it_in_its_heartbeat(
        engine: Engine, git_remote: helpers.RemoteRegistry, state_dir: Path) -> None:
    dangling = engine.import_image("serve:1", b"one")
    engine.import_image("serve:1", b"two")
    clone = git_remote.clone("controller")
    serve = helpers.ServeProcess(clone, state_dir, "--poll-interval", "0.2")
    heartbeat = state_dir / "serve" / f"{serve.proc.pid}.json"

    def pruned() -> dict[str, Any] | None:
        try:
            return json.loads(heartbeat.read_text()).get("last_prune")  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return None

    try:
        summary = helpers.wait_for(pruned, 60, "a prune in the serve heartbeat")
        assert summary["removed"] >= 1 and summary["failed"] == 0, summary
        assert not engine.image_exists(dangling)
    finally:
        assert serve.stop() == 0, serve.log()


def test_an_image_the_engine_refuses_to_remove_is_kept_not_failed(
        engine: Engine, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A container created between the listing and the removal makes the engine answer 409:
    the image stays and prune reports it kept (fault injected at that exact call)."""
    from controller.runtime import images as images_mod
    from controller.util.errors import ExternalError

    dangling = engine.import_image("race:1", b"one")
    engine.import_image("race:1", b"two")
    real_remove = images_mod.remove_image

    def refuse(ref: str) -> None:
        if ref == dangling:
            raise ExternalError("docker: remove image failed (409): conflict", returncode=409,
                                stderr="conflict: image is being used by a new container")
        real_remove(ref)

    monkeypatch.setattr(images_mod, "remove_image", refuse)
    report = prune_flow.prune(StateDir(state_dir).ensure(), PrunePolicy("dangling"))
    assert not report.failed, report.to_json()
    kept = {i.name: i.reason for i in report.kept}
    assert kept[dangling[:19]] == "the engine keeps it: conflict: image is being used by a new container"
    assert engine.image_exists(dangling)
