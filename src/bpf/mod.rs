//! Loading and attaching the kernel programs, and the ABI they share with us.

pub mod abi;
pub mod libc_paths;
pub mod loader;
pub mod pin;
pub mod preflight;

#[cfg(test)]
mod btf_layout;

/// The CO-RE object built from `ebpf/ciwatch.bpf.c` by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ciwatch.bpf.o"));

/// Never loaded: carries the BTF of every ABI struct for the layout test.
#[cfg(test)]
pub static ABI_CHECK_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/abi_check.bpf.o"));
