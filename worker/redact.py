"""Keep the server's own locations out of what users read (events and job errors).

A worker's messages can carry paths: a checkpoint folder, a scratch file named in an exception, a model
folder in the registry. Every absolute path keeps only its last component ("…/step-40"), and the artifact
store's root (a bucket and prefix, or a folder) becomes "<artifact store>". Logs keep the full text.
"""

from __future__ import annotations

import re

# An absolute POSIX path of at least two components, not inside a URL ("s3://b/k") or a relative path.
_PATH_CHARS = r"[^\s/'\"`:;,()\[\]{}<>]"
_ABS_PATH = re.compile(rf"(?<![\w.:/~>-])/(?:{_PATH_CHARS}+/)+({_PATH_CHARS}+)/?")


def redact(text: str, *hidden: str) -> str:
    """`text` with each of `hidden` (roots such as the artifact store's) replaced by "<artifact store>"
    and every absolute path cut to "…/<its last component>"."""
    for root in sorted({h.rstrip("/") for h in hidden if h and h.strip("/")}, key=len, reverse=True):
        text = text.replace(root, "<artifact store>")
    return _ABS_PATH.sub(lambda m: f"…/{m.group(1)}", text)
