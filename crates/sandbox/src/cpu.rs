//! CPU placement and process-group signals: small system calls the agent and builder need,
//! kept here with the rest of the crate's `unsafe`.

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

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (every instance holds a few descriptors
/// of the process that runs it); returns the soft limit now in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the rlimit struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the rlimit struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}
