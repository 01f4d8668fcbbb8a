"""The sandbox's kernel layers that bubblewrap does not build: a seccomp filter, a cgroup per run.

* `seccomp_program()` is a classic-BPF program for `bwrap --seccomp FD`, assembled here by hand
  (about 60 instructions, no libseccomp binding needed). It returns EPERM for the syscalls in
  `DENIED` and checks the arguments of a few more (socket families, buffer sizes, cache eviction);
  everything else is allowed, because the namespaces and rlimits are the main boundary and the
  filter only closes what they leave.
* `RunCgroup` is one cgroup v2 leaf per run (memory.max, pids.max, cgroup.kill). It is optional: it
  needs a writable cgroup v2 directory that already delegates the memory and pids controllers to its
  children, which a container or a plain login session usually does not. `cgroup_parent()` says
  whether it is there, and why not.
"""
from __future__ import annotations

import json
import os
import platform
import select
import secrets
import struct
import time

# Syscall numbers per architecture. Sources: Linux arch/x86/entry/syscalls/syscall_64.tbl (x86_64)
# and include/uapi/asm-generic/unistd.h (aarch64, which uses the generic table). Each rule, with the
# attack it stops:
#   ptrace, process_vm_readv/writev, pidfd_getfd, process_madvise -- reaching into another process
#       of the sandbox: attaching to the supervisor (or, before it, bwrap's init) to clear its
#       parent-death signal, rewriting its memory to forge the outcome, or stealing its report
#       descriptor;
#   memfd_create, memfd_secret -- anonymous files that count against neither RLIMIT_AS nor any tmpfs
#       cap;
#   shmget, msgget -- System V segments and queues: kernel memory that outlives the process that
#       wrote it;
#   io_uring_setup/enter/register -- a ring's fixed-file table holds sockets that no longer count
#       against RLIMIT_NOFILE (one process held ~1 GiB of socket buffers with 8 fds open), and its
#       requests run in kernel workers outside the snippet's own tasks;
#   unshare, setns, and clone with CLONE_NEWUSER -- a nested user namespace, whose root may mount an
#       uncapped tmpfs (bwrap >= 0.8's --disable-userns closes it too; this also covers older
#       bubblewrap). clone3 passes its flags in memory a filter cannot read, so it gets ENOSYS and
#       the C library falls back to clone.
#   socket, socketpair (argument 0, the address family) -- only AF_UNIX, AF_INET, AF_INET6: AF_VSOCK
#       reaches the hypervisor whatever the network namespace says, and netlink, packet and the rest
#       are kernel attack surface no snippet needs (EAFNOSUPPORT, as for a family the kernel lacks).
#       AF_INET/AF_INET6 get SOCK_DGRAM only: the one network a snippet has is its own loopback, and
#       TCP on it is the socket whose buffers grow by themselves (autotuning up to tcp_wmem/tcp_rmem
#       max, 4 and 32 MiB here, past SO_SNDBUF); no CoNaLa reference can reach a server
#       (bench/sandbox_references.py: same outcomes without it);
#   setsockopt(SOL_SOCKET, SO_SNDBUF/SO_RCVBUF and their FORCE forms) -- a socket's buffers stay at
#       net.core.wmem_default/rmem_default (208 KiB) instead of wmem_max (4 MiB, ~8 MiB charged):
#       socket memory is kernel memory outside RLIMIT_AS. (Lowering wmem_max in the sandbox's own
#       network namespace would be gentler, but on Linux 6.18 those sysctls are read-only outside
#       the initial namespace, even for root.)
#   fadvise64(advice = POSIX_FADV_DONTNEED) -- evicting the host's page cache of any file the
#       snippet can read (the write side of a page-cache channel between calls, and a slowdown for
#       the trainer);
#   preadv2(flags & RWF_NOWAIT) -- the cheap read side of that channel: "is this page cached?"
#       without touching the disk (EOPNOTSUPP, what a file without RWF_NOWAIT support answers;
#       timing reads stays possible).
SYSCALLS = {
    "x86_64": {"ptrace": 101, "shmget": 29, "msgget": 68,
               "process_vm_readv": 310, "process_vm_writev": 311,
               "memfd_create": 319, "pidfd_getfd": 438, "process_madvise": 440, "memfd_secret": 447,
               "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
               "unshare": 272, "setns": 308, "clone": 56, "clone3": 435,
               "socket": 41, "socketpair": 53,
               "setsockopt": 54, "fadvise64": 221, "preadv2": 327},
    "aarch64": {"ptrace": 117, "shmget": 194, "msgget": 186,
                "process_vm_readv": 270, "process_vm_writev": 271,
                "memfd_create": 279, "pidfd_getfd": 438, "process_madvise": 440,
                "memfd_secret": 447,
                "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
                "unshare": 97, "setns": 268, "clone": 220, "clone3": 435,
                "socket": 198, "socketpair": 199,
                "setsockopt": 208, "fadvise64": 223, "preadv2": 286},
}
# not plain denials
ARG_RULES = ("clone", "clone3", "socket", "socketpair", "setsockopt", "fadvise64", "preadv2")
DENIED = tuple(name for name in SYSCALLS["x86_64"] if name not in ARG_RULES)
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}  # include/uapi/linux/audit.h
# x86_64's x32 ABI reaches the same calls under numbers with this bit set
X32_SYSCALL_BIT = 0x40000000
CLONE_NEWUSER = 0x10000000  # include/uapi/linux/sched.h
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10  # include/linux/socket.h (the same on every architecture)
# include/linux/net.h: the type's low bits; the rest is SOCK_NONBLOCK/CLOEXEC
SOCK_DGRAM, SOCK_TYPE_MASK = 2, 0xF
# asm-generic/socket.h: SO_SNDBUF, SO_RCVBUF and their FORCE forms
SOL_SOCKET, BUFFER_OPTS = 1, (7, 8, 32, 33)
# include/uapi/linux/fadvise.h (64-bit ABIs), include/uapi/linux/fs.h
POSIX_FADV_DONTNEED, RWF_NOWAIT = 4, 0x8

