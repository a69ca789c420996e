//! The job summary: what the job executed, reached, resolved and read,
//! rendered as Markdown for summary.md and the terminal.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::event::{Body, Event, HookStatus, Protocol, Totals};
use crate::text::escape_controls;

/// Rows shown per table; the log holds everything.
const MAX_ROWS: usize = 50;

#[derive(Debug, Default)]
pub struct Summary {
    pub totals: Totals,
    pub egress: BTreeMap<(IpAddr, u16, Protocol), Destination>,
    pub dns: BTreeMap<String, Lookup>,
    pub files: BTreeMap<String, FileOpen>,
    pub execs: BTreeMap<String, u64>,
    /// Egress the enforce hook refused.
    pub denied: BTreeMap<(IpAddr, u16, Protocol), Destination>,
    /// DNS queries the enforce hook dropped, by name.
    pub refused: BTreeMap<String, Refusal>,
    /// Raw, packet and ping sockets the job opened.
    pub sockets: BTreeMap<SocketKey, SocketUse>,
    /// Those the enforce hook refused.
    pub denied_sockets: BTreeMap<SocketKey, SocketUse>,
}

/// A socket by what the policy and a reader care about: class, family, protocol.
pub type SocketKey = (&'static str, &'static str, u32);

#[derive(Debug, Default, Clone)]
pub struct SocketUse {
    pub count: u64,
    /// How enforce refused it (`eperm`, `killed`, …); empty when allowed.
    pub refusals: BTreeSet<&'static str>,
    pub comms: BTreeSet<String>,
    pub steps: BTreeSet<String>,
}

#[derive(Debug, Default, Clone)]
pub struct Refusal {
    pub count: u64,
    pub reasons: BTreeSet<&'static str>,
    pub comms: BTreeSet<String>,
    pub steps: BTreeSet<String>,
}

#[derive(Debug, Default, Clone)]
pub struct Destination {
    pub count: u64,
    pub hosts: BTreeSet<String>,
    pub comms: BTreeSet<String>,
    /// Step ids.
    pub steps: BTreeSet<String>,
}

#[derive(Debug, Default, Clone)]
pub struct Lookup {
    pub count: u64,
    /// Enforce judged it unlisted (no name rule in scope for the step).
    pub unlisted: bool,
    pub addrs: BTreeSet<IpAddr>,
    pub errors: BTreeSet<&'static str>,
    pub steps: BTreeSet<String>,
}

#[derive(Debug, Default, Clone)]
pub struct FileOpen {
    pub count: u64,
    pub access: BTreeSet<&'static str>,
    pub comms: BTreeSet<String>,
    pub rule: String,
    pub steps: BTreeSet<String>,
}

/// Facts about the run that are not events.
pub struct Context<'a> {
    pub title: &'a str,
    pub hooks: &'a [HookStatus],
    pub exit: Option<String>,
    pub log_sha256: Option<&'a str>,
    pub still_running: u64,
    pub steps: &'a [StepRow],
    /// Degradations and caveats to show prominently.
    pub notes: &'a [String],
}

/// One row of the per-step table, and of the `finish` report's `steps`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StepRow {
    pub id: String,
    pub name: String,
    pub stage: Option<String>,
    pub internal: bool,
    pub execs: u64,
    pub connects: u64,
    pub dns: u64,
    pub files: u64,
    /// Shown in the summary only; the report's contract does not carry it.
    #[serde(skip)]
    pub degraded: bool,
}

