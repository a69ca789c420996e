/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * Never loaded: instantiates every ABI struct so that its BTF records their
 * layout, which `cargo test` compares with the Rust mirrors in src/bpf/abi.rs.
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
