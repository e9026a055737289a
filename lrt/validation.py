"""YAML documents validated with file and line: what token configs and task definitions share.

:func:`load_yaml` parses a document once (one ``compose``): the node tree gives
the duplicate-key check and the line numbers (:class:`Lines`), the same tree is
constructed into Python data.  :class:`Validator` holds the checks both formats
make -- unknown keys with a "did you mean", numbers, booleans, mappings,
argument vectors, folders beside the file -- each raising a
:class:`~lrt.errors.ConfigError` that names the file and the key's line.
:mod:`lrt.config` and :mod:`lrt.tasks.definition` add their own sections.
"""
from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import ConfigError


def suggest(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Lines:
    """Line numbers of keys in a YAML document (from its node tree), looked up by key path."""

    def __init__(self, node: Any):
        self._node = node
        self._map: Optional[Dict[Tuple[str, ...], int]] = None

    def __call__(self, *path: str) -> Optional[int]:
        """The line of the deepest key of ``path`` that exists (1-based), None when none does."""
        if self._map is None:
            self._map = {}
            if self._node is not None:
                self._walk(self._node, (), self._map)
        while path:
            if path in self._map:
                return self._map[path]
            path = path[:-1]
        return None

    @staticmethod
    def _walk(node: Any, prefix: Tuple[str, ...], out: Dict[Tuple[str, ...], int]) -> None:
        import yaml

        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = prefix + (str(k.value),)
                out.setdefault(key, k.start_mark.line + 1)
                Lines._walk(v, key, out)


def duplicate_key(node: Any) -> Optional[Tuple[str, int]]:
    """The first key that appears twice in one mapping, with its line (PyYAML keeps the last silently)."""
    import yaml

    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, yaml.MappingNode):
            seen = set()
            for k, v in n.value:
                if isinstance(k, yaml.ScalarNode):
                    if k.value in seen:
                        return k.value, k.start_mark.line + 1
                    seen.add(k.value)
                stack.append(v)
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
    return None


def load_yaml(text: str, path: str, what: str) -> Tuple[Dict[str, Any], Lines]:
    """Parse ``text`` once: the top-level mapping and its :class:`Lines`.

    Refuses malformed YAML (with the line), a document that is not a mapping
    (``what`` names the format: "a token config") and duplicate keys.
    """
    import yaml  # here, not at import: `lrt status` and friends never parse YAML

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"malformed YAML: {problem}", path=path,
                          line=mark.line + 1 if mark else None) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"{what} is a YAML mapping (key: value lines)", path=path)
    dup = duplicate_key(node)
    if dup:
        raise ConfigError(f"key {dup[0]!r} appears twice", path=path, line=dup[1])
    return data, Lines(node)


class Validator:
    """Checks on parsed YAML that fail with the file and the line of the key concerned."""

    def __init__(self, path: str, lines: Lines):
        self.path = path
        self.lines = lines

    def fail(self, msg: str, *key: str) -> ConfigError:
        return ConfigError(msg, path=self.path, line=self.lines(*key) if key else None)

    def unknown(self, data: Mapping[str, Any], known: Sequence[str], *prefix: str) -> None:
        """Refuse a key not in ``known`` (with a "did you mean" and the list of known keys)."""
        for k in data:
            if str(k) not in known:
                where = ".".join(prefix + (str(k),))
                raise self.fail(f"unknown key {where!r}{suggest(str(k), known)}; known keys"
                                f"{' of ' + '.'.join(prefix) if prefix else ''}: "
                                f"{', '.join(known)}", *prefix, str(k))

    def mapping(self, value: Any, *key: str) -> Dict[str, Any]:
        """``value`` as a mapping; null is an empty one."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(f"{'.'.join(key)} must be a mapping", *key)
        return value

    def number(self, value: Any, key: Tuple[str, ...], minimum: Optional[float] = 0, allow_none: bool = True,
               integer: bool = False, as_float: bool = True, finite: bool = True) -> Any:
        """A number (``integer``: an int) >= ``minimum``; ``as_float``: floats come back as float.

        ``finite`` refuses ``.inf`` and ``.nan``; ``allow_none`` lets null through as None.
        """
        name = ".".join(key)
        if value is None and allow_none:
            return None
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or (finite and isinstance(value, float) and not math.isfinite(value)):
            want = "an integer" if integer else "a number"
            raise self.fail(f"{name} must be {want}{' or null' if allow_none else ''}, "
                            f"not {value!r}", *key)
        if minimum is not None and value < minimum:
            raise self.fail(f"{name} must be >= {minimum}, not {value!r}", *key)
        return value if integer or not as_float else float(value)

    def boolean(self, value: Any, *key: str, show: bool = True) -> bool:
        """``true`` or ``false`` (``show``: the message quotes the bad value)."""
        if not isinstance(value, bool):
            raise self.fail(f"{'.'.join(key)} must be true or false"
                            f"{', not ' + repr(value) if show else ''}", *key)
        return value

    def command(self, command: Any, numbers: bool = False) -> List[str]:
        """The payload's argument vector under ``command``; never a string (lrt runs no shell).

        ``numbers``: numeric words are accepted and become strings (token configs).
        """
        if isinstance(command, str):
            raise self.fail("command must be an argument list like ['python3', 'run.py'], not a "
                            "string: lrt never runs commands through a shell", "command")

        def word(a: Any) -> bool:
            if numbers:
                return isinstance(a, (str, int, float)) and not isinstance(a, bool)
            return isinstance(a, str) and bool(a)

        if not isinstance(command, list) or not command or not all(word(a) for a in command):
            raise self.fail(f"command must be a non-empty list of strings, not {command!r}", "command")
        return [str(a) for a in command]

    def folder(self, value: Any, base: Path, *key: str) -> Path:
        """An existing folder named relative to ``base`` (a sandbox beside the file)."""
        where = (base / value).resolve()
        if not where.is_dir():
            raise self.fail(f"sandbox folder {where} does not exist", *key)
        return where