impl Summary {
    pub fn add(&mut self, event: &Event) {
        crate::pipeline::count(&mut self.totals, event);
        let comm = event.proc.comm.lossy().into_owned();
        let step = event.step.id.clone();
        match &event.body {
            Body::Connect(c) => {
                let d = self.egress.entry((c.addr, c.port, c.protocol)).or_default();
                d.count += 1;
                d.hosts.extend(c.hosts.iter().cloned());
                d.comms.insert(comm);
                d.steps.insert(step);
            }
            Body::Dns(d) if d.numeric => {}
            Body::Dns(d) => {
                let l = self.dns.entry(d.host.lossy().into_owned()).or_default();
                l.count += 1;
                l.unlisted |= d.listed == Some(false);
                l.addrs.extend(d.addrs.iter().copied());
                l.errors.extend(d.error);
                l.steps.insert(step);
            }
            Body::File(f) => {
                let o = self.files.entry(f.path.lossy().into_owned()).or_default();
                o.count += 1;
                o.access.insert(f.access);
                o.comms.insert(comm);
                o.rule.clone_from(&f.rule);
                o.steps.insert(step);
            }
            Body::Denied(c) => {
                let d = self.denied.entry((c.addr, c.port, c.protocol)).or_default();
                d.count += 1;
                d.hosts.extend(c.hosts.iter().cloned());
                d.comms.insert(comm);
                d.steps.insert(step);
            }
            Body::DnsRefused(r) => {
                let host = r.host.lossy();
                let shown = if host.is_empty() {
                    "(unreadable)".into()
                } else {
                    host.into_owned()
                };
                let d = self.refused.entry(shown).or_default();
                d.count += 1;
                d.reasons.insert(r.reason);
                d.comms.insert(comm);
                d.steps.insert(step);
            }
            Body::Socket(k) => self
                .sockets
                .entry(socket_key(k))
                .or_default()
                .add(None, comm, step),
            Body::SocketDenied(k) => self
                .denied_sockets
                .entry(socket_key(k))
                .or_default()
                .add(k.refusal, comm, step),
            Body::Exec(e) => {
                *self
                    .execs
                    .entry(e.filename.lossy().into_owned())
                    .or_default() += 1
            }
            Body::Fork(_) | Body::Exit(_) => {}
        }
    }

    pub fn render(&self, ctx: &Context<'_>) -> String {
        let mut md = String::new();
        // The job's name comes from the CI (and on GitHub from a log the job can write).
        let _ = writeln!(md, "# {}\n", cell(ctx.title));
        self.render_overview(&mut md, ctx);
        render_steps(&mut md, ctx.steps);
        let names = StepNames(ctx.steps);
        self.render_denied(&mut md, &names);
        self.render_refused(&mut md, &names);
        render_denied_sockets(&mut md, &names, &self.denied_sockets);
        self.render_egress(&mut md, &names);
        render_sockets(&mut md, &names, &self.sockets);
        self.render_dns(&mut md, &names);
        self.render_files(&mut md, &names);
        self.render_execs(&mut md);
        render_hooks(&mut md, ctx.hooks);
        md
    }

