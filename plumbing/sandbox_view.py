"""The sandbox's filesystem view: only what the interpreter needs, read-only.

A read-only view of all of `/` let a snippet read every world-readable host file: the checkout, the
CoNaLa test references that gold scores against, the run folder. The view here binds the
distribution's software tree (/usr: the interpreter, its standard library and the shared libraries
its extension modules load), the interpreter's own path entries wherever they are (site-packages
outside /usr), and the few /etc files that the C library and the standard library read. /usr/local
is a host's own additions (tools, other languages), so it is hidden except for the interpreter's
path entries under it. Everything else (/home, /root, /work, /opt, /var, /srv, /mnt, /sys, the rest
of /etc) is absent.
"""
from __future__ import annotations

import functools
import glob
import os
import subprocess

# /etc files, each for a reason: the dynamic loader's cache; time zones (time.localtime, zoneinfo);
# the user and group names (pwd, getpass, pathlib.Path.owner); name resolution of localhost
# (socket.gethostbyname); service and protocol names (socket.getservbyname); file types (mimetypes);
# CA certificates (ssl's default context, public data); os-release
# (platform.freedesktop_os_release); the /usr/bin links update-alternatives manages.
ETC_ENTRIES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "passwd",
               "group", "nsswitch.conf", "hosts", "host.conf", "resolv.conf", "gai.conf",
               "services", "protocols", "mime.types", "mailcap", "ssl", "os-release",
               "alternatives")
# symlinks into /usr on merged-/usr systems
MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


@functools.lru_cache(maxsize=None)
def python_paths(python: str) -> tuple[str, ...]:
    """The interpreter's import path (standard library, extension modules, site-packages), as it
    reports it when run the way the sandbox runs it (`-I`: no user site, no environment). Not its
    prefix: that is /usr/local for a locally built interpreter, which would bring back all of
    /usr/local."""
    script = "import sys; print('\\n'.join(sys.path))"
    out = subprocess.run([python, "-I", "-c", script], capture_output=True, text=True, env={},
                         timeout=30).stdout
    return tuple(dict.fromkeys(p for p in out.splitlines()
                               if os.path.isabs(p) and os.path.isdir(p)))


def _outside_usr(path: str) -> bool:
    """Not already in the view's /usr binds."""
    return path == "/usr/local" or path.startswith("/usr/local/") or not path.startswith("/usr/")


def view_args(python: str) -> list[str]:
    """bwrap arguments for the read-only view (the caller adds /proc, /dev and the writable
    tmpfs)."""
    args = []
    # /usr but /usr/local: bwrap cannot hide a folder inside a bind
    for entry in sorted(os.listdir("/usr")):
        if entry != "local":
            args += ["--ro-bind", f"/usr/{entry}", f"/usr/{entry}"]
    for name in MERGED_USR:
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    binds = [p for p in python_paths(python) if _outside_usr(p)]
    if _outside_usr(os.path.realpath(python)):
        binds.append(os.path.realpath(python))
    for path in sorted(set(binds)):  # sorted: a parent before its children
        args += ["--ro-bind", path, path]
    args += ["--dir", "/etc"]
    for entry in ETC_ENTRIES + tuple(os.path.basename(p) for p in glob.glob("/etc/python3*")):
        args += ["--ro-bind-try", f"/etc/{entry}", f"/etc/{entry}"]
    return args
