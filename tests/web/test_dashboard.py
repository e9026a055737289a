"""The dashboard in a real headless browser (Debian's chromium via Playwright) against
the suite's server, with tokens run by real pilots and a real `lrt dashboard` process."""
from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

import requests

from pilot_helpers import make_tokens, poll, start_pilot, stop, token

from .pool import BOOM, IDLE, OK, XSS, XSS_ID, Dashboard, lrt_json, make_pool

ROOT = Path(__file__).resolve().parents[2]


def _tid(doc_id: str) -> str:
    return urllib.parse.quote(doc_id, safe="")


def test_overview_counts_equal_lrt_status(dash, pool_db, couch, page, artefacts):
    want = {"idle": {"todo": 2}, "web": {"done": len(OK), "error": len(BOOM) + 1}}
    # (on a cluster both read views, which may come from a copy that lags behind for a moment)
    st = poll(lambda: (lambda st: st if st["types"] == want else None)(lrt_json(couch, pool_db.name, "status")),
              timeout=60, what="lrt status showing the pool")

    def page_total():
        page.goto(dash.url + "/")
        return page.locator('[data-testid="total"]').inner_text() == str(st["total"])
    poll(page_total, timeout=60, interval=1.0, what="the overview showing the pool")
    table = page.locator('[data-testid="by-type"]')
    for ttype, by_state in st["types"].items():
        row = table.locator(f'tbody tr[data-type="{ttype}"]')
        for s in st["states"]:
            assert row.locator(f'td[data-state="{s}"]').inner_text().strip() == str(by_state.get(s, 0))
    total = table.locator('tfoot tr')
    for s, n in st["states"].items():
        assert total.locator(f'td[data-state="{s}"]').inner_text().strip() == str(n)
    assert page.locator('[data-testid="total"]').inner_text() == str(st["total"])
    # the rate plot is drawn (uPlot made its canvas) and the ETA is computed
    page.locator(".plot canvas").first.wait_for()
    assert page.locator('[data-testid="remaining"]').inner_text() == "2"
    page.screenshot(path=str(artefacts / "overview.png"), full_page=True)
    assert not page.errors, page.errors


def test_pages_refresh_themselves(dash, pool_db, couch, page):
    page.goto(dash.url + "/?type=idle")
    assert page.locator('[data-testid="total"]').inner_text() == "2"
    make_tokens(pool_db, [token("idle_extra", ["true"], type="idle", tokenset="idle-set")])
    try:
        # no reload: htmx asks for the live fragment again (refresh 1 s, cache TTL 1 s)
        page.locator('[data-testid="total"]', has_text="3").wait_for(timeout=20000)
    finally:
        doc = pool_db.get("idle_extra")
        pool_db.delete_doc("idle_extra", doc["_rev"])


def test_failure_group_to_token_and_log(dash, page, artefacts):
    page.goto(dash.url + "/failures")
    section = page.locator('section.code[data-code="60"]')
    assert "PAYLOAD_FAILED" in section.locator("h2").inner_text()
    assert "payload" in section.locator(".cls").inner_text()
    group = section.locator("a.group", has_text="payload exited with status #")
    row = section.locator("tr", has=page.locator("a.group", has_text="payload exited with status #"))
    assert row.locator("td.num").first.inner_text() == str(len(BOOM) + 1)
    page.screenshot(path=str(artefacts / "failures.png"), full_page=True)
    group.click()
    page.wait_for_url(re.compile(r"/failures\?code=60&prefix="))
    assert page.locator('[data-testid="group-prefix"]').inner_text() == "payload exited with status #"
    samples = page.locator('[data-testid="samples"] a.tok')
    ids = sorted(samples.all_inner_texts())
    assert ids == sorted(BOOM + [XSS_ID])
    # the log tail of one of them, right on the group page
    assert page.locator('[data-testid="log-stderr"]').first.inner_text().strip() in (
        "boom: input corrupt", XSS)
    page.screenshot(path=str(artefacts / "failure-group.png"), full_page=True)
    samples.filter(has_text="boom_01").click()
    page.wait_for_url(re.compile(r"/token\?id=boom_01"))
    assert page.locator('[data-testid="token-id"]').inner_text() == "boom_01"
    assert page.locator('[data-testid="log-stderr"]').inner_text().strip() == "boom: input corrupt"
    assert page.locator('[data-testid="log-stdout"]').inner_text().strip() == "working on boom_01"
    assert "PAYLOAD_FAILED" in page.locator(".errbox").inner_text()
    tl = page.locator('[data-testid="timeline"] li').all_inner_texts()
    assert [t for t in tl if "claimed (attempt 1)" in t] and [t for t in tl if "finish -> error" in t]
    # an attachment the pilot stored is streamed through the dashboard
    att = page.locator("ul.atts a", has_text="stderr.log")
    r = requests.get(urllib.parse.urljoin(page.url, att.get_attribute("href")), timeout=30)
    assert r.status_code == 200 and "boom: input corrupt" in r.text
    assert r.headers["content-type"].startswith("text/plain")


