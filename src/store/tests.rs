use super::*;

fn sealed_dir(root: &Path, id: &str, events: &[u8]) -> PathBuf {
    let dir = root.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(SEALED_FILE), events).unwrap();
    std::fs::write(dir.join("summary.md"), b"| step | execs |\n").unwrap();
    std::fs::write(dir.join("attestation.intoto.jsonl"), b"{}\n").unwrap();
    dir
}

fn config(url: &str) -> OutputConfig {
    OutputConfig {
        url: Some(url.to_string()),
        ..OutputConfig::default()
    }
}

/// Upload, list, fetch: the same checks against any store.
async fn roundtrip(store: &TraceStore) {
    let local = tempfile::tempdir().unwrap();
    // Bigger than the 8 MiB buffer, so the multipart path runs too.
    let big: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
    let a = sealed_dir(
        local.path(),
        "host1-github-111",
        b"{\"type\":\"trace_start\"}\n",
    );
    let b = sealed_dir(local.path(), "host1-github-222", &big);
    std::fs::write(b.join("events.ndjson.partial"), b"never uploaded").unwrap();
    let unsealed = local.path().join("host1-github-333");
    std::fs::create_dir_all(&unsealed).unwrap();
    std::fs::write(unsealed.join("events.ndjson.partial"), b"in flight").unwrap();

    assert_eq!(
        pending_uploads(local.path()).unwrap(),
        vec![a.clone(), b.clone()]
    );
    let m = store.upload(&a, true).await.unwrap();
    assert_eq!(
        m.files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        ["attestation.intoto.jsonl", "events.ndjson", "summary.md"]
    );
    assert_eq!(pending_uploads(local.path()).unwrap(), vec![b.clone()]);
    store.upload(&b, false).await.unwrap();
    assert!(!b.exists(), "keep_local = false removes the local copy");
    assert!(matches!(
        store.upload(&unsealed, true).await,
        Err(OutputError::NotSealed { .. })
    ));

    let listed = store.list(10).await.unwrap();
    let mut ids: Vec<_> = listed.iter().map(|e| e.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["host1-github-111", "host1-github-222"]);
    assert_eq!(store.list(1).await.unwrap().len(), 1);

    let scratch = tempfile::tempdir().unwrap();
    let got = store
        .fetch("host1-github-222", scratch.path())
        .await
        .unwrap();
    assert_eq!(std::fs::read(got.join(SEALED_FILE)).unwrap(), big);
    assert!(!got.join("events.ndjson.partial").exists());
    let got = store
        .fetch("host1-github-111", scratch.path())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(got.join("summary.md")).unwrap(),
        b"| step | execs |\n"
    );
    assert!(store.fetch("nope", scratch.path()).await.is_err());
}

#[tokio::test]
async fn file_store_roundtrip() {
    let remote = tempfile::tempdir().unwrap();
    let url = format!("file://{}", remote.path().join("fleet").display());
    let store = TraceStore::from_config(&config(&url)).unwrap().unwrap();
    roundtrip(&store).await;
    // A damaged object is caught by the manifest.
    std::fs::write(
        remote.path().join("fleet/host1-github-111/summary.md"),
        b"tampered",
    )
    .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let err = store
        .fetch("host1-github-111", scratch.path())
        .await
        .unwrap_err();
    assert!(matches!(err, OutputError::Corrupt { .. }), "{err}");
}

#[tokio::test]
async fn local_dir_source() {
    let root = tempfile::tempdir().unwrap();
    sealed_dir(root.path(), "job-a", b"x\n");
    std::fs::create_dir_all(root.path().join("job-b")).unwrap();
    let source = TraceSource::from_config(&OutputConfig::default(), root.path()).unwrap();
    let listed = source.list(5).await.unwrap();
    assert_eq!(
        listed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["job-a"]
    );
    assert_eq!(
        source
            .fetch("job-a", Path::new("/nonexistent"))
            .await
            .unwrap(),
        root.path().join("job-a")
    );
    assert!(matches!(
        source.fetch("job-b", Path::new("/x")).await,
        Err(OutputError::NotSealed { .. })
    ));
}

