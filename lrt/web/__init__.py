"""lrt's web interface (``lrt dashboard``; ``pip install lrt[web]``).

One Starlette application built from explicit route lists
(:func:`lrt.web.app.create_app`): the dashboard's pages (:mod:`lrt.web.dashboard`)
and, later, other interfaces on the same server.  Imported only by the
``dashboard`` command, never by the pilot.
"""
