/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * Process lineage: a child inherits its parent's job tag at fork and loses it
 * at exit, so double-forks, setsid and reparenting never escape the job.
 * tp_btf is preferred; raw_tp is the fallback for kernels without it.
 */

static __always_inline int on_fork(struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	if (ptgid == ctgid)
		return 0; /* a new thread, not a new process */

	struct cw_tag *tag = bpf_map_lookup_elem(&tasks, &ptgid);
	if (!tag)
		return 0;
	struct cw_tag inherited = *tag;
	/* A child is neither a launcher nor a step root until its own exec says so. */
	inherited.flags &= ~(CW_TAG_LAUNCHER | CW_TAG_STEP_ROOT | CW_TAG_LAUNCHED);
	/*
	 * A launcher's child starts a step at its first exec even if the launcher
	 * is gone by then: after a vfork the parent resumes mid-exec, before the
	 * exec tracepoint, and may already have exited.
	 */
	if (tag->flags & CW_TAG_LAUNCHER)
		inherited.flags |= CW_TAG_LAUNCHED;
	bool tracked = bpf_map_update_elem(&tasks, &ctgid, &inherited, BPF_ANY) == 0;
	if (!tracked)
		count_untracked();

	struct cw_fork *e = reserve(sizeof(*e), CW_KIND_FORK);
	if (!e)
		return 0;
	fill_header(&e->h, CW_KIND_FORK, sizeof(*e), &inherited);
	if (!tracked)
		e->h.flags |= CW_F_UNTRACKED;
	e->child_tgid = ctgid;
	e->_pad = 0;
	e->child_start_ns = BPF_CORE_READ(child, start_boottime);
	submit(e);
	return 0;
}

static __always_inline int on_exit(struct task_struct *task)
{
	/* Only the last thread of the group ends the process. */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	__u32 tgid = BPF_CORE_READ(task, tgid);
	struct cw_tag *tag = bpf_map_lookup_elem(&tasks, &tgid);
	if (!tag)
		return 0;
	struct cw_tag last = *tag;
	bpf_map_delete_elem(&tasks, &tgid);
	bpf_map_delete_elem(&launchers, &tgid);

	struct cw_exit *e = reserve(sizeof(*e), CW_KIND_EXIT);
	if (!e)
		return 0;
	fill_header(&e->h, CW_KIND_EXIT, sizeof(*e), &last);
	e->exit_code = BPF_CORE_READ(task, exit_code);
	e->_pad = 0;
	submit(e);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(fork_btf, struct task_struct *parent, struct task_struct *child)
{
	return on_fork(parent, child);
}

SEC("raw_tp/sched_process_fork")
int BPF_PROG(fork_raw, struct task_struct *parent, struct task_struct *child)
{
	return on_fork(parent, child);
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(exit_btf, struct task_struct *task)
{
	return on_exit(task);
}

SEC("raw_tp/sched_process_exit")
int BPF_PROG(exit_raw, struct task_struct *task)
{
	return on_exit(task);
}
