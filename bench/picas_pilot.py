"""The picas side of bench/compare_picas.py: runs ONLY in bench/.venv-picas (picas 1.1.2).

Two modes:

* ``setup``: the standard picas database layout, made with picas' own client:
  the ``Monitor`` design document with its todo/locked/done/error views and the
  overview_total map/reduce (conditions as in picas' documented examples), and
  N tokens (``type: token``, ``lock: 0``, ``done: 0``) saved with
  ``CouchDB.save_documents``.
* ``pilot``: a standard picas pilot: a :class:`picas.actors.RunActor` with its
  default :class:`picas.iterators.TaskViewIterator` on ``Monitor/todo`` (picas
  1.1.2's basic view iterator: view window of 100, random row, GET, lock, PUT),
  the token closed with :class:`picas.modifiers.BasicTokenModifier`, the payload
  run with :func:`picas.executers.execute`.  The payload appends the token id
  to this pilot's file (the same command lrt's pilots run), so executions can
  be counted afterwards.

When picas gives up claiming (``EnvironmentError("Unable to claim task.")``
after 10 conflicts in a row) the pilot process would die; a batch system would
start another one, so this script starts a new actor and counts the give-up.

HTTP requests are counted by wrapping couchdb-python's ``Session.request``.
The password comes from the environment (``BENCH_COUCH_PASSWORD``), never argv.
"""
from __future__ import annotations

import json
import logging
import os
import sys

import couchdb.http

_COUNT = [0]
_orig_request = couchdb.http.Session.request


def _counting_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    _COUNT[0] += 1
    return _orig_request(self, *args, **kwargs)


couchdb.http.Session.request = _counting_request

from picas.actors import RunActor  # noqa: E402
from picas.clients import CouchDB  # noqa: E402
from picas.documents import Task  # noqa: E402
from picas.executers import execute  # noqa: E402
from picas.modifiers import BasicTokenModifier  # noqa: E402

logging.getLogger().setLevel(logging.WARNING)  # picas logs every token at INFO

# The standard picas view conditions (picas' documented createViews example).
CONDITIONS = {
    "todo": "doc.lock == 0 && doc.done == 0",
    "locked": "doc.lock > 0 && doc.done == 0",
    "done": "doc.lock > 0 && doc.done > 0 && parseInt(doc.exit_code) == 0",
    "error": "doc.lock > 0 && doc.done > 0 && parseInt(doc.exit_code) != 0",
}
PAYLOAD = 'echo "$0" >> "$1"'


def client(url: str, db: str, user: str) -> CouchDB:
    return CouchDB(url=url, db=db, username=user, password=os.environ["BENCH_COUCH_PASSWORD"])


def setup(url: str, db: str, user: str, n: int) -> None:
    c = client(url, db, user)
    for name, cond in CONDITIONS.items():
        c.add_view(name, 'function(doc) {\n  if (doc.type == "token" && (%s)) {\n'
                         '    emit(doc._id, doc._id);\n  }\n}' % cond)
    overview = "function(doc) {\n  if (doc.type == \"token\") {\n"
    for name, cond in CONDITIONS.items():
        overview += f"    if ({cond}) emit('{name}', 1);\n"
    overview += "  }\n}"
    c.add_view("overview_total", overview,
               reduce_fun="function(key, values, rereduce) { return sum(values); }")
    docs = [Task({"_id": f"token_{i:05d}", "type": "token", "input": i}) for i in range(n)]
    for start in range(0, n, 1000):
        ok = c.save_documents(docs[start:start + 1000])
        if not all(ok):
            sys.exit(f"setup: {ok.count(False)} tokens not saved")


class BenchActor(RunActor):
    """A picas actor like picas' local example: run the command, record exit code, close."""

    def __init__(self, db, modifier, outfile, **view_params):  # type: ignore[no-untyped-def]
        super().__init__(db, **view_params)
        self.modifier = modifier
        self.outfile = outfile

    def process_task(self, token):  # type: ignore[no-untyped-def]
        proc, code, _out, _err = execute(["sh", "-c", PAYLOAD, token["_id"], self.outfile])
        self.subprocess = proc
        token["exit_code"] = code
        self.modifier.close(token)


def pilot(url: str, db: str, user: str, outfile: str, reqfile: str) -> None:
    c = client(url, db, user)
    modifier = BasicTokenModifier()
    processed = give_ups = 0
    while True:
        actor = BenchActor(c, modifier, outfile, view="todo", design_doc="Monitor")
        try:
            actor.run(max_token_time=3600)
            processed += actor.tasks_processed
            break  # the todo view was empty: picas' pilot ends
        except EnvironmentError:
            processed += actor.tasks_processed
            give_ups += 1  # "Unable to claim task.": a new pilot would be started
    with open(reqfile, "w") as fh:
        json.dump({"requests": _COUNT[0], "processed": processed, "give_ups": give_ups}, fh)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "setup":
        setup(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif mode == "pilot":
        pilot(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6])
    else:
        sys.exit(f"unknown mode {mode}")
