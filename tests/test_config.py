"""Token configs and file lists: parsing, grouping and every validation error (no server needed)."""
from __future__ import annotations

from pathlib import Path

import pytest

from lrt.config import TokenConfig, _product
from lrt.errors import ConfigError
from lrt.filelist import SrmList, SrmListError, parse_link

ROOT = Path(__file__).resolve().parent.parent
LTA = ("srm://srm.grid.sara.nl:8443/pnfs/grid.sara.nl/data/lofar/ops/projects/lc0_012/"
       "{obs}/L{obs}_SB{sb:03d}_uv.dp3.MS_abcdef12.tar")


def lta(obs: int, sb: int) -> str:
    return LTA.format(obs=obs, sb=sb)


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = """\
type: t
command: [python3, run.py]
"""

# -- file lists -------------------------------------------------------------------


def test_parse_lta_link():
    link = parse_link(lta(123456, 7))
    assert (link.obsid, link.subband) == ("L123456", 7)
    sap = parse_link("gsiftp://gridftp.example.org/data/L222222_SAP000_SB244_uv.MS.tar")
    assert (sap.obsid, sap.subband) == ("L222222", 244)
    assert parse_link("mock://store/x.dat").obsid is None
    assert parse_link("file:///data/L1_SB001_uv.MS").subband == 1
    assert parse_link(lta(1, 2) + " adler32:0A1b2C3d").checksum == "adler32:0a1b2c3d"


@pytest.mark.parametrize("bad, why", [
    ("ftp://host/x", "unsupported scheme"),
    ("/pnfs/no/scheme", "unsupported scheme"),
    ("srm:///pnfs/x", "no host"),
    ("srm://host", "no path"),
    ("srm://host:abc/x", "unparsable"),
    ("file://otherhost/x", "file:///"),
    ("srm://host/x adler32:zz", "bad checksum"),
    ("srm://host/x a b", "expected"),
])
def test_bad_links_are_refused_with_reason(bad, why):
    with pytest.raises(ValueError, match=why):
        parse_link(bad)


def test_srmlist_is_list_like_and_validates():
    sl = SrmList([lta(5, i) for i in (3, 1, 2)])
    assert len(sl) == 3 and sl.obsids() == ["L5"] and sl.subbands() == [1, 2, 3]
    assert sl.check_one_observation() == "L5"
    with pytest.raises(ValueError):
        sl.append("not a url")
    assert len(sl) == 3
    sl.append(lta(6, 0))
    with pytest.raises(ValueError, match="found 2"):
        sl.check_one_observation()
    sl[3] = lta(5, 4)
    assert sl.subbands() == [1, 2, 3, 4]


def test_chunks_by_subband_record_missing():
    sl = SrmList([lta(7, sb) for sb in range(30) if sb not in (12, 13, 25)])
    chunks = sl.chunks(10)
    assert [(c.sb_start, c.sb_end) for c in chunks] == [(0, 9), (10, 19), (20, 29)]
    assert [c.missing for c in chunks] == [[], [12, 13], [25]]
    assert [len(c.links) for c in chunks] == [10, 8, 9]
    assert chunks[1].srm_txt().splitlines() == [lta(7, sb) for sb in range(10, 20) if sb not in (12, 13)]
    # the declared range decides the alignment and the last chunk's end
    chunks = sl.chunks(8, first=0, last=31)
    assert [(c.sb_start, c.sb_end) for c in chunks] == [(0, 7), (8, 15), (16, 23), (24, 31)]
    assert chunks[-1].missing == [25, 30, 31]
    # a range without any link gives no chunk
    assert [c.sb_start for c in SrmList([lta(7, 0), lta(7, 25)]).chunks(10)] == [0, 20]
    # lines mode ignores subbands
    assert [len(c.links) for c in sl.chunks(4, group_by="lines")] == [4, 4, 4, 4, 4, 4, 3]


def test_srmlist_from_file_reports_every_bad_line(tmp_path):
    p = write(tmp_path, "l.txt", f"# c\n{lta(1, 0)}\n\nbad one\n{lta(1, 1)}\nftp://x/y\nnope\n")
    with pytest.raises(SrmListError) as ei:
        SrmList.from_file(p)
    assert sorted(ei.value.lines) == [4, 6, 7] and "4, 6-7" in str(ei.value)


def test_product_is_lazy():
    it = _product([range(10 ** 9), ["a", "b"]])
    assert [next(it) for _ in range(3)] == [(0, "a"), (0, "b"), (1, "a")]


# -- configs ----------------------------------------------------------------------


