//! Termination signals are forwarded to the watched command; ciwatch itself
//! stays to seal the trace.

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::spawn::{self, Ended};

pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
    quit: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// Waits for `pid` to exit, forwarding any termination signal to it meanwhile.
    pub async fn wait_forwarding(mut self, pid: u32) -> std::io::Result<Ended> {
        let mut wait = tokio::task::spawn_blocking(move || spawn::wait(pid));
        loop {
            let forwarded = tokio::select! {
                done = &mut wait => return done.map_err(std::io::Error::other)?,
                _ = self.interrupt.recv() => libc::SIGINT,
                _ = self.terminate.recv() => libc::SIGTERM,
                _ = self.hangup.recv() => libc::SIGHUP,
                _ = self.quit.recv() => libc::SIGQUIT,
            };
            // SAFETY: kill() on our own child's pid.
            unsafe { libc::kill(pid as i32, forwarded) };
            tracing::info!("forwarded signal {forwarded} to the command");
        }
    }

    /// Resolves when any termination signal arrives (for the agent in the background).
    pub async fn any(&mut self) -> i32 {
        tokio::select! {
            _ = self.interrupt.recv() => libc::SIGINT,
            _ = self.terminate.recv() => libc::SIGTERM,
            _ = self.hangup.recv() => libc::SIGHUP,
            _ = self.quit.recv() => libc::SIGQUIT,
        }
    }
}
