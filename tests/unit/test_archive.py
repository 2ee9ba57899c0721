import io
import os
import stat

from portability.targets import archive


def test_pack_unpack_round_trip_keeps_modes(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "run.sh").write_text("#!/bin/sh\n")
    (src / "sub" / "run.sh").chmod(0o755)
    archive.unpack(io.BytesIO(archive.pack(src, "copy")), "copy", tmp_path / "out")
    assert (tmp_path / "out" / "sub" / "run.sh").read_text() == "#!/bin/sh\n"
    assert stat.S_IMODE((tmp_path / "out" / "sub" / "run.sh").stat().st_mode) == 0o755


def test_unpacking_a_file_replaces_the_destination(tmp_path):
    (tmp_path / "f").write_text("new")
    (tmp_path / "dst").write_text("old")
    archive.unpack(io.BytesIO(archive.pack(tmp_path / "f", "f")), "f", tmp_path / "dst")
    assert (tmp_path / "dst").read_text() == "new"


def test_merging_into_an_existing_directory_keeps_its_mode(tmp_path):
    # Merging a 0755 tree into a sticky, world-writable directory (like /tmp) must not
    # turn it into 0755.
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    src = tmp_path / "src"
    src.mkdir(mode=0o755)
    (src / "x").write_text("x")
    archive.merge_tree(src, shared)
    assert (shared / "x").read_text() == "x"
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
