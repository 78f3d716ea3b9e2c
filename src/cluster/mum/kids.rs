//! mum's listener for its kids' reports (TCP; the wire format is [`nerokid::wire`]).
//!
//! A kid sends each event line to mum right after writing it to its `events.jsonl`, with the
//! line's byte offset in that file. The listener checks each message (the HMAC under this mum's
//! secret, the run's name, the event decoding as a typed [`KidEvent`]) and keeps the line in
//! [`Reports`] under the run and its offset; it wakes mum's main loop, whose round takes the
//! lines that continue where its journal left off ([`Reports::plan`], [`Reports::contiguous`]).
//! So the event log stays the source of truth and each line is journaled once, however it came:
//! a line missing from the reports (a dropped connection, a kid behind a firewall) is read from
//! the file, which the round still tails — at least once a second for a run that reports, every
//! round for one that does not.
//!
//! One thread serves every connection (epoll over non-blocking sockets): 1,000 kids are
//! 1,000 file descriptors, not 1,000 threads. What is refused is dropped and logged (at most one
//! line per kind every 10 s, with counts): a wrong MAC or a malformed line closes its
//! connection, a line over [`wire::MAX_LINE`] too, a connection that sends nothing valid within
//! [`HELLO_WITHIN`] is closed, an authenticated one silent for [`IDLE_AFTER`] too.
//!
//! mum → kid: [`KidListener::abort`] queues an abort on the connection the run reports over.

use nerokid::report::KidEvent;
use nerokid::wire::{self, Refused, Secret};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A connection that has sent nothing valid this long after it opened is closed.
pub const HELLO_WITHIN: Duration = Duration::from_secs(10);
/// An authenticated connection silent this long is closed (a kid sends resources every 5 s).
pub const IDLE_AFTER: Duration = Duration::from_secs(600);
/// Lines kept per run while mum's round has not taken them (beyond: left to the file).
const MAX_KEPT: usize = 8 << 20;
/// A run reporting over TCP still has its file read this often (a message lost at the end of
/// a connection shows no gap).
const FILE_CHECK: Duration = Duration::from_secs(1);
/// A run silent on TCP this long has its file read every round.
const QUIET: Duration = Duration::from_secs(3);

/// Whether `listen:` names something mum can bind: `auto`, `off`, an IP address, or an
/// interface name.
pub fn check_listen(value: &str) -> Result<(), String> {
    let v = value.trim();
    if v == "auto" || v == "off" || v.parse::<IpAddr>().is_ok() || is_interface_name(v) {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not auto, off, an IP address or an interface name"
        ))
    }
}

/// `eth0`, `ib0`, `enp3s0f1`: starts with a letter; not a misspelt keyword (`OFF`) nor a
/// mistyped address (`999.1.1.1`).
fn is_interface_name(v: &str) -> bool {
    let lower = v.to_ascii_lowercase();
    v.starts_with(|c: char| c.is_ascii_alphabetic())
        && lower != "auto"
        && lower != "off"
        && v.len() <= 15
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '@'))
}

/// The address `listen:` means on this host (`None`: off). `local`: the local warden, whose
/// kids run here (auto is then 127.0.0.1); else auto is the address this host's name resolves
/// to, which is where compute nodes reach a login node.
pub fn listen_address(value: &str, local: bool) -> Result<Option<IpAddr>, String> {
    let v = value.trim();
    match v {
        "off" => Ok(None),
        "auto" if local => Ok(Some(IpAddr::V4(Ipv4Addr::LOCALHOST))),
        "auto" => {
            let host = nerokid::probe::hostname();
            let addrs: Vec<IpAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), 0))
                .map(|a| a.map(|s| s.ip()).collect())
                .unwrap_or_default();
            Ok(Some(
                addrs
                    .iter()
                    .find(|a| a.is_ipv4() && !a.is_loopback())
                    .or_else(|| addrs.iter().find(|a| !a.is_loopback()))
                    .or_else(|| addrs.first())
                    .copied()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ))
        }
        _ => match v.parse::<IpAddr>() {
            Ok(ip) => Ok(Some(ip)),
            Err(_) => interface_address(v).map(Some),
        },
    }
}

