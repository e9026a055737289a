"""The LTA stager client against a stdlib XML-RPC server on loopback that behaves
like the documented service (HTTP basic auth, LtaStager.* methods)."""
from __future__ import annotations

import base64
import itertools
import os
import subprocess
import threading
import xmlrpc.client
from http import HTTPStatus
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

import pytest

from lrt.errors import ConfigError
from lrt.staging.lta import LtaError, LtaStager, read_stagingrc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USER, PASSWORD = "astro", "s3cr3t-Pa55-do-not-print"
SURLS = [f"srm://srm.grid.sara.nl:8443/pnfs/grid.sara.nl/data/lofar/ops/projects/p/1/L1_SB{i:03d}_uv.MS_x.tar"
         for i in range(4)]


class FakeLtaStager:
    """Request lifecycle: new -> scheduled -> in progress (half online) -> success."""

    STEPS = ["new", "scheduled", "in progress", "success"]

    def __init__(self):
        self.ids = itertools.count(1000)
        self.requests = {}

    def _get(self, rid):
        if rid not in self.requests:
            raise xmlrpc.client.Fault(1, f"no request with id {rid}")
        return self.requests[rid]

    def add_getid(self, surls):
        if not isinstance(surls, list) or not all(isinstance(s, str) and s.startswith("srm://") for s in surls):
            raise xmlrpc.client.Fault(2, "expected a list of SURLs")
        rid = next(self.ids)
        self.requests[rid] = {"surls": surls, "step": 0, "failed": any("FAIL" in s for s in surls)}
        return rid

    def getstatus(self, rid):
        r = self._get(rid)
        if r["failed"] and r["step"] >= 2:
            return "failed"
        status = self.STEPS[min(r["step"], 3)]
        r["step"] += 1
        return status

    def getstagedurls(self, rid):
        r = self._get(rid)
        n = len(r["surls"]) if r["step"] >= 4 else (len(r["surls"]) // 2 if r["step"] >= 3 else 0)
        return r["surls"][:n]

    def gettoken(self, rid):
        self._get(rid)
        return f"srm-token-{rid}"

    def reschedule(self, rid):
        r = self._get(rid)
        r["failed"], r["step"] = False, 1
        return "rescheduled"

    def abort(self, rid):
        self._get(rid)["step"] = 99
        return "aborted"

    def getprogress(self):
        return {str(k): {"Status": self.STEPS[min(v["step"], 3)], "File count": len(v["surls"])}
                for k, v in self.requests.items()}


class _AuthHandler(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/service-public/xmlrpc",)

    def parse_request(self):
        if not super().parse_request():
            return False
        want = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != want:
            self.send_error(HTTPStatus.UNAUTHORIZED, "Authorization required")
            return False
        return True

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def lta_url():
    srv = SimpleXMLRPCServer(("127.0.0.1", 0), requestHandler=_AuthHandler, allow_none=True,
                             logRequests=False)
    service = FakeLtaStager()

    def dispatch(method, params):
        prefix, _, name = method.partition(".")
        if prefix != "LtaStager" or name.startswith("_") or not hasattr(service, name):
            raise xmlrpc.client.Fault(3, f"unknown method {method}")
        return getattr(service, name)(*params)

    srv.register_instance(type("D", (), {"_dispatch": staticmethod(dispatch)})())
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/service-public/xmlrpc"
    srv.shutdown()
    srv.server_close()


def test_request_lifecycle(lta_url):
    lta = LtaStager(USER, PASSWORD, lta_url)
    rid = lta.stage(SURLS)
    assert lta.srm_token(rid) == f"srm-token-{rid}"
    seen = [lta.status(rid) for _ in range(4)]
    assert seen == ["new", "scheduled", "in progress", "success"]
    assert lta.surls_online(rid) == SURLS
    assert lta.progress()[str(rid)]["File count"] == 4


def test_failed_request_rescheduled(lta_url):
    lta = LtaStager(USER, PASSWORD, lta_url)
    rid = lta.stage(SURLS[:1] + [SURLS[1].replace("SB001", "SB001FAIL")])
    statuses = [lta.status(rid) for _ in range(3)]
    assert statuses[-1] == "failed"
    lta.reschedule(rid)
    assert lta.status(rid) == "scheduled"


def test_errors_are_clear_and_never_show_the_password(lta_url):
    bad = LtaStager(USER, "wrong-" + PASSWORD, lta_url)
    with pytest.raises(LtaError) as ei:
        bad.stage(SURLS)
    assert "401" in str(ei.value) and "wrong-" not in str(ei.value)
    good = LtaStager(USER, PASSWORD, lta_url)
    with pytest.raises(LtaError, match="no request with id 4242"):
        good.status(4242)
    for text in (repr(good), repr(good._transport), str(ei.value)):
        assert PASSWORD not in text
    with pytest.raises(ConfigError, match="not in the URL"):
        LtaStager(USER, PASSWORD, lta_url.replace("http://", f"http://{USER}:{PASSWORD}@"))


def test_stagingrc_must_be_private(tmp_path):
    rc = tmp_path / ".stagingrc"
    rc.write_text(f"user={USER}\npassword={PASSWORD}\n")
    os.chmod(rc, 0o644)
    with pytest.raises(ConfigError, match="readable by group or others") as ei:
        read_stagingrc(rc)
    assert PASSWORD not in str(ei.value)
    os.chmod(rc, 0o600)
    assert read_stagingrc(rc) == (USER, PASSWORD)


def test_cli_with_stagingrc_and_env(lta_url, tmp_path, lrt_cmd):
    rc = tmp_path / ".stagingrc"
    rc.write_text(f"user={USER}\npassword={PASSWORD}\n")
    os.chmod(rc, 0o600)
    lst = tmp_path / "srm.txt"
    lst.write_text("\n".join(SURLS) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRT_LTA_")}
    env.update(LRT_STAGINGRC=str(rc), LRT_LTA_URL=lta_url, PYTHONPATH=ROOT)

    def lrt(*args, extra=None):
        e = dict(env, **(extra or {}))
        return subprocess.run(lrt_cmd + list(args), capture_output=True, text=True, env=e, cwd=ROOT,
                              timeout=60)

    r = lrt("-v", "stage", "lta", "stage", str(lst))
    assert r.returncode == 0, r.stderr
    rid = r.stdout.strip()
    assert rid.isdigit()
    r = lrt("stage", "lta", "status", rid)
    assert r.returncode == 0 and r.stdout.strip() == "new"
    # wrong password from the environment (which wins over the file): one line, no secret
    r = lrt("-v", "stage", "lta", "status", rid,
            extra={"LRT_LTA_USER": USER, "LRT_LTA_PASSWORD": "env-" + PASSWORD})
    assert r.returncode == 1
    assert "401" in r.stderr and PASSWORD not in r.stderr + r.stdout
    assert r.stderr.count("\n") == 1
