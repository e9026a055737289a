"""The pilot: claims tokens, runs their payloads, reports back (worker-node side).

Pilot path: this package imports only the standard library and ``pyyaml``
(``gfal2`` lazily, for staging; ``requests`` lazily, for a sandbox given by URL).  The token
protocol it speaks (claims, leases, finishes, reaping, conflicts) is :mod:`lrt.protocol`.  Submodules:

* :mod:`lrt.pilot.run` -- one payload process group, its logs and rusage;
* :mod:`lrt.pilot.pilot` -- the loop (leases, fencing, signals, retries);
* :mod:`lrt.pilot.local` -- ``lrt run-local``;
* :mod:`lrt.pilot.sandbox` -- sandbox fetch/verify/extract.
"""
