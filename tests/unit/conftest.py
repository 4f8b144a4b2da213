"""Unit tests: pure Python, no kernel, fast.

Objects are built with clang by ``tests.fixtures.objects`` (``bpf_objects``: the examples of bpf/;
``compile_bpf``: C snippets), which the root conftest registers as a plugin.
"""
