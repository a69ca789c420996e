/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Maps, load-time knobs and helpers shared by every ciwatch hook. */
#ifndef CIWATCH_COMMON_BPF_H
#define CIWATCH_COMMON_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "ciwatch.h"

/* Load-time knobs, set by userspace with EbpfLoader::override_global. */
const volatile __u64 cw_wakeup_bytes = 1 << 20;
const volatile __u32 cw_args_max = CW_ARGS_MAX;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
} events SEC(".maps");

/* Failed ring-buffer reserves, per record kind. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CW_KIND_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* tgid -> lineage tag of every process that belongs to a watched job; sized by `[lineage] max_processes`. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct cw_tag);
} tasks SEC(".maps");

/* Job processes that found no room in `tasks`: their events are lost, and enforce denies their egress. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} untracked SEC(".maps");

/* Launchers by tgid: their exec'd children start new steps. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct cw_launcher);
} launchers SEC(".maps");

/* comm -> platform: a process exec'd under one of these names becomes a launcher of a new job. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct cw_comm_key);
	__type(value, __u32);
} launcher_names SEC(".maps");

/* comm of container runtimes (containerd-shim, runc, conmon, …) whose exec'd children may belong to a job. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct cw_comm_key);
	__type(value, __u32);
} container_parents SEC(".maps");

/* [0]: last job id handed out, [1]: last step id. Userspace starts them past its own. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} next_ids SEC(".maps");

static __always_inline __u32 new_id(__u32 which)
{
	__u32 *counter = bpf_map_lookup_elem(&next_ids, &which);
	return counter ? __sync_fetch_and_add(counter, 1) + 1 : 0;
}

static __always_inline struct cw_tag *current_tag(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	return bpf_map_lookup_elem(&tasks, &tgid);
}

static __always_inline void count_untracked(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&untracked, &zero);
	if (n)
		__sync_fetch_and_add(n, 1);
}

#define CW_ANCESTOR_DEPTH 32

/*
 * The tag of the nearest tagged ancestor of an untagged current process, once
 * `tasks` has overflowed (0 before: the walk costs nothing until then). Such a
 * process may be a job process the lineage had no room for.
 */
static __always_inline struct cw_tag *untracked_ancestor(void)
{
	__u32 zero = 0;
	__u64 *overflowed = bpf_map_lookup_elem(&untracked, &zero);
	if (!overflowed || !*overflowed)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	for (int i = 0; i < CW_ANCESTOR_DEPTH; i++) {
		task = BPF_CORE_READ(task, real_parent);
		__u32 tgid = BPF_CORE_READ(task, tgid);
		struct cw_tag *tag = bpf_map_lookup_elem(&tasks, &tgid);
		if (tag)
			return tag;
		if (tgid <= 1)
			break;
	}
	return 0;
}

static __always_inline void *reserve(__u32 size, __u32 kind)
{
	void *rec = bpf_ringbuf_reserve(&events, size, 0);
	if (!rec) {
		__u64 *n = bpf_map_lookup_elem(&lost, &kind);
		if (n)
			*n += 1;
	}
	return rec;
}

/* Wake the reader only when the backlog is large; it also drains on a timer. */
static __always_inline void submit(void *rec)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	bpf_ringbuf_submit(rec, avail >= cw_wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/* Header fields every hook can fill, whatever its program type. */
static __always_inline void fill_header_base(struct cw_header *h, __u16 kind, __u32 size,
					     const struct cw_tag *tag)
{
	__u64 id = bpf_get_current_pid_tgid();
	h->kind = kind;
	h->flags = 0;
	h->size = size;
	h->ktime_ns = bpf_ktime_get_boot_ns();
	h->pid = (__u32)id;
	h->tgid = id >> 32;
	h->proc_start_ns = 0;
	h->cgroup_id = bpf_get_current_cgroup_id();
	h->uid = (__u32)bpf_get_current_uid_gid();
	h->job = tag->job;
	h->step = tag->step;
	h->tag_flags = tag->flags;
	bpf_get_current_comm(h->comm, sizeof(h->comm));
}

/* For tracing programs, which may read the current task. */
static __always_inline void fill_header(struct cw_header *h, __u16 kind, __u32 size,
					const struct cw_tag *tag)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	fill_header_base(h, kind, size, tag);
	h->proc_start_ns = BPF_CORE_READ(task, group_leader, start_boottime);
}

