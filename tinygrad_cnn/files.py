"""Writing files so that nobody ever reads half of one.

``atomic_write(path)`` is the one way the package writes a file: checkpoints,
weights, metrics, pictures, downloads and the Kaggle submission all go through
it.  The bytes go to a temporary ``.<name>.<pid>.<random>.part`` file in the
same folder (a rename is atomic only within one file system), are flushed to
disk, and only then renamed over ``path``; on any error the part file is
removed and an old ``path`` stays as it was.  A process killed mid-write
leaves its part file behind: ``remove_stale_parts`` clears those of dead
processes (training calls it when it takes a folder).

Part files are created with ``open(..., "x")``, so the result has the usual
permissions (0666 minus the umask), not ``tempfile.mkstemp``'s private 0600.

Disk full and permission denied become errors that name the file and say what
to do, instead of a bare "[Errno 28] No space left on device".

``hold_folder(folder)`` makes an output folder one run's while it lasts (a
lock file with the pid and host), so that two runs never mix their files.
"""
import contextlib
import errno
import os
import re
import secrets
import socket
from pathlib import Path

try:
    import fcntl
except ImportError:          # Windows
    fcntl = None
    import msvcrt

PART_SUFFIX = ".part"
# .<name>.<pid>.<8 hex digits>.part -- the pid tells a dead writer's leftovers.
# Earlier versions wrote .<name>.<8 hex digits>.part, without the pid.
_PART_NAME = re.compile(r"^\..+?(?:\.(\d+))?\.[0-9a-f]{8}\.part$")
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS}


def part_path(path):
    """The temporary name ``atomic_write`` writes ``path``'s bytes to."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{PART_SUFFIX}")


@contextlib.contextmanager
def atomic_write(path, mode="wb", **open_kwargs):
    """``open(path, mode)`` for writing, atomically: yields a file object on a
    temporary file beside ``path``; when the block ends without an error the
    file is flushed, fsync'ed and renamed to ``path``, else removed.

    mode: "wb" or "w" (text; ``open_kwargs`` such as ``newline=`` or
    ``encoding=`` are passed on).  The folder is created if missing.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    part = part_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(part, mode.replace("w", "x"), **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())      # the bytes are on disk before the name points at them
        os.replace(part, path)
    except OSError as exc:
        explained = explain_write_error(exc, path)
        if explained is exc:
            raise
        raise explained from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(part)


def explain_write_error(exc, path):
    """``exc`` (an OSError met while writing ``path``) as an error of the same
    type naming the file and what to do, for disk full and permission denied;
    any other error unchanged."""
    if exc.errno in _NO_SPACE:
        message = (f"{path}: no space left on the device while writing it; free some space "
                   "there or write to another folder")
    elif exc.errno in _NOT_ALLOWED:
        message = (f"{path}: permission denied while writing it (or the file system is "
                   f"read-only); check the permissions of {path.parent} or write to "
                   "another folder")
    else:
        return exc
    explained = type(exc)(message)
    explained.errno = exc.errno
    return explained


def remove_stale_parts(folder):
    """Delete the part files in ``folder`` left by processes that are gone
    (killed mid-write); returns their paths.  Part files of live processes
    (including this one) are kept; one without a pid in its name (written by an
    earlier version) counts as stale."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for candidate in folder.iterdir():
        match = _PART_NAME.match(candidate.name)
        if match and not (match.group(1) and process_alive(int(match.group(1)))):
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def process_alive(pid):
    """Whether a process ``pid`` runs on this machine."""
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    if os.name == "nt":               # os.kill would terminate it there: assume it lives
        return True
    try:
        os.kill(pid, 0)               # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:           # it exists, under another user
        return True
    except OSError:                   # e.g. Windows without such a process
        return False
    return True


# ---------------------------------------------------------------- one run per folder
LOCK_FILE = "run.lock"
_held = {}          # folder (resolved) -> [lock file descriptor, depth]; per process


class FolderBusyError(RuntimeError):
    """Another live process holds the folder's lock."""


@contextlib.contextmanager
def hold_folder(folder, say=None):
    """Own ``folder`` (created if missing) for the block: a lock file
    ``folder/run.lock`` holding this process's pid and host, locked with the
    operating system's advisory lock, which dies with the process.

    Raises FolderBusyError naming the other process when a live one holds it.
    A lock file left by a process that is gone (kill -9) is taken over, and
    the part files dead writers left are removed; ``say`` (a callable taking a
    line, e.g. ``print``) hears about both.  Re-entrant within a process: the
    command line holds the folder around ``fit``, which holds it again.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    fd, previous = _lock(folder / LOCK_FILE)
    _held[key] = [fd, 1]
    try:
        if previous and say is not None:
            say(f"{folder}: took over the lock of a run that is gone ({previous})")
        removed = remove_stale_parts(folder)
        if removed and say is not None:
            say(f"{folder}: removed {len(removed)} unfinished file(s) left by killed runs "
                f"({', '.join(p.name for p in removed[:3])}{', ...' if len(removed) > 3 else ''})")
        yield
    finally:
        del _held[key]
        with contextlib.suppress(FileNotFoundError):
            os.remove(folder / LOCK_FILE)      # while still locked: nobody takes it half-gone
        os.close(fd)


def _lock(path):
    """Lock ``path`` (creating it); returns (descriptor, the owner line it held
    before, or "")."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if not _try_lock(fd):
            owner = _read_owner(fd)
            os.close(fd)
            raise FolderBusyError(
                f"{path.parent} is in use by another run ({owner or 'owner unknown'}; lock "
                f"file {path}); wait for it to end, stop it, or choose another output folder")
        try:
            on_disk = os.stat(path)
        except FileNotFoundError:
            on_disk = None
        mine = os.fstat(fd)
        if on_disk is not None and (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)     # the holder removed the file as we opened it: lock the new one
    previous = _read_owner(fd)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
    return fd, previous


def _read_owner(fd):
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 200).decode("utf-8", "replace").strip()
    except OSError:                     # Windows: the holder's lock forbids reading
        return ""


def _try_lock(fd):
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:                     # BlockingIOError, or Windows' PermissionError
        return False
    return True