# Classic BPF (include/uapi/linux/bpf_common.h, seccomp.h): struct sock_filter is
# {u16 code; u8 jt; u8 jf; u32 k}.
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K = 0x20, 0x15, 0x35
BPF_JSET_K, BPF_RET_K, BPF_AND_K = 0x45, 0x06, 0x54
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
EPERM, ENOSYS, EOPNOTSUPP, EAFNOSUPPORT = 1, 38, 95, 97  # asm-generic/errno*.h
SECCOMP_DATA_NR, SECCOMP_DATA_ARCH = 0, 4  # offsets in struct seccomp_data


def _arg(i: int) -> int:
    """Offset of args[i]'s low 32 bits in struct seccomp_data (little-endian, as both tables are);
    every argument checked here is an int or flags the kernel reads as 32 bits."""
    return 16 + 8 * i


def _assemble(program: list[tuple]) -> bytes:
    """(code, k, jt, jf) with jt/jf a label name or 0 (next instruction), and ("label", name)
    markers."""
    labels, pc = {}, 0
    for ins in program:
        if ins[0] == "label":
            labels[ins[1]] = pc
        else:
            pc += 1
    out = []
    for ins in (i for i in program if i[0] != "label"):
        code, k, jt, jf = ins
        here = len(out) + 1  # classic BPF jumps are relative to the next instruction
        out.append(struct.pack("=HBBI", code, labels[jt] - here if jt else 0,
                               labels[jf] - here if jf else 0, k))
    return b"".join(out)


