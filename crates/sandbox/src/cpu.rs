//! CPU placement, process-group signals and the descriptor limit: small system calls the
//! agent, builder and server need, kept here with the rest of the crate's `unsafe`.

use std::io;

/// The CPU the calling thread runs on.
pub fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu takes no arguments and only reads the calling thread's state.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// Restricts a process (0: the calling thread) to one CPU.
pub fn pin_to_cpu(pid: u32, cpu: usize) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: cpu_set_t is plain data for which all-zero is the empty set; CPU_SET writes inside
    // it (cpu was checked against CPU_SETSIZE); sched_setaffinity reads exactly
    // size_of::<cpu_set_t>() bytes from it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SIGKILLs the process group that `leader` leads (a compile: cargo and everything it started).
pub fn kill_process_group(leader: u32) {
    if let Ok(pid) = libc::pid_t::try_from(leader)
        && pid > 0
    {
        // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names the process
        // group that `leader` leads.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// Raises this process's soft limit on open files (RLIMIT_NOFILE) to its hard limit and returns
/// the new soft limit. The server calls it at start: a node with thousands of instances holds
/// several descriptors for each (standard streams, pidfd), beyond the usual soft limit of 1024.
/// Instances are not affected: each gets its own limit (`SandboxConfig::open_files`).
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit64 writes one rlimit64 into the struct it is given.
    if unsafe { libc::getrlimit64(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot read the open-file limit (RLIMIT_NOFILE): {e}"),
        ));
    }
    // Linux caps the hard limit at fs.nr_open; an unlimited one cannot be the soft limit.
    let mut target = limit.rlim_max;
    if target == libc::RLIM64_INFINITY {
        target = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if limit.rlim_cur >= target {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit64 {
        rlim_cur: target,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit64 reads the struct it is given, which is initialised.
    if unsafe { libc::setrlimit64(libc::RLIMIT_NOFILE, &raised) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "cannot raise the open-file limit (RLIMIT_NOFILE) from {} to its hard limit {}: \
                 {e}; raise it before starting the server (ulimit -n, or LimitNOFILE= in its \
                 systemd unit)",
                limit.rlim_cur, target
            ),
        ));
    }
    Ok(target)
}
