//! The kernel sandbox every Python grader worker runs in.
//!
//! Applied between `fork` and `exec` (`Command::pre_exec`), with the kernel's own mechanisms:
//! - **rlimits**: address space (memory), CPU seconds, file size, open files, no core dumps;
//! - **network namespace**: a fresh one with only a downed loopback, so no connection reaches
//!   the host, not even `127.0.0.1` (unprivileged hosts get a user namespace with it);
//! - **capabilities**: a root parent's worker loses every capability, bounding set included;
//! - **Landlock**: reads only where the interpreter and its libraries live, writes only in the
//!   worker's private temporary folder, no TCP, and (ABI 6+) no signals outside the sandbox;
//! - **seccomp**: no `fork`/`vfork`/non-thread `clone`/`clone3` (no new processes), no signals to
//!   other processes, no `ptrace`, namespaces, mounts, kernel modules or BPF.
//!
//! Landlock and seccomp are written against the raw syscalls rather than the `landlock` and
//! `seccompiler` crates: everything that runs after `fork` in a multi-threaded parent must avoid
//! allocation, so the ruleset and the filter are built in the parent and only *applied* in the
//! child, which these crates' APIs do not allow (they build and apply in one call).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Resource limits of a worker process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) memory_bytes: u64,
    pub(crate) cpu_seconds: u64,
    pub(crate) file_bytes: u64,
    pub(crate) open_files: u64,
}

/// What the sandbox lets a worker read, built once per interpreter in the parent.
#[derive(Debug)]
pub(crate) struct Sandbox {
    landlock: Landlock,
    seccomp: Vec<libc::sock_filter>,
    pid_slots: Vec<usize>,
    limits: Limits,
}

impl Sandbox {
    /// Prepares a sandbox allowing reads (and execution) beneath `read_paths`, and reads and
    /// writes beneath `write_path` (the worker's own temporary folder is added per worker).
    pub(crate) fn new(read_paths: &[PathBuf], limits: Limits) -> io::Result<Sandbox> {
        let landlock = Landlock::new(read_paths)?;
        let (seccomp, pid_slots) = seccomp_filter()?;
        Ok(Sandbox {
            landlock,
            seccomp,
            pid_slots,
            limits,
        })
    }

    /// The Landlock ABI version in force.
    pub(crate) fn landlock_abi(&self) -> i32 {
        self.landlock.abi
    }

    /// Returns the closure to run in the child between `fork` and `exec`, for a worker whose
    /// private folder is `workdir`. The folder's rule is added to a per-worker copy of the
    /// ruleset here, in the parent.
    pub(crate) fn pre_exec(
        &self,
        workdir: &Path,
    ) -> io::Result<impl FnMut() -> io::Result<()> + Send + Sync + 'static> {
        let ruleset = self.landlock.with_workdir(workdir)?;
        let mut filter = self.seccomp.clone();
        let pid_slots = self.pid_slots.clone();
        let limits = self.limits;
        let unprivileged = unsafe { libc::geteuid() } != 0;
        Ok(move || {
            // Everything below is a plain syscall on memory prepared before `fork`.
            set_limit(libc::RLIMIT_AS, limits.memory_bytes)?;
            set_limit(libc::RLIMIT_CPU, limits.cpu_seconds)?;
            set_limit(libc::RLIMIT_FSIZE, limits.file_bytes)?;
            set_limit(libc::RLIMIT_NOFILE, limits.open_files)?;
            set_limit(libc::RLIMIT_CORE, 0)?;
            let namespaces = if unprivileged {
                libc::CLONE_NEWUSER | libc::CLONE_NEWNET
            } else {
                libc::CLONE_NEWNET
            };
            check(unsafe { libc::unshare(namespaces) })?;
            // The worker must not outlive OpenRFT.
            check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })?;
            if !unprivileged {
                drop_capabilities()?;
            }
            check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
            let restricted =
                unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0) };
            check(restricted as libc::c_int)?;
            let pid = unsafe { libc::getpid() } as u32;
            for &slot in &pid_slots {
                filter[slot].k = pid;
            }
            let program = libc::sock_fprog {
                len: filter.len() as libc::c_ushort,
                filter: filter.as_mut_ptr(),
            };
            check(unsafe {
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &program as *const libc::sock_fprog,
                    0,
                    0,
                )
            })?;
            Ok(())
        })
    }
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    check(unsafe { libc::setrlimit(resource, &limit) })
}

/// Empties the bounding set (so `exec` cannot hand root its capabilities back), the ambient set,
/// and then every set of this process.
fn drop_capabilities() -> io::Result<()> {
    for cap in 0..64 {
        // EINVAL marks the end of the capabilities this kernel knows.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0 {
            break;
        }
    }
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } as libc::c_int)
}

// ---------------------------------------------------------------------------------------------
// Landlock (include/uapi/linux/landlock.h)

