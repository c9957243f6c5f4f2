"""The datastore file: one versioned file, memory-mappable without a copy.

Layout (all integers little-endian; see ``docs/datastore-format.md``)::

    0   8 bytes   magic  b"RDSTORE\\0"
    8   u32       format version (1)
    12  u32       length L of the JSON header
    16  u32       CRC-32 of the JSON header
    20  u32       reserved (0)
    24  L bytes   JSON header (UTF-8): the fields of :class:`DatastoreHeader` + "sections"
    ...           zero padding, then each array at a 64-byte aligned offset

Arrays ("sections"): ``tokens`` (token ids + 1, documents each followed by the separator 0),
``suffix_array`` (int32 or int64 positions into ``tokens``), ``doc_offsets`` (int64, start of
every document in ``tokens`` plus the total length).
"""

from __future__ import annotations

import json
import mmap
import os
import re
import secrets
import struct
import time
import zlib
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

import numpy as np

from restdecode.errors import DatastoreError

MAGIC = b"RDSTORE\x00"
FORMAT_VERSION = 1
ALIGNMENT = 64
SEPARATOR = 0  # stored value between documents; real tokens are stored as id + 1
_PRELUDE = struct.Struct("<8sIII4x")  # magic, version, header length, header crc32
SECTION_NAMES = ("tokens", "suffix_array", "doc_offsets")
_ALLOWED_DTYPES = {
    "tokens": {"<u2", "<u4"},
    "suffix_array": {"<i4", "<i8"},
    "doc_offsets": {"<i8"},
}


@dataclass(frozen=True)
class DatastoreHeader:
    """What a datastore file says about itself.

    ``num_tokens`` counts real tokens only; the token array also holds one separator per
    document (``num_tokens + num_documents`` entries). ``build_time`` is an ISO-8601 UTC time.
    """

    format_version: int
    token_width: int
    vocab_size: int
    tokenizer_fingerprint: str
    num_documents: int
    num_tokens: int
    source: str
    build_time: str
    tokenizer_name: str = ""
    build_seconds: float = 0.0
    source_stats: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def array_length(self) -> int:
        """Entries in the token array (and in the suffix array): tokens plus separators."""
        return self.num_tokens + self.num_documents


def token_width_for(vocab_size: int) -> int:
    """Bytes per stored token: 2 when every id + 1 fits in u16 (0 is the separator), else 4."""
    if vocab_size <= np.iinfo(np.uint16).max:
        return 2
    if vocab_size <= np.iinfo(np.uint32).max:
        return 4
    raise DatastoreError(f"vocabulary of {vocab_size:,} tokens is too large for a datastore")


def token_dtype(width: int) -> np.dtype:
    """The little-endian unsigned dtype of a token width (2 or 4)."""
    return np.dtype("<u2") if width == 2 else np.dtype("<u4")


def suffix_array_dtype(length: int) -> np.dtype:
    """int32 positions when they fit, else int64."""
    return np.dtype("<i4") if length <= np.iinfo(np.int32).max else np.dtype("<i8")