def _argument_checks() -> list[tuple]:
    """The rules that read an argument (each block starts at its label and ends in a return)."""
    checks = [("label", "clone"), (BPF_LD_W_ABS, _arg(0), 0, 0),  # clone's flags
              (BPF_JSET_K, CLONE_NEWUSER, "deny", "allow"),
              ("label", "socket"), (BPF_LD_W_ABS, _arg(0), 0, 0),  # the address family
              (BPF_JEQ_K, AF_UNIX, "allow", 0),
              (BPF_JEQ_K, AF_INET, "inet", 0),
              (BPF_JEQ_K, AF_INET6, "inet", "eafnosupport"),
              ("label", "inet"), (BPF_LD_W_ABS, _arg(1), 0, 0), (BPF_AND_K, SOCK_TYPE_MASK, 0, 0),
              (BPF_JEQ_K, SOCK_DGRAM, "allow", "deny"),
              ("label", "setsockopt"), (BPF_LD_W_ABS, _arg(1), 0, 0),  # level
              (BPF_JEQ_K, SOL_SOCKET, 0, "allow"), (BPF_LD_W_ABS, _arg(2), 0, 0)]  # optname
    checks += [(BPF_JEQ_K, opt, "deny", 0) for opt in BUFFER_OPTS]
    return checks + [(BPF_RET_K, SECCOMP_RET_ALLOW, 0, 0),
                     ("label", "fadvise"), (BPF_LD_W_ABS, _arg(3), 0, 0),  # advice
                     (BPF_JEQ_K, POSIX_FADV_DONTNEED, "deny", "allow"),
                     ("label", "preadv2"), (BPF_LD_W_ABS, _arg(5), 0, 0),  # flags
                     (BPF_JSET_K, RWF_NOWAIT, "eopnotsupp", "allow")]


def seccomp_program(machine: str | None = None) -> bytes:
    """The filter for this machine's architecture; ValueError on one we have no syscall table
    for."""
    machine = machine or platform.machine()
    if machine not in SYSCALLS:
        raise ValueError(f"no seccomp syscall table for {machine} (known: {', '.join(SYSCALLS)})")
    nr = SYSCALLS[machine]
    prog = [(BPF_LD_W_ABS, SECCOMP_DATA_ARCH, 0, 0),
            # a foreign ABI (i386 int 0x80 on x86_64): deny all
            (BPF_JEQ_K, AUDIT_ARCH[machine], 0, "deny"),
            (BPF_LD_W_ABS, SECCOMP_DATA_NR, 0, 0)]
    if machine == "x86_64":
        prog.append((BPF_JGE_K, X32_SYSCALL_BIT, "deny", 0))
    prog += [(BPF_JEQ_K, nr[name], "deny", 0) for name in DENIED]
    prog += [(BPF_JEQ_K, nr["clone3"], "enosys", 0),
             (BPF_JEQ_K, nr["clone"], "clone", 0),
             (BPF_JEQ_K, nr["socket"], "socket", 0),
             (BPF_JEQ_K, nr["socketpair"], "socket", 0),
             (BPF_JEQ_K, nr["setsockopt"], "setsockopt", 0),
             (BPF_JEQ_K, nr["fadvise64"], "fadvise", 0),
             (BPF_JEQ_K, nr["preadv2"], "preadv2", "allow")]
    prog += _argument_checks()
    prog += [("label", "allow"), (BPF_RET_K, SECCOMP_RET_ALLOW, 0, 0),
             ("label", "deny"), (BPF_RET_K, SECCOMP_RET_ERRNO | EPERM, 0, 0),
             ("label", "enosys"), (BPF_RET_K, SECCOMP_RET_ERRNO | ENOSYS, 0, 0),
             ("label", "eafnosupport"), (BPF_RET_K, SECCOMP_RET_ERRNO | EAFNOSUPPORT, 0, 0),
             ("label", "eopnotsupp"), (BPF_RET_K, SECCOMP_RET_ERRNO | EOPNOTSUPP, 0, 0)]
    return _assemble(prog)


