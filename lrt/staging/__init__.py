"""Input data: file lists (:mod:`lrt.staging.srmlist`) and, later, tape staging and site URLs.

Kept empty so that importing one submodule never pulls in another (gfal2 is
imported lazily, only where staging really happens).
"""
