"""Where connection settings come from, and that secrets stay out of sight."""
import os

import pytest

from lrt.errors import ConfigError
from lrt.settings import resolve


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for k in list(os.environ):
        if k.startswith("LRT_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("LRT_CONFIG", str(tmp_path / "config.yaml"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("LRT_HOME", str(tmp_path / "home"))  # no local server here
    return tmp_path


def test_order_flags_env_file(clean_env, monkeypatch):
    cfg = clean_env / "config.yaml"
    cfg.write_text("url: http://file.example:5984\nuser: fileuser\npassword: filepw\ndb: filedb\n")
    cfg.chmod(0o600)
    s = resolve()
    assert (s.url, s.user, s.password, s.db) == ("http://file.example:5984", "fileuser", "filepw", "filedb")
    monkeypatch.setenv("LRT_COUCH_URL", "http://env.example:5984")
    monkeypatch.setenv("LRT_COUCH_USER", "envuser")
    s = resolve()
    assert (s.url, s.user, s.password) == ("http://env.example:5984", "envuser", "filepw")
    s = resolve(url="http://flag.example:5984", db="flagdb")
    assert (s.url, s.db, s.source) == ("http://flag.example:5984", "flagdb", "flags")
    assert "filepw" not in repr(s)


def test_config_file_readable_by_others_is_refused(clean_env):
    cfg = clean_env / "config.yaml"
    cfg.write_text("url: http://x:5984\npassword: pw\n")
    cfg.chmod(0o644)
    with pytest.raises(ConfigError) as ei:
        resolve()
    assert "chmod 600" in str(ei.value) and "pw" not in str(ei.value).replace("password", "")


def test_unknown_key_and_bad_yaml(clean_env):
    cfg = clean_env / "config.yaml"
    cfg.write_text("url: http://x:5984\npasword: pw\n")
    cfg.chmod(0o600)
    with pytest.raises(ConfigError, match="pasword"):
        resolve()
    cfg.write_text("url: [unclosed\n")
    with pytest.raises(ConfigError, match=r"config.yaml:\d+"):
        resolve()


def test_password_file_and_netrc(clean_env, monkeypatch):
    pw = clean_env / "pw"
    pw.write_text("s3cret\n")
    pw.chmod(0o600)
    monkeypatch.setenv("LRT_COUCH_URL", "http://couch.example:5984")
    monkeypatch.setenv("LRT_COUCH_USER", "u")
    monkeypatch.setenv("LRT_COUCH_PASSWORD_FILE", str(pw))
    assert resolve().password == "s3cret"
    pw.chmod(0o640)
    with pytest.raises(ConfigError):
        resolve()
    monkeypatch.delenv("LRT_COUCH_PASSWORD_FILE")
    monkeypatch.delenv("LRT_COUCH_USER")
    netrc = clean_env / "netrc"
    netrc.write_text("machine couch.example login nu password npw\n")
    netrc.chmod(0o600)
    s = resolve()
    assert (s.user, s.password) == ("nu", "npw")


def test_no_server_configured_is_a_clear_error(clean_env):
    from lrt.errors import LrtError

    with pytest.raises(LrtError, match="LRT_COUCH_URL"):
        resolve().server()
