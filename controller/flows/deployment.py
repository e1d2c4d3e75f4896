"""Steps every flow shares: get the recipe at a commit, deploy it, wait, assert, undeploy."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from controller.flows.context import Context, phase
from controller.registry import recipes
from controller.registry.results import AssertOutcome, RunResult
from controller.registry.settings import RecipeSettings
from controller.runtime import probe, stack
from controller.runtime.compose import RecipeLayout, read_layout
from controller.runtime.spec import AppIdentity, DeploySpec, ResourceLimits
from controller.util.errors import CcciError
from controller.util.timeutil import Deadline

log = logging.getLogger(__name__)


@dataclass
class Deployment:
    """One app of one recipe at one commit, as the flows see it."""

    recipe: RecipeSettings
    app: str
    mode: str  # cold | warm
    run: str | None
    commit: str
    domain: str
    host_port: int | None
    checkout: Path
    layout: RecipeLayout | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    owner: str | None = None
    # The run a warm deploy serves (its objects carry no run label: the app outlives runs).
    serves_run: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.host_port}" if self.host_port else f"https://{self.domain}"

    def spec(self) -> DeploySpec:
        http = self.recipe.http
        service, port = http.resolve(self.layout.proxied_http if self.layout else None)
        return DeploySpec(
            identity=AppIdentity(self.app, self.mode, self.run, self.commit, self.owner),
            domain=self.domain,
            http_service=service if http.enabled else None,
            http_port=port,
            host_port=self.host_port if http.enabled else None,
            env=dict(self.recipe.env),
            limits=ResourceLimits(self.recipe.limits.memory, self.recipe.limits.cpus, self.recipe.limits.pids)
            if self.mode in ("cold", "warm") else None,
        )

    def assert_env(self) -> dict[str, str]:
        env = {
            "CCCI_URL": self.url,
            "CCCI_APP": self.app,
            "CCCI_DOMAIN": self.domain,
            "CCCI_RUN": self.run or self.serves_run or "",
            "CCCI_COMMIT": self.commit,
            "STACK_NAME": self.app,
            "DOMAIN": self.domain,
        }
        env.update(self.extra_env)
        return env


def workdir(ctx: Context, key: str) -> Path:
    return ctx.state.workdir(key)


def checkout_commit(ctx: Context, recipe: RecipeSettings, ref: str, dest: Path) -> str:
    """Fetch the recipe and export `ref` into `dest`; returns the full commit."""
    recipes.fetch_recipe(ctx.state, recipe)
    commit = recipes.resolve_commit(ctx.state, recipe, ref)
    recipes.export_commit(ctx.state, recipe, commit, dest)
    return commit


def deploy_app(ctx: Context, result: RunResult, dep: Deployment, *, name: str = "deploy") -> None:
    with phase(ctx, result, name):
        try:
            # ccci.yaml's per-recipe env counts here too: it may pick overlays (COMPOSE_FILE) and
            # versions that name configs and secrets.
            dep.layout = read_layout(dep.checkout, {**dep.recipe.env, "STACK_NAME": dep.app,
                                                    "DOMAIN": dep.domain})
        except CcciError as exc:
            raise CcciError(exc.message, cause="recipe") from exc
        stack.deploy(dep.checkout, dep.layout, dep.spec(), dep.extra_env)


def converge_and_assert(
    ctx: Context,
    result: RunResult,
    dep: Deployment,
    deadline: Deadline,
    *,
    suffix: str = "",
    baseline: stack.AppState | None = None,
) -> bool:
    """Wait for convergence, then the generic and custom asserts. True when all pass;
    a recipe that never converges raises (cause recipe or timeout) after recording why."""
    state = converge(ctx, result, dep, deadline, suffix=suffix, baseline=baseline)
    return assert_app(ctx, result, dep, state, deadline, suffix=suffix)


def upgrade_and_judge(ctx: Context, result: RunResult, head: Deployment, deadline: Deadline, *,
                      before: stack.AppState, name: str = "upgrade", suffix: str = "") -> None:
    """Upgrade the running app to `head` and judge it: the outcome is pass when it converges
    and every assert passes, fail (cause recipe) with the failed asserts named otherwise; a
    convergence that never comes raises as `converge` does."""
    deploy_app(ctx, result, head, name=name)
    passed = converge_and_assert(ctx, result, head, deadline, suffix=suffix, baseline=before)
    result.outcome = "pass" if passed else "fail"
    if not passed:
        result.cause = "recipe"
        result.error = "asserts failed after the upgrade: " + ", ".join(
            a.name for a in result.asserts if not a.ok)


def converge(ctx: Context, result: RunResult, dep: Deployment, deadline: Deadline, *,
             suffix: str = "", baseline: stack.AppState | None = None) -> stack.AppState:
    """Wait until `dep` converged at its commit; records a failed `converged` assert and raises
    (cause recipe, timeout or limit) when it does not."""
    label = f" ({suffix})" if suffix else ""
    with phase(ctx, result, f"converge{label}"):
        try:
            return stack.wait_converged(dep.app, deadline, stability_s=dep.recipe.stability_s,
                                        expected_commit=dep.commit, baseline=baseline)
        except CcciError as exc:
            killed = stack.killed_by_memory_limit(dep.app)
            if killed:
                exc = CcciError(f"{', '.join(killed)} killed by its memory limit "
                                f"({dep.recipe.limits.memory}; recipes.{dep.recipe.name}.limits.memory "
                                f"in ccci.yaml raises it): {exc.message}", cause="limit")
            result.asserts.append(AssertOutcome(f"converged{label}", False, exc.message))
            raise exc from None


def assert_app(ctx: Context, result: RunResult, dep: Deployment, state: stack.AppState,
               deadline: Deadline, *, suffix: str = "") -> bool:
    """The generic and custom asserts of a converged app, into the result; True when all pass."""
    label = f" ({suffix})" if suffix else ""
    with phase(ctx, result, f"asserts{label}"):
        outcomes = generic_asserts(dep, state, deadline, label)
        outcomes.append(custom_assert(dep, label))
        result.asserts.extend(outcomes)
    return all(o.ok for o in outcomes)


def generic_asserts(dep: Deployment, state: stack.AppState, deadline: Deadline,
                    label: str) -> list[AssertOutcome]:
    out = [AssertOutcome(f"converged{label}", True, state.summary())]
    loops = [f"{s.name}: {len(s.failures)} failed tasks" for s in state.services if s.failures]
    out.append(AssertOutcome(f"no-restart-loop{label}", True,
                             "; ".join(loops) + " before converging" if loops else "no failed tasks"))
    checked = [s for s in (dep.layout.healthchecked if dep.layout else [])]
    unhealthy = [s.name for s in state.services if s.name in checked and len(s.running) < s.replicas]
    out.append(AssertOutcome(
        f"healthchecks{label}", not unhealthy,
        f"unhealthy: {', '.join(unhealthy)}" if unhealthy else
        (f"healthy: {', '.join(checked)}" if checked else "the recipe defines no healthchecks")))
    if dep.recipe.http.enabled and dep.host_port:
        answer = probe.probe_http(dep.host_port, dep.recipe.http.path, deadline)
        out.append(AssertOutcome(f"http{label}", answer.ok, f"{dep.url} {answer.detail}"))
    wrong = stack.commit_check(stack.inspect_app(dep.app), dep.commit)
    out.append(AssertOutcome(
        f"commit{label}", not wrong,
        f"running tasks carry ccci.commit={dep.commit[:12]}" if not wrong else "; ".join(wrong)))
    return out


def custom_assert(dep: Deployment, label: str) -> AssertOutcome:
    run = probe.run_custom_assert(dep.checkout, dep.recipe.assert_path, dep.assert_env(),
                                  timeout=dep.recipe.assert_timeout_s)
    name = f"custom:{dep.recipe.assert_path}{label}"
    if not run.ran:
        return AssertOutcome(name, True, "not shipped by the recipe (skipped)")
    detail = f"exit {run.exit_code} in {run.seconds:.1f} s" + (f": {run.output}" if run.output else "")
    return AssertOutcome(name, run.ok, detail[-2000:])


def undeploy_app(ctx: Context, result: RunResult, app: str, *, remove_volumes: bool,
                 name: str = "teardown") -> None:
    with phase(ctx, result, name):
        stack.undeploy(app, remove_volumes=remove_volumes)


def remove_workdir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
