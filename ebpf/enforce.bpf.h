/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * enforce: the allowlist the cgroup connect/sendmsg hooks consult for the
 * job's processes (nobody else's). Userspace loads networks and host-name
 * rules; the getaddrinfo return probe adds the addresses an allowed name
 * resolves to before getaddrinfo returns, so the caller's first connect
 * already finds them. Loopback and resolver defaults are ordinary entries.
 */

const volatile __u32 cw_enforce = 0;

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cw_allow_key);
	__type(value, struct cw_allow_val);
} allow_nets SEC(".maps");

/* Exact host names, and the suffixes of leftmost-wildcard names ("*.x.y" → "x.y"). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct cw_host_key);
	__type(value, struct cw_allow_val);
} allow_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct cw_host_key);
	__type(value, struct cw_allow_val);
} allow_suffixes SEC(".maps");

/*
 * Addresses allowed names resolved to (IPv4-mapped), filled by the getaddrinfo
 * return probe. LRU: a long job's oldest answers make room for new ones.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u8[16]);
	__type(value, struct cw_allow_val);
} resolved_addrs SEC(".maps");

/* kernel step id -> the step groups it belongs to (userspace fills it once it knows the step). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} step_groups SEC(".maps");

static __always_inline void mapped_key(struct cw_allow_key *key, __u16 family, const __u8 addr[16])
{
	key->prefixlen = 128;
	if (family == AF_INET) {
		__builtin_memset(key->addr, 0, 10);
		key->addr[10] = 0xff;
		key->addr[11] = 0xff;
		__builtin_memcpy(&key->addr[12], addr, 4);
	} else {
		__builtin_memcpy(key->addr, addr, 16);
	}
}

/* The step groups a step is in; every step is in CW_SCOPE_ALL. */
static __always_inline __u32 groups_of(__u32 step)
{
	__u32 groups = CW_SCOPE_ALL;
	__u32 *g = bpf_map_lookup_elem(&step_groups, &step);
	if (g)
		groups |= *g;
	return groups;
}

static __always_inline bool entry_allows(const struct cw_allow_val *v, __u16 port, __u8 proto, __u32 groups)
{
	for (int i = 0; i < CW_ALLOW_ENTRIES; i++) {
		if ((__u32)i >= v->count)
			break;
		const struct cw_allow_entry *e = &v->entries[i];
		if ((e->port == 0 || e->port == port) && (e->proto == CW_PROTO_ANY || e->proto == proto) &&
		    (e->scope & groups))
			return true;
	}
	return false;
}

static __always_inline bool egress_allowed(__u16 family, const __u8 addr[16], __u16 port, __u8 proto,
					   const struct cw_tag *tag)
{
	struct cw_allow_key key;
	mapped_key(&key, family, addr);
	__u32 groups = groups_of(tag->step);
	struct cw_allow_val *v = bpf_map_lookup_elem(&allow_nets, &key);
	if (v && entry_allows(v, port, proto, groups))
		return true;
	v = bpf_map_lookup_elem(&resolved_addrs, key.addr);
	return v && entry_allows(v, port, proto, groups);
}

static __always_inline bool entry_in_scope(const struct cw_allow_val *v, __u32 groups)
{
	for (int i = 0; i < CW_ALLOW_ENTRIES; i++) {
		if ((__u32)i >= v->count)
			break;
		if (v->entries[i].scope & groups)
			return true;
	}
	return false;
}

/*
 * Matching a host name against the name rules, in per-CPU scratch: the name
 * (lower-case, no trailing dot, NUL-padded) and each `*.` parent tried. Each
 * context that matches names has its own scratch map, since an egress filter
 * in softirq may interrupt a probe that is using one.
 */
struct name_scratch {
	struct cw_host_key name;
	struct cw_host_key suffix;
};

struct name_walk {
	__u32 len;
	__u32 groups;
	__u32 listed;
	__u32 _pad;
	struct cw_allow_val *rule;
};

