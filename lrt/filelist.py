"""File lists of grid URLs (SURLs) and how they are cut into tokens.

In the spirit of GRID_LRT's ``srmlist``: a list of links to the files of one
(or more) LOFAR observations, as exported from the Long Term Archive, e.g.::

    srm://srm.grid.sara.nl:8443/pnfs/grid.sara.nl/data/lofar/ops/projects/lc0_012/123456/L123456_SB000_uv.dp3.MS_abcdef12.tar

Each link is validated (scheme, host, path; no whitespace or control
characters), and the LOFAR observation id (``L123456``) and subband number
(``0``) are read from the file name.  Links are grouped into *chunks* of
``N`` subbands; one chunk becomes one token (see docs/configs.md).

Grouping by subband uses fixed ranges ``sb_start .. sb_start+N-1`` counted
from the first expected subband of the observation (the lowest one in the
list, unless the config declares the range).  A subband absent from the list
does not shift later ranges: it is reported in the chunk's ``missing`` list,
so a gap in the archive is visible in the token instead of silently merging
two ranges.  A range with no link at all produces no chunk.

Per-site protocol conversion (srm -> gsiftp/https/root) lives elsewhere
(``lrt.staging.sites``); this module only parses and groups, so token configs
(:mod:`lrt.config`) read file lists without importing the staging package.

Standard library only.
"""
from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

#: URL schemes accepted in file lists (``rclone://REMOTE/path``: the remote is the "host")
SCHEMES = ("srm", "gsiftp", "root", "https", "http", "davs", "file", "mock", "rclone")
#: schemes that need a host part
_NEEDS_HOST = {"srm", "gsiftp", "root", "https", "http", "davs", "rclone"}

#: LOFAR file names: L<obsid>_[SAP<n>_]SB<subband>...
_LOFAR_RE = re.compile(r"(?:^|[_/])L(\d+)_(?:SAP\d+_)?SB(\d+)(?=[_.]|$)")
_CHECKSUM_RE = re.compile(r"^adler32:[0-9a-fA-F]{8}$")
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f]")


@dataclass(frozen=True)
class Link:
    """One validated URL of a file list (``line`` is its 1-based line number, if read from a file)."""

    url: str
    checksum: Optional[str] = None
    line: Optional[int] = None
    obsid: Optional[str] = None    #: "L123456" when the name follows LOFAR conventions
    subband: Optional[int] = None  #: 0 for ..._SB000_...

    def as_input(self) -> Dict[str, Optional[str]]:
        """The token's ``inputs`` entry for this link."""
        return {"url": self.url, "checksum": self.checksum}


def parse_link(text: str, line: Optional[int] = None) -> Link:
    """Validate one file-list entry (``URL [adler32:xxxxxxxx]``); raise ValueError with the reason."""
    parts = text.split()
    if not parts:
        raise ValueError("empty entry")
    if len(parts) > 2:
        raise ValueError("expected 'URL [adler32:xxxxxxxx]'")
    url = parts[0]
    checksum = None
    if len(parts) == 2:
        if not _CHECKSUM_RE.match(parts[1]):
            raise ValueError(f"bad checksum {parts[1]!r} (want adler32:xxxxxxxx)")
        checksum = parts[1].lower()
    if _BAD_CHARS.search(url):
        raise ValueError("control character or space in URL")
    try:
        sp = urllib.parse.urlsplit(url)
        sp.port  # raises ValueError for a non-numeric port
    except ValueError as exc:
        raise ValueError(f"unparsable URL ({exc})") from None
    scheme = sp.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported scheme {sp.scheme + ':' if sp.scheme else '(none)'} "
                         f"(allowed: {', '.join(SCHEMES)})")
    if not url[len(sp.scheme):].startswith("://"):
        raise ValueError("expected scheme://")
    if scheme in _NEEDS_HOST and not sp.hostname:
        raise ValueError("no host")
    if scheme == "file" and sp.netloc not in ("", "localhost"):
        raise ValueError("file URLs must be file:///absolute/path")
    path = sp.path
    if not path.strip("/") and scheme != "mock":
        raise ValueError("no path")
    name = path.rstrip("/").rsplit("/", 1)[-1]
    m = _LOFAR_RE.search(name)
    obsid = subband = None
    if m:
        obsid, subband = "L" + m.group(1), int(m.group(2))
    return Link(url=url, checksum=checksum, line=line, obsid=obsid, subband=subband)


def read_entries(path: Union[str, Path]) -> Iterator[Tuple[int, str]]:
    """(line number, entry) for each non-blank, non-comment line; streams the file."""
    with open(path, "r", encoding="utf-8", errors="strict") as fh:
        for n, raw in enumerate(fh, 1):
            s = raw.strip()
            if s and not s.startswith("#"):
                yield n, s