#[test]
fn config_errors_are_named() {
    let e = TraceStore::from_config(&config("ftp://x/y"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("ftp://x/y"), "{e}");
    let mut c = config("s3://bucket/prefix");
    c.options
        .insert("aws_endpoint_typo".into(), "http://127.0.0.1:1".into());
    let e = TraceStore::from_config(&c).err().unwrap().to_string();
    assert!(e.contains("aws_endpoint_typo") && e.contains("s3"), "{e}");
    let parsed: OutputConfig = toml::from_str(
        "url = \"gs://b/p\"\nkeep_local = false\n[options]\ngoogle_service_account = \"/k.json\"\n",
    )
    .unwrap();
    assert_eq!(parsed.url.as_deref(), Some("gs://b/p"));
    assert!(!parsed.keep_local);
    assert!(toml::from_str::<OutputConfig>("bucket = \"x\"\n").is_err());
}

#[test]
fn io_errors_are_classified() {
    let p = Path::new("/out");
    assert!(matches!(
        classify_io(p, std::io::Error::from_raw_os_error(libc::ENOSPC)),
        OutputError::NoSpace { .. }
    ));
    assert!(matches!(
        classify_io(p, std::io::Error::from_raw_os_error(libc::EROFS)),
        OutputError::Unwritable { .. }
    ));
    let e = classify_io(p, std::io::Error::from_raw_os_error(libc::EDQUOT));
    assert_eq!(e.failure(), OutputFailure::NoSpace);
    assert!(e.to_string().contains("full"), "{e}");
}

/// A tmpfs of a few pages mounted under a temp dir; unmounted on drop.
struct SmallFs(tempfile::TempDir);
impl SmallFs {
    fn mount(options: &str) -> Self {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "mounting a small tmpfs needs root (scripts/test runs this)"
        );
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                options,
                "ciwatch-test",
                dir.path().to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs");
        Self(dir)
    }
}
impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test]
#[ignore = "needs root: mounts tmpfs volumes (scripts/test runs it)"]
async fn full_and_read_only_output_volumes() {
    let full = SmallFs::mount("size=64k");
    let local = tempfile::tempdir().unwrap();
    let trace = sealed_dir(local.path(), "job-full", &vec![b'x'; 512 << 10]);
    let store = TraceStore::from_config(&config(&format!(
        "file://{}",
        full.0.path().join("out").display()
    )))
    .unwrap()
    .unwrap();
    let err = store.upload(&trace, false).await.unwrap_err();
    assert!(matches!(err, OutputError::NoSpace { .. }), "{err:?}");
    assert_eq!(err.failure(), OutputFailure::NoSpace);
    assert!(
        trace.join(SEALED_FILE).is_file(),
        "the trace stays for a retry"
    );
    assert_eq!(pending_uploads(local.path()).unwrap(), vec![trace.clone()]);

    let ro = SmallFs::mount("size=64k,ro");
    let err = TraceStore::from_config(&config(&format!(
        "file://{}",
        ro.0.path().join("out").display()
    )))
    .err()
    .unwrap();
    assert!(matches!(err, OutputError::Unwritable { .. }), "{err:?}");
    // Fetching into a full scratch volume says so too.
    let ok = TraceStore::from_config(&config(&format!(
        "file://{}",
        local.path().join("store").display()
    )))
    .unwrap()
    .unwrap();
    let big = sealed_dir(local.path(), "job-big", &vec![b'y'; 512 << 10]);
    ok.upload(&big, true).await.unwrap();
    let err = ok
        .fetch("job-big", &full.0.path().join("scratch"))
        .await
        .unwrap_err();
    assert!(matches!(err, OutputError::NoSpace { .. }), "{err:?}");
}

/// Against moto's S3 server on loopback, started from the peers venv
/// (scripts/install-deploy-peers). Skipped when moto is absent, except
/// under CI, where that fails.
#[tokio::test]
async fn s3_roundtrip_against_moto() {
    let Some(moto) = moto::Moto::start() else {
        return;
    };
    let bucket = "ciwatch-traces";
    moto.create_bucket(bucket).await;
    let mut c = config(&format!("s3://{bucket}/fleet/traces"));
    for (k, v) in [
        ("aws_endpoint", moto.endpoint.as_str()),
        ("aws_allow_http", "true"),
        ("aws_region", "us-east-1"),
        ("aws_access_key_id", "testing"),
        ("aws_secret_access_key", "testing"),
    ] {
        c.options.insert(k.into(), v.into());
    }
    let store = TraceStore::from_config(&c).unwrap().unwrap();
    roundtrip(&store).await;
    // The same bucket seen through a second client, as learn on another host would.
    let again = TraceSource::from_config(&c, Path::new("/unused")).unwrap();
    assert_eq!(again.list(10).await.unwrap().len(), 2);
    // A store that cannot be reached is a Store error counted as an upload failure.
    let mut down = c.clone();
    down.options
        .insert("aws_endpoint".into(), "http://127.0.0.1:9".into());
    down.max_retries = Some(0);
    down.retry_timeout = Some("1s".into());
    let local = tempfile::tempdir().unwrap();
    let t = sealed_dir(local.path(), "job-x", b"1\n");
    let err = TraceStore::from_config(&down)
        .unwrap()
        .unwrap()
        .upload(&t, false)
        .await
        .unwrap_err();
    assert_eq!(err.failure(), OutputFailure::Upload, "{err}");
    assert!(t.exists());
}

mod moto {
    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub struct Moto {
        child: Child,
        pub endpoint: String,
        port: u16,
    }

    impl Moto {
        pub fn start() -> Option<Self> {
            let bin = std::env::var_os("CIWATCH_MOTO_SERVER")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                        .join(".cache/peers/venv/bin/moto_server")
                });
            if !bin.is_file() {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "{} is missing: run scripts/install-deploy-peers",
                    bin.display()
                );
                eprintln!(
                    "skipped: {} is missing (scripts/install-deploy-peers installs it)",
                    bin.display()
                );
                return None;
            }
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start moto_server");
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "moto_server did not listen on {port} within 30 s"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            Some(Self {
                child,
                endpoint: format!("http://127.0.0.1:{port}"),
                port,
            })
        }

        /// moto accepts an unsigned CreateBucket.
        pub async fn create_bucket(&self, bucket: &str) {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .unwrap();
            let req = format!("PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", self.port);
            s.write_all(req.as_bytes()).await.unwrap();
            let mut reply = Vec::new();
            s.read_to_end(&mut reply).await.unwrap();
            let text = String::from_utf8_lossy(&reply);
            assert!(
                text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200"),
                "create bucket: {text}"
            );
        }
    }

    impl Drop for Moto {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
