//! Signs an existing sealed log directory with a local key, as `ciwatch run`
//! does after sealing, and reports the time taken. Used by scripts/bench-sign;
//! also handy to (re-)sign a log by hand.
//!
//!   cargo run --release --example sign_log -- DIR KEY.pem [--hash-only]
//!
//! `--hash-only` measures plain SHA-256 over DIR/events.ndjson with the same
//! reader, the baseline the signing throughput is compared with.

use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use ciwatch::attest::{self, KeySource, SignMode, SignOptions};
use sha2::{Digest, Sha256};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(dir), Some(key)) = (args.first(), args.get(1)) else {
        anyhow::bail!("usage: sign_log DIR KEY.pem [--hash-only]");
    };
    let dir = PathBuf::from(dir);
    let bytes = std::fs::metadata(dir.join("events.ndjson"))?.len();
    let start = Instant::now();
    if args.iter().any(|a| a == "--hash-only") {
        let mut f = std::fs::File::open(dir.join("events.ndjson"))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        report("sha256 only", bytes, start, &hex::encode(h.finalize()));
        return Ok(());
    }
    let mut opts = SignOptions::new(SignMode::Key);
    opts.key = KeySource::Path(PathBuf::from(key));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(attest::sign_trace(&dir, &opts))?;
    report(
        "hash + summarise + sign",
        bytes,
        start,
        outcome.log_sha256.as_deref().unwrap_or("?"),
    );
    Ok(())
}

fn report(what: &str, bytes: u64, start: Instant, sha: &str) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{what}: {bytes} bytes in {secs:.2} s = {:.0} MB/s (sha256 {sha})",
        bytes as f64 / secs / 1e6
    );
}
