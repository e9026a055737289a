"""The pilot: claims tokens, runs their payloads, reports back (worker-node side).

Pilot path: this package imports only the standard library and ``pyyaml``
(``gfal2`` lazily, for staging; ``requests`` lazily, for a sandbox given by URL).  Submodules:

* :mod:`lrt.pilot.claim` -- the token protocol (update handlers), candidates,
  reaping and conflict resolution;
* :mod:`lrt.pilot.run` -- one payload process group, its logs and rusage;
* :mod:`lrt.pilot.pilot` -- the loop (leases, fencing, signals, retries);
* :mod:`lrt.pilot.local` -- ``lrt run-local``;
* :mod:`lrt.pilot.sandbox` -- sandbox fetch/verify/extract.
"""
