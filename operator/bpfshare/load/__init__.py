"""Loading and attaching: a ``CollectionSpec`` plus map bindings become live programs on targets.

``loader`` resolves maps (reuse after a compatibility check, or create and pin) and loads one
program through the verifier; ``attach`` attaches it to tc, tcx and cgroup targets.
"""
