/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * exec: filename, bounded argv, parent and identity of every exec in a job;
 * and the moment a process joins a job's lineage:
 *  - exec'd under a launcher name (Runner.Worker, …): a launcher of a new job;
 *  - exec'd by a launcher, or the first exec of a child it forked: the root of a new step;
 *  - exec'd by a container runtime: a container step, resolved in userspace;
 *  - exec'd as a step its launcher detached (Jenkins' durable task), resolved in userspace.
 * Those four also send their environment (one cw_env record, never logged),
 * read here before the process can run, so even a 1 ms step is named; a new
 * step is put into its policy step groups here too (step_scope.bpf.h).
 */

/* Is @task's name (comm) a key of @map? */
static __always_inline bool comm_listed(void *map, struct task_struct *task)
{
	struct cw_comm_key key = {};
	BPF_CORE_READ_STR_INTO(&key.comm, task, comm);
	return bpf_map_lookup_elem(map, &key) != 0;
}

static __always_inline void emit_env(struct task_struct *task, struct cw_tag *tag, __u32 reason, __u32 ppid)
{
	struct cw_env *e = reserve(sizeof(*e), CW_KIND_ENV);
	if (!e)
		return;
	fill_header(&e->h, CW_KIND_ENV, sizeof(*e), tag);
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	unsigned long start = BPF_CORE_READ(mm, env_start);
	unsigned long end = BPF_CORE_READ(mm, env_end);
	__u64 total = end > start ? end - start : 0;
	__u32 len = total > CW_ENV_MAX ? CW_ENV_MAX : total;
	if (len && bpf_probe_read_user(e->env, len, (void *)start) < 0)
		len = 0;
	e->reason = reason;
	e->env_len = len;
	e->env_total = total;
	e->ppid = ppid;
	/* Wake the reader now: the step's events are named from this record. */
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
}

/*
 * Is @task exec'ing a step its launcher detached, so that no lineage leads to
 * it? Jenkins' durable task runs `sh -xe <ws>@tmp/durable-<id>/script.sh.copy`
 * from a wrapper that backgrounds itself away from the agent JVM. One read of
 * argv's last 16 bytes keeps this cheap for every other exec.
 */
static __always_inline bool detached_step(struct task_struct *task)
{
	static const char tail[16] = "/script.sh.copy";
	char got[16];
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	unsigned long end = BPF_CORE_READ(mm, arg_end);
	unsigned long start = BPF_CORE_READ(mm, arg_start);
	if (end - start < sizeof(got) || bpf_probe_read_user(got, sizeof(got), (void *)(end - sizeof(got))) < 0)
		return false;
	for (int i = 0; i < (int)sizeof(got); i++) {
		if (got[i] != tail[i])
			return false;
	}
	return true;
}

/* Tags a process that just joined a job; returns its tag, or 0 if it did not. */
static __always_inline struct cw_tag *join_job(struct task_struct *task, __u32 tgid, __u32 ppid)
{
	struct cw_tag tag = {};
	__u32 reason;
	struct cw_launcher *parent = bpf_map_lookup_elem(&launchers, &ppid);
	struct cw_tag *own = bpf_map_lookup_elem(&tasks, &tgid);
	__u32 *platform = 0;
	char comm[CW_COMM_LEN];

	bpf_get_current_comm(comm, sizeof(comm));
	platform = bpf_map_lookup_elem(&launcher_names, comm);
	if (platform) {
		struct cw_launcher l = { .job = new_id(0), .platform = *platform };
		bpf_map_update_elem(&launchers, &tgid, &l, BPF_ANY);
		tag.job = l.job;
		tag.flags = CW_TAG_LAUNCHER;
		tag.platform = l.platform;
		reason = CW_ENV_LAUNCHER;
	} else if (parent || (own && (own->flags & CW_TAG_LAUNCHED))) {
		if (parent) {
			tag.job = parent->job;
			tag.platform = parent->platform;
		} else if (own) {
			tag.job = own->job;
			tag.platform = own->platform;
		}
		tag.step = new_id(1);
		tag.flags = CW_TAG_STEP_ROOT;
		reason = CW_ENV_STEP_ROOT;
	} else if (!own && comm_listed(&container_parents, BPF_CORE_READ(task, real_parent))) {
		tag.step = new_id(1);
		tag.flags = CW_TAG_CONTAINER | CW_TAG_STEP_ROOT;
		reason = CW_ENV_CONTAINER;
	} else if (!own && detached_step(task)) {
		tag.step = new_id(1);
		tag.flags = CW_TAG_STEP_ROOT;
		reason = CW_ENV_DETACHED;
	} else {
		return 0;
	}
	if (bpf_map_update_elem(&tasks, &tgid, &tag, BPF_ANY) != 0) {
		count_untracked();
		return 0;
	}
	/* Before the env record: userspace's later groups must land after, and over, the kernel's. */
	if (tag.step)
		scope_step(task, tag.step, tag.platform);
	struct cw_tag *stored = bpf_map_lookup_elem(&tasks, &tgid);
	if (stored)
		emit_env(task, stored, reason, ppid);
	return stored;
}

SEC("tracepoint/sched/sched_process_exec")
int exec_tp(struct trace_event_raw_sched_process_exec *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct task_struct *parent = BPF_CORE_READ(task, real_parent);
	__u32 ppid = BPF_CORE_READ(parent, tgid);

	struct cw_tag *tag = join_job(task, tgid, ppid);
	if (!tag)
		tag = bpf_map_lookup_elem(&tasks, &tgid);
	if (!tag)
		return 0;
	struct cw_exec *e = reserve(sizeof(*e), CW_KIND_EXEC);
	if (!e)
		return 0;
	fill_header(&e->h, CW_KIND_EXEC, sizeof(*e), tag);
	e->ppid = ppid;
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