def seccomp_fd() -> int:
    """A pipe's read end holding the program (bwrap reads it to EOF); the caller closes it after
    the launch."""
    prog = seccomp_program()
    r, w = os.pipe()
    os.write(w, prog)  # ~120 bytes: far below the pipe buffer, so this never blocks
    os.close(w)
    return r


# -------------------------------------------------------------------- the sandbox's init, by pidfd
def init_pidfd(info_r: int, bwrap_pid: int, deadline: float) -> int | None:
    """A pidfd for the sandbox's init (bwrap --info-fd gives its host pid), or None if it is
    already gone.

    The pid is checked to be bwrap's child after the pidfd is open, so a pid reused in between is
    never killed."""
    data = b""
    while b"}" not in data:
        if not select.select([info_r], [], [], max(0.0, deadline - time.monotonic()))[0]:
            return None
        chunk = os.read(info_r, 4096)
        if not chunk:
            return None
        data += chunk
    try:
        pid = int(json.loads(data[: data.index(b"}") + 1])["child-pid"])
        fd = os.pidfd_open(pid)
    except (ValueError, KeyError, TypeError, OSError, AttributeError):
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        ppid = None
    if ppid != bwrap_pid:
        os.close(fd)
        return None
    return fd


def pid_of(pidfd: int) -> int:
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        return int(next(ln.split()[1] for ln in f if ln.startswith("Pid:")))


# ----------------------------------------------------------------------------- cgroup v2, optional
def _v2_mount() -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                return left.split()[4]
    return None


def cgroup_parent() -> tuple[str | None, str]:
    """(directory under which to create one cgroup per run, or None; why not)."""
    try:
        mount = _v2_mount()
        rel = next((ln[3:].strip() for ln in open("/proc/self/cgroup") if ln.startswith("0::")),
                   None)
    except OSError as e:
        return None, f"cannot read /proc ({e})"
    if mount is None or rel is None:
        return None, "no cgroup v2 mount"
    path = os.path.normpath(mount + "/" + rel)
    try:
        delegated = set(open(os.path.join(path, "cgroup.subtree_control")).read().split())
    except OSError as e:
        return None, f"cannot read {path}/cgroup.subtree_control ({e.strerror})"
    if not {"memory", "pids"} <= delegated:
        return None, f"{path} does not delegate memory+pids to child cgroups"
    if not os.access(path, os.W_OK):
        return None, f"{path} is not writable"
    return path, ""


class RunCgroup:
    """One leaf cgroup for one sandbox run. memory.max counts what RLIMIT_AS cannot: tmpfs and
    memfd pages, pipe and socket buffers, and the sum over forked processes (RLIMIT_AS is per
    process); pids.max bounds a fork bomb across uids; cgroup.kill ends every process in it at once,
    whatever namespace or session it moved to."""

    def __init__(self, parent: str, memory_bytes: int, pids: int):
        self.path = os.path.join(parent, f"rlhf-sandbox-{os.getpid()}-{secrets.token_hex(4)}")
        os.mkdir(self.path)
        try:
            self._write("memory.max", memory_bytes)
            if os.path.exists(os.path.join(self.path, "memory.swap.max")):
                self._write("memory.swap.max", 0)  # else memory.max could be sidestepped into swap
            self._write("pids.max", pids)
        except OSError:
            os.rmdir(self.path)
            raise

    def _write(self, name: str, value) -> None:
        with open(os.path.join(self.path, name), "w", encoding="utf-8") as f:
            f.write(str(value))

    def add(self, pid: int) -> None:
        self._write("cgroup.procs", pid)

    def kill(self) -> None:
        try:
            self._write("cgroup.kill", 1)
        # Linux < 5.14 has no cgroup.kill; killing the sandbox's init still ends it
        except FileNotFoundError:
            pass

    def remove(self, wait_s: float = 1.0) -> None:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                os.rmdir(self.path)  # EBUSY until the last process in it has been reaped
                return
            except OSError:
                if time.monotonic() > deadline:
                    return  # leaves an empty leaf behind, harmless
                time.sleep(0.01)
