"""The node's ledger: what bpfshare holds on this node and for which resource, kept in bpffs.

The agent keeps no database: after a restart it must know exactly what is its own. Each record is
a one-entry array map holding length-prefixed JSON, pinned beside what it describes:

- ``<program dir>/meta`` (``ProgramMeta``): which bytecode and bindings the pinned program came
  from (to skip a needless reload), the tc slots it claims (links are pinned, tc filters cannot
  be), the program IDs that are its own (the pinned one, and one being loaded), and the maps it
  pinned outside its directory (pinned by name). Claims are written *before* the kernel is
  changed and narrowed once the change is done, so a failure in between leaves them recorded and
  the next pass completes or undoes the change.
- ``<root>/ledger/maps/<BpfMap>`` (``MapRecord``): the pin a BpfMap holds and the map ID behind
  it, so that a second BpfMap on the same pin, a changed ``pinName`` or ``spec.adopt`` and a
  removed pin are all decided by what was recorded, not guessed from names.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, Self

from bpfshare.errors import BpfshareError
from bpfshare.spec import MapSpec
from bpfshare.types import MapType

META_VALUE_SIZE = 65536


def record_spec(value_size: int) -> MapSpec:
    """The one-entry array that holds a record of ``value_size`` bytes."""
    return MapSpec(name="bpfshare_meta", type=MapType.Array, key_size=4, value_size=value_size, max_entries=1)


class _Record:
    """Length-prefixed JSON in a fixed-size value; unknown fields ignored, unreadable means empty."""

    VALUE_SIZE = META_VALUE_SIZE  # every pass reads every record: small records are cheap ones

    def encode(self) -> bytes:
        body = json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()  # type: ignore[call-overload]
        if len(body) + 4 > self.VALUE_SIZE:
            raise BpfshareError(f"{type(self).__name__} too large ({len(body)} bytes): too many attachments")
        return struct.pack("<I", len(body)) + body + bytes(self.VALUE_SIZE - 4 - len(body))

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        try:
            (length,) = struct.unpack_from("<I", raw)
            data = json.loads(raw[4 : 4 + length]) if length else {}
            fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
            return cls(**{k: v for k, v in data.items() if k in fields})
        except (struct.error, ValueError, TypeError):
            return cls()  # unreadable: treated as "nothing known", so the engine reloads


@dataclass
class ProgramMeta(_Record):
    fingerprint: str = ""  # bytecode digest + program + bound map IDs: equal means no reload
    program: str = ""
    digest: str = ""
    generation: int = 0
    bindings: dict[str, str] = field(default_factory=dict)  # object map -> pin path
    map_ids: dict[str, int] = field(default_factory=dict)  # object map -> map ID it was bound to
    tc: list[dict[str, Any]] = field(default_factory=list)  # tc slots this program claims
    program_ids: list[int] = field(default_factory=list)  # programs of ours: pinned, or being attached
    pins: list[str] = field(default_factory=list)  # maps it pinned by name, outside its directory
    links: dict[str, str] = field(default_factory=dict)  # link pin name -> target key (hashed names too)


@dataclass
class MapRecord(_Record):
    VALUE_SIZE = 16384  # two paths (the pin, and spec.adopt: at most 4096 bytes each) and a number

    owner: str = ""  # the BpfMap
    pin: str = ""
    map_id: int = 0
    adopted_from: str = ""
