//! Limits per client address: one address (one host, or one IPv6 /64, which is what a single
//! subscriber is usually given) may hold at most so many connections, so a few hundred idle or
//! slow sockets from one place cannot take every connection slot; and it may create rooms only
//! at a bounded rate, whatever connections it uses, so reconnecting does not reset the limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::budget::TokenBucket;

/// `create_room` per address: a burst of this many...
pub const CREATE_ROOM_BURST: f64 = 5.0;
/// ...then this many a second (one every 10 s).
pub const CREATE_ROOM_PER_SECOND: f64 = 0.1;
/// Failed resume attempts per address: a burst of this many...
pub const RESUME_FAILURES_BURST: f64 = 10.0;
/// ...then this many a second (one every 6 s, ten a minute).
pub const RESUME_FAILURES_PER_SECOND: f64 = 1.0 / 6.0;
/// Addresses whose rates are remembered before the full (idle) ones are forgotten.
const RATES_KEPT: usize = 4096;

/// A token bucket per address; an address whose bucket is full again is forgotten (it would
/// start from a full bucket anyway), so the map holds only recently busy addresses.
#[derive(Debug)]
struct RateByAddress {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl RateByAddress {
    fn new(burst: f64, per_second: f64) -> RateByAddress {
        RateByAddress {
            burst,
            per_second,
            buckets: Mutex::default(),
        }
    }

