//! Connections live in a slab addressed by [`ConnId`]: an index, and a
//! generation that changes every time the entry is reused, so an event or
//! timer left over from a closed connection never reaches its successor.

use crate::token::ConnId;

pub struct Slab<T> {
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    len: usize,
}

struct Entry<T> {
    generation: u32,
    value: Option<T>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { entries: Vec::new(), free: Vec::new(), len: 0 }
    }
}

impl<T> Slab<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value` and returns its key.
    pub fn insert(&mut self, value: T) -> ConnId {
        self.insert_with(|_| value)
    }

    /// Stores the value `make` builds from the key it will have.
    pub fn insert_with(&mut self, make: impl FnOnce(ConnId) -> T) -> ConnId {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.entries.push(Entry { generation: 0, value: None });
                (self.entries.len() - 1) as u32
            }
        };
        let entry = &mut self.entries[index as usize];
        let id = ConnId::new(index, entry.generation.wrapping_add(1));
        entry.generation = id.generation();
        entry.value = Some(make(id));
        self.len += 1;
        id
    }

    pub fn get(&self, id: ConnId) -> Option<&T> {
        self.entries
            .get(id.index() as usize)
            .filter(|e| e.generation == id.generation())
            .and_then(|e| e.value.as_ref())
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        self.entries
            .get_mut(id.index() as usize)
            .filter(|e| e.generation == id.generation())
            .and_then(|e| e.value.as_mut())
    }

    pub fn remove(&mut self, id: ConnId) -> Option<T> {
        let index = id.index();
        let entry = self.entries.get_mut(index as usize).filter(|e| e.generation == id.generation())?;
        let value = entry.value.take()?;
        self.free.push(index);
        self.len -= 1;
        Some(value)
    }

    /// Keys of every live entry.
    pub fn ids(&self) -> Vec<ConnId> {
        self.iter().map(|(id, _)| id).collect()
    }

    /// Every live entry with its key.
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &T)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.value.as_ref().map(|v| (ConnId::new(i as u32, e.generation), v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_keys_miss() {
        let mut s = Slab::default();
        let a = s.insert("a");
        assert_eq!(s.remove(a), Some("a"));
        let b = s.insert("b");
        assert_ne!(a, b, "same index, new generation");
        assert!(s.get_mut(a).is_none());
        assert_eq!(s.get_mut(b), Some(&mut "b"));
        assert_eq!(s.len(), 1);
    }
}
