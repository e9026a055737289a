"""``lrt launch slurm|htcondor|jdl|local|list``: put pilots on batch systems.

See docs/launch.md for templates, their variables and how credentials reach
the pilots (never through job scripts or JDL).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import TYPE_CHECKING, Any, List, Optional

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..launchers import Connection


class _PilotArgsParser(argparse.ArgumentParser):
    """``lrt pilot``'s own options, refusing with its message instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"--pilot-args: `lrt pilot` would refuse them: {message}; nothing was submitted "
                          f"(see `lrt pilot --help`)")


def check_pilot_args(token_type: Optional[str], extra: Optional[str]) -> List[str]:
    """Parse what the pilots will get with the pilot's own parser, before anything is submitted.

    A typo (``--idle-exti 5``) or a bad value (``--lease abc``) would otherwise
    make every array element die at start with ``unrecognized arguments``.
    Returns the argument vector after ``lrt pilot``.
    """
    from ..launchers import pilot_args
    from .pilot import add_pilot_options

    argv = pilot_args(token_type, extra)
    p = _PilotArgsParser(prog="lrt pilot", add_help=False)
    add_pilot_options(p)
    p.parse_args(argv)
    return argv


def _warn(text: str) -> None:
    print(f"lrt: warning: {text}", file=sys.stderr, flush=True)


def _check_reachable(conn: "Connection") -> None:
    """Warn when pilots on other machines would be sent to a loopback URL (not for local launches)."""
    from ..launchers import loopback_warning

    w = loopback_warning(conn.url)
    if w:
        _warn(w)


