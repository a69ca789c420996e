/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * Never loaded: instantiates every ABI struct so that its BTF records their
 * layout, and names every constant of ciwatch.h in an enum so that its BTF
 * records their values; `cargo test` compares both with src/bpf/abi.rs.
 */
#include "vmlinux.h"
#include "ciwatch.h"

struct cw_tag abi_cw_tag;
struct cw_header abi_cw_header;
struct cw_exec abi_cw_exec;
struct cw_fork abi_cw_fork;
struct cw_exit abi_cw_exit;
struct cw_connect abi_cw_connect;
struct cw_file abi_cw_file;
struct cw_dns_addr abi_cw_dns_addr;
struct cw_dns abi_cw_dns;
struct cw_dns_refused abi_cw_dns_refused;
struct cw_socket abi_cw_socket;
struct cw_name_key abi_cw_name_key;
struct cw_launcher abi_cw_launcher;
struct cw_comm_key abi_cw_comm_key;
struct cw_env abi_cw_env;
struct cw_allow_key abi_cw_allow_key;
struct cw_allow_entry abi_cw_allow_entry;
struct cw_allow_val abi_cw_allow_val;
struct cw_host_key abi_cw_host_key;
struct cw_step_pattern abi_cw_step_pattern;
struct cw_step_var abi_cw_step_var;

/*
 * Every `#define` of ciwatch.h as ABI_<name>: macros leave no trace in BTF,
 * enumerators do. The test fails when a define is missing here.
 */
enum cw_abi_constants {
	ABI_CW_ABI_VERSION = CW_ABI_VERSION,
	ABI_CW_COMM_LEN = CW_COMM_LEN,
	ABI_CW_PATH_MAX = CW_PATH_MAX,
	ABI_CW_ARGS_MAX = CW_ARGS_MAX,
	ABI_CW_HOST_MAX = CW_HOST_MAX,
	ABI_CW_NAME_KEY = CW_NAME_KEY,
	ABI_CW_DNS_ADDRS = CW_DNS_ADDRS,
	ABI_CW_KIND_SLOTS = CW_KIND_SLOTS,
	ABI_CW_ENV_MAX = CW_ENV_MAX,
	ABI_CW_KIND_EXEC = CW_KIND_EXEC,
	ABI_CW_KIND_FORK = CW_KIND_FORK,
	ABI_CW_KIND_EXIT = CW_KIND_EXIT,
	ABI_CW_KIND_CONNECT = CW_KIND_CONNECT,
	ABI_CW_KIND_FILE = CW_KIND_FILE,
	ABI_CW_KIND_DNS = CW_KIND_DNS,
	ABI_CW_KIND_ENV = CW_KIND_ENV,
	ABI_CW_KIND_DENIED = CW_KIND_DENIED,
	ABI_CW_KIND_DNS_REFUSED = CW_KIND_DNS_REFUSED,
	ABI_CW_KIND_SOCKET = CW_KIND_SOCKET,
	ABI_CW_KIND_SOCKET_DENIED = CW_KIND_SOCKET_DENIED,
	ABI_CW_F_TRUNC_FILENAME = CW_F_TRUNC_FILENAME,
	ABI_CW_F_TRUNC_ARGS = CW_F_TRUNC_ARGS,
	ABI_CW_F_TRUNC_PATH = CW_F_TRUNC_PATH,
	ABI_CW_F_TRUNC_CWD = CW_F_TRUNC_CWD,
	ABI_CW_F_PATH_REVERSED = CW_F_PATH_REVERSED,
	ABI_CW_F_CWD_REVERSED = CW_F_CWD_REVERSED,
	ABI_CW_F_TRUNC_HOST = CW_F_TRUNC_HOST,
	ABI_CW_F_TRUNC_ADDRS = CW_F_TRUNC_ADDRS,
	ABI_CW_F_DNS_JUDGED = CW_F_DNS_JUDGED,
	ABI_CW_F_DNS_UNLISTED = CW_F_DNS_UNLISTED,
	ABI_CW_F_UNTRACKED = CW_F_UNTRACKED,
	ABI_CW_TAG_STEP_ROOT = CW_TAG_STEP_ROOT,
	ABI_CW_TAG_LAUNCHER = CW_TAG_LAUNCHER,
	ABI_CW_TAG_CONTAINER = CW_TAG_CONTAINER,
	ABI_CW_TAG_LAUNCHED = CW_TAG_LAUNCHED,
	ABI_CW_ENV_STEP_ROOT = CW_ENV_STEP_ROOT,
	ABI_CW_ENV_LAUNCHER = CW_ENV_LAUNCHER,
	ABI_CW_ENV_CONTAINER = CW_ENV_CONTAINER,
	ABI_CW_ENV_DETACHED = CW_ENV_DETACHED,
	ABI_CW_SRC_SYSCALL = CW_SRC_SYSCALL,
	ABI_CW_SRC_CGROUP_CONNECT = CW_SRC_CGROUP_CONNECT,
	ABI_CW_SRC_CGROUP_SENDMSG = CW_SRC_CGROUP_SENDMSG,
	ABI_CW_ALLOW_ENTRIES = CW_ALLOW_ENTRIES,
	ABI_CW_SCOPE_ALL = CW_SCOPE_ALL,
	ABI_CW_PROTO_ANY = CW_PROTO_ANY,
	ABI_CW_PROTO_TCP = CW_PROTO_TCP,
	ABI_CW_PROTO_UDP = CW_PROTO_UDP,
	ABI_CW_NAME_MAX = CW_NAME_MAX,
	ABI_CW_STEP_PATTERNS = CW_STEP_PATTERNS,
	ABI_CW_STEP_TEXT = CW_STEP_TEXT,
	ABI_CW_STEP_VARS = CW_STEP_VARS,
	ABI_CW_STEP_VAR_NAME = CW_STEP_VAR_NAME,
	ABI_CW_REFUSED_UNLISTED = CW_REFUSED_UNLISTED,
	ABI_CW_REFUSED_UNREADABLE = CW_REFUSED_UNREADABLE,
	ABI_CW_SOCKET_RAW = CW_SOCKET_RAW,
	ABI_CW_SOCKET_PACKET = CW_SOCKET_PACKET,
	ABI_CW_SOCKET_PING = CW_SOCKET_PING,
	ABI_CW_SOCKET_CLASSES = CW_SOCKET_CLASSES,
	ABI_CW_SOCKET_EPERM = CW_SOCKET_EPERM,
	ABI_CW_SOCKET_KILLED = CW_SOCKET_KILLED,
	ABI_CW_SOCKET_KILL_FAILED = CW_SOCKET_KILL_FAILED,
	ABI_CW_SOCKET_SRC_CGROUP = CW_SOCKET_SRC_CGROUP,
	ABI_CW_SOCKET_SRC_SYSCALL = CW_SOCKET_SRC_SYSCALL,
	ABI_CW_FILE_KPROBE = CW_FILE_KPROBE,
	ABI_CW_FILE_FENTRY = CW_FILE_FENTRY,
	ABI_CW_FILE_TP_OPENAT = CW_FILE_TP_OPENAT,
	ABI_CW_FILE_TP_OPENAT2 = CW_FILE_TP_OPENAT2,
	ABI_CW_FILE_TP_OPEN = CW_FILE_TP_OPEN,
};

enum cw_abi_constants abi_cw_constants;
