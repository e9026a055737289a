#!/usr/bin/env python3
"""sleeper's payload: sleep LRT_P_SECONDS, write done.txt, exit with LRT_P_EXIT_CODE."""
import os
import sys
import time

time.sleep(float(os.environ.get("LRT_P_SECONDS", "0")))
with open("done.txt", "w") as fh:
    fh.write(os.environ.get("LRT_TOKEN_ID", "") + "\n")
sys.exit(int(os.environ.get("LRT_P_EXIT_CODE", "0")))
