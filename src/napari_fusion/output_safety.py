"""Output safety: inputs are never overwritten and nothing partial sits at a final name.

Every writer of the project (:func:`napari_fusion.io.write_image`,
:func:`napari_fusion.io.write_lazy`, the command line, ``batch`` and the
napari writer) goes through this module:

* :func:`check_output_path` refuses, before any work, an output that resolves
  (real path, or the same file through a hard link) to an input file or
  folder, that lies inside an input folder or zarr store, or that already
  exists when the caller did not ask to overwrite it. It also says when the
  output's folder cannot be created or written.
* Files read by :mod:`napari_fusion.io` in this process are remembered
  (:func:`remember_input`), so a script that reads ``a.tif`` and then writes
  to ``a.tif`` is refused even when it forgets to name its inputs.
* :func:`atomic_file` and :class:`AtomicGroup` write to a hidden temporary
  name in the output's folder and rename into place only on success
  (``os.replace`` is atomic on one file system): a run killed by any signal
  leaves at most a hidden ``.NAME.PID.partial.EXT`` file, never a cut-short
  file at the final name. Stale temporaries of dead processes are removed by
  the next write to the same name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import FusionOutputError

#: Marker in the names of temporary files (``.NAME.PID.partial.EXT``); readers skip them.
PARTIAL_TAG = ".partial"
_PARTIAL_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.partial(?:\.[^.]*)?$")


@dataclass(frozen=True)
class PathIdentity:
    """Where a path really is: its resolved path and, when it exists, (device, inode)."""

    real: Path
    inode: tuple[int, int] | None
    is_dir: bool

    @classmethod
    def of(cls, path: str | os.PathLike) -> PathIdentity:
        real = Path(os.path.realpath(os.fspath(path)))
        try:
            st = os.stat(real)
        except OSError:
            return cls(real, None, False)
        import stat as _stat

        return cls(real, (st.st_dev, st.st_ino), _stat.S_ISDIR(st.st_mode))

    def contains(self, other: PathIdentity) -> bool:
        """True when ``other`` lies inside this folder (or is it)."""
        return other.real == self.real or self.real in other.real.parents


_remembered: dict[Path, PathIdentity] = {}
_remembered_lock = threading.Lock()


def remember_input(path: str | os.PathLike) -> None:
    """Record that ``path`` was read as input in this process (writers will refuse it)."""
    ident = PathIdentity.of(path)
    with _remembered_lock:
        _remembered[ident.real] = ident


def remembered_inputs() -> list[PathIdentity]:
    """Inputs read by :mod:`napari_fusion.io` in this process."""
    with _remembered_lock:
        return list(_remembered.values())


def forget_inputs() -> None:
    """Forget the remembered inputs (for long-running sessions and tests)."""
    with _remembered_lock:
        _remembered.clear()


def _identities(inputs: Iterable[str | os.PathLike | PathIdentity]) -> list[PathIdentity]:
    out = [i if isinstance(i, PathIdentity) else PathIdentity.of(i) for i in inputs]
    return out + remembered_inputs()


def _is_store(path: Path) -> bool:
    return path.suffix.lower() == ".zarr"


def check_output_path(
    path: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike | PathIdentity] = (),
    overwrite: bool = False,
    what: str = "output",
    folder: bool = False,
) -> Path:
    """Refuse an unsafe output before any work; return it as a :class:`~pathlib.Path`.

    Raises :class:`~napari_fusion.FusionOutputError` (one line, naming the
    file) when ``path``:

    * is, or is a link to, one of ``inputs`` or an input remembered by
      :func:`remember_input` (same real path or same inode);
    * lies inside an input folder or zarr store, or (``folder=True``, e.g. a
      zarr output or a batch output folder) contains an input;
    * exists and ``overwrite`` is false (``folder=True``: the caller decides
      what an existing folder means, this check only refuses a file there);
    * cannot be created: its folder lies under a regular file, or is not writable.
    """
    out = Path(path)
    ident = PathIdentity.of(out)
    folder = folder or _is_store(out)
    for inp in _identities(inputs):
        same = ident.real == inp.real or (ident.inode is not None and ident.inode == inp.inode)
        if same:
            raise FusionOutputError(f"{what} {out} is the input {inp.real}; choose another output path")
        if inp.is_dir and inp.contains(ident):
            kind = "zarr store" if _is_store(inp.real) else "folder"
            raise FusionOutputError(f"{what} {out} lies inside the input {kind} {inp.real}; write outside the input")
        if folder and ident.contains(inp):
            raise FusionOutputError(f"{what} {out} contains the input {inp.real}; choose another output folder")
    if folder:
        if ident.inode is not None and not ident.is_dir:
            raise FusionOutputError(f"{what} {out} exists and is a file, not a folder")
    elif ident.inode is not None:
        if ident.is_dir:
            raise FusionOutputError(f"{what} {out} is a folder; give a file name")
        if not overwrite:
            raise FusionOutputError(f"{what} {out} already exists; pass --overwrite (overwrite=True) to replace it")
    check_writable_folder(ident.real if folder else ident.real.parent, what=what, target=out)
    return out


def check_writable_folder(folder: Path, *, what: str = "output", target: Path | None = None) -> None:
    """Refuse when ``folder`` cannot be created or written (checked on its nearest existing ancestor)."""
    target = target or folder
    probe = Path(folder)
    while not probe.exists():
        if probe.is_symlink():  # dangling link
            raise FusionOutputError(f"cannot write {what} {target}: {probe} is a broken link")
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    if not probe.is_dir():
        raise FusionOutputError(f"cannot write {what} {target}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise FusionOutputError(f"cannot write {what} {target}: folder {probe} is not writable")


def check_distinct(paths: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse two outputs of one run that are the same file (e.g. ``-o x.tif --labels x.tif``)."""
    seen: dict[Path, str] = {}
    for name, p in paths.items():
        if p is None:
            continue
        real = PathIdentity.of(p).real
        if real in seen:
            raise FusionOutputError(f"{name} and {seen[real]} are the same file {p}; give each its own path")
        seen[real] = name


