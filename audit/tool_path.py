"""The folder this copy of repro-audit is imported from, lent to a worker only while it starts.

Each worker is `python -m repro_audit.audit.worker` with that folder first on PYTHONPATH, so it runs the
parent's copy of the tool, not another one installed elsewhere. In a checkout the folder also holds the
folders audit/, probes/, reports/ and tests/, and a regular package anywhere on sys.path wins over a user's
namespace folder of the same name earlier on it; so the worker takes the folder off sys.path and PYTHONPATH
again before the recipe imports anything. By then `repro_audit` is imported, and its submodules are found
through its own `__path__`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping

TOOL_FOLDER = "REPRO_AUDIT_TOOL_FOLDER"
USER_PYTHONPATH = "REPRO_AUDIT_USER_PYTHONPATH"


def worker_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with the folder that holds this `repro_audit` first on PYTHONPATH, marked to be taken back."""
    import repro_audit

    folder = os.path.abspath(Path(repro_audit.__file__).parent.parent)
    env = dict(environ)
    user = environ.get("PYTHONPATH")
    env["PYTHONPATH"] = folder + (os.pathsep + user if user else "")
    env[TOOL_FOLDER] = folder
    env.pop(USER_PYTHONPATH, None)
    if user is not None:
        env[USER_PYTHONPATH] = user
    return env


def forget_tool_folder() -> None:
    """In the worker: sys.path and PYTHONPATH as the user had them, so that a package the recipe imports (or
    any process it starts), `audit` say, is the user's own, never a folder of our checkout."""
    folder = os.environ.pop(TOOL_FOLDER, None)
    if folder is None:
        return
    user = os.environ.pop(USER_PYTHONPATH, None)
    if user is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = user
    # PYTHONPATH's entries follow the working directory's, unless Python runs with -P (PYTHONSAFEPATH).
    first = 0 if getattr(sys.flags, "safe_path", False) else 1
    for index in range(first, len(sys.path)):
        if sys.path[index] == folder:
            del sys.path[index]
            return