    /// Runs `f` on `ip`'s bucket.
    fn with<T>(&self, ip: IpAddr, now: Instant, f: impl FnOnce(&mut TokenBucket) -> T) -> T {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= RATES_KEPT {
            buckets.retain(|_, bucket| !bucket.is_full(now));
        }
        let bucket = buckets
            .entry(key(ip))
            .or_insert_with(|| TokenBucket::new(self.burst, self.per_second));
        f(bucket)
    }
}

/// The address connections are counted under: an IPv4 address (IPv4-mapped IPv6 included) as
/// it is, an IPv6 address by its /64 prefix (what one host or subscriber usually holds).
pub fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// Live connections by address, with a limit per address.
#[derive(Debug)]
pub struct AddressLimits {
    per_address: usize,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// `create_room` per address.
    create_rates: RateByAddress,
    /// Failed resume attempts per address.
    resume_failures: RateByAddress,
    /// Joins per address (none when `per_address` is 0).
    join_rates: RateByAddress,
}

/// What one connection holds: its slot under `--max-connections` and its place under its
/// address's limit. A participant kept for resuming after its connection dropped keeps them
/// until it resumes or its window ends, so ghosts count against the limits like connections.
#[derive(Debug)]
pub struct ConnectionPlaces {
    /// The server-wide slot.
    pub slot: tokio::sync::OwnedSemaphorePermit,
    /// The address's place.
    pub address: AddressPermit,
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct AddressPermit {
    key: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl AddressLimits {
    /// At most `per_address` connections per address; 0 for no limit.
    pub fn new(per_address: usize) -> AddressLimits {
        AddressLimits {
            per_address,
            counts: Arc::default(),
            create_rates: RateByAddress::new(CREATE_ROOM_BURST, CREATE_ROOM_PER_SECOND),
            resume_failures: RateByAddress::new(RESUME_FAILURES_BURST, RESUME_FAILURES_PER_SECOND),
            // As many joins at once as connections, then a tenth of that a second: every
            // connection of an address can join (and rejoin after a blip), but one address
            // cannot churn seats (each join and leave is broadcast to the room) without end.
            join_rates: RateByAddress::new(per_address as f64, per_address as f64 / 10.0),
        }
    }

    /// Whether `ip` may join a room at `now` (and if so, counts it): a burst of the
    /// per-address connection limit, then a tenth of it per second. Always true without a
    /// per-address limit.
    pub fn allow_join(&self, ip: IpAddr, now: Instant) -> bool {
        self.per_address == 0 || self.join_rates.with(ip, now, |bucket| bucket.allow(now))
    }

    /// A place for a connection from `ip`, or `None` if its address holds its limit already.
    pub fn admit(&self, ip: IpAddr) -> Option<AddressPermit> {
        let key = key(ip);
        // Each critical section is one map update, so a poisoned lock is still consistent.
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(key).or_insert(0);
        if self.per_address > 0 && *count >= self.per_address {
            return None;
        }
        *count += 1;
        Some(AddressPermit {
            key,
            counts: self.counts.clone(),
        })
    }

    /// Whether `ip` may create a room at `now` (and if so, counts it): a burst of
    /// [`CREATE_ROOM_BURST`], then [`CREATE_ROOM_PER_SECOND`], per address.
    pub fn allow_create(&self, ip: IpAddr, now: Instant) -> bool {
        self.create_rates.with(ip, now, |bucket| bucket.allow(now))
    }

    /// Whether `ip` may try a resume token at `now`: not after [`RESUME_FAILURES_BURST`] failed
    /// tries, then one more every 6 s. Checked before the token is, so guessing is slow.
    pub fn may_try_resume(&self, ip: IpAddr, now: Instant) -> bool {
        self.resume_failures
            .with(ip, now, |bucket| bucket.holds(1, now))
    }

    /// Counts a failed resume attempt from `ip`.
    pub fn resume_failed(&self, ip: IpAddr, now: Instant) {
        self.resume_failures
            .with(ip, now, |bucket| bucket.take(1, now));
    }

    /// Addresses holding at least one connection.
    pub fn addresses(&self) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.values().filter(|n| **n > 0).count()
    }
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn an_address_holds_at_most_its_limit_and_gets_places_back() {
        let limits = AddressLimits::new(2);
        let a = limits.admit(ip("192.0.2.1")).expect("first");
        let _b = limits.admit(ip("192.0.2.1")).expect("second");
        assert!(limits.admit(ip("192.0.2.1")).is_none(), "third refused");
        let _other = limits
            .admit(ip("192.0.2.2"))
            .expect("another address is not affected");
        drop(a);
        assert!(limits.admit(ip("192.0.2.1")).is_some(), "a place came back");
    }

    #[test]
    fn ipv6_counts_by_64_prefix_and_mapped_ipv4_as_ipv4() {
        let limits = AddressLimits::new(1);
        let _a = limits.admit(ip("2001:db8:1:2::1")).expect("first");
        assert!(
            limits.admit(ip("2001:db8:1:2:ffff::9")).is_none(),
            "same /64, another host"
        );
        assert!(limits.admit(ip("2001:db8:1:3::1")).is_some(), "next /64");
        let _v4 = limits.admit(ip("192.0.2.7")).expect("ipv4");
        assert!(
            limits.admit(ip("::ffff:192.0.2.7")).is_none(),
            "the same host over IPv4-mapped IPv6"
        );
    }

    #[test]
    fn room_creation_is_limited_per_address_not_per_connection() {
        let limits = AddressLimits::new(0);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        // However many connections it uses, one address gets its burst...
        assert!((0..5).all(|_| limits.allow_create(a, t0)));
        assert!(!limits.allow_create(a, t0));
        // ...while another address has its own.
        assert!(limits.allow_create(ip("192.0.2.2"), t0));
        // Then one every 10 s.
        let later = t0 + std::time::Duration::from_secs(10);
        assert!(limits.allow_create(a, later));
        assert!(!limits.allow_create(a, later));
    }

    #[test]
    fn failed_resume_attempts_are_limited_per_address() {
        let limits = AddressLimits::new(0);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..10 {
            assert!(limits.may_try_resume(a, t0));
            limits.resume_failed(a, t0);
        }
        assert!(!limits.may_try_resume(a, t0), "ten failures, then wait");
        assert!(
            limits.may_try_resume(ip("192.0.2.9"), t0),
            "others are not affected"
        );
        assert!(limits.may_try_resume(a, t0 + std::time::Duration::from_secs(6)));
    }

    #[test]
    fn zero_means_no_limit_and_empty_addresses_are_forgotten() {
        let limits = AddressLimits::new(0);
        let permits: Vec<_> = (0..1000)
            .map(|_| limits.admit(ip("198.51.100.1")).expect("no limit"))
            .collect();
        assert_eq!(limits.addresses(), 1);
        drop(permits);
        assert_eq!(limits.addresses(), 0);
    }
}
