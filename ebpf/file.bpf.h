/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * file: sensitive opens. Userspace loads the first of these that the kernel
 * accepts: kprobe/security_file_open, fentry/security_file_open, then the
 * openat/openat2/open syscall tracepoints.
 *
 * The in-kernel filter is two O(1) lookups: the final path component against
 * sensitive_base, and its parent directory against sensitive_dir. Only
 * candidates reach the ring buffer; userspace applies the full patterns and
 * the ignore list to the absolute path.
 */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct cw_name_key);
	__type(value, __u32);
} sensitive_base SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct cw_name_key);
	__type(value, __u32);
} sensitive_dir SEC(".maps");

struct path_scratch {
	char path[CW_PATH_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct path_scratch);
} path_scratch SEC(".maps");

/* Looks up a kernel string (a dentry name) in @map; names too long for a key never match. */
static __always_inline bool name_listed(void *map, const void *name)
{
	struct cw_name_key key = {};
	long n = bpf_probe_read_kernel_str(key.name, sizeof(key.name), name);
	if (n <= 1 || n >= (long)sizeof(key.name))
		return false;
	return bpf_map_lookup_elem(map, &key) != 0;
}

static __always_inline void fill_file(struct cw_file *e, int dirfd, __u32 flags, __u16 hook,
				      struct cw_tag *tag)
{
	fill_header(&e->h, CW_KIND_FILE, sizeof(*e), tag);
	e->dirfd = dirfd;
	e->open_flags = flags;
	e->hook = hook;
	e->path_len = 0;
	e->cwd_len = 0;
	e->_pad = 0;
}

/* kprobe and fentry: the kernel already resolved the file. */
static __always_inline int on_file_open(struct file *file, __u16 hook)
{
	struct cw_tag *tag = current_tag();
	if (!tag)
		return 0;
	struct dentry *dentry = BPF_CORE_READ(file, f_path.dentry);
	if (!name_listed(&sensitive_base, BPF_CORE_READ(dentry, d_name.name)) &&
	    !name_listed(&sensitive_dir, BPF_CORE_READ(dentry, d_parent, d_name.name)))
		return 0;

	struct cw_file *e = reserve(sizeof(*e), CW_KIND_FILE);
	if (!e)
		return 0;
	fill_file(e, AT_FDCWD, BPF_CORE_READ(file, f_flags), hook, tag);
	bool truncated;
	e->path_len = walk_path(dentry, BPF_CORE_READ(file, f_path.mnt), e->path, &truncated);
	e->h.flags |= CW_F_PATH_REVERSED | (truncated ? CW_F_TRUNC_PATH : 0);
	e->cwd[0] = 0;
	submit(e);
	return 0;
}

SEC("kprobe/security_file_open")
int BPF_KPROBE(file_open_kprobe, struct file *file)
{
	return on_file_open(file, CW_FILE_KPROBE);
}

SEC("fentry/security_file_open")
int BPF_PROG(file_open_fentry, struct file *file)
{
	return on_file_open(file, CW_FILE_FENTRY);
}

/* Directory a relative path starts from: the cwd, or the file behind dirfd. */
static __always_inline void start_dir(int dirfd, struct dentry **dentry, struct vfsmount **mnt)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	*dentry = 0;
	*mnt = 0;
	if (dirfd == AT_FDCWD) {
		*dentry = BPF_CORE_READ(task, fs, pwd.dentry);
		*mnt = BPF_CORE_READ(task, fs, pwd.mnt);
		return;
	}
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	unsigned int max = BPF_CORE_READ(fdt, max_fds);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = 0;
	if (dirfd < 0 || (unsigned int)dirfd >= max)
		return;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[dirfd]);
	if (!f)
		return;
	*dentry = BPF_CORE_READ(f, f_path.dentry);
	*mnt = BPF_CORE_READ(f, f_path.mnt);
}

/* True when the component buf[from, to) is listed in @map. */
static __always_inline bool component_listed(void *map, const char *buf, int from, int to)
{
	struct cw_name_key key = {};
	int len = to - from;
	if (len <= 0 || len >= CW_NAME_KEY || from < 0 || from >= CW_PATH_MAX)
		return false;
	bpf_probe_read_kernel(key.name, len & (CW_NAME_KEY - 1), buf + (from & (CW_PATH_MAX - 1)));
	return bpf_map_lookup_elem(map, &key) != 0;
}

