/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * connect: the sys_enter_connect tracepoint, plus cgroup connect4/6 (which
 * also sees io_uring connects) and sendmsg4/6 (unconnected UDP). These hooks
 * never deny here; enforcement is a separate program.
 *
 * One logical connect gives one record: the tracepoint leaves a note keyed by
 * thread; the cgroup hook that fires later in the same syscall finds the note
 * with the same destination, consumes it and stays silent. Unconnected UDP is
 * reported once per (socket, destination).
 */

struct pending_connect {
	__u64 ktime_ns;
	__u16 family;
	__u16 port;
	__u32 _pad;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct pending_connect);
} pending_connects SEC(".maps");

struct udp_flow {
	__u64 cookie;
	__u16 family;
	__u16 port;
	__u32 _pad;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct udp_flow);
	__type(value, __u64);
} udp_flows SEC(".maps");

#define CW_DEDUP_WINDOW_NS (1000ULL * 1000 * 1000)

static __always_inline __u16 fd_sock_type(int fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	unsigned int max = BPF_CORE_READ(fdt, max_fds);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = 0;

	if (fd < 0 || (unsigned int)fd >= max)
		return 0;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	if (!f)
		return 0;
	struct socket *sock = BPF_CORE_READ(f, private_data);
	return sock ? (__u16)BPF_CORE_READ(sock, type) : 0;
}

SEC("tracepoint/syscalls/sys_enter_connect")
int connect_tp(struct trace_event_raw_sys_enter *ctx)
{
	struct cw_tag *tag = current_tag();
	if (!tag)
		return 0;
	const void *uaddr = (const void *)ctx->args[1];
	__u16 family = 0;
	if (bpf_probe_read_user(&family, sizeof(family), uaddr) < 0)
		return 0;
	if (family != AF_INET && family != AF_INET6)
		return 0;

	struct pending_connect note = {};
	note.family = family;
	if (family == AF_INET) {
		struct sockaddr_in sin = {};
		bpf_probe_read_user(&sin, sizeof(sin), uaddr);
		note.port = bpf_ntohs(sin.sin_port);
		__builtin_memcpy(note.addr, &sin.sin_addr, 4);
	} else {
		struct sockaddr_in6 sin6 = {};
		bpf_probe_read_user(&sin6, sizeof(sin6), uaddr);
		note.port = bpf_ntohs(sin6.sin6_port);
		__builtin_memcpy(note.addr, &sin6.sin6_addr, 16);
	}
	note.ktime_ns = bpf_ktime_get_boot_ns();
	__u64 id = bpf_get_current_pid_tgid();
	bpf_map_update_elem(&pending_connects, &id, &note, BPF_ANY);

	struct cw_connect *e = reserve(sizeof(*e), CW_KIND_CONNECT);
	if (!e)
		return 0;
	fill_header(&e->h, CW_KIND_CONNECT, sizeof(*e), tag);
	int fd = (int)ctx->args[0];
	e->family = family;
	e->port = note.port;
	e->sock_type = fd_sock_type(fd);
	e->source = CW_SRC_SYSCALL;
	e->_pad0 = 0;
	__builtin_memcpy(e->addr, note.addr, 16);
	e->fd = fd;
	e->_pad1 = 0;
	submit(e);
	return 0;
}

static __always_inline void sockaddr_dest(struct bpf_sock_addr *ctx, __u16 family, __u8 addr[16],
					  __u16 *port)
{
	__u32 a[4] = {};
	if (family == AF_INET) {
		a[0] = ctx->user_ip4;
	} else {
		a[0] = ctx->user_ip6[0];
		a[1] = ctx->user_ip6[1];
		a[2] = ctx->user_ip6[2];
		a[3] = ctx->user_ip6[3];
	}
	__builtin_memcpy(addr, a, 16);
	*port = bpf_ntohs((__u16)ctx->user_port);
}

static __always_inline void emit_sockaddr_flagged(struct bpf_sock_addr *ctx, struct cw_tag *tag, __u16 kind,
						  __u16 family, __u8 addr[16], __u16 port, __u8 source,
						  __u16 flags)
{
	struct cw_connect *e = reserve(sizeof(*e), kind);
	if (!e)
		return;
	fill_header_base(&e->h, kind, sizeof(*e), tag);
	e->h.flags = flags;
	e->family = family;
	e->port = port;
	e->sock_type = ctx->type;
	e->source = source;
	e->_pad0 = 0;
	__builtin_memcpy(e->addr, addr, 16);
	e->fd = -1;
	e->_pad1 = 0;
	submit(e);
}

static __always_inline void emit_sockaddr(struct bpf_sock_addr *ctx, struct cw_tag *tag, __u16 kind,
					  __u16 family, __u8 addr[16], __u16 port, __u8 source)
{
	emit_sockaddr_flagged(ctx, tag, kind, family, addr, port, source, 0);
}

