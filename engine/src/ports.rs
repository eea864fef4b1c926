//! Ports for servers that bind their own socket (Ballista's scheduler and
//! executor take a port number, not a listener).
//!
//! Asking the OS for port 0 and passing the number on loses a race: the
//! number comes from the ephemeral range, which every outgoing connection of
//! the host draws from too, and one took an executor's port between the
//! choice and the bind ("Address already in use", seen in CI). Ports below
//! that range are never handed to outgoing connections, so they are chosen
//! there, each process starting at its own offset so that processes choosing
//! at the same moment do not collide, and each one checked free by a bind.

use crate::error::{EngineError, Result};
use std::net::TcpListener;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the OS draws outgoing connections' ports from (Linux's setting, or its default).
fn ephemeral_range() -> Range<u32> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = text.split_whitespace().filter_map(|s| s.parse::<u32>().ok());
    match (bounds.next(), bounds.next()) {
        (Some(low), Some(high)) if low <= high => low..high + 1,
        _ => 32768..61000,
    }
}

/// The ports this module chooses from: below the ephemeral range, or above it
/// when it starts too low to leave room.
fn candidates(ephemeral: &Range<u32>) -> Range<u32> {
    const LOWEST: u32 = 10_000;
    if ephemeral.start >= LOWEST + 1_000 {
        LOWEST..ephemeral.start
    } else {
        ephemeral.end.max(LOWEST)..65_536
    }
}

/// A loopback port that is free now and that no outgoing connection of this
/// host will take before the caller binds it.
pub fn unused_loopback_port() -> Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let range = candidates(&ephemeral_range());
    let size = range.end.saturating_sub(range.start).max(1);
    // Spread processes apart: pids a few apart land thousands of ports apart.
    let offset = std::process::id().wrapping_mul(2_654_435_761) % size;
    for _ in 0..size {
        let port = range.start + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % size;
        if port > u16::MAX as u32 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return Ok(port as u16);
        }
    }
    Err(EngineError::Invalid(format!("no free loopback port in {}..{}", range.start, range.end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chosen_ports_are_outside_the_ephemeral_range_distinct_and_bindable() {
        let ephemeral = ephemeral_range();
        let ports: Vec<u16> = (0..50).map(|_| unused_loopback_port().unwrap()).collect();
        for &p in &ports {
            assert!(!ephemeral.contains(&(p as u32)), "{p} is in the ephemeral range {ephemeral:?}");
            assert!(TcpListener::bind(("127.0.0.1", p)).is_ok(), "{p} is taken");
        }
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
    }

    #[test]
    fn a_low_ephemeral_range_puts_the_choice_above_it() {
        assert_eq!(candidates(&(32768..61000)), 10_000..32768);
        assert_eq!(candidates(&(1024..61000)), 61000..65_536);
    }
}
