#![no_main]
//! Exit decoding from arbitrary kvm_run contents, return value and errno never
//! panics, and a memory fault is only ever decoded from -1/EFAULT|EHWPOISON/39.
use libfuzzer_sys::fuzz_target;
use privmem_core::abi::{decode_exit, exit_reason, RunResult, EFAULT, EHWPOISON, KVM_EXIT_MEMORY_FAULT};
use privmem_core::Exit;

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let errno = i32::from_le_bytes([data[0], data[1], data[2], 0]);
    let result = if data[3] & 1 == 0 { RunResult::Ok } else { RunResult::Err(errno) };
    let run = &data[4..];
    if let Ok(Exit::MemoryFault(_)) = decode_exit(result, run) {
        assert!(matches!(result, RunResult::Err(e) if e == EFAULT || e == EHWPOISON));
        assert_eq!(exit_reason(run).ok(), Some(KVM_EXIT_MEMORY_FAULT));
    }
});
