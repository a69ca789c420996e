//! Starts the watched command held at a barrier between fork and exec, so
//! the kernel knows it belongs to the job before it runs a single instruction.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{0}: command not found")]
    NotFound(String),
    #[error("{0}: permission denied (not executable)")]
    NotExecutable(String),
    #[error("{0}: argument contains a NUL byte")]
    Nul(String),
    #[error("cannot start {command}: {source}")]
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
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access() reads a valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

pub fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
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
            // SAFETY: see above; this never returns.
            unsafe {
                child(
                    release_r.as_raw_fd(),
                    error_w.as_raw_fd(),
                    &self.path,
                    &argv,
                    &envp,
                )
            }
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

/// # Safety
/// Must only run in a freshly forked child.
unsafe fn child(
    release: i32,
    error: i32,
    path: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
    let mut byte = 0u8;
    loop {
        let n = libc::read(release, (&mut byte as *mut u8).cast(), 1);
        if n == 1 {
            break;
        }
        if n == 0 || *libc::__errno_location() != libc::EINTR {
            libc::_exit(crate::exit::INTERNAL as i32);
        }
    }
    libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
    let errno = *libc::__errno_location();
    libc::write(
        error,
        (&errno as *const i32).cast(),
        std::mem::size_of::<i32>(),
    );
    libc::_exit(if errno == libc::ENOENT { 127 } else { 126 });
}

impl Held {
    /// Lets the child exec, and reports whether the exec itself failed.
    pub fn release(self) -> Result<u32, SpawnError> {
        let os = |source| SpawnError::Os {
            command: self.display.clone(),
            source,
        };
        // SAFETY: writes one byte from a valid buffer to an fd we own.
        if unsafe { libc::write(self.release.as_raw_fd(), [1u8].as_ptr().cast(), 1) } != 1 {
            return Err(os(std::io::Error::last_os_error()));
        }
        drop(self.release);
        let mut errno = [0u8; 4];
        // SAFETY: reads into a valid 4-byte buffer; EOF means exec succeeded (CLOEXEC closed it).
        let n = unsafe { libc::read(self.exec_error.as_raw_fd(), errno.as_mut_ptr().cast(), 4) };
        if n == 4 {
            let code = i32::from_ne_bytes(errno);
            return Err(match code {
                libc::ENOENT => SpawnError::NotFound(self.display),
                libc::EACCES | libc::ENOEXEC => SpawnError::NotExecutable(self.display),
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
pub fn wait(pid: u32) -> std::io::Result<Ended> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status of our own child.
        let rc = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        if rc == pid as i32 {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
    Ok(if libc::WIFSIGNALED(status) {
        Ended::Signal(libc::WTERMSIG(status))
    } else {
        Ended::Code(libc::WEXITSTATUS(status))
    })
}
