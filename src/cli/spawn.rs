//! Starts the watched command held at a barrier between fork and exec, so
//! the kernel knows it belongs to the job before it runs a single instruction.
//!
//! Syscalls go through rustix; fork, execve and _exit stay raw libc: rustix has
//! no general-purpose fork, and in the forked child exec and exit must not
//! allocate or run exit handlers (nix's execve builds its argv in a Vec).

use std::ffi::{CString, OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::process::{Pid, Signal, WaitOptions};

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{0}: command not found")]
    NotFound(String),
    #[error("{0}: permission denied (not executable)")]
    NotExecutable(String),
    #[error("{0}: argument contains a NUL byte")]
    Nul(String),
    #[error("cannot start {command}")]
    Os {
        command: String,
        source: std::io::Error,
    },
}

impl SpawnError {
    pub fn exit_code(&self) -> u8 {
        match self {
            SpawnError::NotFound(_) => crate::exit::NOT_FOUND,
            SpawnError::NotExecutable(_) | SpawnError::Nul(_) => crate::exit::NOT_EXECUTABLE,
            SpawnError::Os { .. } => crate::exit::INTERNAL,
        }
    }
}

/// A command resolved against PATH, with its exec arguments built up front
/// (the forked child may only make async-signal-safe calls).
pub struct Prepared {
    display: String,
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

/// A forked child waiting at the barrier.
pub struct Held {
    pub pid: u32,
    display: String,
    release: OwnedFd,
    exec_error: OwnedFd,
}

pub fn prepare(command: &[OsString]) -> Result<Prepared, SpawnError> {
    let display = command
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let program = command
        .first()
        .ok_or_else(|| SpawnError::NotFound(String::new()))?;
    let path = resolve(program)?;
    let cstring =
        |s: &OsStr| CString::new(s.as_bytes()).map_err(|_| SpawnError::Nul(display.clone()));
    let argv = command
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<_, _>>()?;
    let envp = std::env::vars_os()
        .map(|(k, v)| {
            let mut pair = k;
            pair.push("=");
            pair.push(v);
            cstring(&pair)
        })
        .collect::<Result<_, _>>()?;
    Ok(Prepared {
        path: cstring(path.as_os_str())?,
        argv,
        envp,
        display,
    })
}

/// Finds the program as execvp(3) would.
fn resolve(program: &OsStr) -> Result<PathBuf, SpawnError> {
    let name = program.to_string_lossy().into_owned();
    if program.as_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        return match (path.is_file(), executable(&path)) {
            (false, _) => Err(SpawnError::NotFound(name)),
            (true, false) => Err(SpawnError::NotExecutable(name)),
            (true, true) => Ok(path),
        };
    }
    let search =
        std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    let mut found_unexecutable = false;
    for dir in std::env::split_paths(&search) {
        let candidate = dir.join(program);
        if candidate.is_file() {
            if executable(&candidate) {
                return Ok(candidate);
            }
            found_unexecutable = true;
        }
    }
    Err(if found_unexecutable {
        SpawnError::NotExecutable(name)
    } else {
        SpawnError::NotFound(name)
    })
}

fn executable(path: &Path) -> bool {
    rustix::fs::access(path, rustix::fs::Access::EXEC_OK).is_ok()
}

pub fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// A pid as the kernel takes it; `None` for 0 or past `i32::MAX`, never a process.
fn to_pid(raw: u32) -> Option<Pid> {
    i32::try_from(raw).ok().and_then(Pid::from_raw)
}

/// Sends `signal` to the process `raw`. Errors are ignored: the process may
/// have just exited, and the caller's next step notices either way.
pub fn kill(raw: u32, signal: Signal) {
    if let Some(pid) = to_pid(raw) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

impl Prepared {
    pub fn fork_held(self) -> Result<Held, SpawnError> {
        let os = |source| SpawnError::Os {
            command: self.display.clone(),
            source,
        };
        let (release_r, release_w) = pipe().map_err(os)?;
        let (error_r, error_w) = pipe().map_err(os)?;
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.envp.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());

        // SAFETY: the child only calls async-signal-safe functions (read,
        // execve, write, _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(os(std::io::Error::last_os_error()));
        }
        if pid == 0 {
            child(release_r.as_fd(), error_w.as_fd(), &self.path, &argv, &envp);
        }
        drop((release_r, error_w));
        Ok(Held {
            pid: pid as u32,
            display: self.display,
            release: release_w,
            exec_error: error_r,
        })
    }
}

/// The forked child: waits for the release byte, then execs. Only
/// async-signal-safe calls (rustix's are plain syscalls) on memory prepared
/// before the fork.
fn child(
    release: BorrowedFd<'_>,
    error: BorrowedFd<'_>,
    path: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
    let mut byte = [0u8];
    loop {
        match rustix::io::read(release, &mut byte) {
            Ok(1) => break,
            Err(Errno::INTR) => {}
            _ => exit_now(i32::from(crate::exit::INTERNAL)),
        }
    }
    // SAFETY: path, argv and envp are NUL-terminated (argv and envp by a null
    // pointer) and were built before the fork.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    let errno = std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or_default();
    let _ = rustix::io::write(error, &errno.to_ne_bytes());
    exit_now(if errno == Errno::NOENT.raw_os_error() {
        127
    } else {
        126
    });
}

/// Exits the forked child without the exit handlers and stdio flushing that
/// belong to the parent.
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit only ends the process.
    unsafe { libc::_exit(code) }
}

impl Held {
    /// Lets the child exec, and reports whether the exec itself failed.
    pub fn release(self) -> Result<u32, SpawnError> {
        let os = |source| SpawnError::Os {
            command: self.display.clone(),
            source,
        };
        // Closed right after the byte: the child needs nothing more from it.
        std::fs::File::from(self.release)
            .write_all(&[1])
            .map_err(os)?;
        let mut errno = [0u8; 4];
        // EOF means exec succeeded (CLOEXEC closed the child's end).
        let n = std::fs::File::from(self.exec_error).read(&mut errno);
        if let Ok(4) = n {
            let code = i32::from_ne_bytes(errno);
            return Err(match Errno::from_raw_os_error(code) {
                Errno::NOENT => SpawnError::NotFound(self.display),
                Errno::ACCESS | Errno::NOEXEC => SpawnError::NotExecutable(self.display),
                _ => SpawnError::Os {
                    command: self.display,
                    source: std::io::Error::from_raw_os_error(code),
                },
            });
        }
        Ok(self.pid)
    }
}

pub use crate::agent::trace::Ended;

/// Blocks until the child exits.
///
/// rustix, not nix, because nix's waitpid turns a realtime signal (not in its
/// `Signal` enum) into EINVAL after the child is already reaped.
pub fn wait(raw: u32) -> std::io::Result<Ended> {
    let pid = to_pid(raw).ok_or_else(|| std::io::Error::from(Errno::CHILD))?;
    let status = loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
            Ok(Some((_, status))) => break status,
            // `None` only comes with NOHANG.
            Ok(None) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    };
    Ok(match status.terminating_signal() {
        Some(signal) => Ended::Signal(signal),
        None => Ended::Code(status.exit_status().unwrap_or_default()),
    })
}
