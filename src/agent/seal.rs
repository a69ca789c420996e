//! Sealing a job: the live log becomes events.ndjson in one streaming pass.
//! The header gains the job's identity and its steps (with times and counts);
//! each event's inline step gets its final display name and stage, which the
//! runner's log may have supplied only after the event was written. Lines
//! whose references did not change are copied byte for byte. Memory stays flat.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use super::output::JobOutput;
use crate::attribute::clock::BootClock;
use crate::attribute::jobs::{Placement, Registry, StepInfo};
use crate::attribute::refs;
use crate::event::{HookStatus, JobRef, StepRef, TraceEnd};
use crate::kind::Kind;
use crate::sink::ndjson::{NdjsonLog, Sealed};
use crate::sink::summary::{Context, StepRow, Summary};
use crate::sink::SinkError;

pub struct SealInput<'a> {
    pub registry: &'a Registry,
    pub job: &'a str,
    pub clock: BootClock,
    pub end: TraceEnd,
    pub hooks: &'a [HookStatus],
    pub exit: Option<String>,
}

pub struct SealedJob {
    pub dir: PathBuf,
    pub log: Sealed,
    /// summary.md as written.
    pub summary: String,
    /// The aggregates behind it, for reports.
    pub data: Summary,
    pub steps: Vec<StepRow>,
    pub end: TraceEnd,
}

/// The fields of a logged event that sealing reads or may change.
#[derive(Deserialize)]
struct LineRefs<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    job: Option<JobRef>,
    step: Option<StepRef>,
}

pub fn seal(output: JobOutput, input: SealInput<'_>) -> Result<SealedJob, SinkError> {
    let JobOutput {
        dir,
        mut log,
        summary,
        write_error,
        unwritten,
    } = output;
    if let Some(e) = write_error {
        return Err(e);
    }
    log.flush()?;
    let live = log.live_path().to_path_buf();
    drop(log);

    let steps = input.registry.steps_of(input.job);
    let header = header_patch(input.registry, input.job, &steps, input.clock);
    let mut end = input.end;
    end.totals.events = summary.totals.events.clone();
    end.unwritten = unwritten;
    let (sealed, end) = rewrite(
        &dir,
        &live,
        &header,
        |_| end,
        |step_id| {
            refs(
                input.registry,
                &Placement {
                    job: input.job.to_string(),
                    step: step_id.to_string(),
                },
            )
        },
    )?;

    let rows: Vec<StepRow> = steps.iter().map(|s| step_row(s)).collect();
    let mut summary = summary;
    summary.totals = end.totals.clone();
    let markdown = summary.render(&Context {
        title: &title(input.registry, input.job),
        hooks: input.hooks,
        exit: input.exit,
        log_sha256: Some(&sealed.sha256),
        still_running: end.still_running,
        steps: &rows,
        notes: &notes(input.registry, input.job, &end),
    });
    crate::sink::write_atomically(&dir.join("summary.md"), markdown.as_bytes())?;
    Ok(SealedJob {
        dir,
        log: sealed,
        summary: markdown,
        data: summary,
        steps: rows,
        end,
    })
}

/// Seals a live log left behind by an agent that died: lines are kept as
/// written, and the trace ends by saying the agent died, with the events
/// counted from the log since the agent's own totals died with it.
pub fn recover(dir: &Path, mut end: TraceEnd) -> Result<(Sealed, TraceEnd), SinkError> {
    let live = dir.join(crate::sink::ndjson::LIVE_NAME);
    let note = json!({"agent_status": "died", "note": "the agent died before sealing: steps and names are as first written"});
    let no_change = |_: &str| {
        (
            JobRef {
                platform: String::new(),
                id: String::new(),
            },
            StepRef {
                id: String::new(),
                stage: None,
                name: None,
            },
        )
    };
    let counted = |events: &BTreeMap<&'static str, u64>| {
        end.totals.events = events.clone();
        end
    };
    rewrite(dir, &live, &note, counted, no_change)
}