    fn render_overview(&self, md: &mut String, ctx: &Context<'_>) {
        let t = &self.totals;
        let n = |k: &str| t.events.get(k).copied().unwrap_or(0);
        md.push_str("| execs | connects | DNS lookups | sensitive opens | denied | refused lookups | lost events |\n|---:|---:|---:|---:|---:|---:|---:|\n");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            n("exec"),
            n("connect"),
            n("dns"),
            n("file"),
            n("denied"),
            n("dns_refused"),
            t.lost_total
        );
        if t.lost_total > 0 {
            let per_kind: Vec<String> = t
                .lost
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(
                md,
                "> **Warning: {} events were lost** because the ring buffer was full ({}). \
                 Raise `ring.size_bytes` in the config.\n",
                t.lost_total,
                per_kind.join(", ")
            );
        }
        if t.undecodable > 0 {
            let _ = writeln!(
                md,
                "> **Warning:** {} records could not be decoded.\n",
                t.undecodable
            );
        }
        if t.untracked > 0 {
            let _ = writeln!(
                md,
                "> **Warning: {} job processes were not followed** because the kernel's process map \
                 was full: their events are missing, and under enforce their egress was denied. \
                 Raise `lineage.max_processes` in the config.\n",
                t.untracked
            );
        }
        if t.unattributed > 0 {
            let _ = writeln!(
                md,
                "> {} events on this host belonged to no job watched here (another job's container, \
                 a runner's own work between jobs) and are not in this log.\n",
                t.unattributed
            );
        }
        if ctx.still_running > 0 {
            let _ = writeln!(
                md,
                "> {} processes of the job were still running when the trace was sealed.\n",
                ctx.still_running
            );
        }
        for note in ctx.notes {
            let _ = writeln!(md, "> **Note:** {}\n", cell(note));
        }
        if let Some(exit) = &ctx.exit {
            let _ = writeln!(md, "Command: {exit}.  ");
        }
        if let Some(sha) = ctx.log_sha256 {
            let _ = writeln!(md, "Event log SHA-256: `{sha}`\n");
        }
    }

    fn render_egress(&self, md: &mut String, names: &StepNames<'_>) {
        md.push_str("## Egress destinations\n\n");
        if self.egress.is_empty() {
            md.push_str("None.\n\n");
            return;
        }
        destination_table(md, names, &self.egress);
    }

    fn render_denied(&self, md: &mut String, names: &StepNames<'_>) {
        if self.denied.is_empty() {
            return;
        }
        md.push_str(
            "## Denied egress\n\nThe enforce hook refused these; the callers got EPERM.\n\n",
        );
        destination_table(md, names, &self.denied);
    }

    fn render_refused(&self, md: &mut String, names: &StepNames<'_>) {
        if self.refused.is_empty() {
            return;
        }
        md.push_str(
            "## Refused DNS lookups\n\n`dns.refuse-unlisted`: these queries never left the host; \
             the callers got EPERM.\n\n| host name | reason | steps | processes | count |\n\
             |---|---|---|---|---:|\n",
        );
        for (host, r) in self.refused.iter().take(MAX_ROWS) {
            let reasons: BTreeSet<String> = r.reasons.iter().map(|s| s.to_string()).collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                cell(host),
                list(&reasons),
                names.list(&r.steps),
                list(&r.comms),
                r.count
            );
        }
        more(md, self.refused.len());
    }

    fn render_dns(&self, md: &mut String, names: &StepNames<'_>) {
        md.push_str("## DNS lookups\n\n");
        if self.dns.is_empty() {
            md.push_str("None.\n\n");
            return;
        }
        md.push_str("| host name | addresses | steps | count |\n|---|---|---|---:|\n");
        for (host, l) in self.dns.iter().take(MAX_ROWS) {
            let addrs: BTreeSet<String> = l
                .addrs
                .iter()
                .map(IpAddr::to_string)
                .chain(l.errors.iter().map(|e| e.to_string()))
                .collect();
            let unlisted = if l.unlisted { " (unlisted)" } else { "" };
            let _ = writeln!(
                md,
                "| {}{unlisted} | {} | {} | {} |",
                cell(host),
                list(&addrs),
                names.list(&l.steps),
                l.count
            );
        }
        more(md, self.dns.len());
    }

    fn render_files(&self, md: &mut String, names: &StepNames<'_>) {
        md.push_str("## Sensitive file opens\n\n");
        if self.files.is_empty() {
            md.push_str("None.\n\n");
            return;
        }
        md.push_str(
            "| path | access | steps | processes | rule | count |\n|---|---|---|---|---|---:|\n",
        );
        for (path, o) in self.files.iter().take(MAX_ROWS) {
            let access: BTreeSet<String> = o.access.iter().map(|a| a.to_string()).collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | `{}` | {} |",
                cell(path),
                list(&access),
                names.list(&o.steps),
                list(&o.comms),
                o.rule,
                o.count
            );
        }
        more(md, self.files.len());
    }

    fn render_execs(&self, md: &mut String) {
        md.push_str("## Executables\n\n");
        if self.execs.is_empty() {
            md.push_str("None.\n\n");
            return;
        }
        let mut rows: Vec<(&String, &u64)> = self.execs.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        md.push_str("| executable | count |\n|---|---:|\n");
        for (name, count) in rows.iter().take(MAX_ROWS) {
            let _ = writeln!(md, "| {} | {count} |", cell(name));
        }
        more(md, rows.len());
    }
}

fn socket_key(s: &crate::event::SocketBody) -> SocketKey {
    (s.class, s.family, s.protocol_number)
}

impl SocketUse {
    fn add(&mut self, refusal: Option<&'static str>, comm: String, step: String) {
        self.count += 1;
        self.refusals.extend(refusal);
        self.comms.insert(comm);
        self.steps.insert(step);
    }
}

