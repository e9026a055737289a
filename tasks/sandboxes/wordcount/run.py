#!/usr/bin/env python3
"""wordcount's payload: parameters arrive as LRT_P_<NAME> (JSON for non-strings), inputs in the work dir."""
import json
import os
import re
import sys

texts = json.loads(os.environ["LRT_P_TEXTS"])
min_length = int(os.environ.get("LRT_P_MIN_LENGTH", "1"))
mode = os.environ.get("LRT_P_MODE", "words")
lower = json.loads(os.environ.get("LRT_P_LOWER", "false"))
scale = float(os.environ.get("LRT_P_SCALE", "1.0"))
summary = {"label": os.environ.get("LRT_P_LABEL"), "files": {}}
for name in texts:
    with open(name, encoding="utf-8") as fh:
        text = fh.read()
    words = [w for w in re.findall(r"[A-Za-z]+", text) if len(w) >= min_length]
    if lower:
        words = [w.lower() for w in words]
    counts = {}
    if mode in ("words", "both"):
        counts["words"] = len(words) * scale
        counts["distinct"] = len(set(words))
    if mode in ("lines", "both"):
        counts["lines"] = len(text.splitlines()) * scale
    with open(f"count_{os.path.splitext(name)[0]}.txt", "w", encoding="utf-8") as out:
        for k, v in sorted(counts.items()):
            out.write(f"{k} {v:g}\n")
    summary["files"][name] = counts
with open("summary.json", "w", encoding="utf-8") as out:
    json.dump(summary, out, sort_keys=True)
print(json.dumps(summary, sort_keys=True))
sys.exit(0)
