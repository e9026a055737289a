"""Fixtures of the dashboard tests: a pool made by real pilots, real `lrt dashboard`
processes, and Debian's chromium driven by Playwright (never a downloaded browser)."""
from __future__ import annotations

import os
from typing import Iterator

import pytest

from conftest import new_db_name
from lrt import design

from .pool import Dashboard, artefact_dir, make_pool

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def pool_db(couch, tmp_path_factory):
    """The shared read-only pool (see pool.py), made once by a real pilot."""
    s = couch.server()
    db = s.database(new_db_name("web"))
    db.create()
    design.install(db)
    make_pool(couch, db, tmp_path_factory.mktemp("pool"))
    yield db
    db.delete()
    s.close()


@pytest.fixture(scope="session")
def dash(couch, pool_db, tmp_path_factory) -> Iterator[Dashboard]:
    """A read-only dashboard over the pool."""
    d = Dashboard(couch, pool_db.name, tmp_path_factory.mktemp("dash") / "dashboard.log")
    yield d
    d.stop()


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory):
    return artefact_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def browser():
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "Debian's chromium is missing: run scripts/testbed-chromium.sh"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh browser context per test; any JavaScript dialog or page error is recorded."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = ctx.new_page()
    pg.dialogs = []  # type: ignore[attr-defined]
    pg.errors = []  # type: ignore[attr-defined]
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))  # type: ignore[attr-defined]
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))  # type: ignore[attr-defined]
    yield pg
    ctx.close()
