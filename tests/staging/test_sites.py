"""SURL -> door conversions for the LTA sites, and sites from YAML."""
from __future__ import annotations

import pytest

from lrt.errors import ConfigError
from lrt.staging import sites
from lrt.staging.sites import SiteError, Sites, load_sites

SARA = "srm://srm.grid.sara.nl:8443/pnfs/grid.sara.nl/data/lofar/ops/projects/lc5_020/232875/L232875_SB000_uv.MS_8d5b3c1f.tar"
JUELICH = "srm://lofar-srm.fz-juelich.de:8443/pnfs/fz-juelich.de/data/lofar/ops/projects/lc8_029/652884/L652884_SB001_uv.MS_e619e5da.tar"
POZNAN = "srm://lta-head.lofar.psnc.pl:8443/lofar/ops/projects/lt10_010/729424/L729424_SB244_uv.MS_b4f5a2e2.tar"


@pytest.mark.parametrize("surl,form,want", [
    (SARA, "gsiftp", "gsiftp://gridftp.grid.sara.nl:2811/pnfs/grid.sara.nl/data/lofar/ops/projects/lc5_020/232875/L232875_SB000_uv.MS_8d5b3c1f.tar"),
    (SARA, "https", "https://webdav.grid.surfsara.nl:2880/pnfs/grid.sara.nl/data/lofar/ops/projects/lc5_020/232875/L232875_SB000_uv.MS_8d5b3c1f.tar"),
    (SARA, "root", "root://xrootd.grid.surfsara.nl:1094//pnfs/grid.sara.nl/data/lofar/ops/projects/lc5_020/232875/L232875_SB000_uv.MS_8d5b3c1f.tar"),
    (SARA, "gfal", "srm://srm.grid.sara.nl:8443/srm/managerv2?SFN=/pnfs/grid.sara.nl/data/lofar/ops/projects/lc5_020/232875/L232875_SB000_uv.MS_8d5b3c1f.tar"),
    (JUELICH, "gsiftp", "gsiftp://lofar-gridftp.fz-juelich.de:2811/pnfs/fz-juelich.de/data/lofar/ops/projects/lc8_029/652884/L652884_SB001_uv.MS_e619e5da.tar"),
    (JUELICH, "download", "https://lofar-download.fz-juelich.de/webserver-lofar/SRMFifoGet.py?surl=" + JUELICH),
    (POZNAN, "gsiftp", "gsiftp://gridftp.lofar.psnc.pl:2811/lofar/ops/projects/lt10_010/729424/L729424_SB244_uv.MS_b4f5a2e2.tar"),
    (POZNAN, "gfal", "srm://lta-head.lofar.psnc.pl:8443/srm/managerv2?SFN=/lofar/ops/projects/lt10_010/729424/L729424_SB244_uv.MS_b4f5a2e2.tar"),
])
def test_builtin_conversions(surl, form, want):
    assert sites.convert(surl, form, Sites()) == want


def test_sfn_form_round_trips_to_short_form():
    reg = Sites()
    long = reg.convert(SARA, "gfal")
    assert reg.convert(long, "srm") == SARA
    assert reg.convert(long, "gsiftp") == reg.convert(SARA, "gsiftp")
    assert reg.site_of(long).name == "sara"


def test_unknown_site_and_missing_door_are_clear():
    reg = Sites()
    with pytest.raises(SiteError, match="unknown storage site 'srm.example.org'"):
        reg.convert("srm://srm.example.org:8443/data/x", "gsiftp")
    with pytest.raises(SiteError, match="poznan has no root door"):
        reg.convert(POZNAN, "root")
    with pytest.raises(SiteError, match="unknown URL form"):
        reg.convert(SARA, "ftp")
    with pytest.raises(SiteError, match="not an srm:// URL"):
        reg.convert("gsiftp://gridftp.grid.sara.nl/pnfs/x", "root")
    with pytest.raises(SiteError, match="outside site sara"):
        reg.convert("srm://srm.grid.sara.nl:8443/tmp/x", "gsiftp")


def test_sites_from_yaml_extend_and_override(tmp_path):
    f = tmp_path / "sites.yaml"
    f.write_text("""sites:
  mysite:
    srm: srm://srm.example.org:8443
    path_prefix: /data
    root: root://xrd.example.org:1094
  poznan:
    srm: srm://lta-head.lofar.psnc.pl:8443
    path_prefix: /lofar
    gsiftp: gsiftp://gridftp.lofar.psnc.pl:2811
    https: https://webdav.lofar.psnc.pl:443
""")
    reg = load_sites(f, Sites())
    assert reg.convert("srm://srm.example.org:8443/data/a/b.tar", "root") == "root://xrd.example.org:1094//data/a/b.tar"
    assert reg.convert(POZNAN, "https").startswith("https://webdav.lofar.psnc.pl:443/lofar/ops/")
    assert reg.convert(SARA, "gsiftp").startswith("gsiftp://gridftp.grid.sara.nl:2811/")


@pytest.mark.parametrize("text,msg", [
    ("sites: [1]", "'sites' mapping"),
    ("sites:\n  x:\n    gsiftp: gsiftp://h:1\n", "'srm' .* is required"),
    ("sites:\n  x:\n    srm: srm://h:1/path\n", "without a path"),
    ("sites:\n  x:\n    srm: srm://h:1\n    webdav: https://h\n", "unknown key"),
    ("sites:\n  x:\n    srm: srm://h:1\n    root: gsiftp://h:1\n", "expected root://"),
    ("sites: {x: [", "malformed YAML"),
])
def test_bad_sites_yaml_changes_nothing(tmp_path, text, msg):
    f = tmp_path / "sites.yaml"
    f.write_text(text)
    reg = Sites()
    before = reg.names()
    with pytest.raises(ConfigError, match=msg):
        load_sites(f, reg)
    assert reg.names() == before


def test_srmlist_convert_delegates_to_sites():
    from lrt.filelist import SrmList

    lst = SrmList([SARA, JUELICH])
    assert lst.convert("gsiftp") == [Sites().convert(SARA, "gsiftp"), Sites().convert(JUELICH, "gsiftp")]
    with pytest.raises(SiteError, match="juelich has no root door"):
        lst.convert("root")
