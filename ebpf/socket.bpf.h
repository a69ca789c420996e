/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * socket: the job's raw, packet and ping sockets. Their traffic never passes
 * the connect/sendmsg hooks, so no allowlist judges it: they are recorded
 * when opened and, in enforce mode, refused unless the policy's `sockets:`
 * allows that class in the caller's step.
 *
 * cgroup/sock_create sees every IPv4 and IPv6 socket (io_uring's too) once
 * the kernel has created it, and refuses one by returning 0: socket() fails
 * with EPERM. The kernel runs no such hook for AF_PACKET, and tracing
 * programs cannot fail a syscall, so the sys_enter_socket tracepoint refuses
 * a packet socket the only way it can: SIGKILL to the caller, pending before
 * socket() returns, so the process never runs with the socket.
 */

/* Class -> the step groups it is allowed in (0: nowhere). Filled from the policy in enforce mode. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CW_SOCKET_CLASSES);
	__type(key, __u32);
	__type(value, __u32);
} sock_allow SEC(".maps");

/* Raw, packet or ping: the class of an IPv4/IPv6 socket, or 0 for one the sock_addr hooks judge. */
static __always_inline __u8 inet_socket_class(__u32 family, __u32 type, __u32 protocol)
{
	if (type == SOCK_RAW)
		return CW_SOCKET_RAW;
	if (type != SOCK_DGRAM)
		return 0;
	if ((family == AF_INET && protocol == IPPROTO_ICMP) || (family == AF_INET6 && protocol == IPPROTO_ICMPV6))
		return CW_SOCKET_PING;
	return 0;
}

static __always_inline bool socket_allowed(__u8 class, const struct cw_tag *tag)
{
	if (!cw_enforce)
		return true;
	__u32 key = class;
	__u32 *scope = bpf_map_lookup_elem(&sock_allow, &key);
	return scope && (*scope & groups_of(tag->step));
}

/*
 * The caller's tag; under enforce, for an untagged caller once `tasks` has
 * overflowed, its nearest tagged ancestor's (*untracked set): such a job
 * process is refused whatever `sockets:` says.
 */
static __always_inline struct cw_tag *socket_owner(bool *untracked)
{
	struct cw_tag *tag = current_tag();
	*untracked = false;
	if (tag || !cw_enforce)
		return tag;
	tag = untracked_ancestor();
	*untracked = tag != 0;
	return tag;
}

/* Reserves and fills a cw_socket but its header; the caller fills that for its program type. */
static __always_inline struct cw_socket *socket_record(__u16 kind, __u32 family, __u32 type, __u32 protocol,
						       __u8 class, __u8 source)
{
	struct cw_socket *e = reserve(sizeof(*e), kind);
	if (!e)
		return 0;
	e->protocol = protocol;
	e->family = (__u16)family;
	e->sock_type = (__u16)type;
	e->class = class;
	e->refusal = 0;
	e->source = source;
	e->_pad0 = 0;
	e->_pad1 = 0;
	return e;
}

SEC("cgroup/sock_create")
int sock_create_cg(struct bpf_sock *ctx)
{
	__u32 family = ctx->family, type = ctx->type, protocol = ctx->protocol;
	__u8 class = inet_socket_class(family, type, protocol);
	if (!class)
		return 1;
	bool untracked;
	struct cw_tag *tag = socket_owner(&untracked);
	if (!tag)
		return 1;
	bool allowed = !untracked && socket_allowed(class, tag);
	__u16 kind = allowed ? CW_KIND_SOCKET : CW_KIND_SOCKET_DENIED;
	struct cw_socket *e = socket_record(kind, family, type, protocol, class, CW_SOCKET_SRC_CGROUP);
	if (e) {
		fill_header_base(&e->h, kind, sizeof(*e), tag);
		if (untracked)
			e->h.flags |= CW_F_UNTRACKED;
		e->refusal = allowed ? 0 : CW_SOCKET_EPERM;
		submit(e);
	}
	return allowed ? 1 : 0; /* 0: the caller's socket() fails with EPERM */
}

/* Whether the caller holds CAP_NET_RAW, without which the kernel refuses a packet socket itself. */
static __always_inline bool has_net_raw(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	kernel_cap_t caps = BPF_CORE_READ(task, cred, cap_effective);
	return caps.val & (1ULL << CAP_NET_RAW);
}

SEC("tracepoint/syscalls/sys_enter_socket")
int socket_tp(struct trace_event_raw_sys_enter *ctx)
{
	__u32 family = (__u32)ctx->args[0], type = (__u32)ctx->args[1] & SOCK_TYPE_MASK;
	/* socket(AF_INET, SOCK_PACKET) is a packet socket too (__sock_create turns it into one). */
	if (family != AF_PACKET && !(family == AF_INET && type == SOCK_PACKET))
		return 0;
	bool untracked;
	struct cw_tag *tag = socket_owner(&untracked);
	if (!tag || !has_net_raw())
		return 0;
	bool allowed = !untracked && socket_allowed(CW_SOCKET_PACKET, tag);
	/* Killed before the record is written: a full ring must not let the socket through. */
	long killed = allowed ? 0 : bpf_send_signal(SIGKILL);
	__u16 kind = allowed ? CW_KIND_SOCKET : CW_KIND_SOCKET_DENIED;
	struct cw_socket *e = socket_record(kind, family, type, (__u32)ctx->args[2], CW_SOCKET_PACKET,
					    CW_SOCKET_SRC_SYSCALL);
	if (!e)
		return 0;
	fill_header(&e->h, kind, sizeof(*e), tag);
	if (untracked)
		e->h.flags |= CW_F_UNTRACKED;
	if (!allowed)
		e->refusal = killed == 0 ? CW_SOCKET_KILLED : CW_SOCKET_KILL_FAILED;
	submit(e);
	return 0;
}
