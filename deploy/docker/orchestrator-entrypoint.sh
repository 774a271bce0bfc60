#!/bin/sh
# Starts sandbox-orchestrator in a container with a usable cgroup tree.
#
# Container runtimes mount the container's cgroup (v2: its own cgroup namespace)
# read-only. The orchestrator creates one cgroup per environment under
# <cgroup root>/<sandbox.cgroup_parent>, so the mount is made writable here
# (CAP_SYS_ADMIN). On cgroup v2 a cgroup that holds processes cannot hand
# controllers to its children ("no internal processes"), so this process first
# moves into a leaf cgroup of its own; the root is then free for the
# orchestrator to enable memory, cpu and pids below it.
set -eu

CGROUP_ROOT=/sys/fs/cgroup
if ! touch "$CGROUP_ROOT/.sandbox-writable" 2>/dev/null; then
    mount -o remount,rw "$CGROUP_ROOT"
fi
rm -f "$CGROUP_ROOT/.sandbox-writable"

if [ -f "$CGROUP_ROOT/cgroup.controllers" ]; then
    mkdir -p "$CGROUP_ROOT/orchestrator"
    echo $$ > "$CGROUP_ROOT/orchestrator/cgroup.procs"
fi

exec sandbox-orchestrator "$@"
