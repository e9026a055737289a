"""The UWS 1.1 interface of `lrt serve`, driven over real HTTP (plain requests for creation and
filters, pyvo's job class for the lifecycle) with real pilots running the jobs; every XML
answer is validated against the IVOA UWS 1.1 schema (tests/data/uws/UWS.xsd)."""
from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import pytest
import requests
from lxml import etree

from pilot_helpers import poll, start_pilot, stop

from .conftest import Checked, session

NS = {"uws": "http://www.ivoa.net/xml/UWS/v1.0", "xlink": "http://www.w3.org/1999/xlink"}


def xml(resp):
    assert resp.headers["content-type"].startswith("application/xml"), resp.text
    return etree.fromstring(resp.content)


def phase(s, url):
    return xml(s.get(url)).findtext("uws:phase", namespaces=NS)


def create(s, base, task, expect=303, **params):
    r = s.post(f"{base}/uws/{task}", data=params, allow_redirects=False)
    assert r.status_code == expect, r.text
    return r


def job_ids(s, url, **params):
    r = s.get(url, params=params)
    assert r.status_code == 200, r.text
    return [j.get("id") for j in xml(r).findall("uws:jobref", NS)]


def pilot(serve, *args):
    return start_pilot(serve.env, "--idle-exit", "60", "--poll", "0.2", "--cancel-check", "1", *args)


def test_authentication_and_owners(serve, users, uws_db):
    base = serve.url
    r = requests.get(f"{base}/uws/sleeper")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    r = requests.get(f"{base}/uws/sleeper", auth=(users["bob"][0], "wrong password"))
    assert r.status_code == 401 and "wrong password" not in r.text
    alice, bob, admin = session(users["alice"]), session(users["bob"]), session(users["admin"])
    loc = create(alice, base, "sleeper", seconds="1").headers["location"]
    jid = loc.rsplit("/", 1)[-1]
    assert loc == f"{base}/uws/sleeper/{jid}"
    assert uws_db.get(jid)["owner"] == users["alice"][0]
    assert job_ids(alice, f"{base}/uws/sleeper") == [jid]
    assert job_ids(bob, f"{base}/uws/sleeper") == []
    assert job_ids(admin, f"{base}/uws/sleeper") == [jid]
    for path in ("", "/phase", "/parameters", "/owner", "/results"):
        assert bob.get(loc + path).status_code == 403
    assert bob.post(loc + "/phase", data={"PHASE": "RUN"}, allow_redirects=False).status_code == 403
    assert bob.delete(loc, allow_redirects=False).status_code == 403
    assert uws_db.get(jid)["state"] == "pending"
    assert alice.get(loc + "/owner").text == users["alice"][0]
    assert admin.get(loc).status_code == 200
    assert alice.get(f"{base}/uws/sleeper/nosuchjob").status_code == 404
    assert alice.get(f"{base}/uws/nosuchtask").status_code == 404
