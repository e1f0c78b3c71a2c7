//! Request ids without a system call: a UUID of version 8 (RFC 9562 §5.8, "custom") made of
//! 64 random bits drawn once per process and a counter. Unique within a process, unlikely to
//! collide across replicas, and cheap — `Uuid::new_v4` reads the kernel's random generator
//! on every request, which the hot path's profile showed (`docs/benchmarks.md`). A request
//! id is a correlation handle, not a secret: it need not be unpredictable.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::HeaderValue;
use uuid::Uuid;

/// The request ids of one listener.
pub struct RequestIds {
    process: u64,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        Self {
            process: rand::random(),
            next: AtomicU64::new(0),
        }
    }

    /// The next id, as the `x-request-id` header value.
    pub fn next_header(&self) -> HeaderValue {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = self.next_id().hyphenated().encode_lower(&mut text);
        // A hyphenated UUID is visible ASCII, always a valid header value.
        HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }

    fn next_id(&self) -> Uuid {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.process.to_be_bytes());
        bytes[8..].copy_from_slice(&n.to_be_bytes());
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ids_are_distinct_uuids_of_version_8() {
        let ids = RequestIds::new();
        let a = ids.next_id();
        let b = ids.next_id();
        assert_ne!(a, b);
        assert_eq!(a.get_version_num(), 8);
        // Another process (another generator) starts from other random bits.
        assert_ne!(RequestIds::new().next_id(), a);
        let header = ids.next_header();
        let parsed = Uuid::parse_str(header.to_str().unwrap()).unwrap();
        assert_eq!(parsed.get_version_num(), 8);
    }
}