def _align(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


def _expected_width(vocab_size: int) -> int | None:
    """The token width a writer picks for ``vocab_size`` (None: too large for any width)."""
    try:
        return token_width_for(vocab_size)
    except DatastoreError:
        return None


# ----------------------------------------------------------------------------- writing


def write_datastore(
    path: str | os.PathLike,
    header: DatastoreHeader,
    tokens: np.ndarray,
    suffix_array: np.ndarray,
    doc_offsets: np.ndarray,
) -> Path:
    """Write a complete datastore file atomically (temporary file in the same folder, renamed).

    A build that fails or is killed leaves any previous file at ``path`` untouched; temporary
    files left by killed writers of the same ``path`` are removed first. The file's mode follows
    the umask, like any other file the user creates.
    """
    path = check_output_path(path)
    arrays = {
        "tokens": np.ascontiguousarray(tokens, dtype=token_dtype(header.token_width)),
        "suffix_array": np.ascontiguousarray(suffix_array, dtype=suffix_array_dtype(len(tokens))),
        "doc_offsets": np.ascontiguousarray(doc_offsets, dtype="<i8"),
    }
    header_bytes, sections = _layout(header, arrays)
    remove_stale_temp_files(path)
    tmp_name = None
    try:
        fd, tmp_name = _create_temp_file(path)
        with os.fdopen(fd, "wb") as out:
            out.write(_PRELUDE.pack(MAGIC, FORMAT_VERSION, len(header_bytes), zlib.crc32(header_bytes)))
            out.write(header_bytes)
            for name in SECTION_NAMES:
                out.write(b"\0" * (sections[name]["offset"] - out.tell()))
                out.write(memoryview(arrays[name]).cast("B"))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise DatastoreError(f"cannot write the datastore {path}: {error.strerror or error}") from error
        raise
    return path


def check_output_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path if a datastore can be written there (its folder is created); else a
    :class:`DatastoreError` naming it. Cheap: meant to run before a long build."""
    if not os.fspath(path):
        raise DatastoreError("the output path is empty: give a file name such as store.rds")
    path = Path(path)
    if path.is_dir():
        raise DatastoreError(f"output {path} is a directory: give a file name such as {path / 'store.rds'}")
    parent = next((folder for folder in path.parents if folder.exists()), None)
    if parent is not None and not parent.is_dir():
        raise DatastoreError(f"cannot write the datastore {path}: {parent} is not a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = _create_temp_file(path)  # as root, os.access() says yes even on a read-only mount
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise DatastoreError(f"cannot write the datastore {path}: {error.strerror or error}") from error
    return path


_STALE_AGE_SECONDS = 24 * 3600  # temp names without a pid (older versions): stale after a day


def _temp_pattern(path: Path) -> re.Pattern:
    """Names of temporary files of ``path``: ``.NAME.pid<PID>.<hex>.tmp`` (or, from versions
    before the pid was recorded, ``.NAME.<8 characters>.tmp``)."""
    return re.compile(rf"\.{re.escape(path.name)}\.(?:pid(\d+)\.[0-9a-f]+|[a-z0-9_]{{8}})\.tmp")


def _create_temp_file(path: Path) -> tuple[int, str]:
    """A new temporary file next to ``path``, named after this process; mode 0666 less the umask."""
    while True:
        name = path.parent / f".{path.name}.pid{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(name)
        except FileExistsError:
            continue


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files of ``path`` whose writer is gone (killed mid-write); returns them.

    The writer's pid is in the name; a temporary file of a live process is kept. Names without a
    pid (older versions) are removed once a day old. Pids are per machine: two machines writing
    the same file on a shared filesystem at the same moment are not supported.
    """
    path = Path(path)
    pattern = _temp_pattern(path)
    removed = []
    try:
        candidates = [entry for entry in os.scandir(path.parent) if pattern.fullmatch(entry.name)]
    except OSError:
        return removed
    for entry in candidates:
        pid = pattern.fullmatch(entry.name).group(1)
        try:
            stale = (not _process_alive(int(pid)) if pid is not None
                     else time.time() - entry.stat().st_mtime > _STALE_AGE_SECONDS)
            if stale:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue  # gone already, or not ours to delete
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process may be writing
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists, owned by another user (or a pid we cannot judge: keep the file)
    return True


def _layout(header: DatastoreHeader, arrays: dict[str, np.ndarray]) -> tuple[bytes, dict]:
    """JSON header bytes and the section table.

    Section offsets depend on where the header ends, which depends on the offsets' digits:
    grow the data start until the header fits in front of it.
    """
    checksums = {name: zlib.crc32(memoryview(array).cast("B")) for name, array in arrays.items()}
    data_start = _align(_PRELUDE.size)
    while True:
        sections, offset = {}, data_start
        for name in SECTION_NAMES:
            array = arrays[name]
            sections[name] = {"offset": offset, "dtype": array.dtype.str,
                              "count": int(array.size), "crc32": checksums[name]}
            offset = _align(offset + array.nbytes)
        header_bytes = json.dumps({**asdict(header), "sections": sections}, indent=1).encode()
        if _PRELUDE.size + len(header_bytes) <= data_start:
            return header_bytes, sections
        data_start = _align(_PRELUDE.size + len(header_bytes))


# ----------------------------------------------------------------------------- reading


@dataclass
class MappedDatastore:
    """A datastore file mapped into memory: its header and zero-copy array views."""

    path: Path
    header: DatastoreHeader
    tokens: np.ndarray
    suffix_array: np.ndarray
    doc_offsets: np.ndarray
    sections: dict[str, dict]
    file_size: int
    mapping: mmap.mmap | None


def read_datastore(path: str | os.PathLike) -> MappedDatastore:
    """Map a datastore file and check everything that can be checked without reading the arrays.

    Raises :class:`DatastoreError` naming the file for a missing or unreadable file, bad magic,
    unknown version, truncation, a corrupt header or lengths that do not agree with each other.
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise DatastoreError(f"{path} is a directory, not a datastore file")
        if not path.is_file():
            raise DatastoreError(f"no datastore file at {path}")
        with open(path, "rb") as handle:
            file_size = os.fstat(handle.fileno()).st_size
            prelude = handle.read(_PRELUDE.size)
            _check_prelude(path, prelude, file_size)
            _, _, header_length, header_crc = _PRELUDE.unpack(prelude)
            if _PRELUDE.size + header_length > file_size:
                raise DatastoreError(f"{path} is truncated: its header needs {_PRELUDE.size + header_length:,} "
                                     f"bytes, the file has {file_size:,}")
            header_bytes = handle.read(header_length)
            header, sections = _parse_header(path, header_bytes, header_crc)
            sections = _check_sections(path, header, sections, file_size)
            mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if file_size else None
    except OSError as error:
        raise DatastoreError(f"cannot read the datastore {path}: {error.strerror or error}") from error
    arrays = {name: _view(mapping, sections[name]) for name in SECTION_NAMES}
    _check_arrays(path, header, arrays)
    return MappedDatastore(path, header, arrays["tokens"], arrays["suffix_array"],
                           arrays["doc_offsets"], sections, file_size, mapping)


def _check_prelude(path: Path, prelude: bytes, file_size: int) -> None:
    if file_size == 0:
        raise DatastoreError(f"{path} is empty: not a restdecode datastore (rebuild it)")
    if prelude[: len(MAGIC)] != MAGIC[: len(prelude)]:
        raise DatastoreError(f"{path} is not a restdecode datastore (bad magic bytes "
                             f"{prelude[:len(MAGIC)]!r}, expected {MAGIC!r})")
    if len(prelude) < _PRELUDE.size:
        raise DatastoreError(f"{path} is truncated: {file_size} bytes, shorter than the fixed header")
    version = _PRELUDE.unpack(prelude)[1]
    if version != FORMAT_VERSION:
        raise DatastoreError(f"{path} has datastore format version {version}; this restdecode reads "
                             f"version {FORMAT_VERSION} only (rebuild the datastore with build-datastore)")


_INT_FIELDS = ("format_version", "token_width", "vocab_size", "num_documents", "num_tokens")
_STR_FIELDS = ("tokenizer_fingerprint", "source", "build_time", "tokenizer_name")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_header(path: Path, header_bytes: bytes, header_crc: int) -> tuple[DatastoreHeader, Any]:
    if zlib.crc32(header_bytes) != header_crc:
        raise DatastoreError(f"{path} has a corrupt header (checksum mismatch)")
    try:
        fields = json.loads(header_bytes)
        sections = fields.pop("sections")
        known = {f.name for f in dataclass_fields(DatastoreHeader)}
        header = DatastoreHeader(**{key: value for key, value in fields.items() if key in known})
    except RecursionError as error:
        raise DatastoreError(f"{path} has an unreadable header: JSON nested too deeply") from error
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise DatastoreError(f"{path} has an unreadable header: {error!r}") from error
    _check_header_fields(path, header)
    return header, sections


def _check_header_fields(path: Path, header: DatastoreHeader) -> None:
    """Types and ranges of the header fields (a hand-made header may have a valid checksum)."""
    def corrupt(name: str) -> DatastoreError:
        return DatastoreError(f"{path} has a corrupt header: {name} = {getattr(header, name)!r}")

    for name in _INT_FIELDS:
        value = getattr(header, name)
        if not _is_int(value) or value < 0:
            raise corrupt(name)
    for name in _STR_FIELDS:
        if not isinstance(getattr(header, name), str):
            raise corrupt(name)
    if not _is_number(header.build_seconds):
        raise corrupt("build_seconds")
    if not isinstance(header.source_stats, dict):
        raise corrupt("source_stats")
    if not isinstance(header.timings, dict) or not all(map(_is_number, header.timings.values())):
        raise corrupt("timings")
    if header.format_version != FORMAT_VERSION:
        raise corrupt("format_version")
    if header.vocab_size < 1:
        raise corrupt("vocab_size")
    expected_width = _expected_width(header.vocab_size)
    if header.token_width != expected_width:
        raise DatastoreError(f"{path} has a corrupt header: token width {header.token_width} does not "
                             f"match a vocabulary of {header.vocab_size:,} tokens (expected {expected_width})")


def _check_sections(path: Path, header: DatastoreHeader, sections: Any, file_size: int) -> dict[str, dict]:
    """Dtypes, alignment, lengths against the header, and that every byte is present; returns
    the section table of the known sections."""
    expected_counts = {"tokens": header.array_length, "suffix_array": header.array_length,
                       "doc_offsets": header.num_documents + 1}
    end = 0
    for name in SECTION_NAMES:
        section = sections.get(name) if isinstance(sections, dict) else None
        if not isinstance(section, dict) or not {"offset", "dtype", "count"} <= section.keys():
            raise DatastoreError(f"{path} has a corrupt header: section '{name}' is missing")
        if not all(_is_int(section[key]) and section[key] >= 0 for key in ("offset", "count")):
            raise DatastoreError(f"{path} has a corrupt header: section '{name}' = {section!r}")
        dtype = section["dtype"]
        if not isinstance(dtype, str) or dtype not in _ALLOWED_DTYPES[name] or (
                name == "tokens" and np.dtype(dtype).itemsize != header.token_width):
            raise DatastoreError(f"{path}: section '{name}' has unexpected dtype {dtype!r}")
        if section["count"] != expected_counts[name]:
            raise DatastoreError(f"{path} has inconsistent lengths: section '{name}' holds "
                                 f"{section['count']:,} entries, the header implies {expected_counts[name]:,}")
        if section["offset"] % ALIGNMENT or section["offset"] < end:
            raise DatastoreError(f"{path}: section '{name}' is misplaced (offset {section['offset']})")
        end = section["offset"] + section["count"] * np.dtype(dtype).itemsize
        if end > file_size:
            raise DatastoreError(f"{path} is truncated: section '{name}' needs bytes up to {end:,}, "
                                 f"the file has {file_size:,}")
    if end != file_size:
        raise DatastoreError(f"{path} has inconsistent lengths: {file_size - end:,} unexpected bytes "
                             "after the last section")
    return {name: sections[name] for name in SECTION_NAMES}


def _view(mapping: mmap.mmap | None, section: dict) -> np.ndarray:
    """A read-only, zero-copy numpy view of one section (a plain ndarray, which numba accepts)."""
    if mapping is None or section["count"] == 0:
        return np.zeros(0, dtype=section["dtype"])
    return np.frombuffer(mapping, dtype=section["dtype"], count=section["count"], offset=section["offset"])


def _check_arrays(path: Path, header: DatastoreHeader, arrays: dict[str, np.ndarray]) -> None:
    """O(1) checks of the array contents: first/last document offsets, final separator."""
    offsets, tokens = arrays["doc_offsets"], arrays["tokens"]
    if offsets[0] != 0 or offsets[-1] != tokens.size or (tokens.size and tokens[-1] != SEPARATOR):
        raise DatastoreError(f"{path} has inconsistent lengths: document offsets do not span the "
                             "token array")


def verify_checksums(mapped: MappedDatastore) -> list[str]:
    """Names of the sections whose CRC-32 does not match the header (reads the whole file)."""
    arrays = {"tokens": mapped.tokens, "suffix_array": mapped.suffix_array,
              "doc_offsets": mapped.doc_offsets}
    return [name for name in SECTION_NAMES
            if zlib.crc32(memoryview(arrays[name]).cast("B")) != mapped.sections[name].get("crc32")]