/*
 * Under enforce, a process with no tag but a tagged ancestor, after `tasks`
 * overflowed, is a job process the lineage could not hold: its egress is
 * denied (fail closed), and recorded under the ancestor's step. True if denied.
 */
static __always_inline bool deny_untracked(struct bpf_sock_addr *ctx, __u16 family, __u8 source)
{
	if (!cw_enforce)
		return false;
	struct cw_tag *ancestor = untracked_ancestor();
	if (!ancestor)
		return false;
	__u8 addr[16];
	__u16 port;
	sockaddr_dest(ctx, family, addr, &port);
	emit_sockaddr_flagged(ctx, ancestor, CW_KIND_DENIED, family, addr, port, source, CW_F_UNTRACKED);
	return true;
}

static __always_inline bool same_addr(const __u8 a[16], const __u8 b[16])
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	return x[0] == y[0] && x[1] == y[1];
}

static __always_inline int observe_connect(struct bpf_sock_addr *ctx, __u16 family)
{
	struct cw_tag *tag = current_tag();
	if (!tag)
		return deny_untracked(ctx, family, CW_SRC_CGROUP_CONNECT) ? 0 : 1;
	__u8 addr[16];
	__u16 port;
	sockaddr_dest(ctx, family, addr, &port);

	__u64 id = bpf_get_current_pid_tgid();
	struct pending_connect *note = bpf_map_lookup_elem(&pending_connects, &id);
	bool noted = note && note->family == family && note->port == port && same_addr(note->addr, addr) &&
		     bpf_ktime_get_boot_ns() - note->ktime_ns < CW_DEDUP_WINDOW_NS;
	if (noted)
		bpf_map_delete_elem(&pending_connects, &id);
	if (cw_enforce && !egress_allowed(family, addr, port, (__u8)ctx->protocol, tag)) {
		emit_sockaddr(ctx, tag, CW_KIND_DENIED, family, addr, port, CW_SRC_CGROUP_CONNECT);
		return 0; /* the caller's connect() fails with EPERM */
	}
	if (!mark_dns_socket(ctx, port, tag)) {
		emit_sockaddr(ctx, tag, CW_KIND_DENIED, family, addr, port, CW_SRC_CGROUP_CONNECT);
		return 0;
	}
	if (!noted)
		emit_sockaddr(ctx, tag, CW_KIND_CONNECT, family, addr, port, CW_SRC_CGROUP_CONNECT);
	return 1;
}

static __always_inline int observe_sendmsg(struct bpf_sock_addr *ctx, __u16 family)
{
	struct cw_tag *tag = current_tag();
	if (!tag)
		return deny_untracked(ctx, family, CW_SRC_CGROUP_SENDMSG) ? 0 : 1;
	struct udp_flow flow = {};
	flow.cookie = bpf_get_socket_cookie(ctx);
	flow.family = family;
	sockaddr_dest(ctx, family, flow.addr, &flow.port);
	if (cw_enforce && !egress_allowed(family, flow.addr, flow.port, (__u8)ctx->protocol, tag)) {
		emit_sockaddr(ctx, tag, CW_KIND_DENIED, family, flow.addr, flow.port, CW_SRC_CGROUP_SENDMSG);
		return 0; /* sendto()/sendmsg() fails with EPERM */
	}
	if (!mark_dns_socket(ctx, flow.port, tag)) {
		emit_sockaddr(ctx, tag, CW_KIND_DENIED, family, flow.addr, flow.port, CW_SRC_CGROUP_SENDMSG);
		return 0;
	}
	__u64 now = bpf_ktime_get_boot_ns();
	if (bpf_map_update_elem(&udp_flows, &flow, &now, BPF_NOEXIST) != 0)
		return 1; /* already reported */
	emit_sockaddr(ctx, tag, CW_KIND_CONNECT, family, flow.addr, flow.port, CW_SRC_CGROUP_SENDMSG);
	return 1;
}

SEC("cgroup/connect4")
int connect4_cg(struct bpf_sock_addr *ctx)
{
	return observe_connect(ctx, AF_INET);
}

SEC("cgroup/connect6")
int connect6_cg(struct bpf_sock_addr *ctx)
{
	return observe_connect(ctx, AF_INET6);
}

SEC("cgroup/sendmsg4")
int sendmsg4_cg(struct bpf_sock_addr *ctx)
{
	return observe_sendmsg(ctx, AF_INET);
}

SEC("cgroup/sendmsg6")
int sendmsg6_cg(struct bpf_sock_addr *ctx)
{
	return observe_sendmsg(ctx, AF_INET6);
}
