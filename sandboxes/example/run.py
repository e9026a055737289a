#!/usr/bin/env python3
"""Example lrt payload: count and sum the primes in a range, write the result.

The payload contract (see README.md beside this file and docs/sandbox.md):

* the working directory is the token's own work directory: write outputs there;
* ``token.json`` in that directory is the whole token document; its
  ``payload`` object holds this token's parameters;
* the same parameters are in the environment as ``LRT_P_<NAME>`` (strings),
  with ``LRT_TOKEN_ID`` and ``LRT_SANDBOX`` (this folder, extracted);
* exit status 0 means success; anything else marks the token failed, and
  stderr's tail is kept in the token.

Parameters: ``start`` (int, default 2), ``stop`` (int, required, exclusive),
``fail`` (bool, default false: exit 3 on purpose, to show a failing token).
Instead of start/stop a sweep can give ``block`` and ``block_size``: the range
is then ``[block * block_size, (block + 1) * block_size)``; ``fail_on_block``
makes that one block fail (the demo's failing token).
Standard library only, so it runs on any worker node with Python 3.
"""
from __future__ import annotations

import json
import os
import sys
import time

from primes import primes_in_range


def load_params() -> dict:
    """The token's parameters: token.json first, then LRT_P_* variables."""
    params: dict = {}
    if os.path.exists("token.json"):
        with open("token.json") as fh:
            params.update(json.load(fh).get("payload") or {})
    for key, value in os.environ.items():
        if key.startswith("LRT_P_"):
            name = key[len("LRT_P_"):].lower()
            params.setdefault(name, value)
    return params


def as_bool(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def main() -> int:
    token_id = os.environ.get("LRT_TOKEN_ID", "unknown-token")
    params = load_params()
    print(f"token {token_id}: parameters {json.dumps(params, sort_keys=True)}")
    if "block" in params:
        try:
            block, size = int(params["block"]), int(params.get("block_size", 100000))
        except (TypeError, ValueError) as exc:
            print(f"bad parameter: {exc}", file=sys.stderr)
            return 2
        params.setdefault("start", max(2, block * size))
        params.setdefault("stop", (block + 1) * size)
        if "fail_on_block" in params and str(params["fail_on_block"]) == str(block):
            print(f"token {token_id}: failing on purpose (parameter fail_on_block={block})",
                  file=sys.stderr)
            return 3
    if as_bool(params.get("fail", False)):
        print(f"token {token_id}: failing on purpose (parameter fail=true)", file=sys.stderr)
        return 3
    try:
        start = int(params.get("start", 2))
        stop = int(params["stop"])
    except KeyError:
        print("missing parameter 'stop'", file=sys.stderr)
        return 2
    except (TypeError, ValueError) as exc:
        print(f"bad parameter: {exc}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    found = primes_in_range(start, stop)
    result = {"token": token_id, "start": start, "stop": stop, "count": len(found),
              "sum": sum(found), "largest": found[-1] if found else None,
              "seconds": round(time.monotonic() - t0, 6)}
    out = f"primes-{start}-{stop}.json"
    with open(out + ".tmp", "w") as fh:
        json.dump(result, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.replace(out + ".tmp", out)  # never leave a half-written output behind
    print(f"token {token_id}: {result['count']} primes in [{start}, {stop}), sum {result['sum']} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
