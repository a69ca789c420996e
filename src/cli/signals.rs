//! Termination signals are forwarded to the watched command; ciwatch itself
//! stays to seal the trace.

use rustix::process::Signal as Sig;
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
                signal = self.next() => signal,
            };
            spawn::kill(pid, forwarded);
            tracing::info!("forwarded signal {} to the command", forwarded.as_raw());
        }
    }

    /// Resolves when any termination signal arrives (for the agent in the background).
    pub async fn any(&mut self) -> i32 {
        self.next().await.as_raw()
    }

    async fn next(&mut self) -> Sig {
        tokio::select! {
            _ = self.interrupt.recv() => Sig::INT,
            _ = self.terminate.recv() => Sig::TERM,
            _ = self.hangup.recv() => Sig::HUP,
            _ = self.quit.recv() => Sig::QUIT,
        }
    }
}
