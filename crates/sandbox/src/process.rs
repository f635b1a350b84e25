//! A child process watched through its pidfd: waiting is a readiness event on the agent's
//! reactor (no SIGCHLD handler, no reaper thread), and signals go to exactly this process even
//! after its pid is reused.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::Slot;
use crate::failure::SpawnError;
use crate::template::Shared;

/// A process forked by a template (see `template.rs`): not our child, so its exit status
/// comes from the template, which reaps it.
#[derive(Debug)]
pub(crate) struct Forked {
    /// Its pid in the template's namespace, as the template reports it.
    pub(crate) ns_pid: u32,
    pub(crate) shared: std::sync::Arc<Shared>,
}

/// The status of a process that the kernel killed along with its template.
const KILLED: i32 = libc::SIGKILL;

/// The memory a sandboxed child runs on until it execs (its stack, and everything its code
/// reads), which its [`Process`] keeps until the child has been reaped; it tells why the child
/// exited instead of exec'ing, if it did.
pub(crate) trait ChildMemory: Send + Sync + std::fmt::Debug {
    fn failure(&self) -> Option<SpawnError>;
}

/// A started process. Dropping it kills the process (and, sandboxed, everything it started)
/// and reaps it in the background.
#[derive(Debug)]
pub struct Process {
    pid: u32,
    pidfd: Option<AsyncFd<OwnedFd>>,
    raw_pidfd: Option<OwnedFd>,
    status: Option<ExitStatus>,
    slot: Option<Slot>,
    /// A sandboxed process's zygote memory: its stack until exec, and why it failed if it did.
    memory: Option<Box<dyn ChildMemory>>,
    oom_killed: bool,
    forked: Option<Forked>,
    /// Already handed to a background reaper: if that is cancelled (runtime shutting down),
    /// reap on the spot instead of handing it on again.
    orphan: bool,
}

