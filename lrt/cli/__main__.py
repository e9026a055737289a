import sys

try:
    from . import entry
except KeyboardInterrupt:  # Ctrl-C while the command was still starting: nothing done yet
    sys.exit(130)

entry()
