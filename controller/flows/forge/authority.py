"""Who may ask for a run from the forge: authority rules that need the forge to answer."""

from __future__ import annotations

from controller.forge import ForgeClient

ORG = "org:"
TEAM = "team:"
COLLABORATOR = "collaborator"
WRITE_ACCESS = ("write", "admin", "owner")


def is_forge_rule(rule: str) -> bool:
    return rule.startswith((ORG, TEAM)) or rule == COLLABORATOR


def admitting_rule(client: ForgeClient, rules: tuple[str, ...], user: str, repo: str) -> str | None:
    """The first rule of `rules` that admits `user` to request on `repo`, or None. Names and
    '*' need no question to the forge, so they are tried first."""
    for rule in rules:
        if rule in ("*", user):
            return rule
    for rule in rules:
        if rule.startswith(ORG) and client.is_org_member(rule.removeprefix(ORG), user):
            return rule
        if rule.startswith(TEAM):
            org, _, team = rule.removeprefix(TEAM).partition("/")
            team_id = client.team_id(org, team) if org and team else None
            if team_id is not None and client.is_team_member(team_id, user):
                return rule
        if rule == COLLABORATOR and client.permission(repo, user) in WRITE_ACCESS:
            return rule
    return None
