"""The cluster controller: the nodes' state objects become each resource's cluster view (SPEC "Status").

``aggregate.py`` (the status, pure), ``release.py`` (finalizers and release, pure), ``view.py`` (the
in-memory view), ``informer.py`` (the list-and-watch streams that feed it), ``writer.py`` (the
coalescing writer), ``kube.py`` (the API calls), ``operator.py`` (kopf: peering, the active period).
"""