def test_xss_payload_text_is_escaped(dash, page):
    for path in (f"/token?id={_tid(XSS_ID)}", "/failures?code=60&prefix=" + _tid("payload exited with status #"),
                 "/tokens?type=web", "/tokens?code=60"):
        page.goto(dash.url + path)
        page.wait_for_load_state("load")
        assert page.evaluate("window.__pwned === undefined"), path
        assert page.locator("img[src=x]").count() == 0, path
        assert page.locator("body").inner_text().count("<script>window.__pwned=1</script>") >= 1, path
    page.goto(dash.url + f"/token?id={_tid(XSS_ID)}")
    assert page.locator('[data-testid="token-id"]').inner_text() == XSS_ID
    assert page.locator('[data-testid="log-stdout"]').inner_text().strip() == XSS
    assert page.locator('[data-testid="log-stderr"]').inner_text().strip() == XSS
    assert XSS in page.locator('[data-testid="payload"]').inner_text()
    # an HTML attachment is served as text, sandboxed: never rendered as a page of ours
    page.goto(dash.url + f"/token/attachment?id={_tid(XSS_ID)}&name=notes.html")
    assert XSS in page.locator("body").inner_text()
    assert page.evaluate("window.__pwned === undefined")
    r = requests.get(dash.url + f"/token/attachment?id={_tid(XSS_ID)}&name=notes.html", timeout=30)
    assert r.headers["content-type"].startswith("text/plain") and "sandbox" in r.headers["content-security-policy"]
    page.wait_for_timeout(1500)  # one refresh swap (1 s) went through htmx too
    assert not page.dialogs and not page.errors, (page.dialogs, page.errors)


def test_tokens_list_filters_and_cursor_paging(dash, pool_db, couch, page):
    want = [r["id"] for r in lrt_json(couch, pool_db.name, "list")]
    seen = []
    page.goto(dash.url + "/tokens?limit=4")
    while True:
        seen += page.locator('[data-testid="token-list"] a.tok').all_inner_texts()
        nxt = page.locator('[data-testid="next-page"]')
        if not nxt.count():
            break
        assert "skip=" not in nxt.get_attribute("href")
        nxt.click()
        page.wait_for_load_state("load")
    assert seen == want  # every token once, in the same order as `lrt list`
    page.goto(dash.url + "/tokens")
    page.select_option('select[name="state"]', "error")
    page.select_option('select[name="type"]', "web")
    page.click("form.filters button")
    page.wait_for_url(re.compile(r"state=error"))
    rows = page.locator('[data-testid="token-list"] tbody tr')
    assert sorted(rows.locator("a.tok").all_inner_texts()) == sorted(BOOM + [XSS_ID])
    r = rows.filter(has_text="boom_00").locator("td").all_inner_texts()
    assert r[1] == "error" and r[4] == "1" and r[5] == pool_db.get("boom_00")["pilot"] and "60 PAYLOAD_FAILED" in r[8]
    page.goto(dash.url + "/tokens?tokenset=idle-set")
    assert sorted(page.locator('[data-testid="token-list"] a.tok').all_inner_texts()) == IDLE


