//! The system-call filter every sandboxed handler runs under.
//!
//! It is a deny list, like Docker's default profile in effect: a handler may use any crate, so
//! everything a std/tokio program does (files in its own tmpfs, threads, timers, epoll, sockets
//! that its empty network namespace makes useless anyway) keeps working, and what only an
//! attacker needs is refused with `EPERM`: debugging other processes, mounting, new namespaces,
//! BPF, the kernel keyring, modules, raw sockets, io_uring (whose operations bypass seccomp),
//! clock and host changes.
//!
//! Sockets are the one allow list: `socket` and `socketpair` work for Unix, IPv4 and IPv6 only
//! ([`SOCKET_FAMILIES`]); every other address family fails with `EAFNOSUPPORT`, which is what
//! the kernel answers for a family it was built without, so programs that probe for one treat
//! it as absent rather than as an error. That keeps out `AF_VSOCK` (a network namespace does not
//! confine it: it reaches the host and its VM peers), `AF_PACKET`, `AF_ALG`, `AF_NETLINK` and the
//! rest of the kernel's rarely used protocol code.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

/// Syscalls refused outright.
const DENIED: &[(i64, &str)] = &[
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_process_vm_readv, "process_vm_readv"),
    (libc::SYS_process_vm_writev, "process_vm_writev"),
    (libc::SYS_kcmp, "kcmp"),
    (libc::SYS_pidfd_getfd, "pidfd_getfd"),
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_chroot, "chroot"),
    (libc::SYS_unshare, "unshare"),
    (libc::SYS_setns, "setns"),
    (libc::SYS_fsopen, "fsopen"),
    (libc::SYS_fsconfig, "fsconfig"),
    (libc::SYS_fsmount, "fsmount"),
    (libc::SYS_fspick, "fspick"),
    (libc::SYS_move_mount, "move_mount"),
    (libc::SYS_open_tree, "open_tree"),
    (libc::SYS_mount_setattr, "mount_setattr"),
    (libc::SYS_open_by_handle_at, "open_by_handle_at"),
    (libc::SYS_name_to_handle_at, "name_to_handle_at"),
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_request_key, "request_key"),
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_delete_module, "delete_module"),
    (libc::SYS_kexec_load, "kexec_load"),
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    (libc::SYS_reboot, "reboot"),
    (libc::SYS_swapon, "swapon"),
    (libc::SYS_swapoff, "swapoff"),
    (libc::SYS_acct, "acct"),
    (libc::SYS_quotactl, "quotactl"),
    (libc::SYS_syslog, "syslog"),
    (libc::SYS_vhangup, "vhangup"),
    (libc::SYS_iopl, "iopl"),
    (libc::SYS_ioperm, "ioperm"),
    (libc::SYS_settimeofday, "settimeofday"),
    (libc::SYS_clock_settime, "clock_settime"),
    (libc::SYS_clock_adjtime, "clock_adjtime"),
    (libc::SYS_adjtimex, "adjtimex"),
    (libc::SYS_sethostname, "sethostname"),
    (libc::SYS_setdomainname, "setdomainname"),
    (libc::SYS_io_uring_setup, "io_uring_setup"),
    (libc::SYS_io_uring_enter, "io_uring_enter"),
    (libc::SYS_io_uring_register, "io_uring_register"),
    (libc::SYS_fanotify_init, "fanotify_init"),
    (libc::SYS_lookup_dcookie, "lookup_dcookie"),
    (libc::SYS_uselib, "uselib"),
];

