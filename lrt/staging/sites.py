"""Storage sites and their URL forms: one SURL, several ways to reach the file.

The LOFAR Long Term Archive keeps data at three sites behind SRM (dCache at
SARA and Jülich, an SRM front end at Poznań).  An ``srm://`` SURL is the name
the LTA catalogue and the stager know; transfers go through other *doors* of the
same storage: GridFTP (``gsiftp://``), WebDAV (``https://``), XRootD
(``root://``), or the full SRM v2 form gfal2 and old SRM clients like
(``srm://host:port/srm/managerv2?SFN=/path``).  The conversion is a change of
scheme, host and port with the path kept -- knowledge about each site's doors,
which is why it lives in a table and not in code.

Built-in sites mirror the publicly documented LTA doors; a site or a door that
is not built in (or moved) is added with a YAML file::

    sites:
      mysite:
        srm: srm://srm.example.org:8443        # scheme://host[:port] of the SRM endpoint
        path_prefix: /pnfs/example.org/data    # optional: SURLs must start with it
        gsiftp: gsiftp://gridftp.example.org:2811
        https: https://webdav.example.org:2880
        root: root://xrootd.example.org:1094
        download: https://download.example.org/SRMFifoGet.py?surl=   # whole SURL appended

``load_sites(path)`` validates the file completely before anything changes.
Only the standard library and pyyaml are used (pyyaml lazily): this module may
run in a pilot.
"""
from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Union

from ..errors import ConfigError, LrtError

#: the forms :func:`convert` knows; "srm" is the SURL itself (normalised)
FORMS = ("srm", "gfal", "gsiftp", "https", "root", "download")
_DOORS = ("gsiftp", "https", "root")
_SCHEMES = {"gsiftp": ("gsiftp",), "https": ("https", "davs"), "root": ("root", "xroot")}


class SiteError(LrtError):
    """A SURL belongs to no known site, or the site has no door of the wanted form."""

    exit_code = 2


@dataclass
class Site:
    """One storage site: its SRM endpoint and the doors that reach the same paths."""

    name: str
    srm: str  #: "srm://host:port"
    path_prefix: str = "/"
    doors: Dict[str, str] = field(default_factory=dict)  #: form -> "scheme://host:port"
    download: Optional[str] = None  #: prefix to which the whole SURL is appended
    builtin: bool = False

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.srm).hostname or ""

    def forms(self) -> List[str]:
        out = ["srm", "gfal"] + [f for f in _DOORS if f in self.doors]
        if self.download:
            out.append("download")
        return out


def _site(name: str, srm: str, prefix: str, download: Optional[str] = None, **doors: str) -> Site:
    return Site(name, srm, prefix, dict(doors), download, builtin=True)


#: the LTA sites (doors from the sites' public documentation; override in YAML if one moves)
BUILTIN: List[Site] = [
    _site("sara", "srm://srm.grid.sara.nl:8443", "/pnfs/grid.sara.nl/data",
          download="https://lofar-download.grid.surfsara.nl/lofigrid/SRMFifoGet.py?surl=",
          gsiftp="gsiftp://gridftp.grid.sara.nl:2811",
          https="https://webdav.grid.surfsara.nl:2880",
          root="root://xrootd.grid.surfsara.nl:1094"),
    _site("juelich", "srm://lofar-srm.fz-juelich.de:8443", "/pnfs/fz-juelich.de/data",
          download="https://lofar-download.fz-juelich.de/webserver-lofar/SRMFifoGet.py?surl=",
          gsiftp="gsiftp://lofar-gridftp.fz-juelich.de:2811"),
    _site("poznan", "srm://lta-head.lofar.psnc.pl:8443", "/lofar",
          download="https://lta-download.lofar.psnc.pl/lofigrid/SRMFifoGet.py?surl=",
          gsiftp="gsiftp://gridftp.lofar.psnc.pl:2811"),
]


def _split_surl(surl: str) -> tuple:
    """(host, port, path) of a SURL in either the short or the ``?SFN=`` form."""
    parts = urllib.parse.urlsplit(surl.strip())
    if parts.scheme != "srm" or not parts.hostname:
        raise SiteError(f"not an srm:// URL: {surl!r}")
    path = parts.path
    if parts.query:
        q = urllib.parse.parse_qs(parts.query)
        if "SFN" in q:
            path = q["SFN"][0]
    if not path.startswith("/"):
        raise SiteError(f"SURL without an absolute path: {surl!r}")
    while "//" in path:
        path = path.replace("//", "/")
    return parts.hostname, parts.port, path


