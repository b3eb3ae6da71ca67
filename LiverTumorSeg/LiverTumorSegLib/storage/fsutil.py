"""Safe file writes: a reader never sees a half-written file, a failed write leaves nothing behind,
and what is written follows the user's umask (a case library is often shared).

Temporary files and folders are hidden siblings of their target named
`.<name>.tmp-<host>-<pid>-<random><suffix>`: when a process dies mid-write (SIGKILL, power
loss), the next write into that folder removes the leftovers of dead processes of this host
(`clean_stale_temps`); temps of live processes, and of other hosts sharing the folder, are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

TEMP_MARK = ".tmp-"
_TEMP_RE = re.compile(r"^\..*\.tmp-(?P<host>[A-Za-z0-9-]{1,24})-(?P<pid>\d+)-")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname() or "host")[:24] or "host"


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows; else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike, folder: bool = False) -> None:
    """Give a file 0666 (a folder 0777) minus the umask, as open()/mkdir() would have: mkstemp and
    mkdtemp create them private (0600/0700), which would make every output unreadable to others."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def temp_prefix(name: str) -> str:
    return f".{name}{TEMP_MARK}{_host()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (someone else's) or cannot tell: keep
    return True


def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove temps (see module doc) left in `folder` by dead processes of this host; returns them."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    host = _host()
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if not match or match["host"] != host or _pid_alive(int(match["pid"])):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


def _suffix_of(path: Path) -> str:
    return "".join(path.suffixes[-2:]) if path.name.lower().endswith((".seg.nrrd", ".nii.gz")) else path.suffix


def make_temp_file(path: Path) -> Path:
    """An empty hidden temp file beside `path` (same full suffix, so writers pick the same format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name.split(".")[0]), suffix=_suffix_of(path) or ".tmp",
                               dir=path.parent)
    os.close(fd)
    return Path(tmp)


def make_temp_dir(folder: Path) -> Path:
    """An empty hidden temp folder beside `folder` (renamed onto it when complete), umask applied."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(folder.parent)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(folder.name), dir=folder.parent))
    apply_umask(tmp, folder=True)
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary name keeps the full suffix (e.g. `.seg.nrrd`, `.nii.gz`) so writers that pick the
    format from the extension still work. The result gets the umask's permissions.
    """
    path = Path(path)
    tmp_path = make_temp_file(path)
    try:
        yield tmp_path
        apply_umask(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json_object(path: str | os.PathLike) -> tuple[dict, str]:
    """(content, problem) of a JSON file that holds one object (model.json, case.json): ({}, "")
    when the file is absent; ({}, what is wrong and how to fix it) when it is unreadable or holds
    something else. The caller decides whether a problem stops it."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, ""
    except (OSError, ValueError) as exc:
        return {}, f"{path} is not readable JSON ({exc}); fix or delete that file"
    if not isinstance(value, dict):
        return {}, f"{path} does not hold a JSON object; fix or delete that file"
    return value, ""


def unwritable_reason(path: str | os.PathLike) -> str | None:
    """Why a new file at `path` could not be written (None: it can), found without writing
    anything: an existing folder of that name, a file where a parent folder should be, a nearest
    existing parent that this process may not write into (the kernel's own check, so read-only
    mounts and a root without its override capabilities are caught too)."""
    path = Path(path)
    if path.is_dir():
        return f"{path} is a folder"
    parent = path.parent
    while not parent.exists() and not parent.is_symlink():
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, not a folder"
    effective = os.access in getattr(os, "supports_effective_ids", set())
    if not os.access(parent, os.W_OK | os.X_OK, effective_ids=effective):
        try:
            read_only = bool(os.statvfs(parent).f_flag & os.ST_RDONLY)
        except (AttributeError, OSError):
            read_only = False
        return f"cannot write in {parent} ({'read-only file system' if read_only else 'permission denied'})"
    if path.exists() and not os.access(path, os.W_OK, effective_ids=effective) and not os.access(
            parent, os.W_OK, effective_ids=effective):
        return f"{path} is read-only"
    return None


class StagedOutputs:
    """All outputs of one command or none: each is written to a temp file beside its target, and
    only when every one of them was written are they renamed into place (`commit`). Any failure
    (or leaving the `with` block without commit) removes every temp; no target is touched."""

    def __init__(self):
        self._staged: list[tuple[Path, Path]] = []

    def __enter__(self) -> "StagedOutputs":
        return self

    def path_for(self, target: str | os.PathLike) -> Path:
        """The temp path to write `target`'s content to (same folder, same full suffix)."""
        target = Path(target)
        tmp = make_temp_file(target)
        self._staged.append((tmp, target))
        return tmp

    def commit(self) -> None:
        for tmp, target in self._staged:
            apply_umask(tmp)
        for tmp, target in self._staged:
            os.replace(tmp, target)
        self._staged = []

    def __exit__(self, *exc) -> None:
        for tmp, _ in self._staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._staged = []


@contextlib.contextmanager
def exclusive_lock(lock_path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` for the block; InputError when another process holds
    it. The operating system drops the lock when its holder dies, so a file left by a killed
    process never blocks the next run; a finished run removes its file. `what` names the work for
    the message (e.g. "training"). A folder where no lock file can be created is not locked."""
    from ..errors import InputError

    lock_path = Path(lock_path)
    while True:
        try:
            handle = open(lock_path, "a+", encoding="utf-8")
        except OSError:
            yield
            return
        if not _try_lock(handle):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise InputError(
                f"another {what} is already running on {lock_path.parent} ({holder}); wait for it to "
                "finish or cancel it, then try again"
            )
        try:  # the file may have been removed by its previous holder meanwhile: lock the one on disk
            same = os.path.samestat(os.fstat(handle.fileno()), os.stat(lock_path))
        except OSError:
            same = False
        if same:
            break
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()  # while still holding it: a waiting opener then retries
        handle.close()  # closing releases the lock


def _try_lock(handle) -> bool:
    if os.name == "nt":
        import msvcrt

        try:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True
