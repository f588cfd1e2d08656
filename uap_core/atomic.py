"""Writing a group of files all-or-nothing, and moving one without clobbering.

:func:`write_files_atomically` (used by :func:`uap_core.artifacts.save_uap` for an artifact's .safetensors, .json and
.png) stages each file as a hidden, fsynced temp file in the target's folder, keeps the old versions as backups and
``os.replace``-s the temps over the targets; if anything fails, the files already replaced get their old content
back, so a reader sees the old group or the new one, never a mix or a half-written file. Temp files are hidden
(leading ``.``) and end with :data:`TEMP_SUFFIX`, so folder listings can skip those an interrupted write left.

:func:`move_all_no_clobber` (used by :meth:`uap_core.library.UAPLibrary.rename`) moves several files without ever
replacing an existing target (hard link + unlink), moving back what it moved when one move fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"  # temporary files are hidden (leading ".") and end with this


def _write_fully(fileobj: BinaryIO, data: bytes) -> None:
    """Write ``data`` to an open file (kept separate so tests can simulate a crash mid-write)."""
    fileobj.write(data)


def _temp_path_for(target: Path, kind: str) -> str:
    return f".{target.name[:60]}.{kind}-"


def _write_temp(target: Path, data: bytes) -> Path:
    """Write ``data`` to a new hidden temp file next to ``target``, flushed and fsynced; return its path."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=_temp_path_for(target, "new"), suffix=TEMP_SUFFIX)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_fully(f, data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _backup(target: Path) -> Path:
    """Keep the current version of ``target`` under a hidden temp name (a hard link, or a copy if links fail)."""
    backup = target.parent / f"{_temp_path_for(target, 'old')}{secrets.token_hex(6)}{TEMP_SUFFIX}"
    try:
        os.link(target, backup)
    except OSError:
        try:
            shutil.copy2(target, backup)
        except BaseException:
            backup.unlink(missing_ok=True)
            raise
    return backup


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not supported everywhere (e.g. some network file systems)
    finally:
        os.close(fd)


def write_files_atomically(files: dict[Path, bytes]) -> None:
    """Write several files (path → content) so that either all take their new content or all keep their old one.

    Stage every file as a fsynced temp file first (a full disk fails here, before anything is touched), keep
    the old versions as hard-linked backups, then ``os.replace`` each temp over its target; if a replace fails,
    the targets already replaced get their backups back. Temp files and backups are always removed, except a
    backup that could not be restored (then the error names it).
    """
    staged: list[tuple[Path, Path]] = []  # (temp, target)
    backups: dict[Path, Path] = {}  # target -> backup of its old version
    replaced: list[Path] = []
    keep: set[Path] = set()
    try:
        for target, data in files.items():
            staged.append((_write_temp(target, data), target))
        for _, target in staged:
            if target.exists():
                backups[target] = _backup(target)
        for tmp, target in staged:
            os.replace(tmp, target)
            replaced.append(target)
    except BaseException as exc:
        for target in reversed(replaced):
            backup = backups.get(target)
            try:
                if backup is not None:
                    os.replace(backup, target)
                else:
                    target.unlink(missing_ok=True)  # it did not exist before
            except OSError:
                if backup is not None:
                    keep.add(backup)
                    exc.add_note(f"the previous version of {target.name} is kept as {backup.name}")
        raise
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        for backup in backups.values():
            if backup not in keep:
                backup.unlink(missing_ok=True)
    if files:
        _fsync_dir(next(iter(files)).parent)


def remove_stale_temps(target: Path) -> int:
    """Remove the temp files and backups a killed earlier write of ``target`` left in its folder (a process killed
    mid-write cannot clean up after itself); call it only where no other process writes ``target`` now. Returns how
    many were removed."""
    target = Path(target)
    prefixes = tuple(_temp_path_for(target, kind) for kind in ("new", "old"))
    removed = 0
    try:
        candidates = list(target.parent.iterdir())
    except OSError:
        return 0
    for path in candidates:
        if path.name.startswith(prefixes) and path.name.endswith(TEMP_SUFFIX):
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass
    return removed


def move_no_clobber(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` without ever replacing an existing ``dst`` (FileExistsError instead)."""
    try:
        os.link(src, dst)  # atomic, fails if dst exists
    except FileExistsError:
        raise
    except OSError:
        if dst.exists():  # hard links unsupported here: fall back on check-then-rename
            raise FileExistsError(17, "File exists", str(dst)) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def move_all_no_clobber(moves: list[tuple[Path, Path]]) -> None:
    """Move each ``(src, dst)`` in order with :func:`move_no_clobber`; when one fails (FileExistsError when a
    target appeared, another OSError otherwise), the moves already done are moved back (best effort) and the
    error is raised."""
    done: list[tuple[Path, Path]] = []
    try:
        for src, dst in moves:
            move_no_clobber(src, dst)
            done.append((src, dst))
    except OSError:
        for src, dst in reversed(done):
            try:
                move_no_clobber(dst, src)
            except OSError:
                pass
        raise


__all__ = ["TEMP_SUFFIX", "move_all_no_clobber", "move_no_clobber", "remove_stale_temps", "write_files_atomically"]