class Sites:
    """A registry of sites: the built-ins plus any loaded from YAML (later wins)."""

    def __init__(self, sites: Optional[Iterable[Site]] = None):
        self._sites: Dict[str, Site] = {}
        for s in (BUILTIN if sites is None else sites):
            self._sites[s.name] = s

    def __iter__(self):
        return iter(self._sites.values())

    def __getitem__(self, name: str) -> Site:
        return self._sites[name]

    def names(self) -> List[str]:
        return list(self._sites)

    def add(self, site: Site) -> None:
        self._sites[site.name] = site

    def site_of(self, surl: str) -> Site:
        """The site serving ``surl`` (matched on SRM host, then on path prefix)."""
        host, _port, path = _split_surl(surl)
        candidates = [s for s in self._sites.values() if s.host == host]
        for s in candidates:
            if path.startswith(s.path_prefix.rstrip("/") + "/") or s.path_prefix in ("", "/"):
                return s
        if candidates:
            raise SiteError(f"{surl}: path is outside site {candidates[0].name}'s "
                            f"{candidates[0].path_prefix}")
        known = ", ".join(f"{s.name} ({s.host})" for s in self._sites.values())
        raise SiteError(f"{surl}: unknown storage site {host!r} (known: {known}); "
                        "add it in a sites YAML file")

    def convert(self, surl: str, form: str) -> str:
        """``surl`` rewritten to ``form`` (one of :data:`FORMS`) at the same site."""
        if form not in FORMS:
            raise SiteError(f"unknown URL form {form!r} (known: {', '.join(FORMS)})")
        site = self.site_of(surl)
        _host, _port, path = _split_surl(surl)
        srm = site.srm.rstrip("/")
        if form == "srm":
            return srm + path
        if form == "gfal":
            return f"{srm}/srm/managerv2?SFN={path}"
        if form == "download":
            if not site.download:
                raise SiteError(f"site {site.name} has no download service configured")
            return site.download + srm + path
        door = site.doors.get(form)
        if not door:
            raise SiteError(f"site {site.name} has no {form} door configured "
                            f"(it has: {', '.join(site.forms())}); add one in a sites YAML file")
        sep = "/" if form == "root" else ""  # XRootD wants root://host//abs/path
        return door.rstrip("/") + sep + path


_DEFAULT: Optional[Sites] = None


def default() -> Sites:
    """The process-wide registry (built-ins, plus whatever :func:`load_sites` added)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Sites()
    return _DEFAULT


def _check_endpoint(value: object, schemes: tuple, where: str, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a URL string", path=path)
    p = urllib.parse.urlsplit(value)
    if p.scheme not in schemes or not p.hostname or p.path not in ("", "/"):
        raise ConfigError(f"{where}: expected {schemes[0]}://host[:port] without a path, "
                          f"got {value!r}", path=path)
    return value.rstrip("/")


def parse_sites(data: object, path: str = "<sites>") -> List[Site]:
    """Validate a sites mapping (see the module docstring) into :class:`Site` objects."""
    if not isinstance(data, dict) or not isinstance(data.get("sites"), dict):
        raise ConfigError("expected a mapping with a 'sites' mapping", path=path)
    out: List[Site] = []
    known = {"srm", "path_prefix", "download"} | set(_DOORS)
    for name, spec in data["sites"].items():
        where = f"site {name!r}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a mapping", path=path)
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(known))})", path=path)
        if "srm" not in spec:
            raise ConfigError(f"{where}: 'srm' (srm://host:port) is required", path=path)
        srm = _check_endpoint(spec["srm"], ("srm",), where + ".srm", path)
        prefix = spec.get("path_prefix", "/")
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise ConfigError(f"{where}.path_prefix: expected an absolute path", path=path)
        doors = {f: _check_endpoint(spec[f], _SCHEMES[f], f"{where}.{f}", path)
                 for f in _DOORS if f in spec}
        download = spec.get("download")
        if download is not None and (not isinstance(download, str)
                                     or not download.startswith(("http://", "https://"))):
            raise ConfigError(f"{where}.download: expected an http(s) URL prefix", path=path)
        out.append(Site(str(name), srm, prefix, doors, download))
    return out


def load_sites(path: Union[str, Path], registry: Optional[Sites] = None) -> Sites:
    """Add the sites of a YAML file to ``registry`` (default: the process-wide one).

    The whole file is validated first: on any error nothing is added.
    """
    import yaml

    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read sites file: {exc.strerror}", path=str(p)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"malformed YAML: {getattr(exc, 'problem', exc)}", path=str(p),
                          line=mark.line + 1 if mark else None) from None
    sites = parse_sites(data, str(p))
    reg = registry if registry is not None else default()
    for s in sites:
        reg.add(s)
    return reg


def convert(surl: str, form: str, registry: Optional[Sites] = None) -> str:
    """Convenience: ``surl`` in ``form`` using ``registry`` (default: process-wide)."""
    return (registry or default()).convert(surl, form)


def convert_all(surls: Iterable[str], form: str, registry: Optional[Sites] = None) -> List[str]:
    """Convert many SURLs; validates all before returning any (one bad SURL -> SiteError)."""
    reg = registry or default()
    return [reg.convert(s, form) for s in surls]
