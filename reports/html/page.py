"""What every self-contained page of ours shares: the Jinja2 environment, the inlined assets, the atomic write.

The divergence report (`render`) and the health page (`health_page`) use the same stylesheet, the same
small script and the same Content-Security-Policy, which pins that script by its hash.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

_BREAK_AFTER = re.compile(r"([./_:\[])")


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """Autoescape on: every name from the user's model is text, never markup."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("repro_audit.reports.html", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # Compact, sorted JSON for the data the inline JS reads; tojson also escapes <, >, & and '.
    env.policies["json.dumps_kwargs"] = {"sort_keys": True, "separators": (",", ":")}
    env.filters["breakable"] = breakable
    return env


def breakable(value: Any) -> Markup:
    """A dotted name that a narrow column may wrap after its dots, slashes and underscores instead of in the
    middle of a word: escaped first, then <wbr> added, so the name stays text."""
    return Markup(_BREAK_AFTER.sub(r"\1<wbr>", str(escape(str(value)))))


@cache
def asset(name: str) -> str:
    return resources.files("repro_audit.reports.html").joinpath(name).read_text(encoding="utf-8")


def page_assets() -> dict[str, Any]:
    """The inline stylesheet and script, and the hash the Content-Security-Policy allows that script by."""
    script = asset("report.js")
    return {
        "css": Markup(asset("report.css")),
        "js": Markup(script),
        "script_hash": "sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode(),
    }


def write_atomically(path: str | os.PathLike[str], text: str) -> Path:
    """Write a page so that a reader never sees half a file; it gets the permissions any new file gets
    (0644 under umask 022), not mkstemp's 0600."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