def test_example_configs_parse():
    assert len(TokenConfig.load(ROOT / "configs/demo.yaml")) == 20
    assert len(TokenConfig.load(ROOT / "configs/sweep_example.yaml")) == 12
    lofar = TokenConfig.load(ROOT / "configs/lofar_example.yaml")
    items = list(lofar.items())
    assert [i.id for i in items] == [f"lofar_calib_L654321_SB{s:03d}" for s in (0, 10, 20, 30)]
    assert items[1].payload["missing"] == [12, 13]


def test_sweep_product_and_ids(tmp_path):
    p = write(tmp_path, "s.yaml", BASE + "id: 'sw_{a}_{b}'\nsweep: {a: [1, 2], b: [x, y, z]}\n"
              "payload: {k: 1}\n")
    cfg = TokenConfig.load(p)
    assert cfg.check_ids() == 6
    ids = [i.id for i in cfg.items()]
    assert ids == ["sw_1_x", "sw_1_y", "sw_1_z", "sw_2_x", "sw_2_y", "sw_2_z"]
    first = next(cfg.items())
    assert first.payload == {"k": 1, "a": 1, "b": "x"}
    assert cfg.tokenset == "s"  # default: the file name


def test_default_id_template(tmp_path):
    cfg = TokenConfig.load(write(tmp_path, "d.yaml", BASE + "sweep: {a: {range: [3]}}\n"))
    assert [i.id for i in cfg.items()] == ["t_0", "t_1", "t_2"]


def test_files_override_and_relative_paths(tmp_path, monkeypatch):
    (tmp_path / "lists").mkdir()
    write(tmp_path / "lists", "a.txt", "".join(lta(1, s) + "\n" for s in range(4)))
    write(tmp_path, "b.txt", "".join(lta(2, s) + "\n" for s in range(6)))
    cfg_path = write(tmp_path / "lists", "c.yaml", BASE + "files: {list: a.txt, per_token: 2}\n"
                     "id: '{obsid}_{sb_start}'\n")
    monkeypatch.chdir(tmp_path)  # the config's list is relative to the config, not the CWD
    assert [i.id for i in TokenConfig.load(cfg_path).items()] == ["L1_0", "L1_2"]
    over = TokenConfig.load(cfg_path, files="b.txt")  # --files is relative to the CWD
    assert [i.id for i in over.items()] == ["L2_0", "L2_2", "L2_4"]


@pytest.mark.parametrize("text, fragments, line", [
    ("type: t\ncommand: [a\n", ["malformed YAML"], 3),
    ("type: t\ncommand: [a]\nprioirty: 3\n", ["unknown key 'prioirty'", "did you mean 'priority'"], 3),
    ("type: t\ncommand: [a]\nfiles:\n  list: x\n  per_tokn: 2\n",
     ["unknown key 'files.per_tokn'", "did you mean 'per_token'"], 5),
    ("command: [a]\n", ["missing required key 'type'"], None),
    ("type: t\n", ["missing required key 'command'"], None),
    ("type: t\ncommand: python3 run.py\n", ["not a string", "shell"], 2),
    ("type: t\ncommand: [a]\npriority: high\n", ["priority must be an integer"], 3),
    ("type: t\ncommand: [a]\nmax_attempts: 0\n", ["max_attempts must be >= 1"], 3),
    ("type: t\ncommand: [a]\nsweep: {a: []}\n", ["sweep.a must be a non-empty list"], 3),
    ("type: t\ncommand: [a]\nsweep: {type: [1]}\n", ["reserved"], 3),
    ("type: t\ncommand: [a]\nsweep: {a-b: [1]}\n", ["must be an identifier"], 3),
    ("type: t\ncommand: [a]\ntype: u\n", ["'type' appears twice"], 3),
    ("type: t\ncommand: [a]\nsandbox: {sha256: abc}\n", ["sandbox.sha256"], 3),
    ("type: t\ncommand: [a]\npayload: {d: 2024-01-01}\n", ["not a JSON value"], 3),
    ("- just\n- a list\n", ["YAML mapping"], None),
])
def test_config_errors_name_file_line_and_problem(tmp_path, text, fragments, line):
    p = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as ei:
        TokenConfig.load(p)
    msg = str(ei.value)
    assert msg.startswith(str(p)), msg
    for frag in fragments:
        assert frag in msg, msg
    assert ei.value.line == line


def test_template_errors(tmp_path):
    p = write(tmp_path, "t.yaml", BASE + "id: '{type}_{alpah}'\nsweep: {alpha: [1, 2]}\n")
    with pytest.raises(ConfigError, match=r"unknown placeholder \{alpah\} \(did you mean 'alpha'\?\)"):
        TokenConfig.load(p).check_ids()
    p = write(tmp_path, "t2.yaml", BASE + "id: '{a:03d}'\nsweep: {a: [x]}\n")
    with pytest.raises(ConfigError, match="cannot be filled"):
        TokenConfig.load(p).check_ids()
    p = write(tmp_path, "t3.yaml", BASE + "id: '_{a}'\nsweep: {a: [x]}\n")
    with pytest.raises(ConfigError, match="invalid token id"):
        TokenConfig.load(p).check_ids()


