//! ciwatch: see, and control, what a CI job does at runtime.
//!
//! The modules follow the pipeline: `bpf` (kernel programs: load, attach,
//! ABI) → `decode` → `attribute` → `sink` (NDJSON, summary), driven by
//! `pipeline` and one `cli` module per subcommand; `attest` signs and
//! verifies the sealed log; `store` keeps sealed traces (a local directory
//! or an object store) for the daemon to upload and `learn` to read.

pub mod agent;
pub mod attest;
pub mod attribute;
pub mod bpf;
pub mod cli;
pub mod config;
pub mod decode;
pub mod enforce;
pub mod error;
pub mod event;
pub mod exit;
pub mod filter;
pub mod health;
pub mod kind;
pub mod learn;
pub mod pipeline;
pub mod policy;
pub mod redact;
pub mod sink;
pub mod store;
pub mod text;
pub mod tls;
