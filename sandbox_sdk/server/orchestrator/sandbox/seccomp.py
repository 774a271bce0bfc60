"""The seccomp filter every sandboxed process runs under, compiled with libseccomp.

The filter allows by default and refuses, with EPERM, the system calls a
sandboxed process has no business making: those that reach into other
processes (ptrace, process_vm_readv/writev, pidfd_getfd, kcmp), change what
the kernel is (modules, kexec, reboot, swap, clock, bpf, perf events,
keyrings), build new namespaces or mounts (unshare, setns, the clone flags
that make namespaces, mount and the new mount API, pivot_root), open files by
handle, or inject terminal input (the TIOCSTI and TIOCLINUX ioctls). ``clone3``
answers ENOSYS, since its flags sit behind a pointer that seccomp cannot read,
so the C library falls back to ``clone``, whose flags it can. System calls of
another architecture (the x86 32-bit and x32 entry points on x86-64) kill the
process: libseccomp's filter admits only the native one.

It is the class of Docker's default profile, written as a deny list so that
ordinary programs (compilers, interpreters, package builds) keep working.

libseccomp (``libseccomp.so.2``, Debian's ``libseccomp2``) is loaded with
ctypes; where it is missing the filter is reported absent, never faked.
bubblewrap loads the exported program (``--seccomp FD``) just before it
executes the sandbox's first process, which every later process inherits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import tempfile
from dataclasses import dataclass
from functools import cache

# libseccomp's actions and comparison operators (seccomp.h).
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_ERRNO_BASE = 0x00050000
_SCMP_CMP_MASKED_EQ = 7

# The clone flags that create namespaces (linux/sched.h).
_NAMESPACE_CLONE_FLAGS = {
    "CLONE_NEWTIME": 0x00000080,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
_TIOCSTI = 0x5412
_TIOCLINUX = 0x541C

DENIED_SYSCALLS: tuple[str, ...] = (
    # other processes
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    # the kernel itself
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "syslog",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "lookup_dcookie",
    "quotactl",
    "quotactl_fd",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "iopl",
    "ioperm",
    "vhangup",
    "nfsservctl",
    "uselib",
    "keyctl",
    "add_key",
    "request_key",
    "fanotify_init",
    # namespaces and mounts
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    # files by handle (reach files outside the mounts)
    "open_by_handle_at",
    "name_to_handle_at",
    # io_uring runs system calls this filter never sees
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
)


class SeccompUnavailable(Exception):
    """libseccomp cannot be loaded or cannot build the filter; the message says why."""


class _ArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


@dataclass(frozen=True)
class SeccompProgram:
    """A compiled BPF program, as bubblewrap's ``--seccomp`` reads it."""

    bpf: bytes

    def to_fd(self) -> int:
        """A fresh read-only-position memfd holding the program, for one bubblewrap start."""
        fd = os.memfd_create("sandbox-seccomp", os.MFD_CLOEXEC)
        try:
            os.write(fd, self.bpf)
            os.lseek(fd, 0, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return fd


@cache
def _libseccomp() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as error:
        raise SeccompUnavailable(f"libseccomp is not installed ({error})") from error
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_rule_add_array.argtypes = (
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    )
    lib.seccomp_export_bpf.argtypes = (ctypes.c_void_p, ctypes.c_int)
    return lib


def _errno_action(number: int) -> int:
    return _SCMP_ACT_ERRNO_BASE | (number & 0xFFFF)


class _Filter:
    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        self._ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
        if not self._ctx:
            raise SeccompUnavailable("seccomp_init failed")

    def refuse(self, syscall: str, error: int, *conditions: tuple[int, int, int]) -> None:
        """Refuses ``syscall`` with ``error`` when every (arg, mask, value) condition holds.

        A system call this kernel's architecture does not have is skipped.
        """
        number = self._lib.seccomp_syscall_resolve_name(syscall.encode())
        if number < 0:
            return
        array = (_ArgCmp * max(1, len(conditions)))()
        for index, (arg, mask, value) in enumerate(conditions):
            array[index] = _ArgCmp(arg, _SCMP_CMP_MASKED_EQ, mask, value)
        status = self._lib.seccomp_rule_add_array(
            self._ctx, _errno_action(error), number, len(conditions), array
        )
        if status < 0:
            raise SeccompUnavailable(f"cannot add the rule for {syscall} ({os.strerror(-status)})")

    def export(self) -> bytes:
        with tempfile.TemporaryFile() as file:
            status = self._lib.seccomp_export_bpf(self._ctx, file.fileno())
            if status < 0:
                raise SeccompUnavailable(f"cannot export the filter ({os.strerror(-status)})")
            file.seek(0)
            return file.read()

    def release(self) -> None:
        self._lib.seccomp_release(self._ctx)


def build_program() -> SeccompProgram:
    """Compiles the sandbox's filter; raises :class:`SeccompUnavailable` if it cannot."""
    sandbox_filter = _Filter(_libseccomp())
    try:
        for syscall in DENIED_SYSCALLS:
            sandbox_filter.refuse(syscall, errno.EPERM)
        sandbox_filter.refuse("clone3", errno.ENOSYS)
        for flag in _NAMESPACE_CLONE_FLAGS.values():
            sandbox_filter.refuse("clone", errno.EPERM, (0, flag, flag))
        for request in (_TIOCSTI, _TIOCLINUX):
            sandbox_filter.refuse("ioctl", errno.EPERM, (1, 0xFFFFFFFF, request))
        return SeccompProgram(sandbox_filter.export())
    finally:
        sandbox_filter.release()
