//! Benchmarks behind `roadwork bench …`: speed and memory targets live here, never in unit tests.
//! Each prints a Markdown table (docs/BENCHMARKS.md carries the latest) and can write JSON.

pub mod al;
pub mod embed;
pub mod ingest;
pub mod mine;
pub mod serve;
pub mod soak;
pub mod train;

/// Peak resident memory of this process since the last [`reset_peak_rss`], bytes (Linux; `None`
/// elsewhere).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resets the peak-RSS counter so a measurement covers only what follows (Linux ≥ 4.0).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