/* Room to append one whole component (a constant-size read) at any offset below CW_PATH_MAX. */
struct walk_scratch {
	char buf[2 * CW_PATH_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct walk_scratch);
} walk_scratch SEC(".maps");

/*
 * bpf_loop state. The step reads through plain byte offsets computed with
 * CO-RE in the caller, because the loader does not relocate CO-RE accesses
 * inside callback subprograms.
 */
struct walk_state {
	void *dentry;
	void *mnt; /* struct mount */
	__u32 off;
	__u32 reached_root;
	__u32 o_d_parent;
	__u32 o_d_name;
	__u32 o_mnt_root;
	__u32 o_mnt_parent;
	__u32 o_mountpoint;
	__u32 _pad;
};

static __always_inline void *read_ptr(const void *base, __u32 offset)
{
	void *p = 0;
	bpf_probe_read_kernel(&p, sizeof(p), base + offset);
	return p;
}

/* One bpf_loop step: append one component, or climb to the parent mount. */
static long walk_step(__u32 index, void *ctx)
{
	struct walk_state *w = ctx;
	__u32 zero = 0;
	struct walk_scratch *s = bpf_map_lookup_elem(&walk_scratch, &zero);
	if (!s || !w->dentry || !w->mnt)
		return 1;
	void *parent = read_ptr(w->dentry, w->o_d_parent);
	void *mnt_root = read_ptr(w->mnt, w->o_mnt_root);
	if (w->dentry == mnt_root || w->dentry == parent) {
		void *up = read_ptr(w->mnt, w->o_mnt_parent);
		if (up == w->mnt || !up) {
			w->reached_root = 1;
			return 1;
		}
		w->dentry = read_ptr(w->mnt, w->o_mountpoint);
		w->mnt = up;
		return 0;
	}
	__u32 off = w->off;
	if (off >= CW_PATH_MAX - 1)
		return 1;
	const void *name = read_ptr(w->dentry, w->o_d_name);
	long n = bpf_probe_read_kernel_str(s->buf + (off & (CW_PATH_MAX - 1)), CW_PATH_MAX, name);
	if (n <= 0)
		return 1;
	off += n;
	s->buf[(off - 1) & (2 * CW_PATH_MAX - 1)] = '/';
	w->off = off;
	w->dentry = parent;
	return 0;
}

/*
 * Write the path of @dentry/@vfsmnt into @out (CW_PATH_MAX bytes) as
 * '/'-joined components, leaf first ("id_rsa/.ssh/root"); userspace reverses
 * them. Crosses mount points up to the root of the caller's mount namespace.
 * Returns the length, and sets *truncated when the path did not fit.
 */
#define CW_PATH_DEPTH 48
static __always_inline __u16 walk_path(struct dentry *dentry, struct vfsmount *vfsmnt, char *out,
				       bool *truncated)
{
	struct walk_state w = {
		.dentry = dentry,
		.mnt = (void *)vfsmnt - bpf_core_field_offset(struct mount, mnt),
		.o_d_parent = bpf_core_field_offset(struct dentry, d_parent),
		.o_d_name = bpf_core_field_offset(struct dentry, d_name.name),
		.o_mnt_root = bpf_core_field_offset(struct mount, mnt.mnt_root),
		.o_mnt_parent = bpf_core_field_offset(struct mount, mnt_parent),
		.o_mountpoint = bpf_core_field_offset(struct mount, mnt_mountpoint),
	};
	__u32 zero = 0, len;

	out[0] = 0;
	*truncated = true;
	struct walk_scratch *s = bpf_map_lookup_elem(&walk_scratch, &zero);
	if (!s)
		return 0;
	bpf_loop(CW_PATH_DEPTH, walk_step, &w, 0);
	*truncated = !w.reached_root;
	if (w.off == 0)
		return 0;
	len = w.off - 1;
	if (len >= CW_PATH_MAX) {
		len = CW_PATH_MAX - 1;
		*truncated = true;
	}
	s->buf[len & (2 * CW_PATH_MAX - 1)] = 0;
	bpf_probe_read_kernel(out, CW_PATH_MAX, s->buf);
	return len;
}

#endif
