"""``lrt sandbox build|list|fetch``: content-addressed payload tarballs."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sandbox", help="build, upload and inspect sandboxes (payload code tarballs)")
    ss = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    s = ss.add_parser("build", help="pack a folder reproducibly, upload it once, print its sha256",
                      description="Pack FOLDER into a reproducible tar.gz, store it as the attachment "
                                  "of document sandbox-<sha256> (unless already there) and print the "
                                  "sha256 on stdout, for tokens' `sandbox: {sha256: ...}`.")
    s.add_argument("folder", help="the sandbox folder, e.g. sandboxes/example")
    s.add_argument("--upload", dest="upload", action="store_true", default=True,
                   help="upload to the database (default)")
    s.add_argument("--no-upload", dest="upload", action="store_false",
                   help="only pack and print the hash (no database needed)")
    s.add_argument("-o", "--output", help="also keep the tarball here (e.g. to serve it from a URL)")
    s.add_argument("--json", action="store_true", help="print a JSON object instead of the hash")
    s.set_defaults(func=cmd_build)

    s = ss.add_parser("list", help="sandboxes stored in the database")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)

    s = ss.add_parser("fetch", help="download, verify and extract a sandbox as a pilot would; print its path")
    s.add_argument("sha256")
    s.add_argument("--url", help="fetch from this URL (https://, file://, root://...) instead of the database")
    s.add_argument("--cache", help="cache directory (default $LRT_SANDBOX_CACHE or a per-user temp folder)")
    s.set_defaults(func=cmd_fetch)


def cmd_build(ctx) -> int:
    from ..pilot import sandbox

    a = ctx.args
    db = None
    if a.upload:
        db = ctx.db
        if not db.exists():
            from ..errors import LrtError

            raise LrtError(f"database {db.name} does not exist (create it with `lrt views install`)")
    built = sandbox.build(a.folder, db, output=a.output)
    info = {"sha256": built.sha256, "name": built.name, "size": built.size, "files": len(built.files),
            "doc_id": built.doc_id if a.upload else None, "uploaded": built.uploaded,
            "output": str(built.path) if built.path else None}
    if a.json:
        ctx.out(json.dumps(info))
    else:
        ctx.out(built.sha256)
        where = ""
        if a.upload:
            where = (f"; uploaded as {built.doc_id}" if built.uploaded
                     else f"; already in the database as {built.doc_id}")
        if built.path:
            where += f"; tarball kept at {built.path}"
        print(f"sandbox {built.name}: {len(built.files)} files, {built.size} bytes{where}",
              file=sys.stderr)
    return 0


def cmd_list(ctx) -> int:
    from ..pilot import sandbox

    rows = sandbox.list_sandboxes(ctx.db)
    if ctx.args.json:
        ctx.out(json.dumps(rows))
        return 0
    if not rows:
        ctx.out("no sandboxes (build one with: lrt sandbox build FOLDER)")
        return 0
    ctx.out(f"{'SHA256':<16} {'NAME':<20} {'FILES':>5} {'BYTES':>10}  CREATED")
    for r in sorted(rows, key=lambda r: r.get("created") or 0):
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["created"])) if r.get("created") else "?"
        flag = "" if r["complete"] else "  (incomplete upload)"
        ctx.out(f"{(r['sha256'] or '?')[:16]:<16} {str(r['name'])[:20]:<20} {r['files']:>5} "
                f"{r['size'] or 0:>10}  {created}{flag}")
    return 0


def cmd_fetch(ctx) -> int:
    from ..pilot import sandbox

    a = ctx.args
    db = None if a.url else ctx.db
    cache = Path(a.cache) if a.cache else sandbox.default_cache_dir()
    try:
        res = sandbox.fetch(db, a.sha256, cache, url=a.url)
    except sandbox.SandboxError as exc:
        from ..errorcodes import BY_CODE

        code = BY_CODE.get(exc.code)
        raise type(exc)(f"[{exc.code} {code.name if code else '?'}] {exc}", exc.code) from None
    print(sandbox.describe(res), file=sys.stderr)
    ctx.out(str(res.path))
    return 0
