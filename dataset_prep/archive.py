"""Images inside tar archives, read in place: each is a byte range of the archive file, read with pread.

ImageNet's train tar is a tar of 1,000 uncompressed per-class tars, so every JPEG in it is one contiguous byte
range of the big file (outer member's data offset + inner member's data offset). Indexing reads only the
512-byte headers and seeks past the data: one sequential pass, no extraction, no temporary copy.
"""
import io
import os
import tarfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

from pipeline.errors import UserError
from pipeline.progress import Progress


class ArchiveError(UserError):
    """A tar that cannot be used as it is (truncated, not a tar, a class tar that is not one); one line, exit 2."""


@dataclass(frozen=True, slots=True)  # slots: ImageNet's train tar indexes to 1.28 million of these
class ArchiveMember:
    """One file inside an archive: `size` bytes at `offset` of `archive` (picklable, for scan and writer workers)."""
    archive: str
    offset: int
    size: int
    name: str  # as shown in reports: inner tar and member, e.g. n01440764.tar/n01440764_10026.JPEG

    def __str__(self) -> str:
        return f"{self.archive}:{self.name}"


ImageSource = Union[str, ArchiveMember]  # a path on disk, or a byte range of an archive

_descriptors: Dict[Tuple[int, str], int] = {}  # (pid, archive) -> descriptor: one open file per process


def read_member(member: ArchiveMember) -> bytes:
    """The member's bytes, read with pread (no shared file position: safe in threads and forked workers)."""
    key = (os.getpid(), member.archive)
    if key not in _descriptors:
        _descriptors[key] = os.open(member.archive, os.O_RDONLY)
    data = os.pread(_descriptors[key], member.size, member.offset)
    if len(data) != member.size:
        raise OSError(f"{member}: {len(data)} of {member.size} bytes readable (the archive was truncated)")
    return data


def open_source(source: ImageSource):
    """What PIL's Image.open takes: the path itself, or the member's bytes as a file."""
    return io.BytesIO(read_member(source)) if isinstance(source, ArchiveMember) else source


def source_size(source: ImageSource) -> int:
    return source.size if isinstance(source, ArchiveMember) else os.path.getsize(source)


BLOCK = 512  # tar's header and padding unit
REGULAR_FILES = (b"0", b"\0", b"7")
PAX_HEADER, GNU_LONG_NAME = b"x", b"L"  # they give the next member's name (and pax its size)


def _number(field: bytes) -> int:
    """A tar numeric field: octal text, or GNU base-256 for sizes of 8 GiB and more."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _pax_records(payload: bytes, label: str) -> Dict[str, bytes]:
    """A pax extended header's `LENGTH key=value\\n` records."""
    records, position = {}, 0
    try:
        while position < len(payload) and payload[position:position + 1] != b"\0":
            space = payload.index(b" ", position)
            end = position + int(payload[position:space])
            key, _, value = payload[space + 1:end - 1].partition(b"=")
            records[key.decode()] = value
            position = end
    except ValueError:
        raise ArchiveError(f"{label} has a damaged pax header; download it again") from None
    return records


def _read_header(file, start: int, position: int, label: str) -> Optional[Tuple[bytes, int, bytes]]:
    """(type flag, size, name) of the header `position` bytes into the tar at `start`; None at the
    end-of-archive marker."""
    file.seek(start + position)
    header = file.read(BLOCK)
    if len(header) < BLOCK:
        raise ArchiveError(f"{label} is truncated: it ends inside a header or without tar's end-of-archive "
                           "marker; download it again")
    if header == bytes(BLOCK):
        return None
    try:
        valid = _number(header[148:156]) == sum(header[:148]) + 8 * 32 + sum(header[156:])
    except ValueError:
        valid = False
    if not valid:
        raise ArchiveError(f"{label} is not an uncompressed tar archive or is damaged (bad header at byte "
                           f"{position:,})")
    name = header[:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
    return header[156:157], _number(header[124:136]), prefix + b"/" + name if prefix else name


def regular_files(file, start: int, size: int, label: str) -> List[Tuple[str, int, int]]:
    """(name, absolute data offset, size) of each regular file of the uncompressed tar held in
    [start, start + size) of `file`, read from its 512-byte headers only (ustar, GNU and pax: the long names
    and sizes of the last two included). Several times faster than tarfile, which builds a full TarInfo per
    member: ImageNet's train tar has 1.28 million."""
    found, position, pending = [], 0, {}
    while (fields := _read_header(file, start, position, label)) is not None:
        kind, length, name = fields
        extended, data = kind in (PAX_HEADER, GNU_LONG_NAME), position + BLOCK
        if not extended and "size" in pending:
            length = int(pending["size"])
        if data + length > size:
            raise ArchiveError(f"{label} is truncated: a member ends at byte {data + length:,}, the archive has "
                               f"{size:,}; download it again")
        if extended:
            file.seek(start + data)
            payload = file.read(length)
            pending.update(_pax_records(payload, label) if kind == PAX_HEADER
                           else {"path": payload.split(b"\0", 1)[0]})
        else:
            if kind in REGULAR_FILES:
                name = pending.get("path") or name
                found.append((name.decode("utf-8", "surrogateescape"), start + data, length))
            pending = {}
        position = data + -(-length // BLOCK) * BLOCK
    return found


def index_flat_tar(path: str) -> List[ArchiveMember]:
    """Every regular file of a tar (ImageNet's val tar: 50,000 flat JPEGs), sorted by name."""
    with open(path, "rb") as file:
        members = [ArchiveMember(path, offset, length, name)
                   for name, offset, length in regular_files(file, 0, os.path.getsize(path), path)]
    return sorted(members, key=lambda member: member.name)


def index_tar_of_tars(path: str) -> Dict[str, List[ArchiveMember]]:
    """ImageNet's train tar: inner tar name without `.tar` (the WNID) -> its files sorted by name, as byte
    ranges of the outer file. One pass over the headers, with a progress bar over the archive's bytes."""
    size = os.path.getsize(path)
    classes: Dict[str, List[ArchiveMember]] = {}
    with open(path, "rb", buffering=BLOCK) as file, \
            Progress(total=size, desc=f"index {os.path.basename(path)}", unit="B", unit_scale=True,
                 mininterval=1) as progress:
        for inner_name, inner_start, inner_size in regular_files(file, 0, size, path):
            name = inner_name.rsplit("/", 1)[-1]
            if not name.endswith(".tar"):
                raise ArchiveError(f"{path} holds {inner_name}, not a per-class tar (<wnid>.tar); "
                                   "is this ILSVRC2012_img_train.tar?")
            members = [ArchiveMember(path, offset, length, f"{name}/{member}") for member, offset, length in
                       regular_files(file, inner_start, inner_size, f"class tar {name} inside {path}")]
            classes[name[:-len(".tar")]] = sorted(members, key=lambda member: member.name)
            progress.update(inner_start + inner_size - progress.n)
    return classes


def read_small_tar_gz(path: str, wanted: Tuple[str, ...]) -> Dict[str, bytes]:
    """The members of a small compressed tar (the devkit) whose names end with one of `wanted`."""
    found = {}
    try:
        with tarfile.open(path, mode="r:*") as archive:
            for info in archive:
                suffix = next((end for end in wanted if info.isfile() and info.name.endswith(end)), None)
                if suffix:
                    found[suffix] = archive.extractfile(info).read()
    except (tarfile.ReadError, EOFError, OSError) as error:
        raise ArchiveError(f"{path} is truncated or not a tar archive ({error}); download it again") from None
    return found
