"""Input data: tape staging, site URLs and stage-in/out rules (file lists: :mod:`lrt.filelist`).

Kept empty so that importing one submodule never pulls in another (gfal2 is
imported lazily, only where staging really happens).
"""
