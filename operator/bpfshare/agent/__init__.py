"""The per-node kopf agent: watches resources, drives the node engine, writes this node's status."""