/// The address families an instance may create sockets of.
///
/// `AF_NETLINK` is not among them. Nothing of the platform uses it inside an instance (the SDK
/// talks over its inherited streams); the common library path to it (`getifaddrs` and
/// `if_nameindex`, which open `SOCK_RAW` netlink sockets) was already refused by the raw-socket
/// rule; an instance's network is known (`lo`, and `eth0` with egress). What it would expose is
/// not: `NETLINK_KOBJECT_UEVENT` delivers the host's device events into every network namespace
/// owned by the initial user namespace, which the instances' are (the server makes them as
/// root), and generic netlink, netfilter, xfrm and sock_diag are large surfaces for a tenant
/// that needs none of them. Even `NETLINK_ROUTE` alone would only give a read-only dump of
/// that known network.
pub(crate) const SOCKET_FAMILIES: &[(i32, &str)] = &[
    (libc::AF_UNIX, "unix"),
    (libc::AF_INET, "inet"),
    (libc::AF_INET6, "inet6"),
];

/// `clone` flags that would create a namespace.
const NAMESPACE_FLAGS: &[i32] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
];

/// The compiled filter: one program, because each installed filter is JIT-compiled on its own
/// and the second one doubled the cost (~0.15 ms each here).
///
/// A short hand-written prologue runs before seccompiler's rules: it refuses x32-ABI numbers
/// (same architecture token, numbers offset by 2^30 — a deny list keyed on x86-64 numbers would
/// miss them) and answers `clone3` with `ENOSYS`, so that runtimes fall back to `clone`, whose
/// flags a filter can inspect (clone3 passes them in memory, out of seccomp's reach). It also
/// checks the address family of `socket` and `socketpair` (see [`SOCKET_FAMILIES`]).
pub(crate) fn program() -> Result<BpfProgram, seccompiler::BackendError> {
    let arch = TargetArch::x86_64;
    // seccompiler compiles the rules that look at arguments; the syscalls refused outright are
    // answered by the prologue's search tree.
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    deny.insert(
        libc::SYS_clone,
        NAMESPACE_FLAGS
            .iter()
            .map(|&flag| masked_eq(0, flag as u64))
            .collect::<Result<_, _>>()?,
    );
    // Raw sockets of the allowed families (the type's low bits; the high ones carry
    // SOCK_CLOEXEC / SOCK_NONBLOCK). Packet sockets and every other family never get here: the
    // prologue's family check refuses them first.
    deny.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(0xf),
            libc::SOCK_RAW as u64,
        )?])?],
    );
    let rules: BpfProgram = SeccompFilter::new(
        deny,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?
    .try_into()?;
    let mut keys: Vec<(u32, Target)> = DENIED
        .iter()
        .map(|&(nr, _)| (nr as u32, Target::Deny))
        .chain([
            (libc::SYS_clone as u32, Target::Rules),
            (libc::SYS_socket as u32, Target::Family),
            (libc::SYS_socketpair as u32, Target::Family),
        ])
        .collect();
    keys.sort_unstable();
    keys.dedup_by_key(|k| k.0);
    Ok(prologue(&keys).into_iter().chain(rules).collect())
}

const LD_W_ABS: u16 = 0x20;
const JA: u16 = 0x05;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

fn op(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Deny,
    Rules,
    /// `socket` and `socketpair`: the address family first.
    Family,
}

