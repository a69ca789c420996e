/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * dns: a uprobe on libc getaddrinfo() stashes the host name; the uretprobe
 * adds the answers and emits one record per lookup. The sleepable entry
 * probe can fault in the page holding the name (often not yet resident in a
 * new process); the plain one is the fallback for kernels without sleepable
 * uprobes and may then report an empty name, flagged as truncated.
 */

struct gai_call {
	__u64 res_pp;
	__u64 start_ns;
	__u32 host_len;
	__u32 flags;
	char host[CW_HOST_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct gai_call);
} gai_calls SEC(".maps");

static const struct gai_call gai_call_zero;

static __always_inline struct gai_call *gai_begin(const void *res_pp)
{
	if (!current_tag())
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	if (bpf_map_update_elem(&gai_calls, &id, &gai_call_zero, BPF_ANY) != 0)
		return 0;
	struct gai_call *c = bpf_map_lookup_elem(&gai_calls, &id);
	if (!c)
		return 0;
	c->res_pp = (__u64)res_pp;
	c->start_ns = bpf_ktime_get_boot_ns();
	return c;
}

static __always_inline void gai_name(struct gai_call *c, long n)
{
	c->host_len = n > 0 ? n - 1 : 0;
	if (n <= 0 || n == CW_HOST_MAX)
		c->flags |= CW_F_TRUNC_HOST;
}

