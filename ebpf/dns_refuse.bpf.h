/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * dns_refuse (`dns.refuse-unlisted` in enforce mode): the job's DNS queries
 * for names no rule in scope lists never leave the host.
 *
 * The cgroup connect/sendmsg hooks run in the caller's context and know its
 * lineage tag; they mark each job socket that talks to port 53. This
 * cgroup_skb egress program reads the question of every DNS packet a marked
 * socket sends and drops it unless a name rule in scope for the sender's step
 * lists the name: the sender gets EPERM. It judges packets, not library
 * calls, so it holds for any resolver code (glibc, Go, dig, a hand-made
 * query). A packet it cannot read as one plain query is refused too.
 */

const volatile __u32 cw_dns_refuse = 0;

#define CW_DNS_PORT 53
#define CW_DNS_HEADER 12
/* Wire bytes read for a name: the longest name a rule can hold, plus its first length and last 0 byte. */
#define CW_WIRE_MAX (CW_NAME_MAX + 2)

/* Who opened a marked socket: its records carry this, whoever's context the packet leaves in. */
struct dns_sock {
	struct cw_tag tag;
	__u32 tgid;
	__u32 uid;
	__u64 cgroup_id;
	char comm[CW_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct dns_sock);
} dns_socks SEC(".maps");

/* The question name as it came off the packet. */
struct dns_wire {
	__u8 bytes[CW_WIRE_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dns_wire);
} dns_wire SEC(".maps");

/* The filter's own name_scratch (enforce.bpf.h). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct name_scratch);
} dns_names SEC(".maps");

NAME_SUFFIX_STEP(dns_suffix_step, dns_names)

/*
 * Marks a job socket that sends to the DNS port. Returns false when the mark
 * cannot be stored: the caller then denies, since an unmarked socket would
 * query unchecked.
 */
static __always_inline bool mark_dns_socket(struct bpf_sock_addr *ctx, __u16 port, const struct cw_tag *tag)
{
	if (!cw_dns_refuse || port != CW_DNS_PORT)
		return true;
	struct dns_sock *d = bpf_sk_storage_get(&dns_socks, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!d)
		return false;
	d->tag = *tag;
	d->tgid = bpf_get_current_pid_tgid() >> 32;
	d->uid = (__u32)bpf_get_current_uid_gid();
	d->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(d->comm, sizeof(d->comm));
	return true;
}

/* Where a marked socket's packet carries DNS. */
struct dns_packet {
	__u32 off; /* the first DNS byte (TCP: its 2-byte length) */
	__u32 end;
	__u16 family;
	__u16 port;
	__u8 proto;
	__u8 _pad[3];
	__u8 addr[16];
};

enum { DNS_NOT = 0, DNS_FOUND = 1, DNS_UNREADABLE = -1 };

static __always_inline int locate_ipv4(struct __sk_buff *skb, struct dns_packet *p, __u32 *l4, __u8 *proto)
{
	__u8 ip[20];
	if (bpf_skb_load_bytes(skb, 0, ip, sizeof(ip)))
		return DNS_UNREADABLE;
	/* A fragment's port is not in every piece: refused, not guessed. */
	if ((ip[6] & 0x3f) || ip[7])
		return DNS_UNREADABLE;
	*l4 = (ip[0] & 0xf) * 4;
	*proto = ip[9];
	p->family = AF_INET;
	__builtin_memcpy(p->addr, &ip[16], 4);
	return DNS_FOUND;
}

static __always_inline int locate_ipv6(struct __sk_buff *skb, struct dns_packet *p, __u32 *l4, __u8 *proto)
{
	__u8 ip[40];
	if (bpf_skb_load_bytes(skb, 0, ip, sizeof(ip)))
		return DNS_UNREADABLE;
	*l4 = 40;
	*proto = ip[6];
	/* Extension headers would hide the port: refused, not walked. */
	if (*proto != IPPROTO_UDP && *proto != IPPROTO_TCP)
		return DNS_UNREADABLE;
	p->family = AF_INET6;
	__builtin_memcpy(p->addr, &ip[24], 16);
	return DNS_FOUND;
}

