"""ccci.yaml: one schema gives the defaults, the loader's nested objects, the init template and
docs/settings.md, and errors that name the file and the key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from controller.registry import schemas, settings_schema
from controller.registry.settings import (
    AuthoritySettings,
    HttpSettings,
    IdentitySettings,
    KeycloakSettings,
    LimitsSettings,
    QuickSettings,
    RecipeSettings,
    ServeSettings,
    ServiceLimits,
    Settings,
    SweepSettings,
    WarmSettings,
    load_settings,
    parse_settings,
    settings_from_document,
)
from controller.registry.settings_generate import flow, init_template, reference_markdown
from controller.registry.settings_schema import SETTINGS, defaults, keys, schema_of
from controller.registry.store import init_registry
from controller.util.errors import BadInput
from controller.util.yamlio import load_untrusted
from tests.helpers import REPO_ROOT, SETTINGS_HEAD

MINIMAL = {"base_domain": "ci.test"}


def leaf_defaults() -> list[tuple[str, Any]]:
    """(dotted path, default) of every key outside `recipes.<name>` that has a default."""
    return [(path, sub["default"]) for path, sub in keys()
            if "default" in sub and "properties" not in sub and not path.startswith("recipes.")]


def attribute(settings: Settings, path: str) -> Any:
    value: Any = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value


# -- the schema itself --------------------------------------------------------------------------

def test_every_key_has_a_description_and_an_example() -> None:
    missing = [path for path, sub in keys() if not sub.get("description") or not sub.get("examples")]
    assert missing == []


@pytest.mark.parametrize(("path", "schema"), list(keys()), ids=[path for path, _ in keys()])
def test_each_example_and_default_is_valid_for_its_key(path: str, schema: dict[str, Any]) -> None:
    for value in [*schema["examples"], *([schema["default"]] if "default" in schema else [])]:
        jsonschema.Draft202012Validator(schema).validate(value)


def test_each_section_dataclass_has_exactly_the_keys_of_its_section() -> None:
    """A key added to the schema without a field (or the other way round) fails here, not at
    an operator's first load."""
    sections: dict[str, type] = {
        "identity": IdentitySettings, "authority": AuthoritySettings, "quick": QuickSettings,
        "sweep": SweepSettings, "warm": WarmSettings, "warm.keycloak": KeycloakSettings,
        "limits": LimitsSettings, "serve": ServeSettings, "recipes.<name>.http": HttpSettings,
        "recipes.<name>.limits": ServiceLimits,
    }
    for path, cls in sections.items():
        assert {f.name for f in dataclasses.fields(cls)} == set(schema_of(path)["properties"]), path
    # `assert` is a Python keyword; `policy.allow` is flattened to `allow`.
    renamed = {"assert": "assert_path", "policy": "allow"}
    recipe_keys = {renamed.get(k, k) for k in schema_of("recipes.<name>")["properties"]}
    assert {f.name for f in dataclasses.fields(RecipeSettings)} == recipe_keys | {"name"}
    top = set(SETTINGS["properties"])
    assert {f.name for f in dataclasses.fields(Settings)} == top


def test_keep_failed_is_gone_and_now_refused() -> None:
    with pytest.raises(BadInput, match=r"^ccci\.yaml: at 'recipes\.notes': unknown key 'keep_failed'"):
        parse_settings(b"base_domain: ci.test\nrecipes:\n  notes: {source: /src, keep_failed: true}\n")


# -- the loader ---------------------------------------------------------------------------------

def test_missing_keys_take_the_schema_defaults() -> None:
    settings = settings_from_document(MINIMAL)
    assert settings.base_domain == "ci.test"
    assert settings.recipes == {}
    for path, default in leaf_defaults():
        value = attribute(settings, path)
        assert value == (tuple(default) if isinstance(default, list) else default), path
    # Spelled out once more, so a changed default is a visible, reviewed change here too.
    assert settings.sweep == SweepSettings(at="02:00", timezone="UTC", max_tests=10, order="stalest-first")
    assert settings.warm.keycloak.mode == "off" and settings.warm.keycloak.url is None
    assert settings.limits.disk_min_free_gb == 10.0 and settings.serve.poll_interval_s == 30.0