def test_id_collision_is_a_config_error(tmp_path):
    p = write(tmp_path, "c.yaml", BASE + "id: 'sweep_{alpha}'\nsweep: {alpha: [1, 2], beta: [x, y]}\n")
    with pytest.raises(ConfigError) as ei:
        TokenConfig.load(p).check_ids()
    msg = str(ei.value)
    assert "id collision" in msg and "'sweep_1'" in msg and "beta='x'" in msg and "beta='y'" in msg
    # values that differ but format alike collide too
    p = write(tmp_path, "c2.yaml", BASE + "id: 'x_{a:.0f}'\nsweep: {a: [1.1, 1.2]}\n")
    with pytest.raises(ConfigError, match="id collision"):
        TokenConfig.load(p).check_ids()


def test_file_list_errors(tmp_path):
    cfg = BASE + "files: {list: links.txt, per_token: 2}\n"
    p = write(tmp_path, "f.yaml", cfg)
    with pytest.raises(ConfigError, match=r"file list .*links.txt not found") as ei:
        TokenConfig.load(p)
    assert ei.value.line == 3
    lines = [lta(9, 0), "garbage", lta(9, 1), "", "# comment", "srm://h", lta(9, 2), "x y z"]
    write(tmp_path, "links.txt", "\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as ei:
        TokenConfig.load(p)
    msg = str(ei.value)
    assert "3 bad link(s) on line(s) 2, 6, 8" in msg and "links.txt" in msg
    # every bad line with its own reason, in the one message
    assert [ln.split(":")[0].strip() for ln in msg.splitlines()[1:]] == ["line 2", "line 6", "line 8"]
    assert "line 2: unsupported scheme" in msg and "line 6: no path" in msg
    # many: capped, with a count of the rest
    write(tmp_path, "links.txt", "".join(f"bad{i}\n" for i in range(45)))
    with pytest.raises(ConfigError) as ei:
        TokenConfig.load(p)
    msg = str(ei.value)
    assert "45 bad link(s) on line(s) 1-45:" in msg and "line 20: " in msg and "line 21: " not in msg
    assert msg.rstrip().endswith("... and 25 more")
    # duplicates and non-LOFAR names are refused when grouping by subband ...
    write(tmp_path, "links.txt", f"{lta(9, 0)}\n{lta(9, 1)}\n{lta(9, 0)}\nmock://x/plain.dat\n")
    with pytest.raises(ConfigError) as ei:
        TokenConfig.load(p)
    assert "line(s) 3-4" in str(ei.value) and "duplicate L9 SB000 (also line 1)" in str(ei.value)
    # ... but fine when grouping by lines
    p2 = write(tmp_path, "g.yaml", BASE + "files: {list: links.txt, per_token: 3, group_by: lines}\n")
    assert [i.id for i in TokenConfig.load(p2).items()] == ["t_000000", "t_000001"]
    write(tmp_path, "links.txt", "# nothing here\n\n")
    with pytest.raises(ConfigError, match="holds no links"):
        TokenConfig.load(p)
    write(tmp_path, "links.txt", f"{lta(1, 0)}\n{lta(2, 0)}\n")
    p3 = write(tmp_path, "o.yaml", BASE + "files: {list: links.txt, one_observation: true}\n")
    with pytest.raises(ConfigError, match="2 observations: L1, L2"):
        TokenConfig.load(p3)
    p4 = write(tmp_path, "r.yaml", BASE + "files: {list: links.txt, subbands: [1, 10]}\n")
    with pytest.raises(ConfigError, match="outside the declared range"):
        TokenConfig.load(p4)
    with pytest.raises(ConfigError, match="no 'files' section"):
        TokenConfig.load(write(tmp_path, "n.yaml", BASE), files="links.txt")


def test_file_list_edited_after_validation(tmp_path):
    write(tmp_path, "l.txt", "".join(lta(1, s) + "\n" for s in range(6)))
    cfg = TokenConfig.load(write(tmp_path, "c.yaml", BASE + "files: {list: l.txt, per_token: 2}\n"))
    write(tmp_path, "l.txt", f"{lta(1, 0)}\n{lta(2, 0)}\n")  # a new observation appeared
    with pytest.raises(ConfigError, match="file list changed while it was being read"):
        list(cfg.items())