/// The IPv4 address of interface `name` (else its first IPv6 one).
fn interface_address(name: &str) -> Result<IpAddr, String> {
    let mut found: Vec<IpAddr> = Vec::new();
    let mut names = Vec::new();
    // SAFETY: getifaddrs fills a list we read and free; every pointer is checked.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) != 0 {
            return Err(format!(
                "cannot list the network interfaces: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut p = list;
        while !p.is_null() {
            let ifa = &*p;
            p = ifa.ifa_next;
            if ifa.ifa_name.is_null() || ifa.ifa_addr.is_null() {
                continue;
            }
            let n = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy();
            if !names.contains(&n.to_string()) {
                names.push(n.to_string());
            }
            if n != name {
                continue;
            }
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    found.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))));
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    found.push(IpAddr::V6(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        libc::freeifaddrs(list);
    }
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| found.first())
        .copied()
        .ok_or_else(|| {
            format!(
                "no interface {name:?} with an address here (this host has: {})",
                names.join(", ")
            )
        })
}

/// Event lines received per run, by offset, until mum's round journals past them.
#[derive(Default)]
pub struct Reports {
    runs: Mutex<HashMap<String, RunReports>>,
    /// Runs with lines that arrived since [`Reports::take_dirty`] was last asked.
    dirty: Mutex<HashSet<String>>,
}

struct RunReports {
    lines: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
    last: Instant,
    file_read: Option<Instant>,
    conn: Option<u64>,
}

/// What a round does for one run.
pub struct Plan {
    /// Read the event log from the journaled offset (then take reported lines after it).
    pub read_file: bool,
}

impl Reports {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, RunReports>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep a line (with its line break) that starts at `start` in `run`'s log.
    fn add(&self, run: &str, start: u64, line: Vec<u8>, conn: u64) {
        let mut runs = self.lock();
        let r = runs.entry(run.to_string()).or_insert_with(|| RunReports {
            lines: BTreeMap::new(),
            bytes: 0,
            last: Instant::now(),
            file_read: None,
            conn: None,
        });
        r.last = Instant::now();
        r.conn = Some(conn);
        if r.bytes + line.len() > MAX_KEPT || r.lines.contains_key(&start) {
            return;
        }
        r.bytes += line.len();
        r.lines.insert(start, line);
        drop(runs);
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        if !dirty.contains(run) {
            dirty.insert(run.to_string());
        }
    }

    /// The runs that reported lines since the last call.
    pub fn take_dirty(&self) -> Vec<String> {
        self.dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect()
    }

    /// Whether this round reads `run`'s file from `offset` (the journal's point): when it never
    /// reported, when a line is missing, when it has been quiet, and at least every second.
    pub fn plan(&self, run: &str, offset: u64) -> Plan {
        let mut runs = self.lock();
        let Some(r) = runs.get_mut(run) else {
            return Plan { read_file: true };
        };
        // Lines the journal has passed are done with.
        while let Some((&start, line)) = r.lines.first_key_value() {
            if start >= offset {
                break;
            }
            r.bytes -= line.len();
            r.lines.pop_first();
        }
        let gap = r.lines.first_key_value().is_some_and(|(&s, _)| s > offset);
        let read_file = gap
            || r.last.elapsed() >= QUIET
            || r.file_read.is_none_or(|t| t.elapsed() >= FILE_CHECK);
        if read_file {
            r.file_read = Some(Instant::now());
        }
        Plan { read_file }
    }

    /// The reported lines that continue `run`'s log from `offset`, in order.
    pub fn contiguous(&self, run: &str, offset: u64) -> Vec<u8> {
        let runs = self.lock();
        let mut out = Vec::new();
        let Some(r) = runs.get(run) else { return out };
        let mut pos = offset;
        while let Some(line) = r.lines.get(&pos) {
            out.extend_from_slice(line);
            pos += line.len() as u64;
        }
        out
    }

    /// Whether a reported line starts at `offset` of `run`'s log (news for the round).
    pub fn has(&self, run: &str, offset: u64) -> bool {
        self.lock()
            .get(run)
            .is_some_and(|r| r.lines.contains_key(&offset))
    }

    /// Forget runs mum no longer follows.
    pub fn retain(&self, keep: &HashSet<&str>) {
        self.lock().retain(|run, _| keep.contains(run.as_str()));
    }

    fn conn_of(&self, run: &str) -> Option<u64> {
        self.lock().get(run).and_then(|r| r.conn)
    }
}

