"""Regenerate the "Bundled chips" table and the key tables of docs/hwconfig.md from the
presets' header comments, the schema and time-default.yaml.

    python docs/gen_hwconfig_keys.py
"""

from pathlib import Path

from timesim.config import bundled_hwconfig, describe_keys, preset_about, presets

DOC = Path(__file__).resolve().parent / "hwconfig.md"
KIND = {"int": "integer", "float": "number", "str": "string", "bool": "true/false",
        "dup": "auto | none | integer", "auto_int": "auto | integer"}


def defaults() -> dict[str, tuple[str, str]]:
    out, sec = {}, None
    for line in bundled_hwconfig().read_text().splitlines():
        if line and not line.startswith((" ", "#")) and line.rstrip().endswith(":"):
            sec = line.strip()[:-1]
        elif line.startswith("  ") and ":" in line:
            key, rest = line.strip().split(":", 1)
            value, _, comment = rest.partition("#")
            out[f"{sec}.{key}"] = (value.strip(), comment.strip())
    return out


def table() -> str:
    src, rows, cur = defaults(), [], None
    for key, kind, cons, doc in describe_keys():
        sec = key.split(".")[0]
        if sec != cur:
            rows.append(f"\n### `{sec}`\n\n| key | type | constraint | default | what | "
                        f"source of the default |\n|---|---|---|---|---|---|")
            cur = sec
        value, comment = src.get(key, ("", ""))
        rows.append(f"| `{key}` | {KIND.get(kind, kind)} | {cons or '-'} | `{value}` | {doc} "
                    f"| {comment} |")
    return "\n".join(rows) + "\n"


def chips() -> str:
    """One row per bundled preset: its name (``--hw NAME``), file and header sentence."""
    rows = ["| name (`--hw NAME`) | file | what |", "|---|---|---|"]
    for name in presets():
        rows.append(f"| `{name}` | `timesim/data/hwconfigs/{name}.yaml` | "
                    f"{preset_about(name)} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    text = DOC.read_text()
    start = text.index("\n## Bundled chips\n") + len("\n## Bundled chips\n")
    end = text.index("\n## Keys")
    text = text[:start] + "\n" + chips() + text[end:]
    start = text.index("\n### `clock`")
    end = text.index("\n## Notes on the semantics")
    DOC.write_text(text[:start] + table() + text[end:])


if __name__ == "__main__":
    main()
