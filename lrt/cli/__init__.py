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
import logging
import sys
from typing import Any, Callable, List, Optional

from .. import __version__
from ..errors import LrtError

#: subcommand modules, in help order; a module that is missing is skipped
MODULES = ("server", "tokens", "pilot", "sandbox", "stage", "launch", "why", "monitor", "dashboard",
           "task", "uws")


class Context:
    """What a subcommand gets: parsed args and lazily made server/database."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self._settings: Any = None
        self._db: Any = None

    @property
    def settings(self) -> Any:
        if self._settings is None:
            from ..settings import resolve

            a = self.args
            self._settings = resolve(url=a.url, user=a.user, db=a.db, password_file=a.password_file,
                                     ca_bundle=a.ca_bundle)
        return self._settings

    @property
    def db(self) -> Any:
        if self._db is None:
            self._db = self.settings.database()
        return self._db

    def out(self, text: str = "") -> None:
        print(text, flush=True)


def build_parser() -> argparse.ArgumentParser:
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
    for name in MODULES:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        mod.register(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func: Optional[Callable[[Context], Optional[int]]] = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    ctx = Context(args)
    try:
        return int(func(ctx) or 0)
    except LrtError as exc:
        if args.verbose >= 2:
            raise
        print(f"lrt: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("lrt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def entry() -> None:
    sys.exit(main())
