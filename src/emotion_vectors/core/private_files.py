"""Private files and directories: what the model servers, the GPU locks and the prepared models
rest on.

- ``private_dir``: a directory of ours, mode 0700, refused when someone else could put files in
  it (a symlink, another owner, writable by others).
- ``DirFd``: an open directory in which every file is created, renamed and removed by name
  relative to it (``O_CREAT|O_EXCL|O_NOFOLLOW``), so a planted symlink is refused at the moment of
  opening; ``write_private_json`` writes a 0600 JSON file through it.
- ``runtime_dir`` (a usable ``$XDG_RUNTIME_DIR``), ``user_cache_dir``, ``user_secret`` (a random
  secret of this user, from which unpredictable names are derived).

Every refusal is a ``ServiceError`` (the model server's error: its clients see these too).
See ``extraction.service`` for the security model.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


PRIVATE_PREFIX = "emotion-vectors-"


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ServiceError(RuntimeError):
    """The model server could not be reached, refused a request, or failed it.

    ``retryable`` is true when the failure happened before the request was sent (the server
    was stopping or gone): the caller may start a server and send it again.
    """

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (mode 0700) if needed and check that only we can use it.

    A directory of ours that others may only read (an older run's, made under umask 022) is
    tightened to 0700; one owned by someone else, writable by others, or a symlink is refused,
    since someone else may have put files in it.

    Raises:
        ServiceError: the directory is not safe to hold a socket and a key (or cannot be made).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        st = os.lstat(path)
    except OSError as err:
        raise ServiceError(f"cannot create the private directory {path}: {err.strerror or err}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ServiceError(f"server directory {path} is not a directory (a symlink?): refusing to use it")
    if st.st_uid != os.getuid():
        raise ServiceError(f"server directory {path} belongs to uid {st.st_uid}, not to us ({os.getuid()}): refusing")
    if st.st_mode & 0o022:
        raise ServiceError(
            f"server directory {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}): "
            "refusing; delete it and it will be recreated with mode 0700"
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
        log.warning("server directory %s was mode %o: tightened to 0700", path, stat.S_IMODE(st.st_mode))
    return path


# Over 120 lines: one open directory's descriptor and its *at calls, each method short; cohesive.
class DirFd:
    """An open directory in which every write happens by name *relative to it*.

    The directory is opened once (``open``: its last component may not be a symlink;
    ``beneath``: every component below a root opened with ``O_NOFOLLOW``) and each file in it is
    created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` against its descriptor, so a symlink planted at a
    name, or a directory swapped for a symlink after a check, is refused at the moment of
    opening rather than followed. Renames and removals are ``*at`` calls on the descriptor too
    (a rename replaces a symlink at its target name, it never writes through it).
    """

    def __init__(self, fd: int, path: str | Path):
        self.fd = fd
        self.path = Path(path)

    @classmethod
    def open(cls, path: str | Path) -> "DirFd":
        """The directory ``path`` (its last component must not be a symlink)."""
        try:
            return cls(os.open(path, _DIR_FLAGS), path)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                raise ServiceError(f"refusing to use {path}: it is a symlink or not a directory") from None
            raise ServiceError(f"cannot open directory {path}: {err.strerror or err}") from None

    @classmethod
    def beneath(cls, root: str | Path, path: str | Path) -> "DirFd":
        """The directory ``path``, reached from ``root`` one component at a time, none a symlink.

        ``path``'s real path must be ``root``'s or below it (checked first); the walk then opens
        each component of it below the root with ``O_NOFOLLOW``, so a component swapped for a
        symlink since the check is refused.

        Raises:
            ServiceError: ``path`` lies outside ``root``, or a component is a symlink.
        """
        root_real = os.path.realpath(root)
        real = os.path.realpath(path)
        rel = os.path.relpath(real, root_real)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
            raise ServiceError(f"refusing to write in {path}: outside the server's root {root_real}")
        d = cls.open(root_real)
        where = Path(root_real)
        for part in [] if rel == os.curdir else rel.split(os.sep):
            try:
                fd = os.open(part, _DIR_FLAGS, dir_fd=d.fd)
            except OSError as err:
                d.close()
                if err.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ServiceError(f"refusing to write in {path}: {where / part} is a symlink or not a directory") from None
                raise ServiceError(f"cannot open {where / part}: {err.strerror or err}") from None
            d.close()
            where = where / part
            d = cls(fd, where)
        return d

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "DirFd":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DirFd({self.path}, fd={self.fd})"

    # reading
    def lstat(self, name: str) -> os.stat_result | None:
        """``lstat`` of ``name`` in this directory (None if absent)."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def exists(self, name: str) -> bool:
        return self.lstat(name) is not None

    def listdir(self) -> list[str]:
        return os.listdir(self.fd)

    def refuse_symlink(self, name: str) -> None:
        """Raise ``ServiceError`` if ``name`` is a symlink (absent or anything else is fine)."""
        st = self.lstat(name)
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise ServiceError(f"refusing to write {self.path / name}: it is a symlink")

    def proc_path(self, name: str = "") -> str:
        """A path naming ``name`` in this very directory, for libraries that only take paths:
        ``/proc/self/fd/<fd>/<name>`` (the kernel resolves it to the open directory, not by
        walking ``self.path`` again); ``self.path / name`` where there is no ``/proc``."""
        if os.path.isdir(f"/proc/self/fd/{self.fd}"):
            return f"/proc/self/fd/{self.fd}/{name}" if name else f"/proc/self/fd/{self.fd}"
        return str(self.path / name) if name else str(self.path)

    # writing
    def create(self, name: str, flags: int = os.O_WRONLY, mode: int = 0o600) -> int:
        """A new file ``name`` (``O_CREAT|O_EXCL|O_NOFOLLOW``): never an existing file, never a symlink.

        Raises:
            ServiceError: something (a symlink, a file) is already there.
        """
        try:
            return os.open(name, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.fd)
        except FileExistsError:
            what = "a symlink" if stat.S_ISLNK(self.lstat(name).st_mode) else "already there"  # type: ignore[union-attr]
            raise ServiceError(f"refusing to write {self.path / name}: {what}") from None

    def open_lock(self, name: str) -> int:
        """Open (or create) the lock file ``name``: a regular file of ours, never through a symlink."""
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self.fd)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ServiceError(f"refusing to use lock {self.path / name}: it is a symlink") from None
            raise ServiceError(f"cannot open lock {self.path / name}: {err.strerror or err}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            os.close(fd)
            raise ServiceError(f"refusing to use lock {self.path / name}: not a regular file of ours")
        return fd

    def open_append(self, name: str, mode: int = 0o600) -> int:
        """Open ``name`` for appending (created if missing), never through a symlink."""
        try:
            return os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                           dir_fd=self.fd)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ServiceError(f"refusing to write {self.path / name}: it is a symlink") from None
            raise ServiceError(f"cannot open {self.path / name}: {err.strerror or err}") from None

    def make_private_dir(self, name: str) -> "DirFd":
        """Create the new directory ``name`` (mode 0700; never an existing one) and open it."""
        try:
            os.mkdir(name, 0o700, dir_fd=self.fd)
        except FileExistsError:
            raise ServiceError(f"refusing to use {self.path / name}: already there") from None
        d = DirFd(os.open(name, _DIR_FLAGS, dir_fd=self.fd), self.path / name)
        if os.fstat(d.fd).st_uid != os.getuid():
            d.close()
            raise ServiceError(f"{self.path / name} is not ours")
        return d

    def rename(self, name: str, new_name: str, dst: "DirFd | None" = None) -> None:
        """Rename ``name`` here to ``new_name`` here or in ``dst`` (replacing a file or an empty
        directory there; a symlink there is replaced, not followed)."""
        os.rename(name, new_name, src_dir_fd=self.fd, dst_dir_fd=(dst or self).fd)

    def replace(self, name: str, new_name: str) -> None:
        """Rename the complete ``name`` here to ``new_name``, never leaving a half-removed one.

        An existing ``new_name`` is first moved aside (``<new_name>.old-<pid>-<tag>``, a rename),
        ``name`` renamed in, and only then the old one removed: a kill at any point leaves the
        old output or the new one under ``new_name``, complete. Copies left aside by a killed
        earlier call are removed here too. A symlink at ``new_name`` is moved aside and
        removed, never followed."""
        old = None
        if self.exists(new_name):
            old = f"{new_name}.old-{os.getpid()}-{secrets.token_hex(3)}"
            self.rename(new_name, old)
        self.rename(name, new_name)
        for leftover in self.listdir():
            if leftover.startswith(f"{new_name}.old-"):
                self.remove(leftover)

    def unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def remove(self, name: str) -> None:
        """Remove ``name`` whatever it is (a directory tree, a file, a symlink: not what it points
        to); what another process removes meanwhile is no error."""
        st = self.lstat(name)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=self.fd, onerror=_gone_is_fine)
        else:
            self.unlink(name)

    def symlinks_inside(self, name: str) -> list[str]:
        """The symlinks anywhere below the directory ``name`` (relative paths)."""
        found: list[str] = []
        try:
            top = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        except OSError:
            return found
        try:
            for root, dirs, files, _ in os.fwalk(dir_fd=top, follow_symlinks=False):
                for entry in dirs + files:
                    if stat.S_ISLNK(os.stat(os.path.join(root, entry), dir_fd=top, follow_symlinks=False).st_mode):
                        found.append(os.path.normpath(os.path.join(root, entry)))
        finally:
            os.close(top)
        return found


def _gone_is_fine(function: Any, path: str, exc_info: Any) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def write_private_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically as a new 0600 file (``O_CREAT|O_EXCL|O_NOFOLLOW`` in
    the opened directory, then renamed over ``path``)."""
    path = Path(path)
    tmp = f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    with DirFd.open(path.parent) as d:
        fd = d.create(tmp)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
            d.rename(tmp, path.name)
        except BaseException:
            d.unlink(tmp)
            raise


_WARNED: set[str] = set()


def _warn_once(message: str, *args: Any) -> None:
    text = message % args
    if text not in _WARNED:
        _WARNED.add(text)
        log.warning("%s", text)


def runtime_dir() -> Path | None:
    """``$XDG_RUNTIME_DIR`` when it is usable: an existing directory of ours that nobody else
    can write in. None when it is unset, missing (common on Slurm nodes), someone else's or
    open to others (said once in the log): callers then use their fallback."""
    value = os.environ.get("XDG_RUNTIME_DIR")
    if not value:
        return None
    try:
        st = os.stat(value)
    except OSError as err:
        _warn_once("XDG_RUNTIME_DIR=%s is unusable (%s): using a private directory elsewhere", value,
                   err.strerror or err)
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        _warn_once("XDG_RUNTIME_DIR=%s is not a directory of ours closed to others (uid %s, mode %o): "
                   "using a private directory elsewhere", value, st.st_uid, stat.S_IMODE(st.st_mode))
        return None
    return Path(value)


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/emotion-vectors`` (default ``~/.cache/emotion-vectors``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "emotion-vectors"


def user_secret() -> bytes:
    """A random 32-byte secret of this user, created once in ``user_cache_dir()/secret`` (0600,
    in a 0700 directory of ours): other users cannot read it, so names derived from it cannot
    be predicted (``device_lock_dir``). Created race-free (written aside, then ``link``-ed: the
    first writer wins, the others read its secret).

    Raises:
        ServiceError: the cache directory or the secret file is not ours (or cannot be made).
    """
    directory = private_dir(user_cache_dir())
    with DirFd.open(directory) as d:
        for _ in range(3):
            try:
                fd = os.open("secret", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d.fd)
            except FileNotFoundError:
                tmp = f"secret.{os.getpid()}.{secrets.token_hex(4)}.tmp"
                with os.fdopen(d.create(tmp), "w") as fh:
                    fh.write(secrets.token_hex(32))
                try:
                    os.link(tmp, "secret", src_dir_fd=d.fd, dst_dir_fd=d.fd, follow_symlinks=False)
                except FileExistsError:
                    pass
                finally:
                    d.unlink(tmp)
                continue
            except OSError as err:
                raise ServiceError(f"cannot read {directory / 'secret'}: {err.strerror or err}") from None
            with os.fdopen(fd) as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
                    raise ServiceError(f"{directory / 'secret'} is not a private (0600) file of ours: delete it")
                try:
                    value = bytes.fromhex(fh.read().strip())
                except ValueError:
                    value = b""
            if len(value) != 32:
                raise ServiceError(f"{directory / 'secret'} is not a secret written by this package: delete it")
            return value
    raise ServiceError(f"could not create {directory / 'secret'}")