fn render_denied_sockets(
    md: &mut String,
    names: &StepNames<'_>,
    rows: &BTreeMap<SocketKey, SocketUse>,
) {
    if rows.is_empty() {
        return;
    }
    md.push_str(
        "## Denied sockets\n\nThe policy's `sockets:` does not allow these raw, packet or ping sockets: \
         `eperm`, the caller's socket() failed with EPERM; `killed`, the caller was killed before \
         socket() returned (packet sockets).\n\n\
         | socket | family | protocol | refusal | steps | processes | count |\n\
         |---|---|---:|---|---|---|---:|\n",
    );
    for ((class, family, protocol), u) in rows.iter().take(MAX_ROWS) {
        let refusals: BTreeSet<String> = u.refusals.iter().map(|s| s.to_string()).collect();
        let _ = writeln!(
            md,
            "| {class} | {family} | {protocol} | {} | {} | {} | {} |",
            list(&refusals),
            names.list(&u.steps),
            list(&u.comms),
            u.count
        );
    }
    more(md, rows.len());
}

fn render_sockets(md: &mut String, names: &StepNames<'_>, rows: &BTreeMap<SocketKey, SocketUse>) {
    if rows.is_empty() {
        return;
    }
    md.push_str(
        "## Raw, packet and ping sockets\n\nTheir traffic passes no connect or sendmsg hook, so it is \
         not in the egress table.\n\n| socket | family | protocol | steps | processes | count |\n\
         |---|---|---:|---|---|---:|\n",
    );
    for ((class, family, protocol), u) in rows.iter().take(MAX_ROWS) {
        let _ = writeln!(
            md,
            "| {class} | {family} | {protocol} | {} | {} | {} |",
            names.list(&u.steps),
            list(&u.comms),
            u.count
        );
    }
    more(md, rows.len());
}

fn render_steps(md: &mut String, steps: &[StepRow]) {
    if steps.is_empty() {
        return;
    }
    md.push_str("## Steps\n\n| step | execs | connects | DNS | sensitive opens |\n|---|---:|---:|---:|---:|\n");
    for s in steps {
        let mut name = cell(&s.name);
        if let Some(stage) = s.stage.as_deref().filter(|st| *st != "main") {
            name = format!("{name} ({})", cell(stage));
        }
        if s.internal {
            name = format!("_{name}_");
        }
        if s.degraded {
            name.push_str(" †");
        }
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} |",
            s.execs, s.connects, s.dns, s.files
        );
    }
    if steps.iter().any(|s| s.degraded) {
        md.push_str("\n† attribution is less detailed for this step; see the notes above.\n");
    }
    md.push('\n');
}

fn render_hooks(md: &mut String, hooks: &[HookStatus]) {
    md.push_str("## Hooks\n\n| hook | implementation | fallbacks skipped |\n|---|---|---|\n");
    for h in hooks {
        let implementation = match (h.attached, h.disabled) {
            (true, _) => h.implementation.clone(),
            (false, true) => "disabled in the configuration".to_string(),
            (false, false) => "**NOT ATTACHED**".to_string(),
        };
        let skipped: Vec<String> = h
            .skipped
            .iter()
            .map(|s| format!("{} ({})", s.implementation, s.reason))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            h.hook,
            cell(&implementation),
            cell(&skipped.join("; "))
        );
    }
    md.push('\n');
}

/// Step ids shown as their display names.
pub struct StepNames<'a>(pub &'a [StepRow]);

impl StepNames<'_> {
    pub fn name(&self, id: &str) -> String {
        self.0
            .iter()
            .find(|s| s.id == id)
            .map_or_else(|| id.to_string(), |s| s.name.clone())
    }

    fn list(&self, ids: &BTreeSet<String>) -> String {
        list(&ids.iter().map(|id| self.name(id)).collect())
    }
}

fn list(items: &BTreeSet<String>) -> String {
    cell(&items.iter().cloned().collect::<Vec<_>>().join(", "))
}

/// One table cell, on one line and inert. Names come from the job, and GitHub
/// renders summaries as Markdown with HTML: `<`, `>` and `&` become entities,
/// characters that open inline syntax (code, links, emphasis, strikethrough,
/// escapes, `|` ending the cell) are backslash-escaped, and controls are shown
/// as `\x1b`. A cell holds inline content only, so `#`, `>` or `-` at its start
/// start nothing; `_` is escaped only where it could open or close emphasis,
/// which keeps `id_rsa` or `GITHUB_TOKEN` as written.
fn cell(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    for (i, &c) in chars.iter().enumerate() {
        match c {
            '\n' | '\r' => out.push(' '),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '|' | '\\' | '`' | '*' | '[' | ']' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '_' if !inside_word(&chars, i) => out.push_str("\\_"),
            c => out.push_str(&escape_controls(c.encode_utf8(&mut [0; 4]))),
        }
    }
    out
}

