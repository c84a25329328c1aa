"""dataset_prep.archive: tar headers read without tarfile, byte ranges read back with pread."""
import io
import tarfile

import pytest

from conftest import tar_bytes
from dataset_prep.archive import ArchiveError, index_flat_tar, read_member


@pytest.mark.parametrize("tar_format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_header_reader_agrees_with_tarfile(tmp_path, tar_format):
    """The fast header reader (plain headers) and Python's tarfile (what it falls back to for pax and GNU
    long-name headers) list the same files at the same byte ranges; a 150-character name forces the long-name
    headers in GNU and pax format."""
    path = tmp_path / "flat.tar"
    names = ["b.JPEG", "a.JPEG", "deep/" + "x" * 150 + ".JPEG"] if tar_format != tarfile.USTAR_FORMAT else \
        ["b.JPEG", "a.JPEG", "sub/c.JPEG"]
    with tarfile.open(path, "w", format=tar_format) as archive:
        for index, name in enumerate(names):
            info = tarfile.TarInfo(name)
            data = bytes([index]) * (700 * index + 3)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    members = index_flat_tar(str(path))
    with tarfile.open(path) as archive:
        expected = sorted((info.name, info.offset_data, info.size) for info in archive if info.isfile())
    assert [(m.name, m.offset, m.size) for m in members] == expected
    assert [read_member(m) for m in members] == [bytes([names.index(m.name)]) * m.size for m in members]


def test_a_tar_cut_at_a_member_boundary_is_truncated(tmp_path):
    """No end-of-archive marker: the rest of the classes were lost, which must not pass as a smaller set."""
    path = tmp_path / "cut.tar"
    path.write_bytes(tar_bytes([("a.JPEG", b"x" * 512), ("b.JPEG", b"y" * 512)])[:2048])
    with pytest.raises(ArchiveError, match="is truncated"):
        index_flat_tar(str(path))