const ACCESS_EXECUTE: u64 = 1 << 0;
const ACCESS_WRITE_FILE: u64 = 1 << 1;
const ACCESS_READ_FILE: u64 = 1 << 2;
const ACCESS_READ_DIR: u64 = 1 << 3;
const ACCESS_REFER: u64 = 1 << 13;
const ACCESS_TRUNCATE: u64 = 1 << 14;
const ACCESS_IOCTL_DEV: u64 = 1 << 15;
const ACCESS_NET_BIND_TCP: u64 = 1 << 0;
const ACCESS_NET_CONNECT_TCP: u64 = 1 << 1;
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;
const CREATE_RULESET_VERSION: u32 = 1 << 0;
const RULE_PATH_BENEATH: libc::c_int = 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The read-only part of the ruleset; each worker gets a copy plus its private folder.
#[derive(Debug)]
struct Landlock {
    abi: i32,
    read_paths: Vec<PathBuf>,
}

impl Landlock {
    fn new(read_paths: &[PathBuf]) -> io::Result<Landlock> {
        let abi = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<RulesetAttr>(),
                0usize,
                CREATE_RULESET_VERSION,
            )
        } as i32;
        if abi < 1 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "Landlock is not available on this kernel ({})",
                    io::Error::last_os_error()
                ),
            ));
        }
        Ok(Landlock {
            abi,
            read_paths: read_paths.to_vec(),
        })
    }

    fn all_fs_access(&self) -> u64 {
        let mut access = (1 << 13) - 1;
        if self.abi >= 2 {
            access |= ACCESS_REFER;
        }
        if self.abi >= 3 {
            access |= ACCESS_TRUNCATE;
        }
        if self.abi >= 5 {
            access |= ACCESS_IOCTL_DEV;
        }
        access
    }

    fn with_workdir(&self, workdir: &Path) -> io::Result<OwnedFd> {
        let handled_fs = self.all_fs_access();
        let attr = RulesetAttr {
            handled_access_fs: handled_fs,
            handled_access_net: if self.abi >= 4 {
                ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP
            } else {
                0
            },
            scoped: if self.abi >= 6 {
                SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
            } else {
                0
            },
        };
        let size = match self.abi {
            1..=3 => 8,
            4 | 5 => 16,
            _ => std::mem::size_of::<RulesetAttr>(),
        };
        let fd = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, &attr, size, 0u32) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
        let ruleset = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let read_dir = ACCESS_EXECUTE | ACCESS_READ_FILE | ACCESS_READ_DIR;
        let read_file = ACCESS_EXECUTE | ACCESS_READ_FILE;
        for path in &self.read_paths {
            add_rule(&ruleset, path, read_dir, read_file)?;
        }
        let device =
            ACCESS_READ_FILE | ACCESS_WRITE_FILE | if self.abi >= 5 { ACCESS_IOCTL_DEV } else { 0 };
        for dev in ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"] {
            add_rule(&ruleset, Path::new(dev), device, device)?;
        }
        let file_rights =
            ACCESS_EXECUTE | ACCESS_READ_FILE | ACCESS_WRITE_FILE | (handled_fs & ACCESS_TRUNCATE);
        add_rule(&ruleset, workdir, handled_fs, file_rights)?;
        Ok(ruleset)
    }
}

