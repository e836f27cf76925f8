"""Connections and trust, the suite's bottom layer: SSH connections to hosts (fabric for the
runner, testinfra for checks, paramiko for probes) with host keys always checked, reconnects
after a drop, and the local podman CLI. Nothing here knows about teams, steps or pytest."""
