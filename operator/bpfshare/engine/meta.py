"""What the engine loaded and attached for a BpfProgram, kept in bpffs beside the program.

The agent keeps no database: after a restart it must know which bytecode and bindings the pinned
program came from (to skip a needless reload) and which tc filters it created (links are pinned,
tc filters cannot be). A one-entry array map pinned as ``<program dir>/meta`` holds that record as
length-prefixed JSON. It lives and dies with the program's directory.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

from bpfshare.errors import BpfshareError
from bpfshare.spec import MapSpec
from bpfshare.types import MapType

META_VALUE_SIZE = 65536
META_SPEC = MapSpec(name="bpfshare_meta", type=MapType.Array, key_size=4, value_size=META_VALUE_SIZE, max_entries=1)


@dataclass
class ProgramMeta:
    fingerprint: str = ""  # bytecode digest + program + bound map IDs: equal means no reload
    program: str = ""
    digest: str = ""
    generation: int = 0
    bindings: dict[str, str] = field(default_factory=dict)  # object map -> pin path
    map_ids: dict[str, int] = field(default_factory=dict)  # object map -> map ID it was bound to
    tc: list[dict[str, Any]] = field(default_factory=list)  # tc filters this program owns

    def encode(self) -> bytes:
        body = json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()
        if len(body) + 4 > META_VALUE_SIZE:
            raise BpfshareError(f"program record too large ({len(body)} bytes): too many attachments")
        return struct.pack("<I", len(body)) + body + bytes(META_VALUE_SIZE - 4 - len(body))

    @classmethod
    def decode(cls, raw: bytes) -> ProgramMeta:
        try:
            (length,) = struct.unpack_from("<I", raw)
            data = json.loads(raw[4 : 4 + length]) if length else {}
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (struct.error, ValueError, TypeError):
            return cls()  # unreadable: treated as "nothing known", so the engine reloads
