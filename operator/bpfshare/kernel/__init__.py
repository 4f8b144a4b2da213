"""The kernel layer: live handles (Map, Program, Link) over the bpf() syscall, kept apart from specs.

Modules, one concept each: ``libc`` (the C library, opened once), ``syscall`` (bpf(), FD), ``abi``
(attr and info layouts), ``objects`` (what every BPF object shares: the ``KernelObject`` base,
pins, IDs), ``maps``, ``compat`` (may a live map stand in for a spec?), ``pins`` (shared pinned
maps), ``programs``, ``links``, ``cgroup``, ``netns``, ``tc`` (cls_bpf via netlink), ``tcx``.
Import the submodule you need; nothing heavy (pyroute2) is imported here.
"""
