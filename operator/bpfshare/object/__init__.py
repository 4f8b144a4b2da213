"""The object reader: a relocatable eBPF ELF object -> ``CollectionSpec``, without libbpf.

    from bpfshare.object import read_collection
    spec = read_collection("bpf/flow_counter.o")      # a path, or the object's bytes
    spec.programs["count_ingress"].relocations         # MapRelocation(insn, "shared_counts", MAP_FD)
    spec.maps["shared_counts"].style                   # DefinitionStyle.BTF

Modules, one concept each: ``elf`` (sections, symbols, relocations), ``btf`` / ``btf_ext`` (type
information; CO-RE detection), ``btf_maps`` / ``legacy`` / ``global_data`` (the map-definition
styles), ``slots`` (initial slots of prog arrays and map-in-maps from ``.maps`` relocations),
``sections`` (program types from section names), ``linker`` (bpf-to-bpf calls and map relocations),
``reader`` (putting it together: what cannot be loaded is refused per program and per map, with the
reason, in ``CollectionSpec.refused_programs`` / ``refused_maps``).
"""

from bpfshare.object.reader import read_collection
from bpfshare.object.sections import program_type

__all__ = ["program_type", "read_collection"]