fn rewrite(
    dir: &Path,
    live: &Path,
    header_patch: &Value,
    end: impl FnOnce(&BTreeMap<&'static str, u64>) -> TraceEnd,
    final_refs: impl Fn(&str) -> (JobRef, StepRef),
) -> Result<(Sealed, TraceEnd), SinkError> {
    let read_err = |source| SinkError::Write {
        path: live.display().to_string(),
        source,
    };
    let mut reader = BufReader::with_capacity(1 << 16, File::open(live).map_err(read_err)?);
    let mut out = NdjsonLog::create_final(dir)?;
    let mut line = Vec::with_capacity(4096);
    let mut first = true;
    let mut events = BTreeMap::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(read_err)? == 0 {
            break;
        }
        // A line cut short by a crash is not a whole record: drop it.
        if line.last() != Some(&b'\n') {
            break;
        }
        if first {
            first = false;
            let mut header: Value = serde_json::from_slice(&line)?;
            if let (Some(h), Some(patch)) = (header.as_object_mut(), header_patch.as_object()) {
                h.extend(patch.clone());
            }
            out.write(&header)?;
            continue;
        }
        let refs: LineRefs = serde_json::from_slice(&line)?;
        if let Some(kind) = refs
            .kind
            .as_deref()
            .and_then(Kind::from_name)
            .filter(|k| k.is_event())
        {
            *events.entry(kind.name()).or_default() += 1;
        }
        match updated(&line, refs, &final_refs)? {
            Some(value) => out.write(&value)?,
            None => out.write_line(&line)?,
        }
    }
    let end = end(&events);
    out.write(&end)?;
    let sealed = out.seal()?;
    std::fs::remove_file(live).map_err(read_err)?;
    Ok((sealed, end))
}

/// The event with final references, or None when they did not change.
fn updated(
    line: &[u8],
    refs: LineRefs<'_>,
    final_refs: &impl Fn(&str) -> (JobRef, StepRef),
) -> Result<Option<Value>, SinkError> {
    let Some(step) = refs.step else {
        return Ok(None);
    };
    let (job, new_step) = final_refs(&step.id);
    if new_step.id.is_empty() || (Some(&job) == refs.job.as_ref() && new_step == step) {
        return Ok(None);
    }
    let mut value: Value = serde_json::from_slice(line)?;
    value["job"] = serde_json::to_value(&job)?;
    value["step"] = serde_json::to_value(&new_step)?;
    Ok(Some(value))
}

fn header_patch(registry: &Registry, job: &str, steps: &[&StepInfo], clock: BootClock) -> Value {
    let time = |ns: u64| (ns > 0).then(|| clock.rfc3339(ns));
    let steps: Vec<Value> = steps
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "name": s.name,
                "stage": s.stage,
                "action": s.action,
                "internal": s.internal,
                "source": s.source,
                "start": time(s.first_ns),
                "end": time(s.last_ns.max(s.first_ns)),
                "roots": s.roots.iter().map(|r| json!({"tgid": r.tgid, "start_ns": r.start_ns})).collect::<Vec<_>>(),
                "counts": s.counts,
                "degraded": s.degraded,
            })
        })
        .collect();
    let info = registry.job(job);
    json!({
        "job": {
            "platform": info.map_or("none", |j| j.identity.platform.name()),
            "id": job,
            "identity": info.map(|j| &j.identity),
            "job_is_step": info.is_some_and(|j| j.job_is_step),
            "conflicts": info.map(|j| j.conflicts.iter().map(|p| p.name()).collect::<Vec<_>>()).unwrap_or_default(),
            "launcher_exited": info.is_some_and(|j| j.launcher_exited),
            "notes": info.map(|j| j.notes.clone()).unwrap_or_default(),
        },
        "steps": steps,
    })
}

fn step_row(s: &StepInfo) -> StepRow {
    StepRow {
        id: s.id.clone(),
        name: s.name.clone().unwrap_or_else(|| s.id.clone()),
        stage: s.stage.clone(),
        internal: s.internal,
        execs: s.counts.exec,
        connects: s.counts.connect,
        dns: s.counts.dns,
        files: s.counts.file,
        degraded: !s.degraded.is_empty(),
    }
}

fn title(registry: &Registry, job: &str) -> String {
    match registry.job(job) {
        Some(j) if j.identity.platform != crate::attribute::platform::Platform::None => {
            format!(
                "ciwatch: {} job {}",
                j.identity.platform.name(),
                j.identity.name.as_deref().unwrap_or(job)
            )
        }
        _ => "ciwatch: job summary".to_string(),
    }
}

fn notes(registry: &Registry, job: &str, end: &TraceEnd) -> Vec<String> {
    let mut notes: Vec<String> = registry
        .job(job)
        .map(|j| j.notes.clone())
        .unwrap_or_default();
    if registry
        .job(job)
        .is_some_and(|j| j.launcher_exited && end.still_running > 0)
    {
        notes.push("the runner's step launcher exited while steps were still running".into());
    }
    for s in registry.steps_of(job) {
        for d in &s.degraded {
            notes.push(format!("step {}: {d}", s.name.as_deref().unwrap_or(&s.id)));
        }
    }
    notes
}
