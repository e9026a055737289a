"""Launchers: put pilots on batch systems and remember that we did.

A launcher renders a job script from a template (top-level ``launch/`` in the
source tree, or the user's own), submits it with the batch system's own client
(an argument vector, never a shell string), and records the submission in the
database as a ``kind: "launch"`` document so ``lrt status`` can say how many
pilots were submitted and how many are queued or running.

One module per concept:

* :mod:`.base` -- the :class:`Launcher` interface, the shared
  :class:`LaunchOptions`, and the registry (:func:`launcher`) of the backends
  :mod:`.slurm`, :mod:`.htcondor`, :mod:`.jdl` and :mod:`.local`;
* :mod:`.templates` -- the tiny template language (:func:`render`) and where
  templates are found (:func:`find_template`);
* :mod:`.command` -- how a job runs *this* lrt (:func:`lrt_command`) and the
  pilot's argument vector;
* :mod:`.credentials` -- :class:`Connection`: what a pilot needs to reach the
  database, with the password kept apart (a 0600 file or the environment the
  batch system passes on, never inside a script, submit description or JDL);
* :mod:`.records` -- launch records and :func:`launch_summary` for ``lrt status``.

Admin side: this package is never imported by the pilot.
"""
from __future__ import annotations

from .base import BACKENDS, LaunchError, LaunchOptions, Launched, Launcher, Observed, launcher, systems
from .command import lrt_command, pilot_args, pilot_walltime
from .credentials import (PASS_THROUGH, Connection, check_no_secret, connection, job_env, job_env_names,
                          loopback_warning, password_file_for, submit_env)
from .records import (ACCOUNTING_EVERY, RECORD_PREFIX, PilotEnd, ended_entry, launch_dir, launch_flag,
                      launch_records, launch_summary, new_launch_id, record_launch, record_walltime)
from .templates import TEMPLATE_DIRS, common_variables, find_template, q, render, sha256_text, template_variables

__all__ = ["render", "template_variables", "find_template", "Connection", "connection",
           "lrt_command", "new_launch_id", "launch_dir", "record_launch", "launch_records", "launch_summary",
           "LaunchError", "TEMPLATE_DIRS", "job_env_names", "job_env", "loopback_warning",
           "PilotEnd", "launch_flag", "pilot_walltime", "Launcher", "LaunchOptions", "Launched", "Observed",
           "launcher", "systems", "BACKENDS", "ACCOUNTING_EVERY", "RECORD_PREFIX", "PASS_THROUGH",
           "check_no_secret", "common_variables", "ended_entry", "password_file_for", "pilot_args", "q",
           "record_walltime", "sha256_text", "submit_env"]
