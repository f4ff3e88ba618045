//! Every raw system call of tine, each behind a small safe function with a
//! `// SAFETY:` note: sockets the standard library does not offer (or offers
//! only with extra syscalls: SO_REUSEPORT listeners, accept4 with flags,
//! MSG_MORE sends), sendfile and splice, and the process calls of masters
//! and workers (prctl, rlimits, poll). No other crate of tine calls libc;
//! files are opened through nix's safe wrappers in tine-fs.

use std::ffi::CStr;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn check_size(rc: libc::ssize_t) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// A non-blocking, close-on-exec TCP listener with SO_REUSEADDR and
/// SO_REUSEPORT; its TCP options come from [`apply_tcp_options`].
pub fn reuseport_listener(addr: SocketAddr, backlog: u32) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain syscall; the descriptor is owned right after the check.
    let fd = check(unsafe {
        libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: fresh descriptor, owned from here on so every error path closes it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    if addr.is_ipv6() {
        set_int_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    let (storage, len) = to_sockaddr(addr);
    // SAFETY: storage is a valid sockaddr of `len` bytes for the socket's family.
    check(unsafe { libc::bind(fd, &storage as *const _ as *const libc::sockaddr, len) })?;
    let backlog = backlog.min(i32::MAX as u32) as i32;
    // SAFETY: plain syscall on a descriptor we own.
    check(unsafe { libc::listen(fd, backlog) })?;
    Ok(owned)
}

pub fn set_int_opt(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: the option value is a live i32 of the size passed.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            size_of::<i32>() as u32,
        )
    })
    .map(drop)
}

pub fn set_nodelay(fd: RawFd) -> io::Result<()> {
    set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

/// Sets TCP options on a socket; on a listener, the connections it hands
/// over inherit them, so they cost nothing per connection. Returns each
/// option the kernel refused, with why (the caller warns and goes on: the
/// kernel's value stays). TCP_DEFER_ACCEPT hands a connection over only once
/// its first bytes arrived, so accepting and reading the request are one
/// turn of the loop.
pub fn apply_tcp_options(fd: RawFd, o: &tine_config::TcpOptions) -> Vec<(&'static str, io::Error)> {
    let mut refused = Vec::new();
    let mut set = |name: &'static str, level: i32, option: i32, value: u64| {
        if let Err(e) = set_int_opt(fd, level, option, value.min(i32::MAX as u64) as i32) {
            refused.push((name, e));
        }
    };
    let tcp = libc::IPPROTO_TCP;
    if let Some(on) = o.nodelay {
        set("nodelay", tcp, libc::TCP_NODELAY, u64::from(on));
    }
    if let Some(idle) = o.keepalive_idle {
        set("keepalive_idle", libc::SOL_SOCKET, libc::SO_KEEPALIVE, u64::from(idle.as_secs() > 0));
        if idle.as_secs() > 0 {
            set("keepalive_idle", tcp, libc::TCP_KEEPIDLE, idle.as_secs());
        }
    }
    if let Some(interval) = o.keepalive_interval {
        set("keepalive_interval", tcp, libc::TCP_KEEPINTVL, interval.as_secs());
    }
    if let Some(count) = o.keepalive_count {
        set("keepalive_count", tcp, libc::TCP_KEEPCNT, u64::from(count));
    }
    if let Some(t) = o.user_timeout {
        set("user_timeout", tcp, libc::TCP_USER_TIMEOUT, t.as_millis() as u64);
    }
    if let Some(b) = o.send_buffer {
        set("send_buffer", libc::SOL_SOCKET, libc::SO_SNDBUF, u64::from(b));
    }
    if let Some(b) = o.receive_buffer {
        set("receive_buffer", libc::SOL_SOCKET, libc::SO_RCVBUF, u64::from(b));
    }
    if let Some(q) = o.fastopen {
        set("fastopen", tcp, libc::TCP_FASTOPEN, u64::from(q));
    }
    if let Some(d) = o.defer_accept {
        set("defer_accept", tcp, libc::TCP_DEFER_ACCEPT, d.as_secs());
    }
    if let Some(l) = o.notsent_lowat {
        set("notsent_lowat", tcp, libc::TCP_NOTSENT_LOWAT, u64::from(l));
    }
    if let Some(name) = &o.congestion {
        // SAFETY: name's bytes are valid for their length, which is passed.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                tcp,
                libc::TCP_CONGESTION,
                name.as_ptr() as *const libc::c_void,
                name.len() as libc::socklen_t,
            )
        };
        if rc < 0 {
            refused.push(("congestion", io::Error::last_os_error()));
        }
    }
    refused
}