def _env_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", dest="env_names", action="append", default=[], metavar="NAME",
                   help="also pass this variable of your environment to the pilots (repeatable); by default "
                        "they get only PATH, HOME, locale, LRT_HOME and the connection (docs/launch.md)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pilots", type=int, default=None,
                   help="number of pilots (array elements / jobs / processes)")
    p.add_argument("--type", dest="token_type", help="token type the pilots claim (lrt pilot --type)")
    p.add_argument("--pilot-args", metavar="ARGS",
                   help="more arguments for `lrt pilot`, one string, e.g. \"--lease 600 --max-tokens 50\" "
                        "(never a password)")
    p.add_argument("--dir", dest="base_dir", metavar="DIR",
                   help="parent folder of the launch folder (scripts, job logs); default $LRT_HOME/launches; "
                        "must be on the shared filesystem for batch jobs")
    p.add_argument("--lrt", metavar="CMD",
                   help="how jobs run lrt, e.g. \"/opt/lrt/venv/bin/lrt\" or \"apptainer exec lrt.sif lrt\" "
                        "(default: this interpreter with -m lrt.cli)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("launch", help="submit pilots to Slurm, HTCondor, the grid, or start them locally")
    ls = p.add_subparsers(dest="system", metavar="SYSTEM", required=True)

    s = ls.add_parser("slurm", help="a Slurm job array of pilots (sbatch)",
                      description="Render a job-array script and submit it with sbatch; record the launch.")
    _common(s)
    s.add_argument("--partition", help="sbatch --partition")
    s.add_argument("--time", help="sbatch --time (Slurm syntax: MM, MM:SS, HH:MM:SS, D-HH:MM:SS)")
    s.add_argument("--cpus", type=int, help="sbatch --cpus-per-task")
    s.add_argument("--mem", help="sbatch --mem, e.g. 4G")
    s.add_argument("--throttle", type=int, help="at most this many array elements run at once (--array=...%%K)")
    s.add_argument("--after", metavar="JOBID", help="start only after job JOBID succeeded (--dependency=afterok:JOBID)")
    s.add_argument("--sbatch-arg", dest="sbatch_args", action="append", default=[], metavar="ARG",
                   help="extra sbatch option, repeatable, e.g. --sbatch-arg=--account=lofar")
    s.add_argument("--template", help="your own job script template (see docs/launch.md)")
    s.add_argument("--credentials", choices=("file", "env"), default="file",
                   help="how the password reaches the job: 'file' (default): LRT_COUCH_PASSWORD_FILE pointing at a "
                        "0600 file on the shared filesystem; 'env': LRT_COUCH_PASSWORD in the job environment "
                        "that sbatch passes on")
    s.add_argument("--dry-run", action="store_true", help="print the script and sbatch command; submit nothing")
    s.add_argument("--job-name", help="Slurm job name (default lrt-pilot-TYPE)")
    _env_option(s)
    a = s.add_argument_group("elastic mode (--auto): keep pilots in proportion to the todo tokens")
    a.add_argument("--auto", action="store_true", help="loop: submit pilots while tokens are todo")
    a.add_argument("--max-pilots", type=int, help="most pilots queued or running at once (required with --auto)")
    a.add_argument("--tokens-per-pilot", type=int, default=10, help="todo tokens per wanted pilot (default 10)")
    a.add_argument("--interval", type=float, default=30.0, help="seconds between rounds (default 30)")
    a.add_argument("--max-rounds", type=int, help="stop after this many rounds")
    s.set_defaults(func=cmd_slurm)

    c = ls.add_parser("htcondor", help="an HTCondor submit description (submitted if condor_submit exists)")
    _common(c)
    c.add_argument("--cpus", type=int, default=1, help="request_cpus (default 1)")
    c.add_argument("--mem", default="2GB", help="request_memory (default 2GB)")
    c.add_argument("--submit-line", dest="extra", action="append", default=[], metavar="LINE",
                   help="extra submit-description line, repeatable, e.g. '+JobFlavour = \"tomorrow\"'")
    c.add_argument("--template", help="your own submit-description template")
    c.add_argument("--wrapper-template", help="your own pilot wrapper template (pilot.sh)")
    c.add_argument("--dry-run", action="store_true", help="print the files; write and submit nothing")
    c.set_defaults(func=cmd_htcondor)

    j = ls.add_parser("jdl", help="a parametric gLite/DIRAC JDL (written, not submitted)")
    _common(j)
    j.add_argument("--time", help="CPU time limit (seconds or HH:MM:SS) -> CPUTime")
    j.add_argument("--jdl-attr", dest="extra", action="append", default=[], metavar="ATTR",
                   help="extra JDL attribute, repeatable, e.g. 'Site = \"LCG.SARA.nl\"'")
    j.add_argument("--template", help="your own JDL template")
    j.add_argument("--wrapper-template", help="your own pilot wrapper template (pilot.sh)")
    j.add_argument("--dry-run", action="store_true", help="print the files; write nothing")
    j.set_defaults(func=cmd_jdl)

    lo = ls.add_parser("local", help="N detached `lrt pilot` processes on this machine")
    _common(lo)
    _env_option(lo)
    lo.set_defaults(func=cmd_local)

    li = ls.add_parser("list", help="recent launches: submitted, queued, running, finished and failed pilots")
    li.add_argument("--limit", type=int, default=20)
    li.add_argument("--json", action="store_true")
    li.set_defaults(func=cmd_list)


def _pilots(ctx: Any) -> int:
    n = ctx.args.pilots
    if n is None:
        raise ConfigError("--pilots N is required")
    if n < 1:
        raise ConfigError("--pilots must be at least 1")
    return int(n)


def _conn(ctx: Any) -> "Connection":
    from ..launchers import connection

    return connection(ctx.settings)


def _launch(ctx: Any, system: str, opts: Any) -> int:
    """What every ``lrt launch SYSTEM`` does once its options are parsed: check, then dry-run or launch."""
    from ..launchers import launcher

    backend = launcher(system)
    check_pilot_args(opts.token_type, opts.pilot_args)
    conn = _conn(ctx)
    if backend.remote:
        _check_reachable(conn)
    if getattr(ctx.args, "dry_run", False):
        ctx.out(backend.dry_run(conn, opts))
        return 0
    done = backend.launch(ctx.db, conn, opts)
    ctx.out(done.message)
    warning = backend.started(done)
    if warning:
        _warn(warning)
        return 1
    return 0


def cmd_slurm(ctx: Any) -> int:
    from ..launchers import slurm

    a = ctx.args
    if a.auto:
        if not a.max_pilots:
            raise ConfigError("--auto needs --max-pilots N")
        if a.dry_run:
            raise ConfigError("--auto and --dry-run do not go together")
    opts = slurm.SlurmOptions(
        pilots=1 if a.auto else _pilots(ctx), token_type=a.token_type, partition=a.partition, time=a.time,
        cpus=a.cpus, mem=a.mem, throttle=a.throttle, after=a.after, template=a.template,
        pilot_args=a.pilot_args, sbatch_args=a.sbatch_args, credentials=a.credentials,
        password_file=a.password_file, base_dir=a.base_dir, lrt=a.lrt, job_name=a.job_name,
        env=a.env_names)
    if not a.auto:
        return _launch(ctx, "slurm", opts)
    check_pilot_args(a.token_type, a.pilot_args)
    conn = _conn(ctx)
    _check_reachable(conn)
    slurm.run_elastic(ctx.db, conn, opts, max_pilots=a.max_pilots, tokens_per_pilot=a.tokens_per_pilot,
                      interval=a.interval, max_rounds=a.max_rounds, out=ctx.out)
    return 0


def cmd_htcondor(ctx: Any) -> int:
    from ..launchers import htcondor

    a = ctx.args
    opts = htcondor.CondorOptions(pilots=_pilots(ctx), token_type=a.token_type, cpus=a.cpus, mem=a.mem,
                                  template=a.template, wrapper_template=a.wrapper_template,
                                  pilot_args=a.pilot_args, extra=a.extra, password_file=a.password_file,
                                  base_dir=a.base_dir, lrt=a.lrt)
    return _launch(ctx, "htcondor", opts)


def cmd_jdl(ctx: Any) -> int:
    from ..batch import parse_duration
    from ..launchers import jdl

    a = ctx.args
    cpu_time = None
    if a.time:
        try:
            cpu_time = parse_duration(a.time)
        except ValueError as exc:
            raise ConfigError(f"--time: {exc}") from None
    opts = jdl.JdlOptions(pilots=_pilots(ctx), token_type=a.token_type, template=a.template,
                          wrapper_template=a.wrapper_template, pilot_args=a.pilot_args, cpu_time=cpu_time,
                          extra=a.extra, password_file=a.password_file, base_dir=a.base_dir, lrt=a.lrt)
    return _launch(ctx, "jdl", opts)


def cmd_local(ctx: Any) -> int:
    from ..launchers import local

    a = ctx.args
    opts = local.LocalOptions(pilots=_pilots(ctx), token_type=a.token_type, pilot_args=a.pilot_args,
                              base_dir=a.base_dir, lrt=a.lrt, env=a.env_names)
    return _launch(ctx, "local", opts)


def format_launches(rows: List[dict], color: bool = False) -> List[str]:
    """The ``lrt launch list`` table; a launch with failed pilots is flagged (red on a terminal)."""
    lines = [f"{'when (UTC)':19}  {'system':8}  {'batch id':>10}  {'type':12}  {'submitted':>9}  "
             f"{'queued':>6}  {'running':>7}  {'finished':>8}  {'failed':>6}  flag"]

    def n(v: Any) -> str:
        return "?" if v is None else str(v)

    for r in rows:
        when = datetime.datetime.fromtimestamp(r["time"] or 0, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        flag = r.get("flag") or ""
        if flag and r.get("exit_codes"):
            flag += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(r["exit_codes"].items())) + ")"
        line = (f"{when:19}  {r['system'] or '':8}  {r['batch_id'] or '-':>10}  {(r['type'] or '-'):12}  "
                f"{r['submitted']:>9}  {n(r['queued']):>6}  {n(r['running']):>7}  {n(r.get('finished')):>8}  "
                f"{n(r.get('failed')):>6}  {flag}").rstrip()
        if flag and color:
            line = f"\033[31m{line}\033[0m"
        lines.append(line)
    return lines


def cmd_list(ctx) -> int:
    from ..launchers import launch_summary

    rows = launch_summary(ctx.db, limit=ctx.args.limit)
    if ctx.args.json:
        ctx.out(json.dumps(rows, indent=1))
        return 0
    if not rows:
        ctx.out("no launches recorded in this database")
        return 0
    for line in format_launches(rows, color=sys.stdout.isatty()):
        ctx.out(line)
    return 0
