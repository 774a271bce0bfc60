"""Attacks through system calls: namespaces, mounts, the kernel, other processes, the tty.

The seccomp filter refuses them with EPERM (clone3 with ENOSYS, so the C
library falls back to a clone whose flags the filter can read), while
ordinary work (processes, threads, pipes, compilers, interpreters) still runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sandbox_attack_support import (
    create,
    needs_isolation,
    python_in_sandbox,
    run,
    running_manager,
)

pytestmark = needs_isolation

_SYSCALL_ATTACKS = python_in_sandbox(
    """
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    def attempt(name, number, *args):
        result = libc.syscall(number, *[ctypes.c_long(a) for a in args])
        errno = ctypes.get_errno() if result < 0 else 0
        print(name, "ok" if result >= 0 else f"denied {errno}")
    CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWNS = 0x10000000, 0x40000000, 0x00020000
    SIGCHLD = 17
    attempt("unshare-user", 272, CLONE_NEWUSER)
    attempt("unshare-net", 272, CLONE_NEWNET)
    attempt("unshare-mount", 272, CLONE_NEWNS)
    attempt("clone-newuser", 56, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)
    attempt("clone-newnet", 56, CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0)
    attempt("clone3", 435, 0, 0)
    attempt("setns", 308, 0, CLONE_NEWNET)
    attempt("mount", 165, 0, 0, 0, 0, 0)
    attempt("umount2", 166, 0, 0)
    attempt("pivot_root", 155, 0, 0)
    attempt("chroot", 161, 0)
    attempt("fsopen", 430, 0, 0)
    attempt("open_tree", 428, -100, 0, 0)
    attempt("keyctl", 250, 0, 0, 0, 0, 0)
    attempt("add_key", 248, 0, 0, 0, 0, 0)
    attempt("request_key", 249, 0, 0, 0, 0)
    attempt("bpf", 321, 0, 0, 0)
    attempt("perf_event_open", 298, 0, 0, -1, -1, 0)
    attempt("userfaultfd", 323, 0)
    attempt("io_uring_setup", 425, 1, 0)
    attempt("open_by_handle_at", 304, 0, 0, 0)
    attempt("name_to_handle_at", 303, 0, 0, 0, 0, 0)
    attempt("kexec_load", 246, 0, 0, 0, 0)
    attempt("init_module", 175, 0, 0, 0)
    attempt("ptrace", 101, 0, 0, 0, 0)
    attempt("process_vm_writev", 311, 1, 0, 0, 0, 0, 0)
    attempt("kcmp", 312, 1, 1, 0, 0, 0)
    attempt("tiocsti", 16, 0, 0x5412, 0)
    print("end")
    """
)


@pytest.mark.bubblewrap_only(
    reason="the seccomp filter is bubblewrap's layer; under gVisor system calls reach gVisor's "
    "kernel, not the host's, which allows some of these (unshare, user namespaces) in itself"
)
async def test_dangerous_system_calls_are_refused(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        assert "+seccomp+" in environment.isolation
        result = await run(manager, environment.id, _SYSCALL_ATTACKS)
        lines = result.out.splitlines()
        assert lines[-1] == "end", result.out + result.err
        # EPERM from the filter, not some other error from bad arguments: without the
        # filter, unshare-user, keyctl, bpf, userfaultfd and io_uring_setup succeed or
        # fail otherwise. clone3 gets ENOSYS, for the C library's fallback to clone.
        expected = {"clone3": "denied 38"}
        wrong = [
            line
            for line in lines[:-1]
            if line.split(maxsplit=1)[1] != expected.get(line.split()[0], "denied 1")
        ]
        assert not wrong, result.out


@pytest.mark.bubblewrap_only(
    reason="the seccomp filter is bubblewrap's layer; under gVisor system calls reach gVisor's "
    "kernel, not the host's, which allows some of these (unshare, user namespaces) in itself"
)
async def test_namespace_tools_fail_inside(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        for argv in (
            ["unshare", "-r", "id"],
            ["unshare", "-m", "true"],
            ["unshare", "--user", "--map-root-user", "--net", "true"],
            ["nsenter", "-t", "1", "-m", "true"],
            ["mount", "-t", "tmpfs", "none", "/tmp"],
        ):
            result = await run(manager, environment.id, argv)
            assert result.result.exit_code != 0, (argv, result.out)


async def test_ordinary_work_still_runs_under_the_filter(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        script = (
            "set -e; echo hi | tr a-z A-Z; (sleep 0.01 & wait); "
            "python3 -c 'import threading, subprocess, multiprocessing as m;"
            ' t=threading.Thread(target=print, args=("thread",)); t.start(); t.join();'
            ' print(subprocess.run(["echo", "child"], capture_output=True, text=True).stdout,'
            ' end=""); p=m.Pool(2); print(sum(p.map(abs, [-1, -2]))); p.close()\''
        )
        result = await run(manager, environment.id, ["sh", "-c", script])
        assert result.out.split() == ["HI", "thread", "child", "3"], result.err