def line_ranges(numbers: Sequence[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"``: every offending line, compactly."""
    out: List[str] = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        out.append(str(numbers[i]) if i == j else f"{numbers[i]}-{numbers[j]}")
        i = j + 1
    return ", ".join(out)


class SrmListError(ValueError):
    """A file list has bad entries; ``lines`` maps line number -> reason (all of them)."""

    def __init__(self, message: str, lines: Optional[Dict[int, str]] = None):
        super().__init__(message)
        self.lines = dict(lines or {})


@dataclass
class Chunk:
    """The links of one token: ``sb_start..sb_end`` of one observation (or N lines)."""

    index: int                      #: chunk number within its observation (or the list)
    links: List[Link]
    obsid: Optional[str] = None
    sb_start: Optional[int] = None
    sb_end: Optional[int] = None
    missing: List[int] = field(default_factory=list)

    def srm_txt(self) -> str:
        """The ``srm.txt`` attachment: one URL per line, as in GRID_LRT."""
        return "".join(link.url + "\n" for link in self.links)


@dataclass
class SubbandIndex:
    """What grouping by subband needs to know about a list, gathered in one streaming pass.

    ``ranges``: obsid -> (first, last) expected subband; ``counts``:
    (obsid, chunk index) -> number of links.  Kept so that a second pass can
    emit each chunk as soon as it is complete (constant memory for lists
    sorted by subband, which LTA exports are).
    """

    per_chunk: int
    ranges: Dict[str, Tuple[int, int]]
    counts: Dict[Tuple[str, int], int]

    def chunk_of(self, obsid: str, subband: int) -> int:
        return (subband - self.ranges[obsid][0]) // self.per_chunk


def group_by_subband(links: Iterable[Link], index: SubbandIndex) -> Iterator[Chunk]:
    """Emit each chunk as soon as all of its links (known from ``index``) have been seen."""
    pending: Dict[Tuple[str, int], List[Link]] = {}
    for link in links:
        if link.obsid is None or link.subband is None:
            raise ValueError(f"line {link.line}: no LOFAR obsid/subband in {link.url}")
        key = (link.obsid, index.chunk_of(link.obsid, link.subband))
        bucket = pending.setdefault(key, [])
        bucket.append(link)
        if len(bucket) >= index.counts.get(key, 0):
            del pending[key]
            yield _make_chunk(key, bucket, index)
    for key in sorted(pending):  # only if the list changed between the two passes
        yield _make_chunk(key, pending[key], index)


def _make_chunk(key: Tuple[str, int], links: List[Link], index: SubbandIndex) -> Chunk:
    obsid, k = key
    lo, hi = index.ranges[obsid]
    start = lo + k * index.per_chunk
    end = min(start + index.per_chunk - 1, hi)
    links = sorted(links, key=lambda x: x.subband or 0)
    have = {x.subband for x in links}
    missing = [s for s in range(start, end + 1) if s not in have]
    return Chunk(index=k, links=links, obsid=obsid, sb_start=start, sb_end=end, missing=missing)


def group_by_lines(links: Iterable[Link], per_chunk: int) -> Iterator[Chunk]:
    """Chunks of ``per_chunk`` consecutive entries (for lists that are not LOFAR subbands)."""
    batch: List[Link] = []
    k = 0
    for link in links:
        batch.append(link)
        if len(batch) >= per_chunk:
            yield Chunk(index=k, links=batch, obsid=_common_obsid(batch))
            batch, k = [], k + 1
    if batch:
        yield Chunk(index=k, links=batch, obsid=_common_obsid(batch))


def _common_obsid(links: Sequence[Link]) -> Optional[str]:
    ids = {x.obsid for x in links}
    return ids.pop() if len(ids) == 1 else None


class SrmList(list):
    """A validated list of :class:`Link` (GRID_LRT ``srmlist`` spirit).

    Appending a string parses it; a bad link raises ValueError at once, so an
    ``SrmList`` only ever holds valid links.
    """

    def __init__(self, links: Iterable[Union[str, Link]] = ()):
        super().__init__()
        self.extend(links)

    @staticmethod
    def _coerce(item: Union[str, Link]) -> Link:
        return item if isinstance(item, Link) else parse_link(str(item))

    def append(self, item: Union[str, Link]) -> None:
        super().append(self._coerce(item))

    def extend(self, items: Iterable[Union[str, Link]]) -> None:
        for item in items:
            self.append(item)

    def insert(self, i: int, item: Union[str, Link]) -> None:  # type: ignore[override]
        super().insert(i, self._coerce(item))

    def __setitem__(self, i, item):
        if isinstance(i, slice):
            super().__setitem__(i, [self._coerce(x) for x in item])
        else:
            super().__setitem__(i, self._coerce(item))

    @classmethod
    def from_file(cls, path: Union[str, Path]) -> "SrmList":
        """Read a list; every bad line is reported at once (:class:`SrmListError`)."""
        out = cls()
        bad: Dict[int, str] = {}
        for n, text in read_entries(path):
            try:
                list.append(out, parse_link(text, n))
            except ValueError as exc:
                bad[n] = str(exc)
        if bad:
            nums = sorted(bad)
            raise SrmListError(f"{len(bad)} bad link(s) on line(s) {line_ranges(nums)}; "
                               f"first: line {nums[0]}: {bad[nums[0]]}", bad)
        return out

    @property
    def urls(self) -> List[str]:
        return [x.url for x in self]

    def obsids(self) -> List[str]:
        """Observation ids in the list, sorted (links without one are ignored)."""
        return sorted({x.obsid for x in self if x.obsid})

    def subbands(self, obsid: Optional[str] = None) -> List[int]:
        return sorted({x.subband for x in self if x.subband is not None
                       and (obsid is None or x.obsid == obsid)})

    def check_one_observation(self) -> str:
        """The single obsid of this list; ValueError if none, several, or a link lacks one."""
        unnamed = [x.url for x in self if x.obsid is None]
        if unnamed:
            raise ValueError(f"{len(unnamed)} link(s) without a LOFAR obsid, e.g. {unnamed[0]}")
        ids = self.obsids()
        if len(ids) != 1:
            raise ValueError(f"expected links of one observation, found {len(ids)}: "
                             f"{', '.join(ids) or 'none'}")
        return ids[0]

    def convert(self, form: str, sites: Optional[object] = None) -> List[str]:
        """The links rewritten for another door of their site (``gsiftp``, ``https``,
        ``root``, ``gfal``, ...); delegates to :mod:`lrt.staging.sites` (``sites``: a
        ``Sites`` registry, default the built-in LTA sites plus any loaded YAML)."""
        from .staging.sites import convert_all

        return convert_all(self.urls, form, sites)  # type: ignore[arg-type]

    def subband_index(self, per_chunk: int, first: Optional[int] = None,
                      last: Optional[int] = None) -> SubbandIndex:
        """The :class:`SubbandIndex` of this list (see :func:`build_index`)."""
        return build_index(self, per_chunk, first, last)

    def chunks(self, per_chunk: int, group_by: str = "subband", first: Optional[int] = None,
               last: Optional[int] = None) -> List[Chunk]:
        """Cut the list into chunks of ``per_chunk`` subbands (or lines)."""
        if per_chunk < 1:
            raise ValueError("per_chunk must be >= 1")
        if group_by == "lines":
            return list(group_by_lines(self, per_chunk))
        if group_by != "subband":
            raise ValueError(f"group_by must be 'subband' or 'lines', not {group_by!r}")
        return list(group_by_subband(self, build_index(self, per_chunk, first, last)))


def build_index(links: Iterable[Link], per_chunk: int, first: Optional[int] = None,
                last: Optional[int] = None) -> SubbandIndex:
    """One pass over ``links``: expected subband range per observation and links per chunk.

    Raises :class:`SrmListError` listing every link without an obsid/subband,
    outside ``first..last``, or duplicating an (obsid, subband) pair.  Memory is
    one small integer set per observation (LOFAR has at most a few hundred
    subbands), independent of how many tokens are made.
    """
    seen: Dict[str, Dict[int, int]] = {}
    bad: Dict[int, str] = {}
    for i, link in enumerate(links):
        n = link.line if link.line is not None else i + 1
        if link.obsid is None or link.subband is None:
            bad[n] = f"no LOFAR obsid/subband (L<obsid>_SB<nnn>) in {link.url}"
            continue
        if (first is not None and link.subband < first) or (last is not None and link.subband > last):
            bad[n] = f"subband {link.subband} outside the declared range {first}..{last}"
            continue
        sbs = seen.setdefault(link.obsid, {})
        if link.subband in sbs:
            bad[n] = f"duplicate {link.obsid} SB{link.subband:03d} (also line {sbs[link.subband]})"
            continue
        sbs[link.subband] = n
    if bad:
        nums = sorted(bad)
        raise SrmListError(f"{len(bad)} bad link(s) on line(s) {line_ranges(nums)}; "
                           f"first: line {nums[0]}: {bad[nums[0]]}", bad)
    ranges: Dict[str, Tuple[int, int]] = {}
    counts: Dict[Tuple[str, int], int] = {}
    for obsid, sbs in seen.items():
        lo = first if first is not None else min(sbs)
        hi = last if last is not None else max(sbs)
        ranges[obsid] = (lo, hi)
        for sb in sbs:
            key = (obsid, (sb - lo) // per_chunk)
            counts[key] = counts.get(key, 0) + 1
    return SubbandIndex(per_chunk=per_chunk, ranges=ranges, counts=counts)
