//! Why a start failed: [`SpawnError`], and how a child reports the step it failed at before it
//! exits (it cannot allocate, so it stores an index into [`STEPS`] and its errno).
//!
//! Below both `spawn` and `process`: a [`Process`](crate::Process) reports its launch failure
//! with it, and `spawn` makes processes.

use std::io;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

/// A step of starting a process failed.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}{}", hint(step, source))]
pub struct SpawnError {
    pub step: &'static str,
    #[source]
    pub source: io::Error,
}

fn hint(step: &str, source: &io::Error) -> &'static str {
    match (step, source.raw_os_error()) {
        (STEP_EXEC, Some(libc::ENOENT)) => {
            " (the sandbox holds no loader or libraries: the handler must be a static binary, \
             which `dodil ignite draft compile` produces)"
        }
        (STEP_EXEC | STEP_EXEC_IMAGE, Some(libc::ENOEXEC)) => {
            " (it is not a Linux executable for this machine)"
        }
        (STEP_EXEC_IMAGE, Some(libc::ENOENT)) => {
            " (the program or the interpreter or loader it names is missing from the image)"
        }
        _ => "",
    }
}

const STEP_EXEC: &str = "executing the handler binary";
const STEP_EXEC_IMAGE: &str = "executing the image's program";

pub(crate) const STEP_EXEC_INDEX: usize = 21;

/// The steps the child reports a failure of, by index.
const STEPS: &[&str] = &[
    "no failure",
    "setting up the standard streams",
    "joining the instance's network namespace",
    "joining the instance's cgroups",
    "creating the cgroup namespace",
    "making the mount namespace private",
    "mounting the instance's root",
    "creating the root's directories",
    "mounting /proc",
    "mounting /tmp",
    "creating the device nodes",
    "entering the instance's root",
    "making the root read-only",
    "setting the hostname",
    "setting resource limits",
    "dropping to the instance's user",
    "creating the user namespace",
    "mapping the instance's user",
    "dropping capabilities",
    "closing inherited descriptors",
    "installing the seccomp filter",
    STEP_EXEC,
    "writing the instance's /etc",
    "masking the host's kernel information in /proc",
    "mounting the runtime's files",
    "mounting the image's root",
    "entering the image's working directory",
    STEP_EXEC_IMAGE,
];

const _: () = assert!(STEP_EXEC_INDEX < STEPS.len());

/// Written by the child before it exits on a failure; read once the child is gone.
#[derive(Default)]
pub(crate) struct Failure {
    pub(crate) step: AtomicUsize,
    pub(crate) errno: AtomicI32,
}

pub(crate) fn failure_of(failure: &Failure) -> Option<SpawnError> {
    let step = failure.step.load(Ordering::Acquire);
    (step != 0).then(|| SpawnError {
        step: STEPS.get(step).copied().unwrap_or("starting the handler"),
        source: io::Error::from_raw_os_error(failure.errno.load(Ordering::Acquire)),
    })
}
