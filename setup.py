"""The metadata lives in pyproject.toml, except the license (see the note there)."""
from setuptools import setup

setup(license="Apache-2.0")
