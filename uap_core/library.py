"""The library: one folder of saved perturbations, used by the UI's Library page and the CLI.

Each entry is an artifact written by :func:`uap_core.artifacts.save_uap` directly inside the root folder::

    root/<name>.safetensors, root/<name>.json, root/<name>.png

Names given by users are mapped to a single safe file stem by :func:`safe_name`, and every path is checked to
lie directly inside the root, so no name ("../../etc/x", "/abs/path", "a/b", "..") can write elsewhere.

    >>> import torch
    >>> lib = UAPLibrary("/tmp/uap_library")
    >>> entry = lib.save("resnet50 linf 10", torch.zeros(3, 224, 224), {"model": "resnet50"}, overwrite=True)
    >>> [e.name for e in lib.list()][:1]
    ['resnet50 linf 10']
"""

from __future__ import annotations

import builtins
import dataclasses
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch

from .artifacts import SAFETENSORS_SUFFIX, UAPArtifact, load_uap, load_uap_bytes, save_uap
from .bundled import assets_dir
from .atomic import move_all_no_clobber
from .errors import ArtifactError, ParameterError
from .recording import RECORDING_SUFFIX

MAX_NAME_CHARS = 80
MAX_NAME_BYTES = 200  # UTF-8; leaves room for suffixes and temp-file prefixes under the usual 255-byte limit
SIBLING_SUFFIXES = (SAFETENSORS_SUFFIX, ".json", ".png", RECORDING_SUFFIX)  # the recording: generate --record
_EXTRA_CHARS = frozenset(" -_.")
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
)


def safe_name(name: str) -> str:
    """Map a user-given name to a safe, portable file stem.

    Keeps only the last path component (directories, ``.`` and ``..`` are dropped), then only Unicode letters
    (with their combining marks), digits, space, ``-``, ``_`` and ``.``; runs of whitespace become one space,
    leading/trailing spaces and dots are stripped, Windows device names (``CON``, ``nul.txt``, ...) get a
    ``_`` after the device part, and the result is cut to 80 characters (and 200 UTF-8 bytes).

        >>> safe_name("../../evil"), safe_name("/tmp/abs"), safe_name("naïve ünïcode name")
        ('evil', 'abs', 'naïve ünïcode name')

    Raises:
        ParameterError: not a string, or nothing is left after cleaning ("", "  ", "..", "///").
    """
    if not isinstance(name, str):
        raise ParameterError(f"a library name must be a string; got {type(name).__name__}")
    text = unicodedata.normalize("NFC", name)
    components = [c for c in re.split(r"[/\\]", text) if c.strip() not in ("", ".", "..")]
    text = components[-1] if components else ""
    kept = []
    for ch in text:
        category = unicodedata.category(ch)
        if category.startswith(("L", "M")) or category == "Nd" or ch in _EXTRA_CHARS:
            kept.append(ch)
        elif category == "Zs":  # other spaces (no-break, thin, ...) -> plain space
            kept.append(" ")
    text = re.sub(r" +", " ", "".join(kept)).strip(" .")
    text = text[:MAX_NAME_CHARS]
    while len(text.encode("utf-8")) > MAX_NAME_BYTES:
        text = text[:-1]
    text = text.strip(" .")
    if not text:
        raise ParameterError(
            f"the name {name!r} has no usable characters; use letters, digits, spaces, '-', '_' or '.'"
        )
    head, dot, tail = text.partition(".")
    if head.strip().upper() in _WINDOWS_RESERVED:  # "CON", "nul.txt" -> "CON_", "nul_.txt"
        text = f"{head.rstrip()}_{dot}{tail}"
    return text


@dataclass
class LibraryEntry:
    """One saved perturbation as listed by :meth:`UAPLibrary.list`.

    Attributes:
        name: the entry's name (its file stem).
        path: its ``.safetensors`` file.
        metadata: the JSON metadata (``{}`` if the entry is corrupt).
        shape: (3, H, W) of the perturbation, or None if it could not be read.
        modified: modification time of the ``.safetensors`` file (seconds since the epoch).
        error: why the entry could not be read, or None.
        source: which library it comes from: "user" (the writable one), "shipped" (the zoo in ``assets/uaps``)
            or another read-only source's label.
        read_only: True for entries that cannot be renamed, deleted or overwritten.
    """

    name: str
    path: Path
    metadata: dict
    shape: tuple | None
    modified: float
    error: str | None
    source: str = "user"
    read_only: bool = False


