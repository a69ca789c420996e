/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * ciwatch kernel/user ABI. Every record in the ring buffer starts with
 * struct cw_header; userspace mirrors these structs in src/bpf/abi.rs and a
 * plain `cargo test` compares both layouts through this object's BTF.
 *
 * Rules: fixed-width integers only, explicit padding, no bool/enum/pointer
 * members. Kind values only grow and are never reused.
 */
#ifndef CIWATCH_ABI_H
#define CIWATCH_ABI_H

#define CW_ABI_VERSION 1

#define CW_COMM_LEN 16
#define CW_PATH_MAX 256
#define CW_ARGS_MAX 1024
#define CW_HOST_MAX 256
#define CW_NAME_KEY 32
#define CW_DNS_ADDRS 8
#define CW_KIND_SLOTS 16
#define CW_ENV_MAX 16384

/* Record kinds. */
#define CW_KIND_EXEC 1
#define CW_KIND_FORK 2
#define CW_KIND_EXIT 3
#define CW_KIND_CONNECT 4
#define CW_KIND_FILE 5
#define CW_KIND_DNS 6
#define CW_KIND_ENV 7 /* a step root's environment; consumed by attribution, never logged */
#define CW_KIND_DENIED 8 /* a cw_connect the enforce hook refused (EPERM) */
#define CW_KIND_DNS_REFUSED 9 /* a DNS query the enforce hook dropped (EPERM) */
#define CW_KIND_SOCKET 10 /* a raw, packet or ping socket a job process opened */
#define CW_KIND_SOCKET_DENIED 11 /* … one the enforce hook refused (cw_socket.refusal says how) */

/* cw_header.flags */
#define CW_F_TRUNC_FILENAME (1 << 0)
#define CW_F_TRUNC_ARGS (1 << 1)
#define CW_F_TRUNC_PATH (1 << 2)
#define CW_F_TRUNC_CWD (1 << 3)
#define CW_F_PATH_REVERSED (1 << 4) /* path holds components leaf-first, '/'-joined */
#define CW_F_CWD_REVERSED (1 << 5)
#define CW_F_TRUNC_HOST (1 << 6)
#define CW_F_TRUNC_ADDRS (1 << 7)
#define CW_F_DNS_JUDGED (1 << 8) /* enforce judged this lookup against the policy's name rules */
#define CW_F_DNS_UNLISTED (1 << 9) /* … and no rule in scope for the step lists the name */
#define CW_F_UNTRACKED (1 << 10) /* fork: the child found no room in `tasks`; denied, socket_denied: the caller was such a child */

/* cw_tag.flags */
#define CW_TAG_STEP_ROOT (1 << 0) /* this process started its step */
#define CW_TAG_LAUNCHER (1 << 1) /* a platform's step launcher (Runner.Worker, …) */
#define CW_TAG_CONTAINER (1 << 2) /* started by a container runtime; userspace resolves its job */
#define CW_TAG_LAUNCHED (1 << 3) /* forked by a launcher, not yet exec'd: its first exec starts a step */

/* cw_env.reason */
#define CW_ENV_STEP_ROOT 1
#define CW_ENV_LAUNCHER 2
#define CW_ENV_CONTAINER 3
#define CW_ENV_DETACHED 4 /* exec'd as a CI step its launcher detached (Jenkins' durable task); userspace resolves its job */

/* cw_connect.source */
#define CW_SRC_SYSCALL 1
#define CW_SRC_CGROUP_CONNECT 2
#define CW_SRC_CGROUP_SENDMSG 3

/* Enforcement: allowed networks, by longest prefix, IPv4 as IPv4-mapped IPv6. */
#define CW_ALLOW_ENTRIES 8
#define CW_SCOPE_ALL (1u << 31) /* an entry for every step */
#define CW_PROTO_ANY 0
#define CW_PROTO_TCP 6
#define CW_PROTO_UDP 17
#define CW_NAME_MAX 128

/* Step scoping matched in the kernel at a step's first exec (step_scope.bpf.h). */
#define CW_STEP_PATTERNS 64
#define CW_STEP_TEXT 64
#define CW_STEP_VARS 4
#define CW_STEP_VAR_NAME 32

/* cw_dns_refused.reason */
#define CW_REFUSED_UNLISTED 1 /* no name rule in scope lists the name */
#define CW_REFUSED_UNREADABLE 2 /* not one plain query ciwatch can read: refused rather than trusted */

/* cw_socket.class: sockets whose traffic never passes the connect/sendmsg hooks */
#define CW_SOCKET_RAW 1 /* SOCK_RAW, IPv4 or IPv6 */
#define CW_SOCKET_PACKET 2 /* AF_PACKET, and the obsolete AF_INET SOCK_PACKET */
#define CW_SOCKET_PING 3 /* ICMP or ICMPv6 echo (SOCK_DGRAM) */
#define CW_SOCKET_CLASSES 4 /* entries of the sock_allow map, indexed by class */

/* cw_socket.refusal; 0: allowed */
#define CW_SOCKET_EPERM 1 /* socket() failed with EPERM */
#define CW_SOCKET_KILLED 2 /* the caller was sent SIGKILL before socket() returned */
#define CW_SOCKET_KILL_FAILED 3 /* … but the kernel would not send it */

/* cw_socket.source */
#define CW_SOCKET_SRC_CGROUP 1 /* cgroup/sock_create */
#define CW_SOCKET_SRC_SYSCALL 2 /* tracepoint/syscalls/sys_enter_socket */