/// Allows `dir_access` beneath `path` (or `file_access` when it is a file). Paths that do not
/// exist are skipped: the interpreter reports directories that a given install lacks.
fn add_rule(ruleset: &OwnedFd, path: &Path, dir_access: u64, file_access: u64) -> io::Result<()> {
    let Ok(metadata) = std::fs::metadata(path) else {
        return Ok(());
    };
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `open` returned a fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let attr = PathBeneathAttr {
        allowed_access: if metadata.is_dir() {
            dir_access
        } else {
            file_access
        },
        parent_fd: fd.as_raw_fd(),
    };
    let result = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            RULE_PATH_BENEATH,
            &attr,
            0u32,
        )
    };
    if result < 0 {
        return Err(io::Error::other(format!(
            "landlock rule for {}: {}",
            path.display(),
            io::Error::last_os_error()
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// seccomp (classic BPF over struct seccomp_data)

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const OFFSET_ARG0_LOW: u32 = 16;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// Syscalls a grader never needs and that could reach outside the sandbox: answered EPERM.
fn denied_syscalls() -> Vec<libc::c_long> {
    let mut denied = vec![
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_send_signal,
        libc::SYS_pidfd_getfd,
        libc::SYS_rt_sigqueueinfo,
        libc::SYS_rt_tgsigqueueinfo,
        libc::SYS_tkill,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_execveat,
    ];
    #[cfg(target_arch = "x86_64")]
    denied.extend([
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_iopl,
        libc::SYS_ioperm,
    ]);
    denied
}

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

/// Builds the filter. Returns it with the indices of the instructions whose constant must be
/// set to the worker's pid in the child (signals are allowed to the worker itself only).
fn seccomp_filter() -> io::Result<(Vec<libc::sock_filter>, Vec<usize>)> {
    const LD_W_ABS: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    const JEQ_K: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    const JGE_K: u32 = libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K;
    const JSET_K: u32 = libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K;
    const RET_K: u32 = libc::BPF_RET | libc::BPF_K;

    // Jump targets are symbolic while building and resolved to relative offsets at the end.
    enum Op {
        Insn(libc::sock_filter),
        JumpIfEq(u32, Label),
        JumpIfSet(u32, Label, Label),
        JumpIfGe(u32, Label),
        JumpIfNe(u32, Label),
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Label {
        Allow,
        Deny,
        NoSys,
        Kill,
        CheckClone,
        CheckSignal,
    }
    let mut ops = vec![
        Op::Insn(stmt(LD_W_ABS, OFFSET_ARCH)),
        Op::JumpIfNe(AUDIT_ARCH, Label::Kill),
        Op::Insn(stmt(LD_W_ABS, OFFSET_NR)),
    ];
    #[cfg(target_arch = "x86_64")]
    ops.push(Op::JumpIfGe(0x4000_0000, Label::Deny)); // the x32 ABI aliases
    for nr in denied_syscalls() {
        ops.push(Op::JumpIfEq(nr as u32, Label::Deny));
    }
    ops.push(Op::JumpIfEq(libc::SYS_clone3 as u32, Label::NoSys));
    ops.push(Op::JumpIfEq(libc::SYS_clone as u32, Label::CheckClone));
    ops.push(Op::JumpIfEq(libc::SYS_kill as u32, Label::CheckSignal));
    ops.push(Op::JumpIfEq(libc::SYS_tgkill as u32, Label::CheckSignal));
    ops.push(Op::Insn(stmt(RET_K, SECCOMP_RET_ALLOW)));

    let mut labels: Vec<(Label, usize)> = Vec::new();
    let mut pid_slots = Vec::new();
    // CheckClone: threads (CLONE_THREAD) are fine, new processes are not.
    labels.push((Label::CheckClone, ops.len()));
    ops.push(Op::Insn(stmt(LD_W_ABS, OFFSET_ARG0_LOW)));
    ops.push(Op::JumpIfSet(
        libc::CLONE_THREAD as u32,
        Label::Allow,
        Label::Deny,
    ));
    // CheckSignal: kill(pid) / tgkill(tgid) only towards the worker itself.
    labels.push((Label::CheckSignal, ops.len()));
    ops.push(Op::Insn(stmt(LD_W_ABS, OFFSET_ARG0_LOW)));
    pid_slots.push(ops.len());
    ops.push(Op::JumpIfEq(0, Label::Allow));
    ops.push(Op::Insn(stmt(
        RET_K,
        SECCOMP_RET_ERRNO | libc::EPERM as u32,
    )));
    labels.push((Label::Allow, ops.len()));
    ops.push(Op::Insn(stmt(RET_K, SECCOMP_RET_ALLOW)));
    labels.push((Label::Deny, ops.len()));
    ops.push(Op::Insn(stmt(
        RET_K,
        SECCOMP_RET_ERRNO | libc::EPERM as u32,
    )));
    labels.push((Label::NoSys, ops.len()));
    ops.push(Op::Insn(stmt(
        RET_K,
        SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
    )));
    labels.push((Label::Kill, ops.len()));
    ops.push(Op::Insn(stmt(RET_K, SECCOMP_RET_KILL_PROCESS)));

    let target = |label: Label| -> usize {
        labels
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, idx)| *idx)
            .unwrap_or(0)
    };
    let offset = |from: usize, label: Label| -> io::Result<u8> {
        u8::try_from(target(label) - from - 1)
            .map_err(|_| io::Error::other("seccomp filter jump out of range"))
    };
    let mut filter = Vec::with_capacity(ops.len());
    for (idx, op) in ops.iter().enumerate() {
        let insn = match *op {
            Op::Insn(insn) => insn,
            Op::JumpIfEq(k, label) => libc::sock_filter {
                code: JEQ_K as u16,
                jt: offset(idx, label)?,
                jf: 0,
                k,
            },
            Op::JumpIfNe(k, label) => libc::sock_filter {
                code: JEQ_K as u16,
                jt: 0,
                jf: offset(idx, label)?,
                k,
            },
            Op::JumpIfGe(k, label) => libc::sock_filter {
                code: JGE_K as u16,
                jt: offset(idx, label)?,
                jf: 0,
                k,
            },
            Op::JumpIfSet(k, yes, no) => libc::sock_filter {
                code: JSET_K as u16,
                jt: offset(idx, yes)?,
                jf: offset(idx, no)?,
                k,
            },
        };
        filter.push(insn);
    }
    Ok((filter, pid_slots))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_filter_fits_classic_bpf_and_marks_the_pid_check() {
        let (filter, pid_slots) = seccomp_filter().unwrap();
        assert!(filter.len() < 255);
        assert_eq!(pid_slots.len(), 1);
        let slot = filter[pid_slots[0]];
        assert_eq!(
            u32::from(slot.code),
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K
        );
    }
}