class UAPLibrary:
    """A folder of saved UAPs: save, list (newest first), load, rename, delete and import uploads.

    ``read_only=True`` opens an existing folder (the shipped zoo) for listing and loading only: save, import,
    rename and delete raise ParameterError, and a missing folder lists as empty instead of being created.
    ``source`` names the library in its entries (``LibraryEntry.source``).
    """

    def __init__(self, root: str | os.PathLike, read_only: bool = False, source: str = "user") -> None:
        """Open (and, unless read-only, create with parents) the library folder ``root``."""
        root_path = Path(root).expanduser()
        self.read_only = bool(read_only)
        self.source = source
        if not read_only:
            try:
                root_path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ArtifactError(f"could not create the library folder {root_path}: {e.strerror or e}") from e
        if root_path.exists() and not root_path.is_dir():
            raise ArtifactError(f"the library folder {root_path} is not a directory")
        self.root = root_path.resolve()
        # list() cache: path -> (file state, entry); reloading every artifact on each UI rerun would be wasteful.
        self._cache: dict[Path, tuple[tuple, LibraryEntry]] = {}

    # -- paths ---------------------------------------------------------------------------------------------

    def _inside(self, path: Path, name: str) -> Path:
        """Return ``path`` if it resolves directly inside the root, else raise ParameterError."""
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root) or resolved.parent != self.root:
            raise ParameterError(f"the name {name!r} does not map to a file inside the library folder")
        return path

    def path_of(self, name: str) -> Path:
        """The ``.safetensors`` path that ``name`` maps to (via :func:`safe_name`), always directly in the root."""
        return self._inside(self.root / f"{safe_name(name)}{SAFETENSORS_SUFFIX}", name)

    def _existing(self, name: str) -> Path:
        """The path of an existing entry called ``name``.

        Entries listed by :meth:`list` may have stems that :func:`safe_name` would change (files copied into
        the folder by hand); a name that is a plain file stem of an existing file is used as is.
        """
        if (
            isinstance(name, str)
            and name
            and not re.search(r"[/\\\x00]", name)
            and name not in (".", "..")
            and not name.startswith(".")
        ):
            direct = self.root / f"{name}{SAFETENSORS_SUFFIX}"
            if direct.is_file():
                return self._inside(direct, name)
        path = self.path_of(name)
        if not path.is_file():
            raise ArtifactError(f"the library has no UAP named {name!r}")
        return path

    def _check_writable(self, action: str) -> None:
        if self.read_only:
            raise ParameterError(f"cannot {action} the {self.source} library: it is read-only")

    @staticmethod
    def _siblings(path: Path) -> list[Path]:
        return [path.with_suffix(s) for s in SIBLING_SUFFIXES]

    # -- reading -------------------------------------------------------------------------------------------

    def _entry(self, path: Path) -> LibraryEntry:
        """Build the entry for ``path``; a file that cannot be loaded gives an entry with ``error`` set."""
        try:
            modified = path.stat().st_mtime
        except OSError:
            modified = 0.0
        try:
            artifact = load_uap(path)
        except ArtifactError as e:
            return LibraryEntry(path.stem, path, {}, None, modified, str(e), self.source, self.read_only)
        except Exception as e:  # list() must survive anything a stray file can do
            return LibraryEntry(path.stem, path, {}, None, modified, f"{type(e).__name__}: {e}", self.source,
                                self.read_only)
        return LibraryEntry(path.stem, path, artifact.metadata, tuple(artifact.delta.shape), modified, None,
                            self.source, self.read_only)

    @staticmethod
    def _state(path: Path) -> tuple:
        """What identifies a version of an entry on disk (tensor file and JSON sidecar stats)."""
        state = []
        for p in (path, path.with_suffix(".json")):
            try:
                st = p.stat()
                state.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                state.append(None)
        return tuple(state)

    def list(self) -> builtins.list[LibraryEntry]:
        """All entries, newest first. Corrupt files are listed with ``error`` set instead of raising."""
        entries = []
        seen = set()
        if not self.root.is_dir():
            return entries
        for path in self.root.glob(f"*{SAFETENSORS_SUFFIX}"):
            if path.name.startswith(".") or not path.is_file():
                continue  # temp files of an interrupted save, hidden files
            seen.add(path)
            state = self._state(path)
            cached = self._cache.get(path)
            if cached is not None and cached[0] == state:
                entry = cached[1]
            else:
                entry = self._entry(path)
                self._cache[path] = (state, entry)
            entries.append(entry)
        for stale in set(self._cache) - seen:
            del self._cache[stale]
        entries.sort(key=lambda e: (-e.modified, e.name))
        return entries

    def load(self, name: str, **load_uap_kwargs) -> UAPArtifact:
        """Load entry ``name``; keyword arguments go to :func:`load_uap` (expected_size, resize, eps, norm)."""
        return load_uap(self._existing(name), **load_uap_kwargs)

    # -- writing -------------------------------------------------------------------------------------------

    def save(self, name: str, delta: torch.Tensor, metadata: dict, overwrite: bool = False) -> LibraryEntry:
        """Save a (3, H, W) pixel-space perturbation under ``name`` (see :func:`save_uap`).

        Raises:
            ParameterError: bad name, or an entry of that name exists and ``overwrite`` is False.
            ArtifactError: invalid perturbation or a failed write (the previous entry then stays intact).
        """
        self._check_writable("save to")
        path = self.path_of(name)
        if path.exists() and not overwrite:
            raise ParameterError(
                f"a UAP named {path.stem!r} already exists in the library; choose another name or overwrite it"
            )
        save_uap(delta, metadata, path)
        return self._entry(path)

    def import_bytes(self, name: str, data: bytes, filename: str) -> LibraryEntry:
        """Import an uploaded file (``.safetensors``, ``.pt``/``.pth`` or ``.npy``) as entry ``name``.

        The content is fully validated by :func:`load_uap_bytes` before anything is written. The original
        file name is recorded in ``metadata["imported_from"]``.
        """
        self._check_writable("import into")
        path = self.path_of(name)
        if path.exists():
            raise ParameterError(f"a UAP named {path.stem!r} already exists in the library; choose another name")
        artifact = load_uap_bytes(data, filename)
        metadata = dict(artifact.metadata)
        metadata["imported_from"] = str(filename)
        save_uap(artifact.delta, metadata, path)
        return self._entry(path)

    def rename(self, old: str, new: str) -> LibraryEntry:
        """Rename entry ``old`` (all of its .safetensors/.json/.png files) to ``new``.

        Each file is moved without clobbering (hard link + unlink, so an existing target is never replaced);
        if a move fails, the files already moved are moved back.

        Raises:
            ArtifactError: no entry ``old``.
            ParameterError: bad name, or an entry (or stray file) named ``new`` exists.
        """
        self._check_writable("rename in")
        src = self._existing(old)
        dst = self.path_of(new)
        if dst == src:
            return self._entry(src)
        for d in self._siblings(dst):
            if d.exists():
                raise ParameterError(
                    f"cannot rename {src.stem!r} to {dst.stem!r}: {d.name} already exists in the library"
                )
        moves = [(s, d) for s, d in zip(self._siblings(src), self._siblings(dst)) if s.exists()]
        try:
            move_all_no_clobber(moves)
        except FileExistsError as e:
            raise ParameterError(
                f"cannot rename {src.stem!r} to {dst.stem!r}: {Path(e.filename2 or e.filename or '').name} appeared "
                f"meanwhile"  # os.link names (src, dst): the target is filename2
            ) from None
        except OSError as e:
            raise ArtifactError(f"could not rename {src.stem!r} to {dst.stem!r}: {e.strerror or e}") from e
        return self._entry(dst)

    def delete(self, name: str) -> None:
        """Delete entry ``name`` and its sidecar files.

        Raises:
            ArtifactError: no such entry, or a file could not be removed.
        """
        self._check_writable("delete from")
        path = self._existing(name)
        try:
            for p in self._siblings(path):
                p.unlink(missing_ok=True)
        except OSError as e:
            raise ArtifactError(f"could not delete {path.stem!r}: {e.strerror or e}") from e
        self._cache.pop(path, None)


