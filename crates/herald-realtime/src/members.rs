//! A room's members, as the hub's registry keeps them.
//!
//! Most rooms have a single socket — `user:{id}` of a user with one tab,
//! `guest:{id}` — so a room is one id, inline, until a second socket
//! joins; only then does it get a set. At 10,000 idle connections that is
//! 10,000 sets (and their allocations) fewer.

use std::collections::HashSet;

use crate::hub::ConnId;

#[derive(Debug)]
pub(crate) enum Members {
    One(ConnId),
    Many(HashSet<ConnId>),
}

impl Members {
    /// Adds `id`; false when it was a member already.
    pub fn insert(&mut self, id: ConnId) -> bool {
        match self {
            Members::One(one) if *one == id => false,
            Members::One(one) => {
                *self = Members::Many(HashSet::from([*one, id]));
                true
            }
            Members::Many(set) => set.insert(id),
        }
    }

    /// Removes `id`; true when the room is empty now (and should go).
    pub fn remove(&mut self, id: ConnId) -> bool {
        let last = match self {
            Members::One(one) => return *one == id,
            Members::Many(set) => {
                set.remove(&id);
                if set.len() > 1 {
                    return false;
                }
                set.iter().next().copied()
            }
        };
        match last {
            Some(last) => {
                *self = Members::One(last);
                false
            }
            None => true,
        }
    }

    pub fn for_each(&self, mut f: impl FnMut(ConnId)) {
        match self {
            Members::One(id) => f(*id),
            Members::Many(set) => set.iter().copied().for_each(f),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Members::One(_) => 1,
            Members::Many(set) => set.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(m: &Members) -> Vec<ConnId> {
        let mut all = Vec::new();
        m.for_each(|id| all.push(id));
        all.sort_unstable();
        all
    }

    #[test]
    fn a_room_is_one_id_until_a_second_joins_and_again_when_one_is_left() {
        let mut m = Members::One(7);
        assert!(!m.insert(7), "already a member");
        assert!(matches!(m, Members::One(7)));
        assert!(m.insert(9));
        assert!(matches!(m, Members::Many(_)));
        assert!(m.insert(11));
        assert_eq!(ids(&m), vec![7, 9, 11]);
        assert_eq!(m.len(), 3);
        assert!(!m.remove(9));
        assert!(matches!(m, Members::Many(_)));
        assert!(!m.remove(7));
        assert!(matches!(m, Members::One(11)), "{m:?}");
        assert_eq!(ids(&m), vec![11]);
        assert!(m.remove(11), "the last member leaves: the room goes");
    }

    #[test]
    fn removing_a_stranger_changes_nothing() {
        let mut m = Members::One(1);
        assert!(!m.remove(2));
        assert_eq!(ids(&m), vec![1]);
        let mut m = Members::One(1);
        m.insert(2);
        m.insert(3);
        assert!(!m.remove(4));
        assert_eq!(ids(&m), vec![1, 2, 3]);
    }
}
