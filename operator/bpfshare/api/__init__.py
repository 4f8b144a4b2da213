"""API types: the BpfMap and BpfProgram resources, their attach targets and status, as pure data.

Nothing here touches the kernel or the cluster; every other layer may import it.
"""
