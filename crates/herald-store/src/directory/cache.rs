//! The directory as ingest reads it (group members, recipients' profiles),
//! kept in memory and kept true.
//!
//! Every publish needs the members of the groups its route names and the
//! profile (preferences, contact, whether a push device exists) of every
//! recipient. Read from the database, that is a round trip per publish (on
//! SQLite, a hand-off to the connection's thread and back); the directory
//! changes seldom by comparison, so [`DirectoryCache`] answers from memory
//! and the database is read only for what it does not hold.
//!
//! Kept true:
//!
//! - every write path of the store that changes what the cache holds
//!   (contact, preferences, devices, an ingest that fills in an address, an
//!   erase) names what it changed in a [`Change`] and applies it to this
//!   node's cache once its transaction has ended;
//! - on PostgreSQL the same change is sent with `pg_notify` inside that
//!   transaction, so other nodes hear of it exactly when it commits (never
//!   for a rolled-back write, never lost to a crash between commit and
//!   publish). Each node listens on its own connection; while it is not
//!   listening (not yet connected, or the connection dropped and
//!   notifications may have been missed), its cache is *disarmed*: every
//!   look-up goes to the database and nothing is kept. Re-armed, it starts
//!   empty;
//! - a look-up that missed reads the database and then offers what it read
//!   to the cache. That read may have begun before a change committed and
//!   seen the old rows; if the change's invalidation is applied before the
//!   offer, the stale rows must not go in. So every invalidation bumps a
//!   generation, the look-up carries the generation it began at (a
//!   [`Ticket`]), and the offer is refused for every key changed since. The
//!   last [`RECENT`] changes are remembered to tell which keys those are;
//!   an offer older than that is refused whole.
//!
//! What remains is the time a notification takes to reach another node: an
//! event published there meanwhile is planned with the old profile.
//!
//! SQLite is written by one process in the embedded default, and then every
//! change passes through this cache. Should other processes share the file
//! (a `herald worker` removing a device a provider reported gone, a second
//! node), their commits move SQLite's `data_version` as the writer
//! connection sees it; each ingest transaction reads it and, when it moved,
//! the cache starts again empty ([`DirectoryCache::saw_file_version`]). A
//! publish planned before that write group may use what was cached. The
//! delivery worker reads preferences again, from the database, before it
//! sends (contract §5), so an opt-out is still honoured for email, SMS and
//! push.
//!
//! Bounded: at most `capacity` users' profiles (an unknown user, cached as
//! such, counts as one) and `capacity` group members in all, least recently
//! used evicted first; a group larger than that is not kept. Capacity 0
//! turns the cache off.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hashlink::LruCache;
use herald_core::UserId;
use herald_core::retry::Backoff;
use herald_core::routing::{Profile, Selector};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use sqlx::postgres::PgListener;
use tokio::sync::oneshot;

use crate::Backend;
use crate::events::backend_of;

/// How many recent changes are remembered to judge an offer by.
pub(crate) const RECENT: usize = 1_024;

/// What a write changed, as the cache (and other nodes) need to hear it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Users whose profile changed.
    #[serde(default, rename = "u")]
    pub users: Vec<UserId>,
    /// Whether group membership (a role or a restaurant) may have changed:
    /// every cached group is dropped.
    #[serde(default, rename = "g")]
    pub groups: bool,
}

impl Change {
    /// `user`'s profile changed.
    pub fn user(user: &UserId) -> Change {
        Change {
            users: vec![user.clone()],
            groups: false,
        }
    }

    /// `user`'s profile changed, and perhaps which groups they are in.
    pub fn membership(user: &UserId) -> Change {
        Change {
            users: vec![user.clone()],
            groups: true,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && !self.groups
    }
}

/// The generation a look-up began at; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// Counts, for the ingest benchmarks and tests.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Offers refused (in part or whole) because of a change since their ticket.
    pub refused: AtomicU64,
}

/// The cache; one per [`Store`](crate::Store), shared by its clones.
#[derive(Debug)]
pub struct DirectoryCache {
    capacity: usize,
    inner: Mutex<Inner>,
    pub stats: CacheStats,
}

