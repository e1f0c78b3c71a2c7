//! Request ids without a system call: a UUID of version 8 (RFC 9562 §5.8, "custom") made of
//! 64 random bits drawn once per process and a counter. Unique within a process, unlikely to
//! collide across replicas, and cheap — `Uuid::new_v4` reads the kernel's random generator
//! on every request, which the hot path's profile showed (`docs/benchmarks.md`). A request
//! id is a correlation handle, not a secret: it need not be unpredictable.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};
use uuid::Uuid;

#[derive(Clone)]
pub struct MakeRequestIds {
    process: u64,
    next: std::sync::Arc<AtomicU64>,
}

impl MakeRequestIds {
    pub fn new() -> Self {
        Self {
            process: rand::random(),
            next: std::sync::Arc::default(),
        }
    }

    fn next_id(&self) -> Uuid {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.process.to_be_bytes());
        bytes[8..].copy_from_slice(&n.to_be_bytes());
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }
}

impl Default for MakeRequestIds {
    fn default() -> Self {
        Self::new()
    }
}

impl MakeRequestId for MakeRequestIds {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = self.next_id().hyphenated().encode_lower(&mut text);
        HeaderValue::from_str(id).ok().map(RequestId::new)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ids_are_distinct_uuids_of_version_8() {
        let make = MakeRequestIds::new();
        let a = make.next_id();
        let b = make.next_id();
        assert_ne!(a, b);
        assert_eq!(a.get_version_num(), 8);
        // Another process (another generator) starts from other random bits.
        assert_ne!(MakeRequestIds::new().next_id(), a);
        let mut make = make;
        let header = make
            .make_request_id(&Request::new(()))
            .unwrap()
            .into_header_value();
        let parsed = Uuid::parse_str(header.to_str().unwrap()).unwrap();
        assert_eq!(parsed.get_version_num(), 8);
    }
}