SHIPPED_DIR = assets_dir() / "uaps"
SHIPPED_SOURCE = "shipped"


def shipped_dir() -> Path:
    """The shipped zoo's folder: $UAP_SHIPPED_DIR if set (tests point it at an empty folder), else assets/uaps."""
    return Path(os.environ.get("UAP_SHIPPED_DIR") or SHIPPED_DIR)


def library_root() -> Path:
    """The user's library folder (the app's, and the CLI's ``--uap NAME``): $UAP_LIBRARY_DIR, default
    ~/.uap_explorer/library (not created here)."""
    return Path(os.environ.get("UAP_LIBRARY_DIR") or Path.home() / ".uap_explorer" / "library").expanduser()


def shipped_library(root: str | os.PathLike | None = None) -> UAPLibrary:
    """The zoo of perturbations shipped with UAP Explorer (``assets/uaps``, built by ``assets/make_zoo.py``),
    read-only."""
    return UAPLibrary(root or shipped_dir(), read_only=True, source=SHIPPED_SOURCE)


class CombinedLibrary:
    """One writable library plus read-only sources (the shipped zoo; for a visitor of a class server, also the
    owner's library), listed and loaded as one.

    Entries of a read-only source are named ``"<source>: <stem>"`` (e.g. ``"shipped: lite0 sga"``). A ``:``
    never survives :func:`safe_name`, so no user entry can take such a name, and renaming, deleting or
    overwriting it is refused with a clear message. Everything else goes to the writable library, whose
    ``root`` this exposes.

        >>> lib = CombinedLibrary(UAPLibrary("/tmp/uap_library"), [shipped_library()])
        >>> all(e.read_only for e in lib.list() if e.source == "shipped")
        True
    """

    def __init__(self, own: UAPLibrary, read_only: builtins.list[UAPLibrary] | tuple = ()) -> None:
        self.own = own
        self.sources = {lib.source: lib for lib in read_only}
        if own.source in self.sources:
            raise ParameterError(f"two libraries are called {own.source!r}")

    @property
    def root(self) -> Path:
        return self.own.root

    @property
    def read_only(self) -> bool:
        return self.own.read_only

    def _split(self, name: str) -> tuple[UAPLibrary, str] | None:
        """(read-only source, stem) for a prefixed name, else None."""
        if isinstance(name, str) and ": " in name:
            prefix, stem = name.split(": ", 1)
            if prefix in self.sources:
                return self.sources[prefix], stem
        return None

    def _refuse(self, name: str, action: str) -> None:
        found = self._split(name)
        if found is not None:
            raise ParameterError(f"{name!r} is read-only ({found[0].source} perturbation): it cannot be {action}; "
                                 "download it or save a copy under another name instead")

    def list(self) -> builtins.list[LibraryEntry]:
        """Read-only sources' entries first (in their ``zoo.rank`` order, names prefixed), then the writable library's
        (newest first)."""
        entries = []
        for source, lib in self.sources.items():
            # the zoo's own order (``zoo.rank``, the order of assets/make_zoo.py: the default model's first)
            ranked = sorted(lib.list(), key=lambda e: ((e.metadata.get("zoo") or {}).get("rank", 1 << 30), e.name))
            entries += [dataclasses.replace(entry, name=f"{source}: {entry.name}") for entry in ranked]
        return entries + self.own.list()

    def load(self, name: str, **load_uap_kwargs) -> UAPArtifact:
        found = self._split(name)
        if found is not None:
            return found[0].load(found[1], **load_uap_kwargs)
        return self.own.load(name, **load_uap_kwargs)

    def path_of(self, name: str) -> Path:
        found = self._split(name)
        if found is not None:
            return found[0]._existing(found[1])
        return self.own.path_of(name)

    def save(self, name: str, delta: torch.Tensor, metadata: dict, overwrite: bool = False) -> LibraryEntry:
        self._refuse(name, "overwritten")
        return self.own.save(name, delta, metadata, overwrite=overwrite)

    def import_bytes(self, name: str, data: bytes, filename: str) -> LibraryEntry:
        self._refuse(name, "overwritten")
        return self.own.import_bytes(name, data, filename)

    def rename(self, old: str, new: str) -> LibraryEntry:
        self._refuse(old, "renamed")
        self._refuse(new, "overwritten")
        return self.own.rename(old, new)

    def delete(self, name: str) -> None:
        self._refuse(name, "deleted")
        self.own.delete(name)


__all__ = ["SHIPPED_DIR", "CombinedLibrary", "LibraryEntry", "UAPLibrary", "safe_name", "shipped_dir", "shipped_library"]
