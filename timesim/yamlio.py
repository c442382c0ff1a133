"""YAML loading for every file timesim reads: safe, and strict about duplicate keys.

PyYAML keeps the last of two equal keys in a mapping (``rows: 128`` then ``rows: 64`` gives 64)
without a word; a hwconfig, a trace manifest or a fitted model with a repeated key is a mistake
whose silent resolution changes the result, so loading refuses it, naming both lines.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode


class DuplicateKeyError(ConstructorError):
    """A mapping repeats a key. ``problem`` names the key's path and both lines (1-based)."""

    def __init__(self, path: str, first: int, second: int, mark):
        self.path, self.first_line, self.second_line = path, first, second
        super().__init__(None, None, f"duplicate key {path} (lines {first} and {second}; "
                                     f"remove one)", mark)


def _check(node: Node, path: str, seen: set[int]) -> None:
    """Walk the composed document (before construction, so lines are known) for repeated
    keys; ``<<`` merge keys are YAML's own way of overriding and are not compared."""
    if id(node) in seen:          # an alias: the anchored node was checked where it stands
        return
    seen.add(id(node))
    if isinstance(node, MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                name = f"{path}.{key.value}" if path else str(key.value)
                ident = (key.tag, key.value)
                if ident in first:
                    raise DuplicateKeyError(name, first[ident], key.start_mark.line + 1,
                                            key.start_mark)
                first[ident] = key.start_mark.line + 1
                _check(value, name, seen)
            else:
                _check(value, path, seen)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _check(item, f"{path}[{i}]", seen)


class _StrictMixin:
    def construct_document(self, node: Node) -> Any:
        _check(node, "", set())
        return super().construct_document(node)


class StrictSafeLoader(_StrictMixin, yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with a repeated key."""


# libyaml's parser where PyYAML was built with it (a fitted model with hundreds of layers parses
# in milliseconds); the check runs on the composed nodes either way
StrictCSafeLoader = (type("StrictCSafeLoader", (_StrictMixin, yaml.CSafeLoader), {})
                     if hasattr(yaml, "CSafeLoader") else StrictSafeLoader)


def load(text: str, fast: bool = False) -> Any:
    """Parse one YAML document as ``yaml.safe_load`` does, refusing duplicate keys.
    Raises ``yaml.YAMLError`` (``DuplicateKeyError`` for a repeated key)."""
    return yaml.load(text, Loader=StrictCSafeLoader if fast else StrictSafeLoader)


def describe(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: ``line N: problem`` (the line of the problem's mark)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if isinstance(exc, DuplicateKeyError):
        return problem
    return f"line {mark.line + 1}: {problem}" if mark is not None else problem
