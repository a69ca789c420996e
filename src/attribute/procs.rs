//! Processes of the job by tgid, so records from hooks that cannot read the
//! task (cgroup sock_addr programs) still carry the (tgid, start) identity.

use std::collections::HashMap;

use crate::decode::Record;

#[derive(Debug, Default)]
pub struct ProcTable {
    start: HashMap<u32, u64>,
}

impl ProcTable {
    pub fn observe(&mut self, record: &Record) {
        let c = record.common();
        if c.proc_start_ns != 0 {
            self.start.insert(c.tgid, c.proc_start_ns);
        }
        match record {
            Record::Fork(f) => {
                self.start.insert(f.child_tgid, f.child_start_ns);
            }
            Record::Exit(e) => {
                self.start.remove(&e.common.tgid);
            }
            _ => {}
        }
    }

    /// The reported start, or the one learned earlier for this tgid.
    pub fn start_of(&self, tgid: u32, reported: u64) -> u64 {
        if reported != 0 {
            reported
        } else {
            self.start.get(&tgid).copied().unwrap_or(0)
        }
    }
}