def test_nested_objects_carry_what_the_file_says() -> None:
    doc = {
        "base_domain": "ci.test",
        "identity": {"name": "ci-bot"},
        "recipes": {"notes": {"source": "/src/notes", "track": "tags", "sso": "keycloak",
                              "http": {"port": 8080}, "assert": "ci/check", "env": {"ROWS": 5, "ON": True}}},
        "sweep": {"at": "03:30", "timezone": "Europe/Berlin"},
        "warm": {"keycloak": {"mode": "external", "url": "https://sso.example.org",
                              "admin_secret_file": "/run/kc"}},
        "limits": {"disk_min_free_gb": 50, "prune_keep_images": ["postgres:*"]},
        "serve": {"poll_interval_s": 5},
    }
    settings = settings_from_document(doc)
    assert settings.identity == IdentitySettings(name="ci-bot", email="ccci@localhost")
    notes = settings.recipe("notes")
    assert (notes.name, notes.source, notes.track, notes.sso) == ("notes", "/src/notes", "tags", "keycloak")
    assert notes.http == HttpSettings(service=None, port=8080, path="/", enabled=True)
    assert notes.assert_path == "ci/check" and notes.timeout_s == 600
    assert notes.env == {"ROWS": "5", "ON": "True"}
    assert (settings.sweep.at, settings.sweep.timezone, settings.sweep.max_tests) == ("03:30", "Europe/Berlin", 10)
    kc = settings.warm.keycloak
    assert (kc.mode, kc.url, kc.admin_secret_file, kc.port) == ("external", "https://sso.example.org", "/run/kc", 8180)
    assert settings.limits.disk_min_free_gb == 50.0 and isinstance(settings.limits.disk_min_free_gb, float)
    assert settings.limits.prune_keep_images == ("postgres:*",)
    assert settings.serve.poll_interval_s == 5.0
    assert settings.domain("warm-notes") == "warm-notes.ci.test"
    with pytest.raises(BadInput, match=r"^ccci\.yaml: at 'recipes': no recipe named 'wiki'$"):
        settings.recipe("wiki")


def test_an_empty_recipes_key_means_no_recipes() -> None:
    assert parse_settings(b"base_domain: ci.test\nrecipes:\n").recipes == {}


def test_loading_leaves_the_document_as_it_was() -> None:
    doc: dict[str, Any] = {"base_domain": "ci.test", "sweep": {"at": "03:00"}}
    settings_from_document(doc)
    assert doc == {"base_domain": "ci.test", "sweep": {"at": "03:00"}}


def test_git_identity_env_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = {"base_domain": "ci.test", "identity": {"name": "from-file", "email": "file@test.invalid"}}
    monkeypatch.setenv("CCCI_GIT_NAME", "from-env")
    monkeypatch.setenv("CCCI_GIT_EMAIL", "env@test.invalid")
    assert settings_from_document(doc).identity == IdentitySettings("from-env", "env@test.invalid")
    monkeypatch.delenv("CCCI_GIT_EMAIL")
    assert settings_from_document(doc).identity == IdentitySettings("from-env", "file@test.invalid")


def test_authority_allows_named_users_and_star_and_nobody_for_an_unknown_key() -> None:
    authority = settings_from_document({"base_domain": "x", "authority": {"cold": ["*"], "quick": ["alice"]}}).authority
    assert authority.allows("quick", "alice")
    assert not authority.allows("quick", "bob")
    assert authority.allows("cold", "bob") and authority.allows("cold", "sweep")
    assert not authority.allows("rewarm", "alice")
    assert not authority.allows("allows", "alice")  # a method's name is not an authority key
    assert not settings_from_document(MINIMAL).authority.allows("cold", "alice")  # default: nobody


