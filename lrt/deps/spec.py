"""The ``after:`` and ``inputs:`` keys of a token config (docs/tokens.md, "Dependencies").

Three forms of ``after``, each with ``on`` (default ``ok``)::

    after: {tokenset: calib, on: ok}                            # every token of set calib
    after: {id: "calib_{obsid}_SB{sb_start:03d}", on: ok}       # one parent per token
    after: {ids: [calib_a, calib_b], on: any}                   # these tokens
    after: [calib_a, calib_b]                                   # the same, on: ok

``inputs: {from_parent: NAME}`` makes a parent's outputs the child's inputs when
it is released (:func:`lrt.deps.release.parent_inputs`).

Only the shape is checked here (no server): :mod:`lrt.deps.create` checks that
the parents exist and that no cycle is closed, before anything is written.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Dict, List, Mapping, Optional

from ..errors import ConfigError

AFTER_KEYS = ("tokenset", "id", "ids", "on")
INPUTS_KEYS = ("from_parent",)
_NAME_RE = re.compile(r"^[A-Za-z0-9*?._\[\]-]+$")


class On(str, Enum):
    """When a parent satisfies a dependency (Slurm: afterok, afterany, afternotok)."""

    OK = "ok"        #: the parent is done
    ANY = "any"      #: the parent ended: done, error, failed or cancelled
    NOTOK = "notok"  #: the parent failed: error or failed

    def __str__(self) -> str:
        return self.value


@dataclass
class AfterSpec:
    """A config's ``after``: a whole set, an id template, or fixed ids."""

    on: On
    tokenset: Optional[str] = None
    id_template: Optional[str] = None
    ids: List[str] = field(default_factory=list)

    def deps_for(self, values: Mapping[str, Any], render: Callable[[str, Mapping[str, Any]], str]
                 ) -> List[Dict[str, Any]]:
        """The ``after`` list stored on one token (``values``: the token's template fields)."""
        if self.tokenset is not None:
            return [{"tokenset": self.tokenset, "on": self.on.value}]
        if self.id_template is not None:
            return [{"id": render(self.id_template, values), "on": self.on.value}]
        return [{"id": i, "on": self.on.value} for i in self.ids]


@dataclass
class InputsSpec:
    """``inputs: {from_parent: NAME}``: ``output`` (the parent's whole output list), or
    a name or glob matched against the file names of the parent's outputs."""

    from_parent: str


def parse_after(value: Any, fail: Callable[..., ConfigError]) -> Optional[AfterSpec]:
    """``after`` as written in a config; ``fail(message, *key)`` makes the error."""
    if value is None:
        return None
    if isinstance(value, list):
        value = {"ids": value}
    if not isinstance(value, dict):
        raise fail("after must be {tokenset: NAME}, {id: TEMPLATE}, {ids: [...]} or a list of ids "
                   "(each with an optional on: ok|any|notok)", "after")
    # YAML 1.1 (PyYAML) reads an unquoted key `on` as the boolean true
    value = {("on" if k is True else k): v for k, v in value.items()}
    for k in value:
        if k not in AFTER_KEYS:
            raise fail(f"unknown key 'after.{k}'; known keys of after: {', '.join(AFTER_KEYS)}",
                       "after", str(k))
    forms = [k for k in ("tokenset", "id", "ids") if k in value]
    if len(forms) != 1:
        raise fail("after needs exactly one of tokenset, id or ids", "after")
    on_raw = value.get("on", "ok")
    try:
        on = On(str(on_raw)) if isinstance(on_raw, str) else On("?")
    except ValueError:
        raise fail(f"after.on must be ok, any or notok, not {on_raw!r}", "after", "on") from None
    form = forms[0]
    v = value[form]
    if form == "tokenset":
        if not isinstance(v, str) or not v:
            raise fail(f"after.tokenset must name a token set, not {v!r}", "after", "tokenset")
        return AfterSpec(on=on, tokenset=v)
    if form == "id":
        if not isinstance(v, str) or not v:
            raise fail(f"after.id must be an id template string, not {v!r}", "after", "id")
        return AfterSpec(on=on, id_template=v)
    if (not isinstance(v, list) or not v
            or not all(isinstance(x, str) and x and not x.startswith("_") for x in v)):
        raise fail("after.ids must be a non-empty list of token ids", "after", "ids")
    if len(set(v)) != len(v):
        raise fail("after.ids names a token twice", "after", "ids")
    return AfterSpec(on=on, ids=list(v))


def parse_inputs(value: Any, fail: Callable[..., ConfigError]) -> Optional[InputsSpec]:
    """``inputs`` as written in a config (only ``from_parent`` for now)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise fail("inputs must be a mapping {from_parent: NAME}", "inputs")
    for k in value:
        if k not in INPUTS_KEYS:
            raise fail(f"unknown key 'inputs.{k}'; known keys of inputs: {', '.join(INPUTS_KEYS)}",
                       "inputs", str(k))
    name = value.get("from_parent")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise fail("inputs.from_parent must be 'output' (every output of the parent) or a file "
                   f"name or glob of one of its outputs, not {name!r}", "inputs", "from_parent")
    return InputsSpec(from_parent=name)
