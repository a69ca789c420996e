//! The agent's control socket, `control.sock` in the job's root-only state
//! directory: `finish` asks the agent there to seal the job, and the agent
//! answers once it has. Each end checks the other (SO_PEERCRED): the agent
//! takes requests only from its own user (root), and `finish` talks only to
//! that user at the pid the agent recorded in the same directory.
//!
//! The protocol is one JSON line each way: `{"op":"seal"}`, then
//! `{"ok":true}` or `{"error":"…"}`.

use std::os::fd::AsFd;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::state_dir::StateDir;

pub const SOCKET: &str = "control.sock";
/// A request or an answer is one short line; anything longer is not ours.
const MAX_LINE: u64 = 4096;
/// How long a connected client may take to say what it wants.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot listen on {path}")]
    Bind {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot reach the agent's control socket")]
    Connect(#[source] std::io::Error),
    #[error("the control socket is held by pid {pid} (uid {uid}), not by the agent (pid {agent}): refusing to talk to it")]
    NotTheAgent { pid: i32, uid: u32, agent: u32 },
    #[error("the agent did not answer within {0}s")]
    Timeout(u64),
    #[error("the agent's answer is unreadable: {0}")]
    Protocol(String),
    #[error("the agent could not seal the job: {0}")]
    Agent(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    op: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Answer {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The agent's end.
pub struct Server {
    listener: UnixListener,
}

/// A client waiting for the job to be sealed.
pub struct SealRequest {
    stream: UnixStream,
}

impl Server {
    /// Listens in the state directory (created fresh by this agent: no stale socket can be there).
    pub fn bind(state: &StateDir) -> Result<Self, ControlError> {
        let path = state.file(SOCKET);
        let bind_err = |source| ControlError::Bind {
            path: path.display().to_string(),
            source,
        };
        let listener = UnixListener::bind(&path).map_err(bind_err)?;
        // The directory is 0700 already; the socket says the same.
        rustix::fs::chmod(&path, rustix::fs::Mode::from_raw_mode(0o600))
            .map_err(|e| bind_err(e.into()))?;
        Ok(Self { listener })
    }

    /// The next seal request from this user; others are dropped unanswered.
    pub async fn next_seal(&self) -> SealRequest {
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                continue;
            };
            match peer(&stream) {
                Ok((pid, uid)) if uid == own_uid() => {
                    tracing::info!("control: a request from pid {pid}");
                }
                Ok((pid, uid)) => {
                    tracing::warn!("control: refused a connection from pid {pid} (uid {uid})");
                    continue;
                }
                Err(e) => {
                    tracing::warn!("control: refused a connection without credentials: {e}");
                    continue;
                }
            }
            let mut reader = BufReader::new(stream).take(MAX_LINE);
            let mut line = String::new();
            let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
            let stream = reader.into_inner().into_inner();
            match (read, serde_json::from_str::<Request>(&line)) {
                (Ok(Ok(_)), Ok(request)) if request.op == "seal" => return SealRequest { stream },
                _ => tracing::warn!("control: ignored a malformed request"),
            }
        }
    }
}

impl SealRequest {
    /// Tells the client how sealing went; a client that left misses nothing it needs.
    pub async fn reply(mut self, result: Result<(), String>) {
        let answer = match result {
            Ok(()) => Answer {
                ok: true,
                error: None,
            },
            Err(e) => Answer {
                ok: false,
                error: Some(e),
            },
        };
        let mut line = serde_json::to_vec(&answer).unwrap_or_default();
        line.push(b'\n');
        let _ = self.stream.write_all(&line).await;
        let _ = self.stream.shutdown().await;
    }
}

/// `finish`'s end: asks the agent at `agent_pid` to seal and waits for its answer.
pub async fn request_seal(
    state: &StateDir,
    agent_pid: u32,
    timeout: Duration,
) -> Result<(), ControlError> {
    let mut stream = UnixStream::connect(state.file(SOCKET))
        .await
        .map_err(ControlError::Connect)?;
    let (pid, uid) = peer(&stream).map_err(ControlError::Connect)?;
    if uid != own_uid() || u32::try_from(pid).ok() != Some(agent_pid) {
        return Err(ControlError::NotTheAgent {
            pid,
            uid,
            agent: agent_pid,
        });
    }
    let mut request = serde_json::to_vec(&Request { op: "seal".into() })
        .map_err(|e| ControlError::Protocol(e.to_string()))?;
    request.push(b'\n');
    stream
        .write_all(&request)
        .await
        .map_err(ControlError::Connect)?;
    let mut reader = BufReader::new(stream).take(MAX_LINE);
    let mut line = String::new();
    match tokio::time::timeout(timeout, reader.read_line(&mut line)).await {
        Err(_) => return Err(ControlError::Timeout(timeout.as_secs())),
        Ok(Err(e)) => return Err(ControlError::Connect(e)),
        Ok(Ok(_)) => {}
    }
    let answer: Answer =
        serde_json::from_str(&line).map_err(|e| ControlError::Protocol(e.to_string()))?;
    match (answer.ok, answer.error) {
        (true, _) => Ok(()),
        (false, Some(e)) => Err(ControlError::Agent(e)),
        (false, None) => Err(ControlError::Protocol(line.trim().to_string())),
    }
}

/// The pid and uid at the other end, as the kernel recorded them at connect time.
fn peer(stream: &UnixStream) -> std::io::Result<(i32, u32)> {
    let cred = rustix::net::sockopt::socket_peercred(stream.as_fd())?;
    Ok((cred.pid.as_raw_nonzero().get(), cred.uid.as_raw()))
}

fn own_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (tempfile::TempDir, StateDir) {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::create(&tmp.path().join("ciwatch"), &tmp.path().join("out")).unwrap();
        (tmp, state)
    }

    #[tokio::test]
    async fn seals_on_request_and_answers() {
        let (_tmp, state) = state();
        let server = Server::bind(&state).unwrap();
        let agent = tokio::spawn(async move {
            let request = server.next_seal().await;
            request.reply(Ok(())).await;
        });
        request_seal(&state, std::process::id(), Duration::from_secs(5))
            .await
            .unwrap();
        agent.await.unwrap();
    }

    #[tokio::test]
    async fn reports_the_agents_error() {
        let (_tmp, state) = state();
        let server = Server::bind(&state).unwrap();
        tokio::spawn(async move {
            server
                .next_seal()
                .await
                .reply(Err("disk full".into()))
                .await;
        });
        let e = request_seal(&state, std::process::id(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(e, ControlError::Agent(ref m) if m == "disk full"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn refuses_a_socket_held_by_another_pid() {
        let (_tmp, state) = state();
        let _server = Server::bind(&state).unwrap();
        let e = request_seal(&state, std::process::id() + 1, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, ControlError::NotTheAgent { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_missing_agent_is_a_connect_error() {
        let (_tmp, state) = state();
        let e = request_seal(&state, 1, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, ControlError::Connect(_)), "{e}");
    }
}