static __always_inline int dns_locate(struct __sk_buff *skb, struct dns_packet *p)
{
	__u32 l4 = 0;
	__u8 proto = 0, ports[4];
	int found;
	if (skb->protocol == bpf_htons(ETH_P_IP))
		found = locate_ipv4(skb, p, &l4, &proto);
	else if (skb->protocol == bpf_htons(ETH_P_IPV6))
		found = locate_ipv6(skb, p, &l4, &proto);
	else
		return DNS_NOT;
	if (found != DNS_FOUND)
		return found;
	if (proto != IPPROTO_UDP && proto != IPPROTO_TCP)
		return DNS_NOT;
	if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)))
		return DNS_UNREADABLE;
	if (((ports[2] << 8) | ports[3]) != CW_DNS_PORT)
		return DNS_NOT; /* the same socket's other traffic was judged by its connect/sendmsg */
	p->port = CW_DNS_PORT;
	p->proto = proto;
	p->end = skb->len;
	if (proto == IPPROTO_UDP) {
		p->off = l4 + 8;
		return DNS_FOUND;
	}
	__u8 doff = 0;
	if (bpf_skb_load_bytes(skb, l4 + 12, &doff, 1))
		return DNS_UNREADABLE;
	p->off = l4 + (doff >> 4) * 4;
	return p->off < p->end ? DNS_FOUND : DNS_NOT; /* handshake and acks carry no query */
}

/* Turning the wire name (3www7example3com0) into "www.example.com", lower-cased. */
struct qname_walk {
	__u32 n; /* wire bytes loaded */
	__u32 next; /* index of the next label length */
	__u32 len; /* name bytes written */
	__u32 state;
};

enum { QNAME_READING = 0, QNAME_DONE = 1, QNAME_BAD = 2 };

static long qname_step(__u32 i, void *ctx)
{
	struct qname_walk *w = ctx;
	__u32 zero = 0;
	struct dns_wire *wire = bpf_map_lookup_elem(&dns_wire, &zero);
	struct name_scratch *s = bpf_map_lookup_elem(&dns_names, &zero);
	if (!wire || !s || i >= w->n || i >= CW_WIRE_MAX)
		return 1;
	__u8 c = wire->bytes[i];
	if (i == w->next) {
		if (c == 0) {
			w->state = QNAME_DONE;
			return 1;
		}
		if (c > 63) { /* a compression pointer has no place in a question */
			w->state = QNAME_BAD;
			return 1;
		}
		w->next = i + c + 1;
		if (i == 0)
			return 0;
		c = '.';
	} else if (c >= 'A' && c <= 'Z') {
		c += 'a' - 'A';
	} else if (c == '.' || c <= ' ' || c >= 0x7f) {
		/* A dot inside a label, or bytes no host name has, would let a name pass for another. */
		w->state = QNAME_BAD;
		return 1;
	}
	__u32 at = i - 1;
	if (at >= CW_NAME_MAX - 1)
		return 1;
	s->name.name[at] = c;
	w->len = at + 1;
	return 0;
}

static __always_inline void emit_refused(const struct dns_sock *o, const struct dns_packet *p, __u8 reason,
					 const struct name_scratch *s, __u32 len, bool truncated, __u16 qtype)
{
	struct cw_dns_refused *e = reserve(sizeof(*e), CW_KIND_DNS_REFUSED);
	if (!e)
		return;
	e->h.kind = CW_KIND_DNS_REFUSED;
	e->h.flags = truncated ? CW_F_TRUNC_HOST : 0;
	e->h.size = sizeof(*e);
	e->h.ktime_ns = bpf_ktime_get_boot_ns();
	e->h.pid = o->tgid;
	e->h.tgid = o->tgid;
	e->h.proc_start_ns = 0;
	e->h.cgroup_id = o->cgroup_id;
	e->h.uid = o->uid;
	e->h.job = o->tag.job;
	e->h.step = o->tag.step;
	e->h.tag_flags = o->tag.flags;
	__builtin_memcpy(e->h.comm, o->comm, CW_COMM_LEN);
	e->family = p->family;
	e->port = p->port;
	e->proto = p->proto;
	e->reason = reason;
	e->name_len = len < CW_NAME_MAX ? len : CW_NAME_MAX - 1;
	e->qtype = qtype;
	e->_pad0 = 0;
	e->_pad1 = 0;
	__builtin_memcpy(e->addr, p->addr, 16);
	__builtin_memcpy(e->name, s->name.name, CW_NAME_MAX);
	submit(e);
}

