/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* exec: filename, bounded argv, parent and identity of every exec in a job. */

SEC("tracepoint/sched/sched_process_exec")
int exec_tp(struct trace_event_raw_sched_process_exec *ctx)
{
	struct cw_tag *tag = current_tag();
	if (!tag)
		return 0;
	struct cw_exec *e = reserve(sizeof(*e), CW_KIND_EXEC);
	if (!e)
		return 0;
	fill_header(&e->h, CW_KIND_EXEC, sizeof(*e), tag);

	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct task_struct *parent = BPF_CORE_READ(task, real_parent);
	e->ppid = BPF_CORE_READ(parent, tgid);
	e->parent_start_ns = BPF_CORE_READ(parent, group_leader, start_boottime);

	unsigned int loc = ctx->__data_loc_filename & 0xFFFF;
	long n = bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), (void *)ctx + loc);
	e->filename_len = n > 0 ? n - 1 : 0;
	if (n == sizeof(e->filename))
		e->h.flags |= CW_F_TRUNC_FILENAME;

	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	unsigned long start = BPF_CORE_READ(mm, arg_start);
	unsigned long end = BPF_CORE_READ(mm, arg_end);
	__u64 total = end > start ? end - start : 0;
	__u32 len = total;
	if (total > cw_args_max)
		len = cw_args_max;
	if (len > CW_ARGS_MAX)
		len = CW_ARGS_MAX;
	if (len && bpf_probe_read_user(e->args, len, (void *)start) < 0)
		len = 0;
	e->args_len = len;
	e->args_total = total;
	if (len < total)
		e->h.flags |= CW_F_TRUNC_ARGS;
	submit(e);
	return 0;
}