def test_pilots_page_shows_live_leases(couch, pool_db, dash, page, tmp_path):
    make_tokens(pool_db, [token("slow_00", ["sleep", "60"], type="slow", tokenset="slow")])
    p = start_pilot(couch.env(pool_db.name), "--type", "slow", "--idle-exit", "60", "--poll", "0.3",
                    log=tmp_path / "pilot.log")
    try:
        poll(lambda: pool_db.get("slow_00")["state"] == "locked", timeout=60, what="the claim")
        pilot = pool_db.get("slow_00")["lease"]["pilot"]
        page.goto(dash.url + "/pilots")
        row = page.locator('[data-testid="leases"] tbody tr', has_text="slow_00")
        row.wait_for(timeout=20000)
        cells = row.locator("td").all_inner_texts()
        assert cells[0] == pilot and cells[1] == "slow_00" and cells[2] == "slow"
        assert re.fullmatch(r"\d+s", cells[6])  # heartbeat age
    finally:
        stop(p)
        doc = pool_db.get("slow_00")
        pool_db.delete_doc("slow_00", doc["_rev"])


def test_read_only_refuses_actions_and_shows_no_password(dash, pool_db, couch, page):
    page.goto(dash.url + "/failures?code=60&prefix=" + _tid("payload exited with status #"))
    assert page.locator('[data-testid="reset-group"]').count() == 0
    assert "read-only" in page.locator("header").inner_text()
    page.goto(dash.url + "/actions/confirm?action=reset&code=60")
    assert "read-only" in page.locator("body").inner_text()
    s = requests.Session()
    s.get(dash.url + "/", timeout=30)
    r = s.post(dash.url + "/actions/run", data={"action": "reset", "code": "60", "user": couch.user,
                                                "password": couch.password}, timeout=30)
    assert r.status_code == 403 and "read-only" in r.text
    assert lrt_json(couch, pool_db.name, "status")["states"]["error"] == len(BOOM) + 1
    # another Host (DNS rebinding) is refused
    assert requests.get(dash.url + "/", headers={"Host": "evil.example"}, timeout=30).status_code == 400
    # no credential in any page, fragment, error or the dashboard's own output
    paths = ["/", "/failures", "/failures?code=60", "/tokens", "/tokens?state=nope", "/pilots",
             "/token?id=boom_00", "/token?id=missing", "/token/attachment?id=boom_00&name=stdout.log",
             "/api/status", "/actions/confirm?action=reset&code=60"]
    for path in paths:
        for hdrs in ({}, {"HX-Request": "true"}):
            r = s.get(dash.url + path, headers=hdrs, timeout=30)
            assert couch.password not in r.text and couch.password not in str(r.headers), path
    assert s.get(dash.url + "/tokens?state=nope", timeout=30).status_code == 400
    assert couch.password not in dash.log.read_text()


def test_reset_a_group_through_the_ui(couch, server, tmp_path, page, artefacts):
    from conftest import new_db_name
    from lrt import design

    db = server.database(new_db_name("webact"))
    db.create()
    design.install(db)
    try:
        make_pool(couch, db, tmp_path)
        d = Dashboard(couch, db.name, tmp_path / "dashboard.log", "--allow-actions")
        try:
            _reset_through_ui(couch, db, d, page, artefacts)
        finally:
            assert d.stop() == 0  # Ctrl-C ends the dashboard cleanly
        assert couch.password not in d.log.read_text()
    finally:
        db.delete()