/* cw_file.hook */
#define CW_FILE_KPROBE 1
#define CW_FILE_FENTRY 2
#define CW_FILE_TP_OPENAT 3
#define CW_FILE_TP_OPENAT2 4
#define CW_FILE_TP_OPEN 5

/* Lineage tag carried by every process of a watched job. */
struct cw_tag {
	__u32 job;
	__u32 step;
	__u32 flags;
	__u32 platform; /* the launcher's platform id (0: none); picks the step variables read at exec */
};

struct cw_header {
	__u16 kind;
	__u16 flags;
	__u32 size;
	__u64 ktime_ns; /* CLOCK_BOOTTIME */
	__u32 pid;
	__u32 tgid;
	__u64 proc_start_ns; /* group leader start_boottime; 0 if the hook cannot see it */
	__u64 cgroup_id;
	__u32 uid;
	__u32 job;
	__u32 step;
	__u32 tag_flags;
	char comm[CW_COMM_LEN];
};

struct cw_exec {
	struct cw_header h;
	__u32 ppid;
	__u32 filename_len;
	__u64 parent_start_ns;
	__u32 args_len; /* bytes of NUL-separated argv captured */
	__u32 args_total; /* bytes of argv in the process */
	char filename[CW_PATH_MAX];
	char args[CW_ARGS_MAX];
};

struct cw_fork {
	struct cw_header h; /* the parent */
	__u32 child_tgid;
	__u32 _pad;
	__u64 child_start_ns;
};

struct cw_exit {
	struct cw_header h;
	__s32 exit_code;
	__u32 _pad;
};

struct cw_connect {
	struct cw_header h;
	__u16 family;
	__u16 port; /* host byte order */
	__u16 sock_type;
	__u8 source;
	__u8 _pad0;
	__u8 addr[16]; /* IPv4 in the first 4 bytes, network order */
	__s32 fd;
	__u32 _pad1;
};

struct cw_file {
	struct cw_header h;
	__s32 dirfd;
	__u32 open_flags;
	__u16 hook;
	__u16 path_len;
	__u16 cwd_len;
	__u16 _pad;
	char path[CW_PATH_MAX];
	char cwd[CW_PATH_MAX];
};

struct cw_dns_addr {
	__u16 family;
	__u16 _pad0;
	__u32 _pad1;
	__u8 addr[16];
};

struct cw_dns {
	struct cw_header h;
	__s32 ret;
	__u16 naddrs;
	__u16 host_len;
	__u64 latency_ns;
	struct cw_dns_addr addrs[CW_DNS_ADDRS];
	char host[CW_HOST_MAX];
};

/* A DNS query dropped before it left: the sender's socket was marked by its connect/sendmsg. */
struct cw_dns_refused {
	struct cw_header h;
	__u16 family;
	__u16 port; /* host byte order */
	__u8 proto;
	__u8 reason;
	__u16 name_len;
	__u16 qtype;
	__u16 _pad0;
	__u32 _pad1;
	__u8 addr[16]; /* the resolver; IPv4 in the first 4 bytes */
	char name[CW_NAME_MAX]; /* lower-cased, dot-separated, as far as it could be read */
};

/* A socket the connect/sendmsg hooks never judge (CW_KIND_SOCKET, CW_KIND_SOCKET_DENIED). */
struct cw_socket {
	struct cw_header h;
	__u32 protocol; /* socket()'s protocol: an IP protocol, or a packet socket's ethertype (network order) */
	__u16 family;
	__u16 sock_type; /* SOCK_RAW, SOCK_DGRAM, SOCK_PACKET: without SOCK_NONBLOCK and SOCK_CLOEXEC */
	__u8 class;
	__u8 refusal;
	__u8 source;
	__u8 _pad0;
	__u32 _pad1;
};

/* A process whose exec'd children start steps (key: its tgid). */
struct cw_launcher {
	__u32 job;
	__u32 platform;
	__u32 flags;
	__u32 _pad;
};

/* Key of the launcher_names / container_parents maps: a NUL-padded comm. */
struct cw_comm_key {
	char comm[CW_COMM_LEN];
};

struct cw_env {
	struct cw_header h;
	__u32 reason;
	__u32 env_len;
	__u32 env_total;
	__u32 ppid;
	char env[CW_ENV_MAX];
};

struct cw_allow_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* One way a destination is allowed: port (0: any), protocol (0: any), and the step groups it is allowed in. */
struct cw_allow_entry {
	__u16 port;
	__u8 proto;
	__u8 _pad;
	__u32 scope;
};

struct cw_allow_val {
	__u32 count;
	__u32 _pad;
	struct cw_allow_entry entries[CW_ALLOW_ENTRIES];
};

/* A `steps:` pattern, with the step groups a step whose id or name it matches is in. */
struct cw_step_pattern {
	__u32 groups; /* 0: an unused slot, and the end of the list */
	__u32 len;
	char text[CW_STEP_TEXT];
};

/* An environment variable whose value is a step's id or name, with its '=' ("GITHUB_ACTION="), and its platform's id. */
struct cw_step_var {
	__u32 len;
	__u32 platform;
	char name[CW_STEP_VAR_NAME];
};

/* Key of the allow_names / allow_suffixes maps: a NUL-padded host name. */
struct cw_host_key {
	char name[CW_NAME_MAX];
};

/* Key of the sensitive_base / sensitive_dir maps: a NUL-padded path component. */
struct cw_name_key {
	char name[CW_NAME_KEY];
};

#endif
