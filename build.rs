//! Compiles the C CO-RE programs in `ebpf/` with clang and leaves the objects
//! in OUT_DIR, where `src/bpf/` embeds them.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Objects to build: (source, shipped in the binary).
const PROGRAMS: &[&str] = &["ciwatch.bpf.c", "abi_check.bpf.c"];

fn main() {
    let ebpf = PathBuf::from("ebpf");
    println!("cargo:rerun-if-env-changed=CIWATCH_CLANG");
    println!("cargo:rerun-if-changed={}", ebpf.display());
    for entry in walk(&ebpf) {
        println!("cargo:rerun-if-changed={}", entry.display());
    }

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
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
        let object = out.join(program.replace(".c", ".o"));
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
