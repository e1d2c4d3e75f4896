"""Texts written from the settings schema: the `ccci init` template and docs/settings.md."""

from __future__ import annotations

import json
import re
import sys
import textwrap
import warnings
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from controller.registry.settings_schema import SETTINGS, keys

WIDTH = 96
REGENERATE = "python -m controller.registry.settings_generate > docs/settings.md"
# Digits with `:` `.` `-` `+`: strings a YAML 1.1 reader may take for a number or a time (02:00).
_NUMBER_LIKE = re.compile(r"^[0-9:._+-]+$")


# -- YAML values, written so that any YAML reader reads them back unchanged ---------------------

def _reads_back_plain(value: str) -> bool:
    """Whether `value` unquoted, inside a flow list (the strictest place), is still `value`."""
    for directive in ("", "%YAML 1.1\n---\n"):  # 1.1 readers take `off` for false
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ruamel's advice on 1.1 floats is not for us
                if YAML(typ="safe", pure=True).load(f"{directive}[{value}]") != [value]:
                    return False
        except YAMLError:
            return False
    return True


def flow(value: Any) -> str:
    """`value` as one line of YAML (flow style)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        plain = value and not _NUMBER_LIKE.match(value) and _reads_back_plain(value)
        return value if plain else json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{flow(k)}: {flow(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no YAML form for {value!r}")


# -- the `ccci init` template -------------------------------------------------------------------

TEMPLATE_HEAD = """\
# ccci registry settings. Reviewed by humans; read by the controller on every pass.
# Every key but base_domain may be left out. Each value below is that key's default; a key
# commented out has none (it is unset until you set it). docs/settings.md in ccci's source
# lists every key with an example.
"""


def _comment(text: str, indent: str, example: str = "") -> list[str]:
    """`text` as wrapped comment lines; `example` kept whole, on the last line if it fits."""
    lines = textwrap.wrap(text, WIDTH, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ",
                          break_on_hyphens=False)
    if example and len(lines[-1]) + 1 + len(example) <= WIDTH:
        lines[-1] += f" {example}"
    elif example:
        lines.append(f"{indent}# {example}")
    return lines


def _block(key: str, schema: dict[str, Any], indent: str) -> list[str]:
    """One key with its description, and its children: set to its default, or commented out
    with an example when it has none."""
    if "properties" in schema:
        lines = [*_comment(schema["description"], indent), f"{indent}{key}:"]
        for child, sub in schema["properties"].items():
            lines += _block(child, sub, indent + "  ")
        return lines
    if "default" not in schema:
        return [*_comment(schema["description"], indent), f"{indent}# {key}: {flow(schema['examples'][0])}"]
    entries = schema.get("additionalProperties")
    if isinstance(entries, dict) and "properties" in entries:
        # A mapping of named entries (recipes): the key left empty (its default), and one whole
        # entry commented out under it, so that removing the `# ` of its lines gives valid YAML.
        name = next(iter(schema["examples"][0]))
        lines = [*_comment(schema["description"] + f" To add one, remove the `# ` of the {name!r} "
                                                  "lines below (and copy them for the next).", indent),
                 f"{indent}{key}:"]
        lines += [f"{indent}# {line[len(indent):]}" for line in _entry(name, entries, indent + "  ")]
        return lines
    example = schema["examples"][0]
    shown = f"Example: {flow(example)}" if example != schema["default"] else ""
    return [*_comment(schema["description"], indent, shown), f"{indent}{key}: {flow(schema['default'])}"]


def _entry(key: str, schema: dict[str, Any], indent: str) -> list[str]:
    """An example entry, every key spelled out (its default, else an example), to be commented."""
    lines = [*_comment(schema["description"], indent), f"{indent}{key}:"]
    for child, sub in schema["properties"].items():
        if "properties" in sub:
            lines += _entry(child, sub, indent + "  ")
        else:
            value = sub["default"] if "default" in sub else sub["examples"][0]
            lines += [*_comment(sub["description"], indent + "  "), f"{indent}  {child}: {flow(value)}"]
    return lines


def init_template(base_domain: str | None = None) -> str:
    """The commented ccci.yaml `ccci init` writes: every default spelled out, every key explained."""
    lines = [TEMPLATE_HEAD.rstrip("\n")]
    for key, schema in SETTINGS["properties"].items():
        if key in SETTINGS["required"]:
            schema = {**schema, "default": base_domain or schema["examples"][0]}
        lines += ["", *_block(key, schema, "")]
    return "\n".join(lines) + "\n"


# -- docs/settings.md ---------------------------------------------------------------------------

DOCS_HEAD = f"""\
# ccci.yaml settings

<!-- Generated from controller/registry/settings_schema.py by `{REGENERATE}`.
     Edit the schema, then regenerate; a test fails while the two differ. -->

`ccci.yaml` at the top of the registry holds its settings; the controller reads it on every
pass. Every key but `base_domain` may be left out: a key left out takes its default, and a key
with no default is unset. `ccci init` writes the file with every default and these
descriptions as comments. A file that breaks a rule below is refused with a sentence naming the
file and the key, such as `ccci.yaml: at 'limits.max_parallel_cold': 0 is less than the minimum
of 1`.
"""


def _type_text(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "one of " + ", ".join(f"`{flow(v)}`" for v in schema["enum"])
    kind = schema["type"]
    kinds: list[str] = kind if isinstance(kind, list) else [kind]
    words = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean",
             "array": "list", "object": "mapping"}
    text = " or ".join(words[k] for k in kinds if k != "null")  # null: the same as left out
    if kind == "array" and schema.get("items", {}).get("type") == "string":
        text = "list of strings"
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        text += f", {low} to {high}"
    elif low is not None:
        text += f", at least {low}"
    if "pattern" in schema:
        text += f" matching `{schema['pattern']}`"
    if "maxLength" in schema and "pattern" not in schema:
        text += f" of {schema.get('minLength', 0)} to {schema['maxLength']} characters"
    elif schema.get("minLength") == 1:
        text = f"non-empty {text}"
    entries = schema.get("additionalProperties")
    if isinstance(entries, dict) and "properties" in entries:
        text += " of names to entries (below)"
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _row(path: str, schema: dict[str, Any], required: bool) -> str:
    unset = "required" if required else "unset"
    default = f"`{flow(schema['default'])}`" if "default" in schema else unset
    examples = ", ".join(f"`{flow(e)}`" for e in schema["examples"])
    return (f"| `{path}` | {_cell(_type_text(schema))} | {_cell(default)} | "
            f"{_cell(schema['description'])} | {_cell(examples)} |")


def reference_markdown() -> str:
    """docs/settings.md: per section, each key's path, type, default, description, examples."""
    sections: list[tuple[str, dict[str, Any]]] = [("", SETTINGS)]
    sections += [(path, sub) for path, sub in keys() if "properties" in sub]
    out = [DOCS_HEAD]
    for path, section in sections:
        out.append(f"## {f'`{path}`' if path else 'Top level'}\n")
        if path:
            out.append(section["description"] + "\n")
            out.append(f"Example: `{flow(section['examples'][0])}`\n")
        leaves = [(key, sub) for key, sub in section["properties"].items() if "properties" not in sub]
        if leaves:
            out.append("| Key | Type | Default | Description | Examples |")
            out.append("|---|---|---|---|---|")
            required = section.get("required", [])
            out += [_row(f"{path}.{key}" if path else key, sub, key in required) for key, sub in leaves]
            out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
