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
