"""The ``lrt`` command.

Each concept has its own module that registers its subcommands (``register``);
this module only holds the shared options, the connection to CouchDB and the
error handling: a user error is one line on stderr and a non-zero exit code,
never a traceback (``-v`` adds tracebacks for debugging).

Exit codes: 0 ok, 1 error, 2 bad input/config, 3 illegal state change,
4 authentication failure, 130 interrupted.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, cast

from .. import __version__
from ..errors import LrtError

if TYPE_CHECKING:
    from ..couch import Database
    from ..settings import Settings

#: subcommand modules, in help order (all ship with the package: a failing import is a bug, not skipped)
MODULES = ("server", "tokens", "pilot", "sandbox", "stage", "launch", "why", "monitor", "dashboard",
           "task", "uws")


class Context:
    """What a subcommand gets: parsed args and lazily made server/database."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self._settings: Optional["Settings"] = None
        self._db: Optional["Database"] = None

    @property
    def settings(self) -> "Settings":
        if self._settings is None:
            from ..settings import resolve

            a = self.args
            self._settings = resolve(url=a.url, user=a.user, db=a.db, password_file=a.password_file,
                                     ca_bundle=a.ca_bundle)
        return self._settings

    @property
    def db(self) -> "Database":
        if self._db is None:
            self._db = self.settings.database(fail_fast=True)
        return self._db

    def out(self, text: str = "") -> None:
        print(text, flush=True)


#: global options that take a value (the command name is the first word after them)
_VALUED = ("--url", "--user", "--password-file", "--db", "--ca-bundle")


def _command_word(argv: Sequence[str]) -> Optional[str]:
    """The subcommand ``argv`` names, "" for none (``lrt --version``), None when unsure.

    Only a guess to save work: :func:`build_parser` builds every parser when
    the guess is None or names no command, so argparse has the last word.
    """
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in ("-h", "--help"):
            return None
        elif word == "--version":
            return ""
        elif word == "--":
            return None
        elif word.startswith("--"):
            opt = word.split("=", 1)[0]
            full = [o for o in _VALUED if o.startswith(opt)]
            if len(full) > 1:
                return None  # an ambiguous abbreviation: argparse says so
            skip = bool(full) and "=" not in word
        elif word.startswith("-"):
            continue  # -v, -vv
        else:
            return word
    return None


class _Skipped:
    """Stands in for the parser of a command that is not being run: absorbs its set-up.

    Making argparse parsers for every subcommand costs more than the rest of
    the start-up together (~30 ms for ~40 parsers); only the one run is needed.
    """

    def __getattr__(self, name: str) -> "_Skipped":
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> "_Skipped":
        return self

    def __iter__(self) -> Any:
        return iter(())


class _OnlyCommand:
    """The subparsers action as ``register`` sees it: real parsers only for ``wanted``."""

    def __init__(self, real: Any, wanted: str):
        self._real, self._wanted = real, wanted

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if name == self._wanted or self._wanted in kwargs.get("aliases", ()):
            return self._real.add_parser(name, **kwargs)
        return _Skipped()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The ``lrt`` parser; given ``argv``, only with the parser of the command it names."""
    wanted = _command_word(argv) if argv is not None else None
    p = argparse.ArgumentParser(prog="lrt", description="CouchDB token pools for grid and HPC processing.")
    p.add_argument("--version", action="version", version=f"lrt {__version__}")
    g = p.add_argument_group("connection (else LRT_COUCH_* environment, ~/.config/lrt/config.yaml, "
                             "~/.netrc, the local server)")
    g.add_argument("--url", help="CouchDB URL, e.g. https://couch.example.org:6984")
    g.add_argument("--user", help="CouchDB user")
    g.add_argument("--password-file", help="file holding the password (mode 0600)")
    g.add_argument("--db", help="database name (default: lrt)")
    g.add_argument("--ca-bundle", help="CA bundle for TLS verification")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging; -vv for tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    target = sub if wanted is None else _OnlyCommand(sub, wanted)
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}").register(target)
    if wanted and wanted not in sub.choices:
        return build_parser()  # not a command: the full parser's error lists them all
    return p


def main(argv: Optional[List[str]] = None) -> int:
    old_term = _stop_on_sigterm()
    try:
        return _main(argv)
    finally:
        if old_term is not None:
            import signal

            signal.signal(signal.SIGTERM, old_term)


def _main(argv: Optional[List[str]] = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    import logging  # after parsing: `lrt --version` never needs it

    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func: Optional[Callable[[Context], Optional[int]]] = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    ctx = Context(args)
    _LeanRequests.install()
    try:
        return int(func(ctx) or 0)
    except LrtError as exc:
        if args.verbose >= 2:
            raise
        # an interrupt that says what it left behind (exit 128 + signal) is no error
        print(f"lrt: {'' if exc.exit_code >= 128 else 'error: '}{exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print("lrt: interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signum", 2)
    except BrokenPipeError:
        return 0


class _LeanRequests:
    """Import ``requests`` without a character-set detector, if and when this process imports it.

    ``requests`` imports chardet or charset_normalizer at once (about 5 ms of a
    pilot's start-up) only to guess the encoding of a reply that names none, for
    ``Response.text``.  lrt reads JSON (UTF-8 by RFC 8259) and bytes; without a
    detector requests falls back to UTF-8, which is right for CouchDB.  Only the
    ``lrt`` command does this (the process is ours; a program importing lrt gets
    requests as usual), only when something imports requests (a meta path
    finder that removes itself at once), and the blocking is undone right after,
    so a later ``import charset_normalizer`` works.
    """

    def __init__(self, loader: Any):
        self.loader = loader

    @classmethod
    def install(cls) -> None:
        if "requests" not in sys.modules and cls not in sys.meta_path:
            sys.meta_path.insert(0, cls)

    @classmethod
    def find_spec(cls, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "requests":
            return None
        sys.meta_path.remove(cls)
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = cast(Any, cls(spec.loader))  # the real spec; its loader runs under the block
        return spec

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        import warnings

        blocked = [m for m in ("chardet", "charset_normalizer") if m not in sys.modules]
        for m in blocked:
            sys.modules[m] = None  # type: ignore[assignment]  # their import fails: requests goes without
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # RequestsDependencyWarning: no detector, on purpose
                self.loader.exec_module(module)
        finally:
            for m in blocked:
                if m in sys.modules and sys.modules[m] is None:
                    del sys.modules[m]
            module.__loader__ = module.__spec__.loader = self.loader  # as if we were never here


def _stop_on_sigterm() -> Any:
    """Make SIGTERM stop a command as Ctrl-C does (KeyboardInterrupt, ``signum`` 15).

    So ``kill`` gets the same clean stop and honest report as Ctrl-C.  Commands
    with their own handling (a pilot) install theirs over it.  Returns the
    previous handler (None when not in the main thread, where it cannot be set).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum: int, _frame: Any) -> None:
        exc = KeyboardInterrupt()
        exc.signum = signum  # type: ignore[attr-defined]
        raise exc

    return signal.signal(signal.SIGTERM, stop)


def entry() -> None:
    try:
        rc = main()
    except KeyboardInterrupt:  # one that came between main's own handlers
        rc = 130
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while exiting adds nothing
    sys.exit(rc)
