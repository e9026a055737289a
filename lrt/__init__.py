"""lrt: a CouchDB token-pool pilot framework for grids and HPC clusters.

The public API is imported lazily so that the pilot path (``lrt.pilot``) pulls in
only the standard library and ``pyyaml`` (lrt.couch speaks HTTP through http.client).
"""
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Server": "lrt.couch",
    "Database": "lrt.couch",
    "CouchError": "lrt.couch",
    "Token": "lrt.tokens",
    "TokenSet": "lrt.tokens",
    "TokenList": "lrt.tokens",
    "State": "lrt.states",
    "LrtError": "lrt.errors",
    "ConfigError": "lrt.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'lrt' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(mod), name)
