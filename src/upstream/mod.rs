//! The model: backends with the numbers about them that change per request
//! (`BackendStats` atomics), routes, and an upstream's retry budget and queue. It knows neither
//! strategies (balance/, which builds an upstream's tiers over these backends) nor
//! connections (proxy/, which keeps them beside the model, swapped together as one
//! snapshot).

mod backend;
pub mod queue;
pub mod rate;
pub mod retry;
mod route;
pub mod why;

pub use backend::{Backend, BackendStats, State, literal_addr};
pub use route::{Policy, Route, RouteHeaders, host_of, request_host};

/// The `members` fingerprint of an upstream (SPEC §6): FNV-1a (64 bits) over its sorted
/// `(id, weight, backup)` list, as 16 hex digits. Two instances that see the same
/// backends show the same value, whatever order they learnt them in.
pub fn members<'a>(backends: impl Iterator<Item = (&'a str, u32, bool)>) -> String {
    use std::hash::Hasher;
    let mut list: Vec<_> = backends.collect();
    list.sort_unstable();
    let mut h = fnv::FnvHasher::default();
    for (id, weight, backup) in list {
        h.write(id.as_bytes());
        h.write(&[0]);
        h.write(&weight.to_be_bytes());
        h.write(&[u8::from(backup), b'\n']);
    }
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_members_fingerprint_depends_on_the_set_not_its_order() {
        let a = super::members([("10.0.0.1:80", 1, false), ("10.0.0.2:80", 2, false)].into_iter());
        let b = super::members([("10.0.0.2:80", 2, false), ("10.0.0.1:80", 1, false)].into_iter());
        assert_eq!(a, b);
        assert_eq!(a.len(), 16);
        let weight =
            super::members([("10.0.0.1:80", 2, false), ("10.0.0.2:80", 2, false)].into_iter());
        let backup =
            super::members([("10.0.0.1:80", 1, true), ("10.0.0.2:80", 2, false)].into_iter());
        assert_ne!(a, weight);
        assert_ne!(a, backup);
        // Fixed: instances of different builds must agree.
        assert_eq!(super::members(std::iter::empty()), "cbf29ce484222325");
    }
}
