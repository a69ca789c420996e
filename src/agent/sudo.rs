//! `start --disable-sudo`: takes sudo away from the user who ran `start`
//! through sudo, for the rest of the job, and records what it did.
//!
//! sudoers applies the last rule that matches, and `/etc/sudoers` reads
//! `/etc/sudoers.d` last, in name order. One file that sorts last says that
//! the user may run nothing as anyone (`!ALL`), which overrides every grant
//! before it (the user's own lines, and `%sudo`/`%admin` group lines, which
//! removing the user from the group would not: running processes keep their
//! groups), and then allows exactly one command: this job's `finish`, by the
//! root-owned binary, with fixed arguments. Nothing existing is edited. The
//! result is then checked with `sudo -l -U`, and a grant that still holds
//! (a later file, a rule after the include) fails `start`.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use super::out_dir::JobUser;

/// The file that disables sudo; `zz…` sorts after the runner images' own grants.
pub const RULE_FILE: &str = "/etc/sudoers.d/zzzz-ciwatch";

#[derive(Debug, thiserror::Error)]
pub enum SudoError {
    #[error("--disable-sudo: `ciwatch start` must run through sudo (it takes sudo away from the user who ran it), and SUDO_USER names no user with uid {uid}")]
    NoUser { uid: u32 },
    #[error("--disable-sudo: {0} is not a user name sudoers can hold")]
    BadName(String),
    #[error("--disable-sudo: the agent binary {path} must be root's and writable by root alone, as sudo will run it as root")]
    UnsafeBinary { path: String },
    #[error("--disable-sudo: cannot run {command}")]
    Run {
        command: String,
        source: std::io::Error,
    },
    #[error("--disable-sudo: cannot write {path}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("--disable-sudo: visudo rejected the rule ({0})")]
    Invalid(String),
    #[error("--disable-sudo: after writing {RULE_FILE}, {0}")]
    StillAllowed(String),
}

/// What `trace_start.sudo_disabled` records.
#[derive(Debug, Clone, Serialize)]
pub struct SudoDisabled {
    pub user: String,
    pub uid: u32,
    /// The file that overrides every earlier grant.
    pub rule_file: String,
    /// What `sudo -l -U <user>` listed before: the grants now neutralised.
    pub neutralised: Vec<String>,
    /// The one command still allowed.
    pub allowed: String,
}

/// Disables sudo for the invoking user; `finish_args` is the only command it may still run.
pub fn disable(
    user: JobUser,
    binary: &Path,
    finish_args: &[String],
) -> Result<SudoDisabled, SudoError> {
    let name = user_name(user.uid)?;
    check_binary(binary)?;
    let allowed = std::iter::once(binary.display().to_string())
        .chain(finish_args.iter().cloned())
        .collect::<Vec<_>>();
    for word in &allowed {
        if !word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b))
        {
            return Err(SudoError::BadName(word.clone()));
        }
    }
    let allowed = allowed.join(" ");
    let neutralised = grants(&name)?;
    install(&format!(
        "# Written by `ciwatch start --disable-sudo`. The last matching rule wins: {name} may run\n\
         # nothing through sudo but the command that seals this job's trace.\n\
         {name} ALL=(ALL:ALL) !ALL\n\
         {name} ALL=(root) NOPASSWD: {allowed}\n"
    ))?;
    verify(&name, &allowed)?;
    tracing::info!("sudo is disabled for {name}: only `{allowed}` remains");
    Ok(SudoDisabled {
        user: name,
        uid: user.uid,
        rule_file: RULE_FILE.into(),
        neutralised,
        allowed,
    })
}

/// SUDO_USER, checked against the uid sudo recorded.
fn user_name(uid: u32) -> Result<String, SudoError> {
    let name = std::env::var("SUDO_USER").unwrap_or_default();
    if uid == 0 || name.is_empty() || uid_of(&name) != Some(uid) {
        return Err(SudoError::NoUser { uid });
    }
    let valid = name.bytes().enumerate().all(|(i, b)| {
        b.is_ascii_lowercase() || b == b'_' || (i > 0 && (b.is_ascii_digit() || b == b'-'))
    });
    if !valid {
        return Err(SudoError::BadName(name));
    }
    Ok(name)
}

fn uid_of(name: &str) -> Option<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// A root-owned binary in root-owned directories that only root can write.
fn check_binary(binary: &Path) -> Result<(), SudoError> {
    let unsafe_binary = || SudoError::UnsafeBinary {
        path: binary.display().to_string(),
    };
    let mut path: Option<&Path> = Some(binary);
    while let Some(p) = path.filter(|p| !p.as_os_str().is_empty()) {
        let meta = std::fs::symlink_metadata(p).map_err(|_| unsafe_binary())?;
        if meta.uid() != 0 || meta.mode() & 0o022 != 0 || meta.file_type().is_symlink() {
            return Err(unsafe_binary());
        }
        path = p.parent();
    }
    Ok(())
}

/// The user's grants as sudo sees them.
fn grants(name: &str) -> Result<Vec<String>, SudoError> {
    let out = run(Command::new("sudo").args(["-n", "-l", "-U", name]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The lines after "User … may run the following commands on …:".
    Ok(text
        .lines()
        .skip_while(|l| !l.contains("may run the following commands"))
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Writes the rule under a name sudo ignores (it has a dot), checks it with visudo, renames it into place.
fn install(rule: &str) -> Result<(), SudoError> {
    let partial = PathBuf::from(format!("{RULE_FILE}.partial"));
    let write_err = |source| SudoError::Write {
        path: partial.display().to_string(),
        source,
    };
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o440)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&partial)
        .map_err(write_err)?;
    file.write_all(rule.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    let checked = run(Command::new("visudo")
        .args(["-c", "-q", "-f"])
        .arg(&partial))?;
    if !checked.status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(SudoError::Invalid(
            String::from_utf8_lossy(&checked.stderr).trim().to_string(),
        ));
    }
    std::fs::rename(&partial, RULE_FILE).map_err(write_err)
}

/// Nothing but `allowed` may run: a shell is refused, the finish command accepted.
fn verify(name: &str, allowed: &str) -> Result<(), SudoError> {
    let listed = |command: &[&str]| -> Result<bool, SudoError> {
        let out = run(Command::new("sudo")
            .args(["-n", "-l", "-U", name])
            .args(command))?;
        Ok(out.status.success())
    };
    if listed(&["/bin/sh"])? {
        return Err(SudoError::StillAllowed(format!(
            "`sudo -l -U {name} /bin/sh` still allows a shell as root (a later sudoers rule grants it)"
        )));
    }
    let words: Vec<&str> = allowed.split(' ').collect();
    if !listed(&words)? {
        return Err(SudoError::StillAllowed(format!(
            "`sudo -l -U {name}` does not allow `{allowed}`, which the post step needs"
        )));
    }
    Ok(())
}

fn run(command: &mut Command) -> Result<std::process::Output, SudoError> {
    command.output().map_err(|source| SudoError::Run {
        command: format!("{command:?}"),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_the_job_could_replace_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("ciwatch");
        std::fs::write(&bin, "").unwrap();
        // A temporary directory sits in /tmp, which everyone can write.
        assert!(matches!(
            check_binary(&bin),
            Err(SudoError::UnsafeBinary { .. })
        ));
    }

    #[test]
    fn root_is_not_a_user_to_disable() {
        assert!(matches!(user_name(0), Err(SudoError::NoUser { uid: 0 })));
    }
}
