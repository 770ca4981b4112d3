"""Curvine paths as the Python API accepts them: ``/a/b``, ``a/b`` (taken
from the root), ``cv://a/b`` and ``cv:///a/b`` all name ``/a/b``."""

import os

PREFIX = "cv://"


def norm(path) -> str:
    """The absolute Curvine path for ``path``; TypeError for non-paths."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"expected a path (str or os.PathLike), got {type(path).__name__}")
    if path.startswith(PREFIX):
        path = path[len(PREFIX):]
    if not path.startswith("/"):
        path = "/" + path
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    return path


def join(*parts: str) -> str:
    return norm("/".join(p.strip("/") for p in parts if p.strip("/")))