/// Whether `chars[i]` sits between two letters or digits (no emphasis there).
fn inside_word(chars: &[char], i: usize) -> bool {
    let alnum = |j: Option<usize>| {
        j.and_then(|j| chars.get(j))
            .is_some_and(|c| c.is_alphanumeric())
    };
    alnum(i.checked_sub(1)) && alnum(i.checked_add(1))
}

/// Egress and denials share one table: destination, protocol, names, steps, processes, count.
fn destination_table(
    md: &mut String,
    names: &StepNames<'_>,
    rows: &BTreeMap<(IpAddr, u16, Protocol), Destination>,
) {
    md.push_str("| destination | protocol | host names | steps | processes | count |\n|---|---|---|---|---|---:|\n");
    for ((addr, port, proto), d) in rows.iter().take(MAX_ROWS) {
        let dest = if addr.is_ipv6() {
            format!("[{addr}]:{port}")
        } else {
            format!("{addr}:{port}")
        };
        let _ = writeln!(
            md,
            "| {dest} | {proto:?} | {} | {} | {} | {} |",
            list(&d.hosts),
            names.list(&d.steps),
            list(&d.comms),
            d.count
        );
    }
    more(md, rows.len());
}

fn more(md: &mut String, total: usize) {
    if total > MAX_ROWS {
        let _ = writeln!(md, "\n… and {} more in events.ndjson.", total - MAX_ROWS);
    }
    md.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVIL: &str = "x\x1b]0;pwned\x07<img src=x onerror=alert(1)>`code`|*b*[l](u)";

    fn step(name: &str) -> StepRow {
        StepRow {
            id: "s1".into(),
            name: name.into(),
            stage: None,
            internal: false,
            execs: 1,
            connects: 0,
            dns: 1,
            files: 0,
            degraded: false,
        }
    }

    fn render(host: &str, steps: &[StepRow]) -> String {
        let mut summary = Summary::default();
        summary.dns.insert(
            host.into(),
            Lookup {
                count: 1,
                steps: BTreeSet::from(["s1".to_string()]),
                ..Lookup::default()
            },
        );
        summary.render(&Context {
            title: host,
            hooks: &[],
            exit: None,
            log_sha256: None,
            still_running: 0,
            steps,
            notes: &[],
        })
    }

    #[test]
    fn what_is_missing_from_the_log_is_said_with_its_reason() {
        let mut summary = Summary::default();
        summary.totals.unattributed = 3;
        summary.totals.untracked = 2;
        let md = summary.render(&Context {
            title: "job",
            hooks: &[],
            exit: None,
            log_sha256: None,
            still_running: 0,
            steps: &[],
            notes: &[],
        });
        assert!(md.contains("> 3 events on this host belonged to no job watched here"), "{md}");
        assert!(md.contains("2 job processes were not followed"), "{md}");
    }

    #[test]
    fn job_chosen_names_are_inert_in_cells() {
        let md = render(EVIL, &[step(EVIL)]);
        let shown =
            "x\\x1b\\]0;pwned\\x07&lt;img src=x onerror=alert(1)&gt;\\`code\\`\\|\\*b\\*\\[l\\](u)";
        assert!(md.contains(&format!("| {shown} | 1 | 0 | 1 | 0 |")), "{md}");
        assert!(
            md.contains(&format!("| {shown} |  | {shown} | 1 |")),
            "{md}"
        );
        assert!(
            md.starts_with(&format!("# {shown}\n")),
            "the heading too: {md}"
        );
        assert!(!md.contains('\x1b') && !md.contains('<'), "{md}");
    }

    #[test]
    fn ordinary_names_are_kept_as_written() {
        for name in [
            "Build (ubuntu-latest, 3.12)",
            "GITHUB_TOKEN id_rsa /home/runner/.ssh/id_ed25519",
            "registry.npmjs.org",
            "# not a heading - not a list 1. nor this",
        ] {
            assert_eq!(cell(name), name);
        }
        assert_eq!(cell("__init__ _x"), "\\_\\_init\\_\\_ \\_x");
        assert_eq!(cell("a\\b\nc"), "a\\\\b c");
    }
}