/* At a dot, is the rest of the name a `*.` parent a rule names? Returns the bpf_loop verdict. */
static __always_inline long name_suffix_at(struct name_scratch *s, __u32 i, struct name_walk *w)
{
	if (i + 1 >= w->len || i >= CW_NAME_MAX - 1)
		return 1;
	if (s->name.name[i] != '.')
		return 0;
	__builtin_memset(&s->suffix, 0, sizeof(s->suffix));
	bpf_probe_read_kernel_str(s->suffix.name, sizeof(s->suffix.name), &s->name.name[i + 1]);
	struct cw_allow_val *v = bpf_map_lookup_elem(&allow_suffixes, &s->suffix);
	if (!v)
		return 0;
	if (!w->rule)
		w->rule = v;
	if (!entry_in_scope(v, w->groups))
		return 0;
	w->listed = 1;
	return 1;
}

/* Defines the bpf_loop step of match_name over @map's name_scratch. */
#define NAME_SUFFIX_STEP(fn, map)                                            \
	static long fn(__u32 i, void *ctx)                                   \
	{                                                                    \
		__u32 zero = 0;                                              \
		struct name_scratch *s = bpf_map_lookup_elem(&map, &zero);   \
		return s ? name_suffix_at(s, i, ctx) : 1;                    \
	}

/*
 * Whether a rule in force for @groups lists the name in @s (exactly, or as a
 * `*.` parent); and in *rule, the rule whose answers a lookup of it may reach:
 * the exact one, else the longest parent's, whatever its steps.
 */
static __always_inline bool match_name(struct name_scratch *s, __u32 len, __u32 groups,
				       long (*suffix_step)(__u32, void *), struct cw_allow_val **rule)
{
	struct cw_allow_val *exact = bpf_map_lookup_elem(&allow_names, &s->name);
	*rule = exact;
	if (exact && entry_in_scope(exact, groups))
		return true;
	struct name_walk w = { .len = len, .groups = groups };
	bpf_loop(CW_NAME_MAX, suffix_step, &w, 0);
	if (!exact)
		*rule = w.rule;
	return w.listed;
}

static __always_inline bool same_entry(const struct cw_allow_entry *a, const struct cw_allow_entry *b)
{
	return a->port == b->port && a->proto == b->proto && a->scope == b->scope;
}

/* Per-CPU scratch for merging two rules: map memory keeps the step's state imprecise, so it is verified once. */
struct merge_scratch {
	struct cw_allow_val dst;
	struct cw_allow_val src;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct merge_scratch);
} merge_scratch SEC(".maps");

/* One bpf_loop step: add src.entries[i] to dst unless already there. */
static long merge_step(__u32 i, void *ctx)
{
	__u32 zero = 0;
	struct merge_scratch *m = bpf_map_lookup_elem(&merge_scratch, &zero);
	if (!m || i >= m->src.count || i >= CW_ALLOW_ENTRIES)
		return 1;
	struct cw_allow_entry e = m->src.entries[i & (CW_ALLOW_ENTRIES - 1)];
	for (int j = 0; j < CW_ALLOW_ENTRIES; j++) {
		if ((__u32)j < m->dst.count && same_entry(&m->dst.entries[j], &e))
			return 0;
	}
	if (m->dst.count >= CW_ALLOW_ENTRIES)
		return 1;
	m->dst.entries[m->dst.count & (CW_ALLOW_ENTRIES - 1)] = e;
	m->dst.count++;
	return 0;
}

/*
 * Lets the job reach what an allowed name resolved to, under that name's rule.
 * An address two allowed names share keeps the union of both rules.
 */
static __always_inline void allow_resolved(const struct cw_allow_val *rule, __u16 family, const __u8 addr[16])
{
	struct cw_allow_key key;
	__u32 zero = 0;
	mapped_key(&key, family, addr);
	struct cw_allow_val *existing = bpf_map_lookup_elem(&resolved_addrs, key.addr);
	if (!existing) {
		bpf_map_update_elem(&resolved_addrs, key.addr, rule, BPF_ANY);
		return;
	}
	struct merge_scratch *m = bpf_map_lookup_elem(&merge_scratch, &zero);
	if (!m)
		return;
	m->dst = *existing;
	m->src = *rule;
	bpf_loop(CW_ALLOW_ENTRIES, merge_step, 0, 0);
	bpf_map_update_elem(&resolved_addrs, key.addr, &m->dst, BPF_ANY);
}