def check_disk_space(folder: str | os.PathLike, nbytes: int, *, what: str = "output") -> None:
    """Refuse when the file system of ``folder`` has less than ``nbytes`` (+5 %) free."""
    probe = Path(folder)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    need = int(nbytes * 1.05)
    if need > free:
        raise FusionOutputError(
            f"not enough disk space for the {what} in {probe}: about {_human(need)} needed, {_human(free)} free"
        )


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def partial_path(final: Path) -> Path:
    """Hidden temporary name beside ``final`` that keeps its extension (writers pick formats by it)."""
    return final.with_name(f".{final.name}.{os.getpid()}{PARTIAL_TAG}{final.suffix}")


def is_partial_name(name: str) -> bool:
    """True for the temporary files of :func:`partial_path`."""
    return _PARTIAL_RE.match(name) is not None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_partials(final: Path) -> list[Path]:
    """Delete temporaries of ``final`` left by processes that no longer run; return them."""
    removed: list[Path] = []
    folder = final.parent
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _PARTIAL_RE.match(entry.name)
        if m and m.group("name") == final.name and not _pid_alive(int(m.group("pid"))):
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


def fingerprint_paths(paths: Iterable[str | os.PathLike]) -> list[list]:
    """Identity of input files and folders: ``[real path, size, mtime_ns]`` per file (folders walked).

    Cheap (no content is read); used to tell whether an interrupted output was
    made from the same inputs before it is resumed.
    """
    out: list[list] = []
    for p in paths:
        real = Path(os.path.realpath(os.fspath(p)))
        if real.is_dir():
            for root, dirs, files in os.walk(real):
                dirs.sort()
                for name in sorted(files):
                    f = Path(root) / name
                    with contextlib.suppress(OSError):
                        st = f.stat()
                        out.append([str(f), st.st_size, st.st_mtime_ns])
        else:
            with contextlib.suppress(OSError):
                st = real.stat()
                out.append([str(real), st.st_size, st.st_mtime_ns])
    return out


def _fsync_file(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicGroup:
    """Write several files at temporary names and rename them all into place at :meth:`commit`.

    Used as a context manager: on an exception (or ``KeyboardInterrupt``) every
    temporary file is removed and no final name is touched.
    """

    def __init__(self) -> None:
        self._pairs: list[tuple[Path, Path]] = []
        self.committed: list[Path] = []

    def temp_for(self, final: str | os.PathLike) -> Path:
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(final)
        tmp = partial_path(final)
        self._pairs.append((tmp, final))
        return tmp

    def commit(self) -> list[Path]:
        try:
            for tmp, _ in self._pairs:
                _fsync_file(tmp)
            for tmp, final in self._pairs:
                os.replace(tmp, final)
                self.committed.append(final)
        except BaseException:  # an interrupt or a full disk while committing: no temporary stays
            self.abort()
            raise
        self._pairs = []
        return self.committed

    def abort(self) -> None:
        for tmp, _ in self._pairs:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._pairs = []

    def __enter__(self) -> AtomicGroup:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._pairs:
            self.commit()


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``final`` atomically, on failure it is removed."""
    with AtomicGroup() as group:
        yield group.temp_for(final)


__all__ = [
    "AtomicGroup",
    "PathIdentity",
    "atomic_file",
    "check_disk_space",
    "check_distinct",
    "check_output_path",
    "check_writable_folder",
    "fingerprint_paths",
    "forget_inputs",
    "is_partial_name",
    "partial_path",
    "remember_input",
    "remembered_inputs",
    "remove_stale_partials",
]
