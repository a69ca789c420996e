//! Compiles the C CO-RE programs in `ebpf/` with clang and leaves the objects
//! in OUT_DIR, where `src/bpf/` embeds them.
//!
//! With `CIWATCH_BPF_STUBS=1` it writes empty objects instead, so that
//! `cargo check` and `cargo clippy` need no clang; whatever loads or parses an
//! object refuses an empty one and names the switch.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Sources to compile, each to `OUT_DIR/<name>.o`.
const PROGRAMS: &[&str] = &["ciwatch.bpf.c", "abi_check.bpf.c"];

fn main() {
    let ebpf = PathBuf::from("ebpf");
    println!("cargo:rerun-if-env-changed=CIWATCH_CLANG");
    println!("cargo:rerun-if-env-changed=CIWATCH_BPF_STUBS");
    println!("cargo:rerun-if-changed={}", ebpf.display());
    for entry in walk(&ebpf) {
        println!("cargo:rerun-if-changed={}", entry.display());
    }

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    if stubs() {
        for program in PROGRAMS {
            let object = object_path(&out, program);
            std::fs::write(&object, b"").unwrap_or_else(|e| {
                fail(&format!("could not write stub {}: {e}", object.display()))
            });
        }
        return;
    }
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let (define, vmlinux) = match arch.as_str() {
        "x86_64" => ("__TARGET_ARCH_x86", "x86_64"),
        "aarch64" => ("__TARGET_ARCH_arm64", "arm64"),
        other => fail(&format!(
            "ciwatch's BPF programs support x86_64 and aarch64, not {other}"
        )),
    };
    let clang = find_clang();
    for program in PROGRAMS {
        let object = object_path(&out, program);
        let status = Command::new(&clang)
            .args([
                "-g", "-O2", "-target", "bpfel", "-mcpu=v3", "-Wall", "-Werror",
            ])
            .arg(format!("-D{define}"))
            .arg("-I")
            .arg(&ebpf)
            .arg("-I")
            .arg(ebpf.join("vmlinux").join(vmlinux))
            .arg("-c")
            .arg(ebpf.join(program))
            .arg("-o")
            .arg(&object)
            .status()
            .unwrap_or_else(|e| fail(&format!("could not run {}: {e}", clang.display())));
        if !status.success() {
            fail(&format!("clang failed to compile ebpf/{program}"));
        }
    }
}

/// Whether `CIWATCH_BPF_STUBS=1` asks for empty objects; any other value than 0 or 1 is a mistake.
fn stubs() -> bool {
    match env::var("CIWATCH_BPF_STUBS").as_deref() {
        Err(env::VarError::NotPresent) | Ok("" | "0") => false,
        Ok("1") => true,
        Ok(other) => fail(&format!("CIWATCH_BPF_STUBS must be 1 or 0, not `{other}`")),
        Err(env::VarError::NotUnicode(_)) => fail("CIWATCH_BPF_STUBS must be 1 or 0"),
    }
}

fn object_path(out: &Path, program: &str) -> PathBuf {
    out.join(program.replace(".c", ".o"))
}

/// clang-19 first (Debian's package), then any clang; CIWATCH_CLANG overrides.
fn find_clang() -> PathBuf {
    if let Some(path) = env::var_os("CIWATCH_CLANG") {
        return PathBuf::from(path);
    }
    for name in ["clang-19", "clang"] {
        if Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return PathBuf::from(name);
        }
    }
    fail(
        "clang was not found; ciwatch compiles its BPF programs with clang. \
         Install it with `apt-get install clang-19 libbpf-dev` (Debian/Ubuntu), \
         or set CIWATCH_CLANG to a clang binary",
    )
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