#[derive(Debug)]
struct Inner {
    generation: u64,
    armed: bool,
    /// `None`: Herald knows nothing of the user (no contact, preferences
    /// or device), which is worth remembering too.
    users: LruCache<UserId, Option<Profile>>,
    groups: LruCache<Selector, Vec<UserId>>,
    /// The members held in `groups`, in all.
    members: usize,
    /// The last changes, oldest first, each with the generation it made.
    recent: VecDeque<(u64, Change)>,
    /// Offers with a ticket older than this are refused whole: a change
    /// after them is no longer in `recent` (or everything was dropped).
    horizon: u64,
    /// SQLite's `data_version` as the writer connection last saw it.
    file_version: Option<i64>,
}

impl DirectoryCache {
    /// A cache of `capacity` (0: off). `armed` says whether it may hold
    /// anything yet (a PostgreSQL node arms it once it listens).
    pub fn new(capacity: usize, armed: bool) -> DirectoryCache {
        DirectoryCache {
            capacity,
            inner: Mutex::new(Inner {
                generation: 0,
                armed: armed && capacity > 0,
                users: LruCache::new_unbounded(),
                groups: LruCache::new_unbounded(),
                members: 0,
                recent: VecDeque::new(),
                horizon: 0,
                file_version: None,
            }),
            stats: CacheStats::default(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the maps half-changed in a way
        // that matters more than dropping them: start again empty.
        self.inner.lock().unwrap_or_else(|poisoned| {
            let mut inner = poisoned.into_inner();
            inner.drop_all();
            inner
        })
    }

    /// The cached profiles of `users` (a user Herald does not know is
    /// absent from the map, as [`Store::profiles`](crate::Store::profiles)
    /// leaves them out), the users it does not hold, and the ticket to
    /// offer what the database says of those with. Everything is missing
    /// while the cache is off or disarmed.
    pub fn profiles(
        &self,
        users: &BTreeSet<UserId>,
    ) -> (HashMap<UserId, Profile>, BTreeSet<UserId>, Ticket) {
        let mut inner = self.lock();
        let ticket = Ticket(inner.generation);
        if !inner.armed {
            return (HashMap::new(), users.clone(), ticket);
        }
        let mut found = HashMap::new();
        let mut missing = BTreeSet::new();
        for user in users {
            match inner.users.get(user) {
                Some(Some(profile)) => {
                    found.insert(user.clone(), profile.clone());
                }
                Some(None) => {}
                None => {
                    missing.insert(user.clone());
                }
            }
        }
        self.count(users.len() - missing.len(), missing.len());
        (found, missing, ticket)
    }

    /// Offers what the database said of `asked` (read after `ticket` was
    /// taken): kept unless changed since, or the cache is disarmed.
    pub fn offer_profiles(
        &self,
        ticket: Ticket,
        asked: &BTreeSet<UserId>,
        read: &HashMap<UserId, Profile>,
    ) {
        let mut inner = self.lock();
        let Some(changed) = inner.changed_since(ticket) else {
            if !asked.is_empty() && inner.armed {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        if asked.iter().any(|u| changed.users.contains(u)) {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
        }
        for user in asked {
            if changed.users.contains(user) {
                continue;
            }
            inner.users.insert(user.clone(), read.get(user).cloned());
        }
        while inner.users.len() > self.capacity {
            inner.users.remove_lru();
        }
    }

    /// The cached members of `groups` (user selectors are not groups and
    /// are skipped), the groups it does not hold, and the ticket.
    pub fn members(
        &self,
        groups: &BTreeSet<Selector>,
    ) -> (HashMap<Selector, Vec<UserId>>, BTreeSet<Selector>, Ticket) {
        let mut inner = self.lock();
        let ticket = Ticket(inner.generation);
        let groups: BTreeSet<Selector> = groups
            .iter()
            .filter(|s| !matches!(s, Selector::User(_)))
            .cloned()
            .collect();
        if !inner.armed {
            return (HashMap::new(), groups, ticket);
        }
        let mut found = HashMap::new();
        let mut missing = BTreeSet::new();
        for group in groups {
            match inner.groups.get(&group) {
                Some(users) => {
                    found.insert(group, users.clone());
                }
                None => {
                    missing.insert(group);
                }
            }
        }
        self.count(found.len(), missing.len());
        (found, missing, ticket)
    }

    /// Offers the members the database listed (read after `ticket`).
    pub fn offer_members(&self, ticket: Ticket, read: &HashMap<Selector, Vec<UserId>>) {
        let mut inner = self.lock();
        match inner.changed_since(ticket) {
            Some(changed) if !changed.groups => {}
            _ => {
                if !read.is_empty() && inner.armed {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        }
        for (group, users) in read {
            if users.len() > self.capacity {
                continue;
            }
            if let Some(old) = inner.groups.insert(group.clone(), users.clone()) {
                inner.members -= old.len();
            }
            inner.members += users.len();
        }
        while inner.members > self.capacity {
            let Some((_, users)) = inner.groups.remove_lru() else {
                break;
            };
            inner.members -= users.len();
        }
    }

    /// Applies a change: what it names is dropped, and offers from before
    /// it are refused for those keys.
    pub fn invalidate(&self, change: &Change) {
        if change.is_empty() {
            return;
        }
        let mut inner = self.lock();
        inner.generation += 1;
        for user in &change.users {
            inner.users.remove(user);
        }
        if change.groups {
            inner.groups.clear();
            inner.members = 0;
        }
        let generation = inner.generation;
        inner.recent.push_back((generation, change.clone()));
        if inner.recent.len() > RECENT
            && let Some((forgotten, _)) = inner.recent.pop_front()
        {
            inner.horizon = forgotten;
        }
    }

    /// Empties the cache and lets it hold nothing until [`Self::arm`]:
    /// changes may be missed from now on.
    pub fn disarm(&self) {
        let mut inner = self.lock();
        inner.armed = false;
        inner.drop_all();
    }

    /// Starts again empty, and lets the cache hold what it reads (changes
    /// are heard from now on).
    pub fn arm(&self) {
        let mut inner = self.lock();
        inner.drop_all();
        inner.armed = self.capacity > 0;
    }

    /// SQLite: `version` is `PRAGMA data_version` on the store's one
    /// writer connection, read at the start of every ingest transaction.
    /// It moves only when another connection — another process sharing
    /// the file, such as a second `herald serve` or a `herald worker` —
    /// committed: then anything may have changed, and everything goes.
    pub fn saw_file_version(&self, version: i64) {
        let mut inner = self.lock();
        let before = inner.file_version.replace(version);
        if before.is_some_and(|v| v != version) {
            inner.drop_all();
        }
    }

    pub fn is_armed(&self) -> bool {
        self.lock().armed
    }

    fn count(&self, hits: usize, misses: usize) {
        self.stats.hits.fetch_add(hits as u64, Ordering::Relaxed);
        self.stats
            .misses
            .fetch_add(misses as u64, Ordering::Relaxed);
    }
}

impl Inner {
    /// Everything goes, and every offer made before now is refused.
    fn drop_all(&mut self) {
        self.generation += 1;
        self.users.clear();
        self.groups.clear();
        self.members = 0;
        self.recent.clear();
        self.horizon = self.generation;
    }

    /// What changed after `ticket`; `None` when that cannot be told (or the
    /// cache is disarmed): nothing may be kept.
    fn changed_since(&self, ticket: Ticket) -> Option<Changed> {
        if !self.armed || ticket.0 < self.horizon {
            return None;
        }
        let mut changed = Changed::default();
        for (generation, change) in self.recent.iter().rev() {
            if *generation <= ticket.0 {
                break;
            }
            changed.users.extend(change.users.iter().cloned());
            changed.groups |= change.groups;
        }
        Some(changed)
    }
}

/// The PostgreSQL channel directory changes are announced on.
pub(crate) const CHANNEL: &str = "herald_directory";
/// Bytes of user ids in one notification (PostgreSQL allows 8,000 a payload).
const PAYLOAD_BYTES: usize = 6_000;

/// Announces `change` to the other nodes, inside the transaction that makes
/// it: PostgreSQL delivers it when (and only if) that commits. Nothing on
/// SQLite, which one process writes.
pub(crate) async fn announce(conn: &mut AnyConnection, change: &Change) -> crate::Result<()> {
    if change.is_empty() || backend_of(conn) != Backend::Postgres {
        return Ok(());
    }
    let mut parts: Vec<Vec<UserId>> = vec![Vec::new()];
    let mut bytes = 0;
    for user in &change.users {
        let last = parts.last_mut().expect("one part at least");
        if bytes + user.as_str().len() > PAYLOAD_BYTES && !last.is_empty() {
            parts.push(Vec::new());
            bytes = 0;
        }
        bytes += user.as_str().len() + 3;
        parts
            .last_mut()
            .expect("one part at least")
            .push(user.clone());
    }
    for users in parts {
        let payload = serde_json::to_string(&Change {
            users,
            groups: change.groups,
        })
        .expect("a change serialises");
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// How the listener comes back after PostgreSQL failed: Herald's one
/// backoff, doubling from 100 ms up to 5 s with full jitter, for ever.
const RELISTEN: Backoff = Backoff::doubling(Duration::from_millis(100), Duration::from_secs(5));

/// Listens for other nodes' changes on PostgreSQL and applies them to
/// `cache`, which it arms once listening (before it returns). A lost
/// connection disarms the cache until listening again. The listener stops
/// when the returned sender is dropped.
pub(crate) async fn listen(
    url: &str,
    cache: Arc<DirectoryCache>,
) -> crate::Result<oneshot::Sender<()>> {
    let first = subscribe(url).await?;
    cache.arm();
    let (stop, mut stopped) = oneshot::channel::<()>();
    let url = url.to_owned();
    tokio::spawn(async move {
        let mut listener = Some(first);
        // Attempts to listen again that failed in a row.
        let mut failures: u32 = 0;
        loop {
            let mut current = match listener.take() {
                Some(current) => current,
                None => {
                    let attempt = tokio::select! {
                        _ = &mut stopped => return,
                        attempt = subscribe(&url) => attempt,
                    };
                    match attempt {
                        Ok(current) => {
                            cache.arm();
                            failures = 0;
                            tracing::info!("listening for directory changes again");
                            current
                        }
                        Err(error) => {
                            failures = failures.saturating_add(1);
                            let wait = RELISTEN.delay(failures, None, &mut rand::rng());
                            tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "cannot listen for directory changes; the cache stays off");
                            tokio::select! {
                                _ = &mut stopped => return,
                                () = tokio::time::sleep(wait) => {}
                            }
                            continue;
                        }
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    _ = &mut stopped => return,
                    next = current.try_recv() => next,
                };
                match next {
                    Ok(Some(note)) => match serde_json::from_str::<Change>(note.payload()) {
                        Ok(change) => cache.invalidate(&change),
                        Err(error) => {
                            // Cannot tell what changed: forget everything.
                            tracing::warn!(%error, "unreadable directory change; cache emptied");
                            cache.arm();
                        }
                    },
                    Ok(None) | Err(_) => {
                        // Changes may be missed until listening again.
                        cache.disarm();
                        tracing::warn!(
                            "lost the directory listener's connection; cache off until it is back"
                        );
                        break;
                    }
                }
            }
        }
    });
    Ok(stop)
}

async fn subscribe(url: &str) -> crate::Result<PgListener> {
    let mut listener = PgListener::connect(url).await?;
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

#[derive(Debug, Default)]
struct Changed {
    users: HashSet<UserId>,
    groups: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::Role;

    fn user(id: &str) -> UserId {
        UserId(id.to_owned())
    }

    fn set(ids: &[&str]) -> BTreeSet<UserId> {
        ids.iter().map(|id| user(id)).collect()
    }

    fn profile(email: &str) -> Profile {
        let mut p = Profile::default();
        p.contact.email = Some(email.to_owned());
        p
    }

    #[test]
    fn a_miss_offered_is_a_hit_and_an_unknown_user_is_remembered_as_such() {
        let cache = DirectoryCache::new(10, true);
        let asked = set(&["ann", "bob"]);
        let (found, missing, ticket) = cache.profiles(&asked);
        assert!(found.is_empty());
        assert_eq!(missing, asked);
        // The database knows ann only.
        let read = HashMap::from([(user("ann"), profile("ann@example.com"))]);
        cache.offer_profiles(ticket, &missing, &read);
        let (found, missing, _) = cache.profiles(&asked);
        assert!(missing.is_empty(), "{missing:?}");
        assert_eq!(
            found, read,
            "bob is known to be unknown: absent, not missing"
        );
    }

    #[test]
    fn a_change_drops_the_user_and_refuses_a_read_that_began_before_it() {
        let cache = DirectoryCache::new(10, true);
        let asked = set(&["ann", "bob"]);
        let (_, missing, before) = cache.profiles(&asked);
        // ann's preferences change (and commit) while the read is under way.
        cache.invalidate(&Change::user(&user("ann")));
        let stale = HashMap::from([
            (user("ann"), profile("old@example.com")),
            (user("bob"), profile("bob@example.com")),
        ]);
        cache.offer_profiles(before, &missing, &stale);
        let (found, missing, _) = cache.profiles(&asked);
        assert_eq!(missing, set(&["ann"]), "ann's stale row was not kept");
        assert_eq!(found[&user("bob")], profile("bob@example.com"));
        assert!(cache.stats.refused.load(Ordering::Relaxed) >= 1);

        // A read begun after the change is kept.
        let (_, missing, after) = cache.profiles(&set(&["ann"]));
        let fresh = HashMap::from([(user("ann"), profile("new@example.com"))]);
        cache.offer_profiles(after, &missing, &fresh);
        let (found, missing, _) = cache.profiles(&set(&["ann"]));
        assert!(missing.is_empty());
        assert_eq!(found[&user("ann")], profile("new@example.com"));

        // A change after the offer drops what was kept.
        cache.invalidate(&Change::user(&user("ann")));
        let (found, missing, _) = cache.profiles(&set(&["ann"]));
        assert!(found.is_empty());
        assert_eq!(missing, set(&["ann"]));
    }

    #[test]
    fn an_offer_older_than_the_remembered_changes_is_refused_whole() {
        let cache = DirectoryCache::new(10, true);
        let (_, missing, ticket) = cache.profiles(&set(&["bob"]));
        for i in 0..=RECENT {
            cache.invalidate(&Change::user(&user(&format!("other-{i}"))));
        }
        // bob was not among the changes, but the ones that fell out of
        // memory cannot be told apart any more.
        let read = HashMap::from([(user("bob"), profile("bob@example.com"))]);
        cache.offer_profiles(ticket, &missing, &read);
        let (_, missing, _) = cache.profiles(&set(&["bob"]));
        assert_eq!(missing, set(&["bob"]));
    }

    #[test]
    fn a_disarmed_cache_holds_nothing_and_rearmed_starts_empty() {
        let cache = DirectoryCache::new(10, false);
        let (_, missing, ticket) = cache.profiles(&set(&["ann"]));
        cache.offer_profiles(ticket, &missing, &HashMap::new());
        assert_eq!(cache.profiles(&set(&["ann"])).1, set(&["ann"]));

        cache.arm();
        let (_, missing, ticket) = cache.profiles(&set(&["ann"]));
        cache.offer_profiles(ticket, &missing, &HashMap::new());
        assert!(cache.profiles(&set(&["ann"])).1.is_empty());

        // The listener lost its connection: a read begun before is not
        // kept, even once armed again, and what was held is gone.
        let (_, _, during) = cache.profiles(&set(&["bob"]));
        cache.disarm();
        assert_eq!(cache.profiles(&set(&["ann"])).1, set(&["ann"]));
        cache.arm();
        cache.offer_profiles(during, &set(&["bob"]), &HashMap::new());
        assert_eq!(cache.profiles(&set(&["bob"])).1, set(&["bob"]));
        assert_eq!(cache.profiles(&set(&["ann"])).1, set(&["ann"]));
    }

    #[test]
    fn capacity_bounds_users_and_members_least_recently_used_first() {
        let cache = DirectoryCache::new(2, true);
        for id in ["a", "b", "c"] {
            let (_, missing, ticket) = cache.profiles(&set(&[id]));
            cache.offer_profiles(ticket, &missing, &HashMap::new());
            if id == "b" {
                // `a` used again: `b` is now the least recent.
                assert!(cache.profiles(&set(&["a"])).1.is_empty());
            }
        }
        assert!(cache.profiles(&set(&["a", "c"])).1.is_empty());
        assert_eq!(cache.profiles(&set(&["b"])).1, set(&["b"]));

        let admins = Selector::Role(Role::Admin);
        let staff = Selector::Staff("r1".to_owned());
        let wanted = BTreeSet::from([admins.clone(), staff.clone()]);
        let (_, missing, ticket) = cache.members(&wanted);
        assert_eq!(missing, wanted);
        let read = HashMap::from([
            (admins, vec![user("root")]),
            (staff, vec![user("s1"), user("s2")]),
        ]);
        cache.offer_members(ticket, &read);
        // Three members do not fit in two: the group offered first (the
        // least recent) went.
        let (found, missing, _) = cache.members(&wanted);
        assert_eq!((found.len(), missing.len()), (1, 1));
        assert!(found.values().map(Vec::len).sum::<usize>() <= 2);
        // Too big a group is never kept.
        let big = Selector::Staff("r2".to_owned());
        let (_, _, ticket) = cache.members(&BTreeSet::from([big.clone()]));
        let users = vec![user("x"), user("y"), user("z")];
        cache.offer_members(ticket, &HashMap::from([(big.clone(), users)]));
        assert_eq!(cache.members(&BTreeSet::from([big])).1.len(), 1);
    }

    #[test]
    fn a_membership_change_drops_every_group_and_refuses_older_reads() {
        let cache = DirectoryCache::new(100, true);
        let admins = Selector::Role(Role::Admin);
        let wanted = BTreeSet::from([admins.clone(), Selector::User(user("u"))]);
        let (_, missing, ticket) = cache.members(&wanted);
        assert_eq!(
            missing,
            BTreeSet::from([admins.clone()]),
            "users are not groups"
        );
        cache.offer_members(ticket, &HashMap::from([(admins.clone(), vec![user("a")])]));
        assert!(cache.members(&wanted).1.is_empty());

        let (_, _, before) = cache.members(&BTreeSet::new());
        // A profile-only change leaves groups alone.
        cache.invalidate(&Change::user(&user("a")));
        assert!(cache.members(&wanted).1.is_empty());
        cache.invalidate(&Change::membership(&user("b")));
        assert_eq!(cache.members(&wanted).1.len(), 1);
        cache.offer_members(before, &HashMap::from([(admins, vec![user("a")])]));
        assert_eq!(cache.members(&wanted).1.len(), 1, "read before the change");
    }

    #[test]
    fn a_change_travels_as_compact_json() {
        let change = Change::membership(&user("ann"));
        let text = serde_json::to_string(&change).unwrap();
        assert_eq!(text, r#"{"u":["ann"],"g":true}"#);
        assert_eq!(serde_json::from_str::<Change>(&text).unwrap(), change);
    }

    #[test]
    fn another_process_writing_the_file_empties_the_cache() {
        let cache = DirectoryCache::new(10, true);
        cache.saw_file_version(7);
        let (_, missing, ticket) = cache.profiles(&set(&["ann"]));
        cache.offer_profiles(ticket, &missing, &HashMap::new());
        cache.saw_file_version(7);
        assert!(
            cache.profiles(&set(&["ann"])).1.is_empty(),
            "our own writes"
        );
        cache.saw_file_version(8);
        assert_eq!(cache.profiles(&set(&["ann"])).1, set(&["ann"]));
        // A read begun before is refused too.
        let (_, missing, ticket) = cache.profiles(&set(&["ann"]));
        cache.saw_file_version(9);
        cache.offer_profiles(ticket, &missing, &HashMap::new());
        assert_eq!(cache.profiles(&set(&["ann"])).1, set(&["ann"]));
    }

    #[test]
    fn capacity_zero_is_off() {
        let cache = DirectoryCache::new(0, true);
        assert!(!cache.is_armed());
        cache.arm();
        let (_, missing, ticket) = cache.profiles(&set(&["ann"]));
        cache.offer_profiles(ticket, &missing, &HashMap::new());
        assert_eq!(cache.profiles(&set(&["ann"])).1, set(&["ann"]));
    }
}
