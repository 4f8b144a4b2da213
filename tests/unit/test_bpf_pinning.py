"""iproute2's bpf_pinning file: parsing, lookup, and the refusal naming an unknown value."""

from __future__ import annotations

from pathlib import Path

import pytest

from bpfshare.errors import BpfshareError
from bpfshare.load.bpf_pinning import ENV_VAR, custom_pin_subdir, parse_bpf_pinning, pinning_files
from bpfshare.load.loader import convention_pin_path
from bpfshare.spec import DefinitionStyle, MapSpec, Pinning
from bpfshare.types import MapType


def test_parse_like_iproute2() -> None:
    text = """
    # subpath mappings from mount point for pinning
    3\ttracing
      4 foo/bar   # trailing comment
    0x10 hex/
    010 octal
    1 reserved_object_ns
    2 reserved_global_ns
    """
    assert parse_bpf_pinning(text, "f") == {3: "tracing", 4: "foo/bar", 16: "hex", 8: "octal"}


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("42", r"^f line 1: expected '<pinning value> <subdirectory>', got '42'$"),
        ("42 a b", r"^f line 1: expected"),
        ("forty-two dir", r"^f line 1: 'forty-two' is not a number$"),
        ("42 ../escape", r"^f line 1: subdirectory '../escape' must stay inside the bpffs mount$"),
        ("4294967296 big", r"does not fit 32 bits"),
    ],
)
def test_malformed_lines_are_named(line: str, error: str) -> None:
    with pytest.raises(BpfshareError, match=error):
        parse_bpf_pinning(line, "f")


def test_later_file_wins_and_missing_files_are_empty(tmp_path: Path) -> None:
    usr, etc = tmp_path / "usr", tmp_path / "etc"
    usr.write_text("42 from_usr\n43 only_usr\n")
    etc.write_text("42 from_etc\n")
    files = (usr, etc, tmp_path / "missing")
    assert custom_pin_subdir(42, "m", files) == "from_etc"
    assert custom_pin_subdir(43, "m", files) == "only_usr"
    with pytest.raises(BpfshareError, match=rf"^map 'm': pinning 44 is not in {usr} or {etc} or "):
        custom_pin_subdir(44, "m", files)


def test_the_environment_overrides_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert pinning_files() == (Path("/usr/lib/iproute2/bpf_pinning"), Path("/etc/iproute2/bpf_pinning"))
    private = tmp_path / "bpf_pinning"
    private.write_text("42 datapath\n")
    monkeypatch.setenv(ENV_VAR, str(private))
    assert pinning_files() == (private,)
    spec = MapSpec(
        "custom",
        MapType.Array,
        4,
        8,
        1,
        pinning=Pinning.Custom,
        custom_pinning=42,
        style=DefinitionStyle.IPROUTE2_LEGACY,
    )
    # iproute2's bpf_make_pathname: <tc dir>/../<subdir>/<name>, i.e. under the bpffs mount itself
    assert convention_pin_path(spec, Path("/sys/fs/bpf")) == Path("/sys/fs/bpf/datapath/custom")
    private.write_text("43 other\n")  # edited: the cache follows the file
    with pytest.raises(BpfshareError, match=rf"^map 'custom': pinning 42 is not in {private}$"):
        convention_pin_path(spec, Path("/sys/fs/bpf"))