/// Runs before seccompiler's rules, which are a linear chain: the kernel's action cache
/// emulates the filter once per syscall number when it is installed, so a chain of ~60 rules
/// cost ~0.3 ms per instance start. The prologue finds the syscall number by binary search (a
/// handful of steps): refused outright → EPERM, argument rules → seccompiler's chain, anything
/// else → ALLOW; `socket` and `socketpair` → the address-family check (`EAFNOSUPPORT` for a
/// family not in [`SOCKET_FAMILIES`]), then seccompiler's chain or ALLOW. It also refuses
/// x32-ABI numbers (same architecture token, numbers
/// offset by 2^30 — a deny list keyed on x86-64 numbers would miss them) and answers `clone3`
/// with `ENOSYS`, so that runtimes fall back to `clone`, whose flags a filter can inspect.
fn prologue(keys: &[(u32, Target)]) -> Vec<sock_filter> {
    let mut out = vec![
        op(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        op(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        op(RET_K, 0, 0, RET_KILL_PROCESS),
        op(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        op(JGE_K, 0, 1, 0x4000_0000),
        op(RET_K, 0, 0, RET_ERRNO | libc::ENOSYS as u32),
        op(JEQ_K, 0, 1, libc::SYS_clone3 as u32),
        op(RET_K, 0, 0, RET_ERRNO | libc::ENOSYS as u32),
    ];
    let tree_start = out.len();
    let tree_len = tree_size(keys.len());
    // Layout: [header][search tree][RET ALLOW][RET EPERM][family check][seccompiler's rules…]
    // (BPF jumps only forward, so the family check ends with its own RET ALLOW.)
    let allow = tree_start + tree_len;
    let family = allow + 2;
    let labels = Labels {
        allow,
        deny: allow + 1,
        family,
    };
    search(keys, &mut out, &labels);
    debug_assert_eq!(out.len(), allow);
    out.push(op(RET_K, 0, 0, RET_ALLOW));
    out.push(op(RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32));
    // The family is the first argument's low 32 bits (an int; seccomp_data.args[0] is a
    // little-endian u64 at offset 16).
    out.push(op(LD_W_ABS, 0, 0, 16));
    let n = SOCKET_FAMILIES.len();
    for (i, &(af, _)) in SOCKET_FAMILIES.iter().enumerate() {
        // Matches skip the rest of the list and the refusal.
        let jt = u8::try_from(n - i).expect("a short list of families");
        out.push(op(JEQ_K, jt, 0, af as u32));
    }
    out.push(op(RET_K, 0, 0, RET_ERRNO | libc::EAFNOSUPPORT as u32));
    // An allowed family: `socket` goes on to the raw-socket rule, `socketpair` is allowed.
    out.push(op(LD_W_ABS, 0, 0, 0));
    out.push(op(JEQ_K, 1, 0, libc::SYS_socket as u32));
    out.push(op(RET_K, 0, 0, RET_ALLOW));
    debug_assert_eq!(out.len(), family + n + 5);
    out
}

fn tree_size(n: usize) -> usize {
    if n <= 3 {
        n + 1
    } else {
        1 + tree_size(n / 2) + tree_size(n - n / 2)
    }
}

struct Labels {
    allow: usize,
    deny: usize,
    /// Where the family check starts; seccompiler's rules follow it.
    family: usize,
}

impl Labels {
    fn rules(&self) -> usize {
        self.family + SOCKET_FAMILIES.len() + 5
    }
}

/// Emits "which of `keys` is the syscall number (in A)? go to its target, else to allow".
fn search(keys: &[(u32, Target)], out: &mut Vec<sock_filter>, labels: &Labels) {
    let rel = |from: usize, to: usize| to - (from + 1);
    if keys.len() <= 3 {
        for &(k, target) in keys {
            let at = out.len();
            let to = match target {
                Target::Deny => labels.deny,
                Target::Rules => labels.rules(),
                Target::Family => labels.family,
            };
            let jt = u8::try_from(rel(at, to)).expect("the search tree is short");
            out.push(op(JEQ_K, jt, 0, k));
        }
        let at = out.len();
        out.push(op(JA, 0, 0, rel(at, labels.allow) as u32));
        return;
    }
    let (left, right) = keys.split_at(keys.len() / 2);
    let at = out.len();
    let jt = u8::try_from(tree_size(left.len())).expect("the search tree is short");
    out.push(op(JGE_K, jt, 0, right[0].0));
    search(left, out, labels);
    debug_assert_eq!(out.len(), at + 1 + tree_size(left.len()));
    search(right, out, labels);
}

fn masked_eq(arg: u8, bits: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(bits),
        bits,
    )?])
}

/// The names of the refused syscalls (beyond `clone3`, namespace flags of `clone`, raw sockets
/// and sockets of other address families than [`SOCKET_FAMILIES`]), for the README and the
/// start-up banner.
pub fn denied_syscalls() -> impl Iterator<Item = &'static str> {
    DENIED.iter().map(|&(_, name)| name)
}
