#![no_main]

#[global_allocator]
static ALLOC: agent_fuzz::cap::Capped = agent_fuzz::cap::Capped;

libfuzzer_sys::fuzz_target!(|data: &[u8]| agent_fuzz::targets::image(data));
