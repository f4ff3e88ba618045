//! The thin layer between tine and the Linux socket API: the listener set the
//! master binds (one SO_REUSEPORT socket per worker slot per address), an epoll
//! wrapper, accept4, TCP options and sendfile. Every `unsafe` in tine's socket
//! handling lives here, each in a small function with its reason.

pub mod epoll;
pub mod listener;
pub mod sys;

pub use epoll::{Epoll, Event, Interest};
pub use listener::{ListenerSet, NetError};
