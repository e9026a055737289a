"""Dependencies between tokens (docs/tokens.md, "Dependencies"; docs/workflows.md).

* :mod:`lrt.deps.spec` -- the ``after:``/``inputs:`` keys of a token config;
* :mod:`lrt.deps.release` -- release or block waiting tokens (pilot path: the
  hook after a finish, the idle sweep);
* :mod:`lrt.deps.create` -- unknown parents and cycles refused before writing;
* :mod:`lrt.deps.reset` -- resetting parents with children, cancel, ``lrt show``.

Nothing is imported here, so that the pilot loads only what it uses.
"""