/// The listening side, shared with mum's handlers.
pub struct KidListener {
    pub reports: Arc<Reports>,
    pub addr: SocketAddr,
    secret: Secret,
    /// Lines for the poll thread to send, by connection; and a byte on `wake` says so.
    outbox: Mutex<Vec<(u64, Vec<u8>)>>,
    open: Mutex<HashSet<u64>>,
    wake: UnixStream,
    addr_file: PathBuf,
}

impl KidListener {
    /// Listen where `listen` says (`None` for `off`), write the secret and address files, and
    /// serve in a thread; `news` is called whenever lines arrived.
    pub fn start(
        workdir: &Path,
        listen: &str,
        local: bool,
        news: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Option<Arc<KidListener>>, String> {
        let addr_file = workdir.join(wire::ADDR_FILE);
        let secret_file = workdir.join(wire::SECRET_FILE);
        // Until a new address is written, kids find none (and leave everything to the log).
        let _ = std::fs::remove_file(&addr_file);
        let Some(ip) = listen_address(listen, local)? else {
            let _ = std::fs::remove_file(&secret_file);
            return Ok(None);
        };
        raise_fd_limit();
        let listener =
            TcpListener::bind((ip, 0)).map_err(|e| format!("cannot listen on {ip}: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot listen on {ip}: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("cannot listen on {ip}: {e}"))?;
        let hex = crate::util::random_hex(32).map_err(|e| format!("cannot make a secret: {e}"))?;
        let secret = Secret::new(&hex).expect("64 hex digits");
        // The secret first: a kid that finds the new address finds the new secret.
        write_private(&secret_file, format!("{hex}\n").as_bytes())?;
        write_private(&addr_file, format!("{addr}\n").as_bytes())?;
        let (wake, wake_rx) = UnixStream::pair().map_err(|e| format!("cannot make a pipe: {e}"))?;
        wake_rx
            .set_nonblocking(true)
            .map_err(|e| format!("cannot make a pipe: {e}"))?;
        let _ = wake.set_nonblocking(true);
        let me = Arc::new(KidListener {
            reports: Arc::default(),
            addr,
            secret,
            outbox: Mutex::new(Vec::new()),
            open: Mutex::new(HashSet::new()),
            wake,
            addr_file,
        });
        let runs_dir = workdir.join("runs");
        let shared = Arc::clone(&me);
        std::thread::Builder::new()
            .name("kids".into())
            .spawn(move || serve(&shared, listener, wake_rx, &runs_dir, &*news))
            .map_err(|e| format!("cannot start the listener thread: {e}"))?;
        tracing::info!("kids report over TCP to {addr}");
        if !local && ip.is_loopback() {
            tracing::warn!(
                "kids' listener: {ip} is a loopback address (what this host's name resolves to): kids on other nodes cannot reach it and their event logs are read instead; set `listen:` to this login node's address or interface"
            );
        }
        Ok(Some(me))
    }

    /// Ask the kid of `run` (a run directory's name) to stop its job, over the connection it
    /// reports on. False when it has none open (the caller cancels through the warden).
    pub fn abort(&self, run: &str) -> bool {
        let Some(conn) = self.reports.conn_of(run) else {
            return false;
        };
        if !self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&conn)
        {
            return false;
        }
        let nonce = crate::util::random_hex(8).unwrap_or_else(|_| "0".into());
        self.outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((conn, wire::abort_message(&self.secret, run, &nonce)));
        let _ = (&self.wake).write(&[1]);
        true
    }

    /// mum is going away: kids stop trying this address.
    pub fn close(&self) {
        let _ = std::fs::remove_file(&self.addr_file);
    }
}

/// Write a file only the user can read (created 0600, then renamed into place).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    result.map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// 1,000 kids need 1,000 descriptors: take the hard limit (also for the tests and benches that
/// play 1,000 kids).
pub fn raise_fd_limit() {
    // SAFETY: plain get/setrlimit on a local struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

struct Conn {
    stream: TcpStream,
    peer: String,
    input: Vec<u8>,
    output: Vec<u8>,
    opened: Instant,
    last_valid: Option<Instant>,
}

/// Refusals are logged at most once per kind every 10 s, with how many came meanwhile.
#[derive(Default)]
struct Complaints {
    last: HashMap<&'static str, (Instant, u64)>,
}

impl Complaints {
    fn say(&mut self, kind: &'static str, detail: impl FnOnce() -> String) {
        let now = Instant::now();
        let e = self
            .last
            .entry(kind)
            .or_insert((now - Duration::from_secs(60), 0));
        if now.duration_since(e.0) >= Duration::from_secs(10) {
            let more = if e.1 > 0 {
                format!(" ({} more since the last such line)", e.1)
            } else {
                String::new()
            };
            tracing::warn!("kids' listener: {}{more}", detail());
            *e = (now, 0);
        } else {
            e.1 += 1;
        }
    }

    /// Whether a line of this kind may be logged now (then it counts as logged).
    fn due(&mut self, kind: &'static str) -> bool {
        let now = Instant::now();
        let e = self
            .last
            .entry(kind)
            .or_insert((now - Duration::from_secs(60), 0));
        let due = now.duration_since(e.0) >= Duration::from_secs(10);
        if due {
            *e = (now, 0);
        }
        due
    }
}

/// What to do with a connection after its input was read.
enum Verdict {
    Keep,
    Close,
}

/// epoll's token for the listening socket and the wake-up pipe; connections count from 2.
const LISTENER: u64 = 0;
const WAKE: u64 = 1;

/// An epoll instance: the kernel tells which of the thousand connections are ready, so a
/// report costs the same with 10 kids as with 1,000 (poll(2) walks every one each time).
struct Epoll(std::os::fd::OwnedFd);

impl Epoll {
    fn new() -> std::io::Result<Epoll> {
        // SAFETY: epoll_create1 returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(Epoll(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }))
    }

    fn ctl(&self, op: i32, fd: i32, events: u32, token: u64) -> std::io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: ev is a valid epoll_event; the descriptors are open.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> std::io::Result<usize> {
        // SAFETY: events is a valid buffer of its length.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

fn serve(
    me: &KidListener,
    listener: TcpListener,
    mut wake_rx: UnixStream,
    runs_dir: &Path,
    news: &(dyn Fn() + Send + Sync),
) {
    let epoll = match Epoll::new().and_then(|e| {
        e.ctl(
            libc::EPOLL_CTL_ADD,
            listener.as_raw_fd(),
            libc::EPOLLIN as u32,
            LISTENER,
        )?;
        e.ctl(
            libc::EPOLL_CTL_ADD,
            wake_rx.as_raw_fd(),
            libc::EPOLLIN as u32,
            WAKE,
        )?;
        Ok(e)
    }) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(
                "kids' listener: cannot set up epoll: {e}; stopping (event logs are tailed)"
            );
            me.close();
            return;
        }
    };
    let mut conns: HashMap<u64, Conn> = HashMap::new();
    let mut next_id: u64 = 2;
    let mut complaints = Complaints::default();
    let mut known_runs: HashSet<String> = HashSet::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut ready = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut last_sweep = Instant::now();
    // What the log says once a minute while kids report: that TCP works, and how much.
    let (mut lines_taken, mut last_summary) = (0u64, Instant::now());
    let mut idle_closed = 0u64;
    let (readable, writable) = (
        (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
        (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLOUT) as u32,
    );
    loop {
        let n = match epoll.wait(&mut ready, 1000) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(
                    "kids' listener: epoll failed: {e}; stopping (event logs are tailed)"
                );
                me.close();
                return;
            }
        };
        let mut arrived = 0u64;
        let mut closing: Vec<u64> = Vec::new();
        for ev in &ready[..n] {
            let (token, flags) = (ev.u64, ev.events);
            match token {
                LISTENER => loop {
                    match listener.accept() {
                        Ok((stream, peer)) => {
                            if stream.set_nonblocking(true).is_err() {
                                continue;
                            }
                            let _ = stream.set_nodelay(true);
                            let id = next_id;
                            next_id += 1;
                            if epoll
                                .ctl(libc::EPOLL_CTL_ADD, stream.as_raw_fd(), readable, id)
                                .is_err()
                            {
                                continue;
                            }
                            conns.insert(
                                id,
                                Conn {
                                    stream,
                                    peer: peer.to_string(),
                                    input: Vec::new(),
                                    output: Vec::new(),
                                    opened: Instant::now(),
                                    last_valid: None,
                                },
                            );
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => {
                            // Out of descriptors: the oldest connections that never said
                            // anything valid make room.
                            complaints.say("accept", || format!("cannot accept: {e}"));
                            closing.extend(silent_connections(&conns, 64));
                            break;
                        }
                    }
                },
                WAKE => {
                    // Lines for kids (aborts).
                    let mut sink = [0u8; 256];
                    while matches!(wake_rx.read(&mut sink), Ok(n) if n > 0) {}
                    let queued =
                        std::mem::take(&mut *me.outbox.lock().unwrap_or_else(|p| p.into_inner()));
                    for (id, line) in queued {
                        if let Some(c) = conns.get_mut(&id) {
                            c.output.extend_from_slice(&line);
                            if !flush_output(c) {
                                closing.push(id);
                            } else if !c.output.is_empty() {
                                let _ = epoll.ctl(
                                    libc::EPOLL_CTL_MOD,
                                    c.stream.as_raw_fd(),
                                    writable,
                                    id,
                                );
                            }
                        }
                    }
                }
                id => {
                    let Some(c) = conns.get_mut(&id) else {
                        continue;
                    };
                    let mut keep = true;
                    if flags
                        & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR)
                            as u32
                        != 0
                    {
                        keep = matches!(
                            read_conn(
                                me,
                                id,
                                c,
                                &mut buf,
                                runs_dir,
                                &mut known_runs,
                                &mut complaints,
                                &mut arrived,
                            ),
                            Verdict::Keep
                        );
                    }
                    if keep && flags & libc::EPOLLOUT as u32 != 0 {
                        keep = flush_output(c);
                        if keep && c.output.is_empty() {
                            let _ =
                                epoll.ctl(libc::EPOLL_CTL_MOD, c.stream.as_raw_fd(), readable, id);
                        }
                    }
                    if !keep {
                        closing.push(id);
                    }
                }
            }
        }
        for id in closing {
            // Closing the socket takes it out of the epoll set.
            conns.remove(&id);
            me.open
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
        if arrived > 0 {
            lines_taken += arrived;
            news();
        }
        if last_summary.elapsed() >= Duration::from_secs(60) {
            if lines_taken > 0 {
                tracing::info!(
                    "kids' listener: {} connection(s) open, {lines_taken} line(s) taken in the last minute",
                    conns.len()
                );
            }
            (lines_taken, last_summary) = (0, Instant::now());
        }
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            last_sweep = Instant::now();
            let before = conns.len();
            conns.retain(|_, c| match c.last_valid {
                None => c.opened.elapsed() < HELLO_WITHIN,
                Some(t) => t.elapsed() < IDLE_AFTER,
            });
            let closed = before - conns.len();
            if closed > 0 {
                let open: HashSet<u64> = conns.keys().copied().collect();
                me.open
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|id| open.contains(id));
            }
            // Counted over the sweeps since the last such line.
            idle_closed += closed as u64;
            if idle_closed > 0 && complaints.due("idle") {
                tracing::warn!(
                    "kids' listener: closed {idle_closed} connection(s) that sent nothing valid within {} s or went silent",
                    HELLO_WITHIN.as_secs()
                );
                idle_closed = 0;
            }
        }
    }
}

/// Write what waits for a kid; false when the connection failed.
fn flush_output(c: &mut Conn) -> bool {
    while !c.output.is_empty() {
        match c.stream.write(&c.output) {
            Ok(0) => return false,
            Ok(n) => {
                c.output.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// Up to `n` of the oldest connections that never sent anything valid.
fn silent_connections(conns: &HashMap<u64, Conn>, n: usize) -> Vec<u64> {
    let mut silent: Vec<(Instant, u64)> = conns
        .iter()
        .filter(|(_, c)| c.last_valid.is_none())
        .map(|(id, c)| (c.opened, *id))
        .collect();
    silent.sort();
    silent.into_iter().take(n).map(|(_, id)| id).collect()
}

#[allow(clippy::too_many_arguments)]
fn read_conn(
    me: &KidListener,
    id: u64,
    c: &mut Conn,
    buf: &mut [u8],
    runs_dir: &Path,
    known_runs: &mut HashSet<String>,
    complaints: &mut Complaints,
    arrived: &mut u64,
) -> Verdict {
    loop {
        match c.stream.read(buf) {
            Ok(0) => {
                if !c.input.is_empty() {
                    let peer = c.peer.clone();
                    complaints.say("truncated", || {
                        format!("dropped a truncated message from {peer} (the connection closed mid-line)")
                    });
                }
                return Verdict::Close;
            }
            Ok(n) => {
                c.input.extend_from_slice(&buf[..n]);
                // Whole lines are handled as they come; what is left is a line's start.
                let mut used = 0;
                while let Some(nl) = memchr::memchr(b'\n', &c.input[used..]) {
                    let line = &c.input[used..used + nl];
                    let verdict = take_line(
                        me,
                        id,
                        c.peer.as_str(),
                        line,
                        runs_dir,
                        known_runs,
                        complaints,
                    );
                    used += nl + 1;
                    match verdict {
                        Ok(true) => {
                            *arrived += 1;
                            c.last_valid = Some(Instant::now());
                        }
                        Ok(false) => {}
                        Err(()) => return Verdict::Close,
                    }
                }
                c.input.drain(..used);
                if c.input.len() > wire::MAX_LINE {
                    let peer = c.peer.clone();
                    complaints.say("long", || {
                        format!(
                            "dropped a line over {} MiB from {peer} and closed its connection",
                            wire::MAX_LINE >> 20
                        )
                    });
                    return Verdict::Close;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Verdict::Keep,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Verdict::Close,
        }
    }
}

/// One line from a kid: `Ok(true)` kept, `Ok(false)` dropped (the connection stays), `Err`:
/// close the connection.
fn take_line(
    me: &KidListener,
    id: u64,
    peer: &str,
    line: &[u8],
    runs_dir: &Path,
    known_runs: &mut HashSet<String>,
    complaints: &mut Complaints,
) -> Result<bool, ()> {
    let m = match wire::parse_event(&me.secret, line) {
        Ok(m) => m,
        Err(Refused::Unauthenticated) => {
            complaints.say("secret", || {
                format!("dropped a report from {peer} that does not carry this mum's secret, and closed its connection")
            });
            return Err(());
        }
        Err(Refused::Malformed) => {
            complaints.say("malformed", || {
                format!(
                    "dropped a malformed message from {peer} ({} bytes) and closed its connection",
                    line.len()
                )
            });
            return Err(());
        }
    };
    if !known_runs.contains(m.run) {
        if !runs_dir
            .join(m.run)
            .join(nerokid::report::SPEC_FILE)
            .exists()
        {
            let run = m.run.to_string();
            complaints.say("unknown", || {
                format!("dropped a report for {run:?}, not a run of this mum")
            });
            return Ok(false);
        }
        known_runs.insert(m.run.to_string());
    }
    // Only the typed events: anything else (another version's event) is left to the file.
    if serde_json::from_slice::<KidEvent>(m.event).is_err() {
        let run = m.run.to_string();
        complaints.say("event", || {
            format!("dropped an event of run {run} that does not decode (it is read from the event log)")
        });
        return Ok(false);
    }
    let mut kept = Vec::with_capacity(m.event.len() + 1);
    kept.extend_from_slice(m.event);
    kept.push(b'\n');
    me.reports.add(m.run, m.start, kept, id);
    me.open.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_values_are_checked() {
        for ok in ["auto", "off", "10.1.2.3", "::1", "eth0", "ib0", "enp3s0f1"] {
            assert!(check_listen(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "eth0; rm -rf",
            "averyveryverylongname0",
            "OFF",
            "Auto",
            "999.1.1.1",
        ] {
            assert!(check_listen(bad).is_err(), "{bad}");
        }
        assert_eq!(listen_address("off", false).unwrap(), None);
        assert_eq!(
            listen_address("auto", true).unwrap(),
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        assert_eq!(
            listen_address("lo", false).unwrap(),
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        let e = listen_address("nosuch0", false).unwrap_err();
        assert!(
            e.contains("no interface \"nosuch0\"") && e.contains("lo"),
            "{e}"
        );
    }

    #[test]
    fn reported_lines_continue_the_journal_and_gaps_send_the_round_to_the_file() {
        let r = Reports::default();
        // Never reported: the file.
        assert!(r.plan("a", 0).read_file);
        r.add("a", 0, b"one\n".to_vec(), 1);
        r.add("a", 4, b"two\n".to_vec(), 1);
        r.add("a", 4, b"two\n".to_vec(), 1); // the same line twice is kept once
        assert_eq!(r.contiguous("a", 0), b"one\ntwo\n");
        assert_eq!(r.contiguous("a", 4), b"two\n");
        // The journal passed them: dropped; a line after a gap sends the round to the file.
        r.add("a", 20, b"later\n".to_vec(), 1);
        let _ = r.plan("a", 8);
        assert!(r.plan("a", 8).read_file, "a gap at 8..20");
        assert_eq!(r.contiguous("a", 8), b"");
        assert_eq!(r.contiguous("a", 20), b"later\n");
    }
}