struct sep_scan {
	struct path_scratch *s;
	int n;
	int last;
	int prev;
	int _pad;
};

/* One bpf_loop step of the backward scan over the path for '/'. */
static long scan_step(__u32 i, void *ctx)
{
	struct sep_scan *scan = ctx;
	int j = scan->n - 2 - (int)i;
	if (j < 0)
		return 1;
	if (scan->s->path[j & (CW_PATH_MAX - 1)] != '/')
		return 0;
	if (scan->last < 0) {
		scan->last = j;
		return 0;
	}
	scan->prev = j;
	return 1;
}

/* Syscall tracepoints: the path is the caller's string, maybe relative. */
static __always_inline int on_open_syscall(int dirfd, const char *upath, __u32 flags, __u16 hook)
{
	struct cw_tag *tag = current_tag();
	if (!tag)
		return 0;
	__u32 zero = 0;
	struct path_scratch *s = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!s)
		return 0;
	long n = bpf_probe_read_user_str(s->path, sizeof(s->path), upath);
	if (n <= 1)
		return 0;

	/* Find the last two separators, scanning back from the end. */
	struct sep_scan scan = { .s = s, .n = (int)n, .last = -1, .prev = -1 };
	bpf_loop(CW_PATH_MAX, scan_step, &scan, 0);
	int last = scan.last, prev = scan.prev;
	bool hit = component_listed(&sensitive_base, s->path, last + 1, (int)n - 1);
	if (!hit && last > 0)
		hit = component_listed(&sensitive_dir, s->path, prev + 1, last);
	if (!hit && last < 0 && dirfd == AT_FDCWD) {
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();
		hit = name_listed(&sensitive_dir, BPF_CORE_READ(task, fs, pwd.dentry, d_name.name));
	}
	if (!hit)
		return 0;

	struct cw_file *e = reserve(sizeof(*e), CW_KIND_FILE);
	if (!e)
		return 0;
	fill_file(e, dirfd, flags, hook, tag);
	long copied = bpf_probe_read_kernel_str(e->path, sizeof(e->path), s->path);
	e->path_len = copied > 0 ? copied - 1 : 0;
	if (n == sizeof(s->path))
		e->h.flags |= CW_F_TRUNC_PATH;
	e->cwd[0] = 0;
	if (s->path[0] != '/') {
		struct dentry *dentry;
		struct vfsmount *mnt;
		bool truncated = false;
		start_dir(dirfd, &dentry, &mnt);
		if (dentry && mnt)
			e->cwd_len = walk_path(dentry, mnt, e->cwd, &truncated);
		e->h.flags |= CW_F_CWD_REVERSED | (truncated ? CW_F_TRUNC_CWD : 0);
	}
	submit(e);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int openat_tp(struct trace_event_raw_sys_enter *ctx)
{
	return on_open_syscall((int)ctx->args[0], (const char *)ctx->args[1], (__u32)ctx->args[2],
			       CW_FILE_TP_OPENAT);
}

struct open_how_user {
	__u64 flags;
	__u64 mode;
	__u64 resolve;
};

SEC("tracepoint/syscalls/sys_enter_openat2")
int openat2_tp(struct trace_event_raw_sys_enter *ctx)
{
	struct open_how_user how = {};
	bpf_probe_read_user(&how, sizeof(how), (const void *)ctx->args[2]);
	return on_open_syscall((int)ctx->args[0], (const char *)ctx->args[1], (__u32)how.flags,
			       CW_FILE_TP_OPENAT2);
}

/* open(2) exists on x86_64 only; attaching it elsewhere fails and is skipped. */
SEC("tracepoint/syscalls/sys_enter_open")
int open_tp(struct trace_event_raw_sys_enter *ctx)
{
	return on_open_syscall(AT_FDCWD, (const char *)ctx->args[0], (__u32)ctx->args[1],
			       CW_FILE_TP_OPEN);
}
