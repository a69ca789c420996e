//! ciwatch's own exit codes (docs/exit-codes.md). `run` otherwise exits with
//! the watched command's code, or 128 + the signal that ended it, as a shell does.

/// `verify`: the evidence does not hold (bad signature, wrong identity, log mismatch…).
pub const VERIFY_FAILED: u8 = 1;
pub const USAGE: u8 = 2;
/// `verify`: an input (bundle, envelope, key, log, trusted root) is unreadable or malformed.
pub const DATA: u8 = 65;
/// `policy diff`, `learn --diff`: the policy would have denied something in the traces.
pub const WOULD_DENY: u8 = 1;
/// A trace to read is missing, not sealed or malformed (`policy diff`, `learn`).
pub const TRACE_INPUT: u8 = 66;
/// `learn --github`: the GitHub API failed (after retries) or refused the token.
pub const FETCH: u8 = 69;
pub const INTERNAL: u8 = 70;
pub const NO_BTF: u8 = 71;
pub const MOUNT: u8 = 72;
pub const OUTPUT_DIR: u8 = 73;
pub const WRITE: u8 = 74;
pub const PRIVILEGES: u8 = 77;
pub const CONFIG: u8 = 78;
pub const HOOKS: u8 = 79;
/// `finish`: the agent died during the job (its trace was recovered, incomplete).
pub const AGENT_DIED: u8 = 80;
/// `finish`: the trace is complete but the kernel lost events.
pub const EVENTS_LOST: u8 = 81;
/// `finish`: no agent was started for that output directory.
pub const NO_AGENT: u8 = 82;
/// The trace was recorded but could not be signed; no attestation was written.
pub const SIGNING: u8 = 83;
pub const NOT_EXECUTABLE: u8 = 126;
pub const NOT_FOUND: u8 = 127;

use crate::bpf::preflight::PreflightError;

pub fn preflight(e: &PreflightError) -> u8 {
    match e {
        PreflightError::MissingCapabilities(_) => PRIVILEGES,
        PreflightError::NoBtf(_) => NO_BTF,
        PreflightError::Mount { .. } => MOUNT,
    }
}