def _reset_through_ui(couch, db, d, page, artefacts):
    page.goto(d.url + "/failures")
    page.locator('section.code[data-code="60"] a.group').click()
    page.locator('[data-testid="reset-group"]').click()
    page.wait_for_url(re.compile(r"/actions/confirm\?action=reset"))

    def plan_counts_four():  # (on a cluster the group's view may come from a copy that lags behind)
        if "4" in page.locator('[data-testid="plan"]').inner_text():
            return True
        page.reload()
        return False
    poll(plan_counts_four, timeout=60, interval=1.0, what="the plan counting the group's 4 tokens")
    # the confirmation refuses a wrong password: nothing changes
    page.fill('input[name="user"]', couch.user)
    page.fill('input[name="password"]', couch.password + "-wrong")
    page.click('[data-testid="confirm"]')
    assert "not authorised" in page.locator("body").inner_text()
    assert couch.password not in page.content()
    # nothing changed: read the documents themselves (by quorum; on a cluster a view may be
    # read from a copy that lags behind)
    assert [db.get(i)["state"] for i in BOOM + [XSS_ID]] == ["error"] * 4
    # a POST without the page's CSRF token is refused
    s = requests.Session()
    s.get(d.url + "/", timeout=30)
    r = s.post(d.url + "/actions/run", data={"action": "reset", "code": "60", "csrf": "x" * 64,
                                             "user": couch.user, "password": couch.password}, timeout=30)
    assert r.status_code == 403 and "CSRF" in r.text
    assert [db.get(i)["state"] for i in BOOM + [XSS_ID]] == ["error"] * 4
    # confirm with the right credentials
    page.go_back()
    page.wait_for_url(re.compile(r"/actions/confirm"))
    page.fill('input[name="user"]', couch.user)
    page.fill('input[name="password"]', couch.password)
    page.screenshot(path=str(artefacts / "confirm.png"))
    page.click('[data-testid="confirm"]')
    assert page.locator('[data-testid="result"]').inner_text().startswith("4 changed")
    assert couch.password not in page.content()
    # (lrt status reads views: on a cluster they may lag behind for a moment)
    poll(lambda: lrt_json(couch, db.name, "status")["types"]["web"] == {"todo": 4, "done": 6}, timeout=60,
         what="lrt status showing the 4 reset tokens as todo")
    for i in BOOM + [XSS_ID]:
        doc = db.get(i)
        assert doc["state"] == "todo" and doc["attempts"] == 0 and doc["error"] is None
        assert doc["last_transition"]["why"] == f"reset from the dashboard by {couch.user}"
        assert doc["history"][-1]["state"] == "error"  # history kept
    page.goto(d.url + "/failures")
    assert page.locator('[data-testid="no-failures"]').count() == 1


def test_overview_shows_the_set_level_dependency_graph(db, couch, page, tmp_path):
    """Sets whose tokens wait for other sets (``after:``) appear as parent -> child rows,
    each with its progress; per-token dependencies count towards their parent's set."""
    make_tokens(db, [token(f"calib_{i}", ["true"], type="calib", tokenset="calib", state="done")
                     for i in range(3)]
                + [token(f"image_{i}", ["true"], type="image", tokenset="image", state="waiting",
                         after=[{"id": f"calib_{i}", "set": "calib", "on": "ok"}]) for i in range(3)]
                + [token("mosaic", ["true"], type="mosaic", tokenset="mosaic", state="waiting",
                         after=[{"tokenset": "image", "on": "ok"}])])
    d = Dashboard(couch, db.name, tmp_path / "dashboard.log")
    try:
        page.goto(d.url + "/")
        graph = page.locator('[data-testid="set-graph"]')
        graph.wait_for()
        rows = graph.locator("tbody tr")
        edges = [(rows.nth(i).get_attribute("data-parent"), rows.nth(i).get_attribute("data-child"),
                  rows.nth(i).locator("td.num").inner_text()) for i in range(rows.count())]
        assert edges == [("calib", "image", "3"), ("image", "mosaic", "1")]  # parents first
        # the parent set's bar shows its 3 done tokens
        assert graph.locator('tr[data-parent="calib"] rect.s-done title').first.text_content() == "done 3"
        assert not page.errors, page.errors
    finally:
        d.stop()
