"""Helpers of the tests that run pilots on every node of a real CouchDB cluster
(tests/test_cluster.py, tests/test_deps.py): a database of its own, pilots spread over
the nodes in ``LRT_TEST_COUCH_NODES``, and the check that no copy keeps a conflict."""
from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from conftest import new_db_name
from lrt import design
from pilot_helpers import poll, start_pilot


@contextmanager
def cluster_db(couch: Any, tag: str) -> Iterator[Any]:
    """A new database with lrt's design documents, deleted afterwards; the test is
    skipped unless ``LRT_TEST_COUCH_NODES`` lists at least two nodes."""
    if len(couch.nodes) < 2:
        pytest.skip("set LRT_TEST_COUCH_NODES to the URLs of the cluster's nodes")
    admin = couch.server()
    db = admin.database(new_db_name(tag))
    db.create()
    try:
        design.install(db)
        yield db
    finally:
        db.delete()
        admin.close()


def pilots_on_every_node(couch: Any, db: Any, count: int, logs: Path, *args: str) -> List[subprocess.Popen]:
    """``count`` pilots on ``db``, connected to the nodes in turn, each with ``args``
    (``{i}`` in an argument is the pilot's number) and its log in ``logs/pilot<i>.log``."""
    nodes = couch.nodes
    return [start_pilot(couch.env(db.name, nodes[i % len(nodes)]), *(a.format(i=i) for a in args),
                        log=logs / f"pilot{i}.log")
            for i in range(count)]


def no_conflict_on_any_node(couch: Any, db: Any, timeout: float = 60.0) -> None:
    """Wait until the ``lrt/conflicts`` view is empty on every node (each node serves a
    view from its own copies, which see a removed revision a moment apart)."""
    views = [couch.server(u).database(db.name) for u in couch.nodes]
    poll(lambda: all(v.view("lrt", "conflicts", limit=1)["rows"] == [] for v in views),
         timeout=timeout, what="no conflicted document on any node")
