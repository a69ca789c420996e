//! Userspace filters applied after the kernel's coarse ones.

pub mod glob;
pub mod sensitive;