/* Reports a packet that is not one plain query, with no name; returns the drop verdict. */
static __always_inline int refuse_unreadable(const struct dns_sock *o, const struct dns_packet *p)
{
	__u32 zero = 0;
	struct name_scratch *s = bpf_map_lookup_elem(&dns_names, &zero);
	if (s) {
		__builtin_memset(&s->name, 0, sizeof(s->name));
		emit_refused(o, p, CW_REFUSED_UNREADABLE, s, 0, false, 0);
	}
	return 0;
}

/* Judges the one DNS message in [off, end): 1 to let it go, 0 to drop it (reported). */
static __always_inline int judge_query(struct __sk_buff *skb, __u32 off, __u32 end, const struct dns_packet *p,
				       const struct dns_sock *o)
{
	__u32 zero = 0;
	struct dns_wire *wire = bpf_map_lookup_elem(&dns_wire, &zero);
	struct name_scratch *s = bpf_map_lookup_elem(&dns_names, &zero);
	if (!wire || !s)
		return 0;
	__u8 hdr[CW_DNS_HEADER];
	if (off + CW_DNS_HEADER >= end || bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)))
		return refuse_unreadable(o, p);
	/* One standard query (QR 0, opcode 0), one question. */
	if ((hdr[2] & 0xf8) || hdr[4] || hdr[5] != 1)
		return refuse_unreadable(o, p);
	__u32 name_off = off + CW_DNS_HEADER;
	__u32 n = end - name_off;
	/* Keep the n < 1 test the compiler would drop: the verifier needs it for the read length. */
	asm volatile("" : "+r"(n));
	if (n > CW_WIRE_MAX)
		n = CW_WIRE_MAX;
	if (n < 1 || bpf_skb_load_bytes(skb, name_off, wire->bytes, n))
		return refuse_unreadable(o, p);
	__builtin_memset(&s->name, 0, sizeof(s->name));
	struct qname_walk w = { .n = n };
	bpf_loop(CW_WIRE_MAX, qname_step, &w, 0);
	if (w.state != QNAME_DONE) {
		/* Ran out of room with the name still going: longer than any rule can list. */
		bool too_long = w.state == QNAME_READING && n == CW_WIRE_MAX;
		emit_refused(o, p, too_long ? CW_REFUSED_UNLISTED : CW_REFUSED_UNREADABLE, s, w.len, true, 0);
		return 0;
	}
	struct cw_allow_val *rule;
	if (match_name(s, w.len, groups_of(o->tag.step), dns_suffix_step, &rule))
		return 1;
	__u8 qtype[2] = {};
	__u32 wire_len = w.len ? w.len + 2 : 1;
	bpf_skb_load_bytes(skb, name_off + wire_len, qtype, sizeof(qtype));
	emit_refused(o, p, CW_REFUSED_UNLISTED, s, w.len, false, (qtype[0] << 8) | qtype[1]);
	return 0;
}

/* DNS over TCP: each message after a 2-byte length; glibc writes its A and AAAA queries in one segment. */
#define CW_TCP_QUERIES 2

static __always_inline int judge_tcp(struct __sk_buff *skb, const struct dns_packet *p, const struct dns_sock *o)
{
	__u32 off = p->off;
	for (int k = 0; k < CW_TCP_QUERIES; k++) {
		__u8 len[2];
		if (off + 2 > p->end || bpf_skb_load_bytes(skb, off, len, sizeof(len)))
			break;
		__u32 msg_end = off + 2 + ((len[0] << 8) | len[1]);
		if (msg_end > p->end)
			break; /* a query split over segments cannot be judged whole */
		if (!judge_query(skb, off + 2, msg_end, p, o))
			return 0;
		if (msg_end == p->end)
			return 1;
		off = msg_end;
	}
	return refuse_unreadable(o, p);
}

SEC("cgroup_skb/egress")
int dns_egress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 1;
	struct dns_sock *owner = bpf_sk_storage_get(&dns_socks, sk, 0, 0);
	if (!owner)
		return 1;
	struct dns_packet p = {};
	int found = dns_locate(skb, &p);
	if (found == DNS_NOT)
		return 1;
	if (found == DNS_UNREADABLE)
		return refuse_unreadable(owner, &p);
	if (p.proto == IPPROTO_UDP)
		return judge_query(skb, p.off, p.end, &p, owner);
	return judge_tcp(skb, &p, owner);
}