SEC("uprobe.s")
int BPF_KPROBE(gai_enter_sleepable, const char *node, const char *service, const void *hints,
	       void **res)
{
	if (!node)
		return 0;
	struct gai_call *c = gai_begin(res);
	if (!c)
		return 0;
	long n = bpf_probe_read_user_str(c->host, sizeof(c->host), node);
	if (n <= 0) {
		/* Fault the page in, without crossing into the next one, then retry. */
		__u64 room = 4096 - ((__u64)node & 4095);
		if (room > CW_HOST_MAX)
			room = CW_HOST_MAX;
		if (room > 0 && bpf_copy_from_user(c->host, room, node) == 0)
			n = bpf_probe_read_user_str(c->host, sizeof(c->host), node);
	}
	gai_name(c, n);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(gai_enter, const char *node, const char *service, const void *hints, void **res)
{
	if (!node)
		return 0;
	struct gai_call *c = gai_begin(res);
	if (!c)
		return 0;
	gai_name(c, bpf_probe_read_user_str(c->host, sizeof(c->host), node));
	return 0;
}

/* struct addrinfo on LP64 glibc and musl. */
struct addrinfo_user {
	int ai_flags;
	int ai_family;
	int ai_socktype;
	int ai_protocol;
	__u32 ai_addrlen;
	__u32 _pad;
	__u64 ai_addr;
	__u64 ai_canonname;
	__u64 ai_next;
};

#define CW_DNS_WALK 16

/* Per-CPU state of one answer walk, so the bpf_loop step is verified once. */
struct dns_walk {
	__u64 ai;
	__u32 count;
	__u32 truncated;
	__u32 has_rule;
	__u32 _pad;
	struct cw_allow_val rule;
	struct cw_dns_addr addrs[CW_DNS_ADDRS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dns_walk);
} dns_walks SEC(".maps");

/* One answer: record it (distinct addresses, at most CW_DNS_ADDRS) and, under enforce, allow it. */
static long walk_answer(__u32 i, void *ctx)
{
	__u32 zero = 0;
	struct dns_walk *w = bpf_map_lookup_elem(&dns_walks, &zero);
	if (!w || !w->ai)
		return 1;
	struct addrinfo_user info = {};
	if (bpf_probe_read_user(&info, sizeof(info), (const void *)w->ai) < 0)
		return 1;
	w->ai = info.ai_next;
	__u8 addr[16] = {};
	if (info.ai_family == AF_INET)
		bpf_probe_read_user(addr, 4, (const void *)(info.ai_addr + 4));
	else if (info.ai_family == AF_INET6)
		bpf_probe_read_user(addr, 16, (const void *)(info.ai_addr + 8));
	else
		return 0;
	if (w->has_rule)
		allow_resolved(&w->rule, info.ai_family, addr);
	/* getaddrinfo repeats each address once per socket type. */
	if (w->count > 0) {
		struct cw_dns_addr *last = &w->addrs[(w->count - 1) & (CW_DNS_ADDRS - 1)];
		const __u64 *a = (const __u64 *)addr, *b = (const __u64 *)last->addr;
		if (last->family == info.ai_family && a[0] == b[0] && a[1] == b[1])
			return 0;
	}
	if (w->count >= CW_DNS_ADDRS) {
		w->truncated = 1;
		return 0;
	}
	struct cw_dns_addr *slot = &w->addrs[w->count & (CW_DNS_ADDRS - 1)];
	slot->family = info.ai_family;
	__builtin_memcpy(slot->addr, addr, 16);
	w->count++;
	return 0;
}

/* The probe's own name_scratch (enforce.bpf.h). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct name_scratch);
} gai_names SEC(".maps");

NAME_SUFFIX_STEP(gai_suffix_step, gai_names)

static long lower_step(__u32 i, void *ctx)
{
	__u32 zero = 0;
	struct name_scratch *s = bpf_map_lookup_elem(&gai_names, &zero);
	if (!s || i >= CW_NAME_MAX)
		return 1;
	char c = s->name.name[i];
	if (c == 0)
		return 1;
	if (c >= 'A' && c <= 'Z')
		s->name.name[i] = c + ('a' - 'A');
	return 0;
}

/* The looked-up name as rules are written (lower-case, no trailing dot); its length, 0 if no rule can list it. */
static __always_inline __u32 normalize_host(struct name_scratch *s, const struct gai_call *c)
{
	__builtin_memset(&s->name, 0, sizeof(s->name));
	__u32 len = c->host_len;
	if (len == 0 || len >= CW_NAME_MAX || (c->flags & CW_F_TRUNC_HOST))
		return 0;
	bpf_probe_read_kernel_str(s->name.name, sizeof(s->name.name), c->host);
	bpf_loop(CW_NAME_MAX, lower_step, 0, 0);
	if (s->name.name[(len - 1) & (CW_NAME_MAX - 1)] == '.') {
		s->name.name[(len - 1) & (CW_NAME_MAX - 1)] = 0;
		len--;
	}
	return len;
}

/* Under enforce: the rule whose answers the caller may reach, and whether a rule in scope lists the name. */
static __always_inline struct cw_allow_val *judge_lookup(const struct gai_call *c, const struct cw_tag *tag,
							 bool *unlisted)
{
	__u32 zero = 0;
	struct name_scratch *s = bpf_map_lookup_elem(&gai_names, &zero);
	__u32 len = s ? normalize_host(s, c) : 0;
	struct cw_allow_val *rule = 0;
	*unlisted = !s || !len || !match_name(s, len, groups_of(tag->step), gai_suffix_step, &rule);
	return rule;
}

SEC("uretprobe")
int BPF_KRETPROBE(gai_exit, int ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct gai_call *c = bpf_map_lookup_elem(&gai_calls, &id);
	struct cw_tag *tag = current_tag();
	__u32 zero = 0;
	struct dns_walk *w = bpf_map_lookup_elem(&dns_walks, &zero);
	if (!c)
		return 0;
	if (!tag || !w)
		goto out;

	__builtin_memset(w, 0, sizeof(*w));
	if (ret == 0)
		bpf_probe_read_user(&w->ai, sizeof(w->ai), (const void *)c->res_pp);
	/* Enforce: a name the policy allows lets its answers through before the caller sees them. */
	bool unlisted = false;
	struct cw_allow_val *rule = cw_enforce ? judge_lookup(c, tag, &unlisted) : 0;
	if (rule) {
		w->rule = *rule;
		w->has_rule = 1;
	}
	bpf_loop(CW_DNS_WALK, walk_answer, 0, 0);

	struct cw_dns *e = reserve(sizeof(*e), CW_KIND_DNS);
	if (!e)
		goto out;
	fill_header(&e->h, CW_KIND_DNS, sizeof(*e), tag);
	e->h.flags |= c->flags | (w->truncated ? CW_F_TRUNC_ADDRS : 0);
	if (cw_enforce)
		e->h.flags |= CW_F_DNS_JUDGED | (unlisted ? CW_F_DNS_UNLISTED : 0);
	e->ret = ret;
	e->host_len = c->host_len;
	e->latency_ns = bpf_ktime_get_boot_ns() - c->start_ns;
	bpf_probe_read_kernel(e->host, sizeof(e->host), c->host);
	__builtin_memcpy(e->addrs, w->addrs, sizeof(e->addrs));
	e->naddrs = w->count;
	submit(e);
out:
	bpf_map_delete_elem(&gai_calls, &id);
	return 0;
}