/// The options of `options` that the kernel refuses on a fresh TCP socket
/// (for a warning at start, before any connection uses them).
pub fn refused_tcp_options(options: &tine_config::TcpOptions) -> Vec<(&'static str, io::Error)> {
    // SAFETY: plain syscall; the descriptor is owned right after the check.
    match check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) }) {
        Ok(fd) => {
            // SAFETY: fresh descriptor, owned here so that it is closed.
            let _owned = unsafe { OwnedFd::from_raw_fd(fd) };
            apply_tcp_options(fd, options)
        }
        Err(e) => vec![("socket", e)],
    }
}

/// Reads an integer socket option.
pub fn int_opt(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: value and len are valid for writing and len says value's size.
    check(unsafe {
        libc::getsockopt(fd, level, name, &mut value as *mut i32 as *mut libc::c_void, &mut len)
    })?;
    Ok(value)
}

/// TCP_CORK: while set, TCP sends only full segments. Held across a large
/// body so that every sendfile call fills segments, as nginx's tcp_nopush does.
pub fn set_cork(fd: RawFd, on: bool) -> io::Result<()> {
    set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_CORK, i32::from(on))
}

/// The address a socket is bound to.
pub fn local_addr(fd: RawFd) -> io::Result<SocketAddr> {
    // SAFETY: an all-zero sockaddr_storage is valid; the kernel fills at most len.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage and len are valid for writing.
    check(unsafe { libc::getsockname(fd, &mut storage as *mut _ as *mut libc::sockaddr, &mut len) })?;
    from_sockaddr(&storage).ok_or_else(|| io::Error::other("not an IP socket"))
}

/// True when `fd` is a listening TCP socket bound to `addr`.
pub fn is_listener_on(fd: RawFd, addr: SocketAddr) -> bool {
    let mut listening: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: listening and len are valid for writing.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            &mut listening as *mut i32 as *mut libc::c_void,
            &mut len,
        )
    };
    rc == 0 && listening == 1 && local_addr(fd).is_ok_and(|a| a == addr)
}

/// Sets or clears close-on-exec: descriptors handed to a new binary must
/// survive its exec, all others must not.
pub fn set_cloexec_to(fd: RawFd, on: bool) {
    // SAFETY: fcntl on a descriptor number; failure leaves it unchanged.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            let flags = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
            libc::fcntl(fd, libc::F_SETFD, flags);
        }
    }
}

/// Makes a descriptor non-blocking (O_NONBLOCK is shared by its duplicates).
/// Sockets systemd passes are blocking: a worker would hang in accept when
/// another took the connection epoll announced to both.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number; F_GETFL/F_SETFL touch only its status flags.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
}

/// A second descriptor for the same socket, close-on-exec (F_DUPFD_CLOEXEC).
pub fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl duplicates a descriptor number; the result, if valid, is new and ours.
    let new = check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: `new` was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

pub fn set_cloexec(fd: RawFd) {
    set_cloexec_to(fd, true)
}

/// Accepts one connection, non-blocking and close-on-exec in the same call.
/// `Ok(None)` means the queue is empty.
pub fn accept(listener: RawFd) -> io::Result<Option<(OwnedFd, Option<SocketAddr>)>> {
    // SAFETY: as in local_addr.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage and len are valid for writing; flags are constants.
    let fd = unsafe {
        libc::accept4(
            listener,
            &mut storage as *mut _ as *mut libc::sockaddr,
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: accept4 returned a fresh descriptor that nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(Some((owned, from_sockaddr(&storage))))
}

/// Receives from a socket into `buf`; `Ok(0)` is end of stream. recv rather
/// than read: it enters the socket layer directly, skipping the VFS checks
/// that read makes on every call (measurable on a proxied request).
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writing buf.len() bytes.
    check_size(unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) })
}

/// Copies waiting bytes into `buf` without consuming them (MSG_PEEK), so
/// that a PROXY protocol header can be measured before exactly its bytes
/// are read, whatever transport reads the rest.
pub fn peek_into(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writing buf.len() bytes; MSG_PEEK leaves the data in place.
    check_size(unsafe {
        libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT)
    })
}

/// Sends `buf`; with `more`, tells TCP that more data follows (MSG_MORE) so the
/// head and the body that sendfile sends next leave in the same segment.
pub fn send(fd: RawFd, buf: &[u8], more: bool) -> io::Result<usize> {
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    // SAFETY: buf is valid for reading buf.len() bytes.
    check_size(unsafe { libc::send(fd, buf.as_ptr() as *const libc::c_void, buf.len(), flags) })
}

/// Sends several buffers in one call (sendmsg), as a TLS transport writes
/// the records it has queued.
pub fn send_vectored(fd: RawFd, bufs: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: a zeroed msghdr is valid; iov points at `bufs`, whose IoSlice
    // is ABI-compatible with iovec and which outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize) as _;
    // SAFETY: msg is a valid msghdr describing readable buffers.
    check_size(unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) })
}

