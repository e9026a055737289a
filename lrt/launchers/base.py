"""The launcher interface: one :class:`Launcher` per batch system, found by name in a registry.

Every backend takes its options as a :class:`LaunchOptions` subclass (the
shared ``lrt launch`` options plus its own), answers :meth:`Launcher.launch`
with a :class:`Launched` and tells ``lrt status`` about its pilots through
:meth:`Launcher.observe`, so neither the CLI nor :func:`~lrt.launchers.records.launch_summary`
needs to know which systems exist.  Backends are imported only when named.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Generic, List, Optional, Sequence, TypeVar

from ..errors import ConfigError, LrtError

if TYPE_CHECKING:
    from ..couch import Database
    from .credentials import Connection


class LaunchError(LrtError):
    """A submission failed (the batch system's client said no, or is missing)."""


@dataclass
class LaunchOptions:
    """What every launcher takes (the options ``lrt launch SYSTEM`` shares)."""

    pilots: int = 1
    token_type: Optional[str] = None
    pilot_args: Optional[str] = None     # one string, split like a shell would (never a password)
    base_dir: Optional[str] = None       # parent of the launch folder (--dir)
    lrt: Optional[str] = None            # how jobs run lrt (--lrt)
    template: Optional[str] = None       # the user's own template
    password_file: Optional[str] = None


@dataclass
class Launched:
    """What a launch did: the launch record (None when nothing was submitted) and what to tell the user."""

    record: Optional[Dict[str, Any]]
    folder: Optional[Path]
    message: str


@dataclass
class Observed:
    """What a batch system says about one launch's pilots right now.

    ``queued``/``running`` are None when the system cannot be asked from here;
    ``ended`` maps pilot index to an ended entry (:func:`~lrt.launchers.records.ended_entry`);
    ``accounted`` is set when accounting was asked and did not know every pilot either.
    """

    queued: Optional[int] = None
    running: Optional[int] = None
    ended: Dict[str, Any] = field(default_factory=dict)
    accounted: Optional[float] = None


O = TypeVar("O", bound=LaunchOptions)


class Launcher(ABC, Generic[O]):
    """One batch system: how its pilots are submitted and how they are seen afterwards."""

    #: the name in ``lrt launch SYSTEM`` and in launch records' ``system``
    system: str = ""
    #: do the pilots run on other machines (then a loopback database URL is worth a warning)?
    remote: bool = True

    @abstractmethod
    def launch(self, db: "Database", conn: "Connection", opts: O) -> Launched:
        """Render, write, submit and record; bad input raises before anything is written."""

    def dry_run(self, conn: "Connection", opts: O) -> str:
        """What :meth:`launch` would write and run, as text; nothing is written."""
        raise ConfigError(f"lrt launch {self.system} has no dry run")

    def observe(self, records: Sequence[Dict[str, Any]]) -> Dict[str, Observed]:
        """Per launch record ``_id``: what the batch system says (records of this system, not yet complete)."""
        return {}

    def started(self, launched: Launched) -> Optional[str]:
        """A warning when pilots of a fresh launch failed at once (only where the launcher can see it)."""
        return None


#: the backends, by system name; imported when first named
BACKENDS: Dict[str, str] = {
    "slurm": "lrt.launchers.slurm",
    "htcondor": "lrt.launchers.htcondor",
    "jdl": "lrt.launchers.jdl",
    "local": "lrt.launchers.local",
}


def systems() -> List[str]:
    """The system names a launcher exists for."""
    return list(BACKENDS)


def launcher(system: str) -> "Launcher[Any]":
    """The launcher of ``system`` (its module's ``LAUNCHER``)."""
    try:
        module = BACKENDS[system]
    except KeyError:
        raise ConfigError(f"no launcher for {system!r}; known: {', '.join(BACKENDS)}") from None
    found: Launcher[Any] = importlib.import_module(module).LAUNCHER
    return found