impl Process {
    pub(crate) fn new(
        pid: u32,
        pidfd: OwnedFd,
        slot: Option<Slot>,
        memory: Option<Box<dyn ChildMemory>>,
    ) -> Process {
        // Outside a runtime (a plain test), or if the reactor refuses the descriptor, waiting
        // falls back to blocking calls: never fail here, since a sandboxed child may still be
        // running on `memory` (its stack) until it execs.
        let (pidfd, raw_pidfd) = match tokio::runtime::Handle::try_current() {
            // SAFETY: the OwnedFd is a valid open pidfd that the AsyncFd owns from here on, so it
            // stays open and the same for the AsyncFd's whole life.
            Ok(_) => match unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) } {
                Ok(fd) => (Some(fd), None),
                Err(e) => (None, Some(e.into_parts().0)),
            },
            Err(_) => (None, Some(pidfd)),
        };
        Process {
            pid,
            pidfd,
            raw_pidfd,
            status: None,
            slot,
            memory,
            oom_killed: false,
            forked: None,
            orphan: false,
        }
    }

    /// A process a template forked (see [`Forked`]).
    pub(crate) fn forked(pid: u32, pidfd: OwnedFd, slot: Option<Slot>, forked: Forked) -> Process {
        let mut process = Process::new(pid, pidfd, slot, None);
        process.forked = Some(forked);
        process
    }

    /// Gives the process the cgroups it was moved into (released when it is reaped).
    pub(crate) fn set_slot(&mut self, slot: Slot) {
        self.slot = Some(slot);
    }

    /// The process id, as the agent's pid namespace sees it.
    pub fn id(&self) -> u32 {
        self.pid
    }

    fn fd(&self) -> i32 {
        match (&self.pidfd, &self.raw_pidfd) {
            (Some(fd), _) => fd.get_ref().as_raw_fd(),
            (None, Some(fd)) => fd.as_raw_fd(),
            (None, None) => -1,
        }
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            match &self.pidfd {
                Some(fd) => {
                    let mut ready = fd.readable().await?;
                    if let Some(forked) = &self.forked {
                        // It has exited; its template reports how, a moment later.
                        let (shared, ns_pid) = (forked.shared.clone(), forked.ns_pid);
                        let raw = tokio::time::timeout(
                            std::time::Duration::from_secs(1),
                            shared.exit_of(ns_pid),
                        )
                        .await
                        .ok()
                        .flatten();
                        return Ok(self.finish(ExitStatus::from_raw(raw.unwrap_or(KILLED))));
                    }
                    ready.clear_ready();
                }
                None => return self.wait_blocking(),
            }
        }
    }

    /// The exit status, if the process has exited (it is then reaped).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        self.waitid(libc::WNOHANG)
    }

    fn wait_blocking(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.waitid(0)? {
                return Ok(status);
            }
        }
    }

    fn waitid(&mut self, flags: i32) -> io::Result<Option<ExitStatus>> {
        if self.forked.is_some() {
            return self.wait_forked(flags & libc::WNOHANG == 0);
        }
        // SAFETY: siginfo_t is plain data; all-zero means "no child reported" for WNOHANG.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes only into `info`; the pidfd is ours and open.
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                self.fd() as libc::id_t,
                &mut info,
                libc::WEXITED | flags,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(None);
            }
            return Err(e);
        }
        // SAFETY: after a successful waitid the pid and status fields are initialised.
        let (pid, code) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        let raw = match info.si_code {
            libc::CLD_EXITED => (code & 0xff) << 8,
            libc::CLD_DUMPED => (code & 0x7f) | 0x80,
            _ => code & 0x7f,
        };
        Ok(Some(self.finish(ExitStatus::from_raw(raw))))
    }

    fn finish(&mut self, status: ExitStatus) -> ExitStatus {
        self.status = Some(status);
        if let Some(slot) = self.slot.take() {
            self.oom_killed = slot.release();
        }
        if let Some(forked) = &self.forked {
            forked.shared.forget(forked.ns_pid);
        }
        status
    }

    /// `waitid` for a process that is not our child: the pidfd says it has exited, the
    /// template says how.
    fn wait_forked(&mut self, block: bool) -> io::Result<Option<ExitStatus>> {
        let mut poll = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let rc = loop {
            // SAFETY: poll reads and writes one pollfd that outlives the call.
            let rc = unsafe { libc::poll(&mut poll, 1, if block { -1 } else { 0 }) };
            if rc >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break rc;
            }
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if rc == 0 {
            return Ok(None);
        }
        let Some(forked) = &self.forked else {
            return Ok(None);
        };
        let wait = if block {
            std::time::Duration::from_secs(1)
        } else {
            std::time::Duration::ZERO
        };
        match forked.shared.exit_of_blocking(forked.ns_pid, wait) {
            Some(raw) => Ok(Some(self.finish(ExitStatus::from_raw(raw)))),
            None if block || forked.shared.is_closed() => {
                Ok(Some(self.finish(ExitStatus::from_raw(KILLED))))
            }
            None => Ok(None),
        }
    }

    /// Why a sandboxed process exited before it could exec the handler (known once reaped).
    pub fn launch_failure(&self) -> Option<SpawnError> {
        self.status?;
        self.memory.as_ref()?.failure()
    }

    /// Whether the kernel killed the process for exceeding its memory limit. Known once the
    /// process has been reaped.
    pub fn oom_killed(&self) -> bool {
        self.oom_killed
    }

    /// Sends `signal` to the process (nothing once it has been reaped).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        // SAFETY: pidfd_send_signal reads only its integer arguments; a null siginfo is allowed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            // Already exited, not yet reaped.
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }

    /// Kills the process and waits for it.
    pub async fn kill(&mut self) -> io::Result<ExitStatus> {
        self.signal(libc::SIGKILL)?;
        self.wait().await
    }

    /// Reaps a process that is known to have exited (or is about to).
    pub(crate) fn reap_now(&mut self) {
        if self.status.is_none() {
            let _ = self.wait_blocking();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        let _ = self.signal(libc::SIGKILL);
        let mut orphan = Process {
            pid: self.pid,
            pidfd: self.pidfd.take(),
            raw_pidfd: self.raw_pidfd.take(),
            status: None,
            slot: self.slot.take(),
            memory: self.memory.take(),
            oom_killed: false,
            forked: self.forked.take(),
            orphan: true,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if orphan.pidfd.is_some() && !self.orphan => {
                runtime.spawn(async move {
                    let _ = orphan.wait().await;
                });
            }
            _ => {
                // A killed process exits promptly; without a runtime to wait on, block.
                if let Some(fd) = orphan.pidfd.take() {
                    orphan.raw_pidfd = Some(fd.into_inner());
                }
                orphan.reap_now();
            }
        }
    }
}