/// Reads from `file` at `offset` without moving its position (the file
/// cache shares descriptors between connections).
pub fn pread(file: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    // SAFETY: buf is valid for writing buf.len() bytes.
    check_size(unsafe {
        libc::pread(file, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), offset as libc::off_t)
    })
}

/// Copies up to `count` bytes of `file` from `*offset` to the socket in the kernel,
/// advancing `*offset` by what was sent.
pub fn sendfile(socket: RawFd, file: RawFd, offset: &mut u64, count: usize) -> io::Result<usize> {
    let mut off = *offset as libc::off_t;
    // SAFETY: `off` is a live off_t the kernel updates; both descriptors are open.
    let n = check_size(unsafe { libc::sendfile(socket, file, &mut off, count) })?;
    *offset = off as u64;
    Ok(n)
}

/// Half-closes the sending side, so the client sees the end before the close.
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: plain syscall; failure (already closed, reset) is harmless here.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// A non-blocking, close-on-exec pipe for splice: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two descriptors to fill.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two fresh descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Moves up to `len` bytes from `from` to `to` inside the kernel; one of them
/// must be a pipe. `Ok(0)` from a socket is end of stream.
pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: null offsets (both ends are streams); descriptors are open.
    check_size(unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, flags) })
}

/// Starts a non-blocking connect to a TCP or Unix-socket address. Returns the
/// socket; completion (or failure) shows as writability, then [`socket_error`].
/// Starts a non-blocking connect; a TCP socket gets `options` first (buffer
/// sizes must be set before the handshake to shape its window), and an
/// option the kernel refuses leaves its default.
pub fn connect_start(addr: &ConnectTo<'_>, options: &tine_config::TcpOptions) -> io::Result<OwnedFd> {
    let family = match addr {
        ConnectTo::Tcp(a) if a.is_ipv4() => libc::AF_INET,
        ConnectTo::Tcp(_) => libc::AF_INET6,
        ConnectTo::Unix(_) => libc::AF_UNIX,
    };
    // SAFETY: plain syscall; the descriptor is owned right after the check.
    let fd = check(unsafe {
        libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: fresh descriptor, owned from here on.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let rc = match addr {
        ConnectTo::Tcp(a) => {
            // Refusals were reported once at start (the master tries the options).
            let _ = apply_tcp_options(fd, options);
            let (storage, len) = to_sockaddr(*a);
            // SAFETY: storage is a valid sockaddr of `len` bytes for the family.
            unsafe { libc::connect(fd, &storage as *const _ as *const libc::sockaddr, len) }
        }
        ConnectTo::Unix(path) => {
            use std::os::unix::ffi::OsStrExt;
            // SAFETY: all-zero is a valid sockaddr_un.
            let mut sun: libc::sockaddr_un = unsafe { zeroed() };
            sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
            let bytes = path.as_os_str().as_bytes();
            if bytes.len() >= sun.sun_path.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "unix socket path too long"));
            }
            for (dst, &src) in sun.sun_path.iter_mut().zip(bytes) {
                *dst = src as libc::c_char;
            }
            let len = (size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
            // SAFETY: sun is a valid sockaddr_un of at least `len` bytes.
            unsafe { libc::connect(fd, &sun as *const _ as *const libc::sockaddr, len) }
        }
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) && e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
    Ok(owned)
}

/// Where to connect.
pub enum ConnectTo<'a> {
    Tcp(SocketAddr),
    Unix(&'a std::path::Path),
}

/// The pending error of a socket (SO_ERROR): how a non-blocking connect ended.
pub fn socket_error(fd: RawFd) -> io::Result<()> {
    let mut err: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: err and len are valid for writing.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut i32 as *mut libc::c_void,
            &mut len,
        )
    })?;
    if err == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(err))
    }
}

/// What a socket holds for the reader, seen without taking anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peek {
    /// Bytes are waiting.
    Data,
    /// The peer closed its side and nothing is left to read.
    End,
    /// Nothing yet: a read would block. An idle connection is usable.
    Nothing,
    /// The connection failed (reset, for one).
    Broken,
}

/// What TCP_INFO says of a connection's path, the part tine records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpInfo {
    /// Smoothed round-trip time, microseconds.
    pub rtt_us: u32,
    pub total_retrans: u32,
    pub segs_out: u32,
}

/// TCP_INFO of a connected socket; None when the kernel refuses.
pub fn tcp_info(fd: RawFd) -> Option<TcpInfo> {
    // SAFETY: a zeroed tcp_info is valid plain data.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: info is valid for writing `len` bytes; len is updated by the kernel.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then_some(TcpInfo {
        rtt_us: info.tcpi_rtt,
        total_retrans: info.tcpi_total_retrans,
        segs_out: info.tcpi_segs_out,
    })
}