@pytest.mark.parametrize(("text", "sentence"), [
    (b"base_domain: ci.test\nlimits: {max_parallel_cold: 0}\n",
     "ccci.yaml: at 'limits.max_parallel_cold': 0 is less than the minimum of 1"),
    (b"base_domain: ci.test\nwarm: {keycloak: {mode: on}}\n",
     "ccci.yaml: at 'warm.keycloak.mode': 'on' is not one of external, managed, off"),
    (b"base_domain: ci.test\nrecipes: {notes: {source: /s, http: {port: web}}}\n",
     "ccci.yaml: at 'recipes.notes.http.port': 'web' is a str, expected integer"),
    (b"base_domain: ci.test\nsweep: {at: '25:00'}\n",
     "ccci.yaml: at 'sweep.at': '25:00' does not match the required form ^([01]\\d|2[0-3]):[0-5]\\d$"),
    (b"base_domain: ci.test\nrecipes: {notes: {track: main}}\n",
     "ccci.yaml: at 'recipes.notes.source': is missing (required)"),
    (b"identity: {name: x}\n", "ccci.yaml: at 'base_domain': is missing (required)"),
    (b"- a list\n", "ccci.yaml: at '(top level)': expected a mapping of settings"),
])
def test_a_bad_value_is_refused_naming_the_file_and_the_key(text: bytes, sentence: str) -> None:
    with pytest.raises(BadInput) as caught:
        parse_settings(text)
    assert caught.value.message == sentence


def test_load_settings_reads_the_registry_file(tmp_path: Path) -> None:
    (tmp_path / "ccci.yaml").write_text("base_domain: ci.test\nlimits: {prune_images: lots}\n")
    with pytest.raises(BadInput, match=r"^ccci\.yaml: at 'limits\.prune_images': 'lots' is not one of"):
        load_settings(tmp_path)
    (tmp_path / "ccci.yaml").write_text(SETTINGS_HEAD + "recipes: {}\n")
    settings = load_settings(tmp_path)
    assert settings.identity.name == "ccci-test" and settings.sweep.max_tests == 0
    assert settings.authority.allows("quick", "anyone")


# -- what is generated from the schema ----------------------------------------------------------

def test_init_template_loads_to_exactly_the_schema_defaults() -> None:
    example = schema_of("base_domain")["examples"][0]
    doc = load_untrusted(init_template().encode(), "ccci.yaml")
    # `recipes:` is left empty (null) so that the example entry under it can be uncommented.
    assert doc == {"base_domain": example, **defaults(), "recipes": None}
    schemas.validate(doc, settings_schema.SETTINGS, "ccci.yaml")
    assert settings_from_document(doc) == settings_from_document({"base_domain": example})


def test_init_templates_example_recipe_is_valid_once_uncommented() -> None:
    out, inside = [], False
    for line in init_template().splitlines():
        if line.startswith("recipes:"):
            inside = True
        elif inside and line.startswith("#  "):
            line = line[2:]  # remove the `# ` the template says to remove
        elif inside and not line.startswith("#"):
            inside = False
        out.append(line)
    settings = parse_settings("\n".join(out).encode())
    assert list(settings.recipes) == ["notes"] and settings.recipes["notes"].forge_repo == "coop-cloud/notes"


def test_init_template_explains_every_key() -> None:
    """Each description is in the template as a comment (wrapped, so compared word by word)."""
    words = " ".join(line.lstrip("# ") for line in init_template().splitlines()).split()
    text = " ".join(words)
    for path, sub in keys():
        assert " ".join(sub["description"].split()) in text, path


def test_init_with_a_base_domain_writes_it(tmp_path: Path) -> None:
    init_registry(tmp_path / "reg", base_domain="ci.other.test")
    settings = load_settings(tmp_path / "reg")
    assert settings == settings_from_document({"base_domain": "ci.other.test"})
    text = (tmp_path / "reg" / "ccci.yaml").read_text()
    assert "base_domain: ci.other.test\n" in text


def test_docs_settings_md_is_what_the_generator_prints() -> None:
    path = REPO_ROOT / "docs" / "settings.md"
    assert path.read_text() == reference_markdown(), (
        "docs/settings.md is stale: run `python -m controller.registry.settings_generate > docs/settings.md`")


def test_the_generator_prints_the_docs_from_the_command_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "controller.registry.settings_generate"], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=True)
    assert proc.stdout == reference_markdown()


def test_docs_list_every_key_with_its_default() -> None:
    docs = reference_markdown()
    for path, sub in keys():
        if "properties" not in sub:
            assert f"| `{path}` |" in docs, path
    for path, default in leaf_defaults():
        row = next(line for line in docs.splitlines() if line.startswith(f"| `{path}` |"))
        assert row.split(" | ")[2] == f"`{flow(default)}`", path