/// Returns the allocator's free memory to the kernel (glibc's malloc_trim,
/// which also releases free pages inside the heap), so memory a burst freed
/// stops counting as resident.
#[cfg(target_env = "gnu")]
pub fn trim_heap() {
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own free lists.
    unsafe { libc::malloc_trim(0) };
}

/// Other C libraries return memory their own way.
#[cfg(not(target_env = "gnu"))]
pub fn trim_heap() {}

/// Looks at the first waiting byte, leaving it in place.
pub fn peek(fd: RawFd) -> Peek {
    let mut byte = 0u8;
    // SAFETY: one byte of valid buffer; MSG_PEEK leaves the data in place.
    let n = unsafe {
        libc::recv(fd, &mut byte as *mut u8 as *mut libc::c_void, 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
    };
    match n {
        0 => Peek::End,
        n if n > 0 => Peek::Data,
        _ if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock => Peek::Nothing,
        _ => Peek::Broken,
    }
}

/// How a non-blocking connect stands: `Ok(true)` connected, `Ok(false)` still
/// in progress, `Err` failed (refused, unreachable...).
pub fn connect_status(fd: RawFd) -> io::Result<bool> {
    socket_error(fd)?;
    // SAFETY: as in local_addr.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage and len are valid for writing.
    let rc = unsafe { libc::getpeername(fd, &mut storage as *mut _ as *mut libc::sockaddr, &mut len) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOTCONN) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Closes a descriptor this process inherited but does not own as a value
/// (a worker's copies of the master's sockets).
pub fn close_inherited(fd: RawFd) {
    // SAFETY: the caller names a descriptor no value of this process owns;
    // closing it invalidates nothing that will be used.
    unsafe { libc::close(fd) };
}

/// Takes ownership of a descriptor this process was handed across exec by
/// number (marking it close-on-exec again); None when the number is not an
/// open descriptor above stderr.
pub fn take_handed_fd(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if fd <= 2 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    set_cloexec_to(fd, true);
    // SAFETY: the parent passed this open descriptor for this process to own,
    // and nothing else in this process holds it as a value.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Asks the kernel to send SIGQUIT to this process when its parent dies,
/// however it dies.
pub fn quit_when_parent_dies() {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no pointers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT as libc::c_ulong) };
}

/// Sets the process name shown by ps and top (comm, at most 15 bytes).
pub fn set_process_name(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: buf is NUL-terminated and outlives the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// Raises the soft limit on open descriptors to the hard limit.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: lim is a valid rlimit to fill and then to read back.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// CLOCK_MONOTONIC in microseconds (what systemd's MONOTONIC_USEC wants).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// The size of a memory page, in bytes.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(1) as u64
}

/// Clock ticks per second, the unit of CPU times in /proc.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

/// Whether `fd` is readable right now (for a listener: a client waits in
/// its accept queue), without waiting.
pub fn readable_now(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: pfd is one valid pollfd; a zero timeout never blocks.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
    ready > 0 && pfd.revents & libc::POLLIN != 0
}

/// Waits until one of the descriptors is readable or `timeout_ms` passes.
pub fn wait_readable(fds: &[RawFd], timeout_ms: i32) {
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    // SAFETY: pfds is a valid array of pfds.len() pollfd entries.
    unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
}

/// An anonymous in-memory file (memfd), for bodies tine makes itself and
/// then sends with sendfile like any file.
pub fn memory_file(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: name is a valid C string; the result is checked before it is owned.
    let fd = check(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn reuseport_sockets_share_a_port() {
        let a = reuseport_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = local_addr(a.as_raw_fd()).unwrap();
        assert_ne!(addr.port(), 0);
        let b = reuseport_listener(addr, 16).unwrap();
        assert_eq!(local_addr(b.as_raw_fd()).unwrap(), addr);
        let v6 = reuseport_listener("[::1]:0".parse().unwrap(), 16);
        if let Ok(v6) = v6 {
            assert!(local_addr(v6.as_raw_fd()).unwrap().is_ipv6());
        }
        assert!(accept(a.as_raw_fd()).unwrap().is_none());
    }

    #[test]
    fn accepted_connections_inherit_nodelay_from_the_listener() {
        let listener = reuseport_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        set_nodelay(listener.as_raw_fd()).unwrap();
        let addr = local_addr(listener.as_raw_fd()).unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let accepted = loop {
            if let Some((fd, _)) = accept(listener.as_raw_fd()).unwrap() {
                break fd;
            }
            std::thread::yield_now();
        };
        assert_eq!(int_opt(accepted.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY).unwrap(), 1);
    }
}
