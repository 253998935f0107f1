//! The lazy-pages daemon (criu's `lazy-pages -D DIR [--page-server
//! --address A --port P]`): serves the lazy areas of a restored tree.
//!
//! It listens on the socket `restore --lazy-pages` connects to (lazy.rs),
//! takes each process's userfaultfd (pidfd_getfd from the restorer),
//! answers faults at once with UFFDIO_COPY from the page source (a
//! 64 KiB window around the fault), or UFFDIO_ZEROPAGE where no page was
//! saved or the range was dropped since, and once the tree runs streams
//! every remaining page in the background. A process whose pages are all
//! in place gets its descriptor closed; when none is left, the daemon
//! ends. Non-cooperative events keep the bookkeeping right: fork (the
//! child's new descriptor inherits the parent's pending pages), mremap
//! (pending pages move), MADV_DONTNEED/REMOVE and munmap (those pending
//! pages are dropped, never filled). A page already there (EEXIST: the
//! program wrote it first) is skipped.
//!
//! Failure policy: no process is ever left hanging or silently reading
//! zeros. If the page source fails (a read error, the remote server gone,
//! or, for local page files, the checksum verified in the background does
//! not match) the daemon kills the lazy tree (every process it serves,
//! and their descendants) and exits with one line naming the cause. If
//! the daemon itself dies, a watchdog process it started (holding its own
//! duplicate of every userfaultfd, so faults wait rather than read zeros)
//! sees its pipe close and kills the lazy tree the same way.

use crate::lazy::{lazy_ranges, split_runs};
use crate::lazy_source::Source;
use stasis_image::{ImageDir, PAGES_HEADER_LEN, PAGE_SIZE};
use stasis_sys::uffd::{self, Fill, Msg};
use stasis_sys::{util, Pid};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The hidden command the watchdog runs as.
pub const WATCH_COMMAND: &str = "__lazy-watch";
/// Bytes around a fault filled at once.
const FAULT_AROUND: u64 = 64 << 10;
/// One UFFDIO_COPY.
const COPY_CHUNK: u64 = 64 << 10;
/// Bytes streamed between two looks at the descriptors.
const STREAM_STEP: u64 = 1 << 20;

/// What the daemon serves, and from where.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub images_dir: PathBuf,
    /// The socket `restore --lazy-pages` connects to.
    pub socket: PathBuf,
    /// criu's `--page-server --address A --port P`: pages come from the
    /// lazy page server of `dump --lazy-pages`; None: from the page files
    /// in `images_dir`.
    pub remote: Option<(String, u16)>,
    /// criu's `--tls` options for the remote page server.
    pub tls: Option<crate::tls::TlsOptions>,
}

/// What was done.
#[derive(Debug, Clone, Default)]
pub struct DaemonStats {
    pub faults: u64,
    pub fault_bytes: u64,
    pub streamed_bytes: u64,
    pub zero_pages: u64,
    pub forks: u64,
    /// From the restore's RESUMED to the last page in place.
    pub resident_after: Duration,
}

/// Pending lazy bytes of one address space: start -> (end, page file
/// (index into the daemon's files), byte offset of start in it, header
/// included).
#[derive(Debug, Clone, Default)]
struct Pending(BTreeMap<u64, (u64, usize, u64)>);

impl Pending {
    fn find(&self, addr: u64) -> Option<(u64, u64)> {
        self.0
            .range(..=addr)
            .next_back()
            .filter(|(_, &(e, _, _))| addr < e)
            .map(|(&s, &(e, _, _))| (s, e))
    }

    fn insert(&mut self, s: u64, e: u64, file: usize, off: u64) {
        if s < e {
            self.0.insert(s, (e, file, off));
        }
    }

    /// Removes [s, e), returning the pieces removed (start, end, file,
    /// offset).
    fn take(&mut self, s: u64, e: u64) -> Vec<(u64, u64, usize, u64)> {
        let hit: Vec<(u64, u64, usize, u64)> = self
            .0
            .range(..e)
            .filter(|(_, &(pe, _, _))| pe > s)
            .map(|(&ps, &(pe, pf, po))| (ps, pe, pf, po))
            .collect();
        let mut out = Vec::new();
        for (ps, pe, pf, po) in hit {
            self.0.remove(&ps);
            if ps < s {
                self.0.insert(ps, (s, pf, po));
            }
            if pe > e {
                self.0.insert(e, (pe, pf, po + (e - ps)));
            }
            let (cs, ce) = (ps.max(s), pe.min(e));
            out.push((cs, ce, pf, po + (cs - ps)));
        }
        out
    }

    fn remap(&mut self, from: u64, to: u64, len: u64) {
        for (s, e, f, o) in self.take(from, from + len) {
            self.insert(s - from + to, e - from + to, f, o);
        }
    }

    fn bytes(&self) -> u64 {
        self.0.iter().map(|(s, (e, _, _))| e - s).sum()
    }
}

/// One address space served.
struct Proc {
    /// Our name for it (the watchdog's too).
    key: u64,
    image_pid: u32,
    uffd: OwnedFd,
    /// The process, if known (a child forked during the lazy phase is
    /// known only by its descriptor).
    host: u32,
    pending: Pending,
    /// Faults to answer again (the address space was changing).
    retry: Vec<u64>,
    exited: bool,
}

/// The watchdog: a child holding a duplicate of every userfaultfd.
struct Watchdog {
    child: std::process::Child,
    to: std::process::ChildStdin,
    from: BufReader<std::process::ChildStdout>,
}

impl Watchdog {
    fn start() -> Result<Watchdog, String> {
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        let mut child = Command::new("/proc/self/exe")
            .arg0("stasis")
            .arg(WATCH_COMMAND)
            .arg(std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("start the watchdog: {e}"))?;
        let to = child.stdin.take().ok_or("watchdog stdin")?;
        let from = BufReader::new(child.stdout.take().ok_or("watchdog stdout")?);
        Ok(Watchdog { child, to, from })
    }

    fn say(&mut self, line: &str) -> Result<(), String> {
        self.to
            .write_all(line.as_bytes())
            .map_err(|e| format!("watchdog: {e}"))?;
        let mut a = String::new();
        self.from
            .read_line(&mut a)
            .map_err(|e| format!("watchdog: {e}"))?;
        if a.trim_end() != "OK" {
            return Err(format!("watchdog answered {:?}", a.trim_end()));
        }
        Ok(())
    }

    /// Everything is resident (or the tree is dead): it ends quietly.
    fn finish(mut self) {
        let _ = self.to.write_all(b"DONE\n");
        drop(self.to);
        let _ = self.child.wait();
    }
}

/// Every descendant of `pids` (children lists under /proc), then `pids`.
fn with_descendants(pids: &[u32]) -> Vec<u32> {
    let mut all: Vec<u32> = Vec::new();
    let mut todo: Vec<u32> = pids.to_vec();
    while let Some(p) = todo.pop() {
        if all.contains(&p) || p == 0 {
            continue;
        }
        all.push(p);
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let path = t.path().join("children");
                if let Ok(s) = std::fs::read_to_string(path) {
                    todo.extend(s.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
                }
            }
        }
    }
    all
}

/// Kills the lazy tree: the processes by pidfd (no PID reuse), then
/// their descendants by PID.
fn kill_tree(pidfds: &[(u32, &OwnedFd)]) -> Vec<u32> {
    let hosts: Vec<u32> = pidfds.iter().map(|p| p.0).collect();
    let all = with_descendants(&hosts);
    for (_, fd) in pidfds {
        let _ = util::pidfd_kill(fd, libc::SIGKILL);
    }
    for &p in all.iter().filter(|p| !hosts.contains(p)) {
        let _ = util::kill(Pid(p as i32), libc::SIGKILL);
    }
    all
}

/// The watchdog's life (`stasis __lazy-watch DAEMON_PID`): lines on stdin
/// `ADD KEY HOST_PID FD` (a duplicate of the daemon's descriptor FD is
/// taken; HOST_PID 0: unknown), `DROP KEY` (the descriptor goes, the
/// process stays known: a later failure still kills it), `DONE`; each
/// answered `OK`.
/// Stdin closing without `DONE` means the daemon died: kill the tree.
pub fn watch(args: &[String]) -> Result<(), String> {
    let daemon: i32 = args
        .first()
        .and_then(|a| a.parse().ok())
        .ok_or("usage: __lazy-watch DAEMON_PID")?;
    let dfd = util::pidfd_open(Pid(daemon)).map_err(|e| e.to_string())?;
    let mut held: BTreeMap<u64, (u32, Option<OwnedFd>, Option<OwnedFd>)> = BTreeMap::new();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    let mut line = String::new();
    loop {
        line.clear();
        let n = stdin.lock().read_line(&mut line).unwrap_or(0);
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["DONE"] => return Ok(()),
            ["ADD", key, host, fd] => {
                let (key, host, fd) = (
                    key.parse::<u64>().unwrap_or(0),
                    host.parse::<u32>().unwrap_or(0),
                    fd.parse::<i32>().unwrap_or(-1),
                );
                let u = util::pidfd_getfd(&dfd, Pid(daemon), fd).map_err(|e| e.to_string())?;
                let p = (host != 0)
                    .then(|| util::pidfd_open(Pid(host as i32)).ok())
                    .flatten();
                held.insert(key, (host, Some(u), p));
            }
            ["DROP", key] => {
                if let Some(h) = held.get_mut(&key.parse::<u64>().unwrap_or(0)) {
                    h.1 = None;
                }
            }
            _ if n == 0 => break,
            _ => {}
        }
        let _ = out.write_all(b"OK\n");
        let _ = out.flush();
    }
    // The daemon is gone with pages not yet in place: the processes wait
    // in their faults (we hold the descriptors), and are killed now.
    let pidfds: Vec<(u32, &OwnedFd)> = held
        .values()
        .filter_map(|(h, _, p)| p.as_ref().map(|p| (*h, p)))
        .collect();
    let killed = kill_tree(&pidfds);
    eprintln!(
        "stasis: error: lazy-pages: the daemon (pid {daemon}) died before every page was in place: \
         the lazy tree was killed (pids {killed:?})"
    );
    Err("daemon died".into())
}

/// The daemon's state.
struct Daemon {
    source: Source,
    /// The page files the pending runs point into (names for `source`).
    files: Vec<String>,
    /// Per image PID: its lazy runs' pending bytes.
    plan: BTreeMap<u32, Pending>,
    procs: Vec<Proc>,
    next_key: u64,
    watchdog: Option<Watchdog>,
    restorer: Option<OwnedFd>,
    /// Every process handed over (host PID, pidfd), kept after its pages
    /// are all in place: a failure found later (the checksum) still kills
    /// the whole tree.
    served: Vec<(u32, OwnedFd)>,
    stats: DaemonStats,
    buf: Vec<u8>,
}

/// Runs the daemon until every lazy page is in place (Ok), or fails
/// having killed the lazy tree.
pub fn run(opts: &DaemonOptions) -> Result<DaemonStats, String> {
    let dir = ImageDir::open(&opts.images_dir).map_err(|e| e.to_string())?;
    let inv = dir.load_inventory().map_err(|e| e.to_string())?;
    // Where each page of each process is: (start, end, file, offset).
    let (procs, files, pieces, dirs) = if inv.parent.is_some() {
        // A pre-copy chain: each page is served from the image of the
        // chain that holds it (nothing merged).
        if opts.remote.is_some() {
            return Err(
                "--page-server: a pre-copy chain (an image with a parent image) is not served \
                 from a lazy page server yet (serve it from the local images)"
                    .into(),
            );
        }
        let c = stasis_image::chain::locate_lazy(&dir).map_err(|e| e.to_string())?;
        let mut files = Vec::new();
        for f in &c.files {
            let abs = std::path::absolute(f).map_err(|e| format!("{}: {e}", f.display()))?;
            files.push(abs.to_string_lossy().into_owned());
        }
        (c.image.processes, files, c.pieces, c.dirs)
    } else {
        let mut procs = Vec::new();
        for r in &inv.processes {
            procs.push(dir.load_process(r).map_err(|e| e.to_string())?);
        }
        let pieces = procs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                p.mm.pages
                    .iter()
                    .map(|r| (r.addr, r.addr + r.nr_pages * PAGE_SIZE, i, r.offset))
                    .collect()
            })
            .collect();
        let files = inv.processes.iter().map(|r| r.pages_file.clone()).collect();
        (procs, files, pieces, vec![opts.images_dir.clone()])
    };
    let ranges = lazy_ranges(&procs);
    let mut plan = BTreeMap::new();
    for ((img, rg), pc) in procs.iter().zip(&ranges).zip(&pieces) {
        let mut p = Pending::default();
        for run in split_runs(&img.mm.pages, rg).1 {
            let (s, e) = (run.addr, run.addr + run.nr_pages * PAGE_SIZE);
            let k = pc.partition_point(|x: &(u64, u64, usize, u64)| x.1 <= s);
            for &(ps, pe, f, off) in pc[k..].iter().take_while(|x| x.0 < e) {
                let cs = ps.max(s);
                p.insert(cs, pe.min(e), f, PAGES_HEADER_LEN + off + (cs - ps));
            }
        }
        plan.insert(img.pid, p);
    }
    let mut fetched = Vec::new();
    let (source, verify) = match &opts.remote {
        None => {
            // The page files' checksums, verified while the daemon serves.
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                // Behind the faults and the restore for the CPU.
                let _ = util::set_nice(Pid(0), 19);
                let res = dirs.iter().try_for_each(|d| -> Result<(), String> {
                    let dir = ImageDir::open(d).map_err(|e| e.to_string())?;
                    let inv = dir.load_inventory().map_err(|e| e.to_string())?;
                    for r in &inv.processes {
                        let img = dir.load_process(r).map_err(|e| e.to_string())?;
                        let extra = match &inv.ipc {
                            Some(ipc) if r.pid == inv.root_pid => ipc.payload_end(),
                            _ => 0,
                        };
                        dir.verify_pages_with(r, &img, extra)
                            .map_err(|e| e.to_string())?;
                    }
                    Ok(())
                });
                let _ = tx.send(res);
            });
            (Source::local(&opts.images_dir), Some(rx))
        }
        Some((a, p)) => {
            let mut s = Source::remote(a, *p, opts.tls.as_ref())?;
            for (name, pend) in files.iter().zip(plan.values()) {
                fetch_eager(&mut s, &opts.images_dir, name, pend)?;
                fetched.push(opts.images_dir.join(name));
            }
            (s, None)
        }
    };
    // The watchdog before the socket appears: the restore's first request
    // is answered at once.
    let watchdog = Watchdog::start()?;
    let listener = match listen(&opts.socket) {
        Ok(l) => l,
        Err(e) => {
            watchdog.finish();
            return Err(e);
        }
    };
    log::info!("lazy-pages: listening on {}", opts.socket.display());
    let mut d = Daemon {
        source,
        files,
        plan,
        procs: Vec::new(),
        next_key: 1,
        watchdog: Some(watchdog),
        restorer: None,
        served: Vec::new(),
        stats: DaemonStats::default(),
        buf: vec![0u8; STREAM_STEP as usize],
    };
    let res = (|| {
        let (link, _) = listener
            .accept()
            .map_err(|e| format!("accept on {}: {e}", opts.socket.display()))?;
        let _ = std::fs::remove_file(&opts.socket);
        d.serve(link, verify)
    })();
    let _ = std::fs::remove_file(&opts.socket);
    for f in &fetched {
        let _ = std::fs::remove_file(f);
    }
    match res {
        Ok(()) => {
            d.source.done();
            if let Some(w) = d.watchdog.take() {
                w.finish();
            }
            Ok(d.stats)
        }
        Err(why) => {
            let pidfds: Vec<(u32, &OwnedFd)> = d.served.iter().map(|(h, f)| (*h, f)).collect();
            let killed = kill_tree(&pidfds);
            if let Some(w) = d.watchdog.take() {
                w.finish();
            }
            if killed.is_empty() {
                Err(why)
            } else {
                Err(format!("{why}; the lazy tree was killed (pids {killed:?})"))
            }
        }
    }
}

/// Binds the socket under a temporary name and renames it into place:
/// once it exists, the daemon listens.
fn listen(path: &Path) -> Result<UnixListener, String> {
    if UnixStream::connect(path).is_ok() {
        return Err(format!(
            "{}: another lazy-pages daemon listens there",
            path.display()
        ));
    }
    let _ = std::fs::remove_file(path);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let l = UnixListener::bind(&tmp).map_err(|e| format!("bind {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("rename to {}: {e}", path.display()))?;
    Ok(l)
}

/// Remote mode: every byte of page file `name` the restore reads itself
/// (all but the lazy runs), fetched into a local file of the same size.
fn fetch_eager(s: &mut Source, dir: &Path, name: &str, lazy: &Pending) -> Result<(), String> {
    let size = s.size(name)?;
    let path = dir.join(name);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| {
            format!(
                "{}: {e} (with --page-server the page files come from the server)",
                path.display()
            )
        })?;
    f.set_len(size)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // The lazy runs as byte ranges of the file, in file order.
    let holes: Vec<(u64, u64)> = lazy
        .0
        .iter()
        .map(|(&s, &(e, _, o))| (o, o + (e - s)))
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect();
    let mut cur = 0u64;
    let mut buf = vec![0u8; 8 << 20];
    let mut copy = |from: u64, to: u64| -> Result<(), String> {
        let mut at = from;
        while at < to {
            let n = (to - at).min(buf.len() as u64) as usize;
            s.read(name, at, &mut buf[..n])?;
            f.write_all_at(&buf[..n], at)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            at += n as u64;
        }
        Ok(())
    };
    for (hs, he) in holes {
        if hs > cur {
            copy(cur, hs)?;
        }
        cur = cur.max(he);
    }
    if cur < size {
        copy(cur, size)?;
    }
    Ok(())
}

enum Step {
    Ok,
    /// The address space is changing: read its events first.
    Again,
    Exited,
}

impl Daemon {
    fn serve(
        &mut self,
        link: UnixStream,
        verify: Option<mpsc::Receiver<Result<(), String>>>,
    ) -> Result<(), String> {
        let mut link = Some(link);
        let mut line = Vec::new();
        let mut resumed: Option<Instant> = None;
        let mut verified = verify.is_none();
        let mut rr = 0usize;
        loop {
            if let Some(rx) = &verify {
                match rx.try_recv() {
                    Ok(Ok(())) => verified = true,
                    Ok(Err(e)) => return Err(format!("page source: {e}")),
                    Err(_) => {}
                }
            }
            if let Some(t) = resumed {
                if self.procs.is_empty() && link.is_none() {
                    // Every page is in place; the checksums still decide.
                    if let (false, Some(rx)) = (verified, &verify) {
                        if let Ok(Err(e)) = rx.recv() {
                            return Err(format!("page source: {e}"));
                        }
                    }
                    self.stats.resident_after = t.elapsed();
                    return Ok(());
                }
            }
            let busy = resumed.is_some() && !self.procs.is_empty()
                || self.procs.iter().any(|p| !p.retry.is_empty());
            let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
            if let Some(l) = &link {
                fds.push(l.as_fd());
            }
            fds.extend(self.procs.iter().map(|p| p.uffd.as_fd()));
            let ready =
                util::poll_in(&fds, if busy { 0 } else { 200 }).map_err(|e| e.to_string())?;
            let mut ready = ready.into_iter();
            if link.is_some() && ready.next() == Some(true) {
                let mut b = [0u8; 4096];
                let n = match link.as_mut().map(|l| l.read(&mut b)) {
                    Some(Ok(n)) => n,
                    // The restorer closes the link right after RESUMED.
                    Some(Err(_)) if resumed.is_some() => 0,
                    Some(Err(e)) => return Err(format!("restore link: {e}")),
                    None => 0,
                };
                if n == 0 {
                    if resumed.is_none() {
                        return Err(
                            "the restore ended before the tree was resumed (it failed, or was interrupted)"
                                .into(),
                        );
                    }
                    link = None;
                } else {
                    line.extend_from_slice(&b[..n]);
                    while let Some(i) = line.iter().position(|&c| c == b'\n') {
                        let l: Vec<u8> = line.drain(..=i).collect();
                        let text = String::from_utf8_lossy(&l).trim_end().to_string();
                        let answer = match self.command(&text) {
                            // Not answered: the restorer has closed the
                            // link already (an answer left unread there
                            // would turn into ECONNRESET here).
                            Ok(true) => {
                                resumed = Some(Instant::now());
                                log::info!(
                                    "lazy-pages: tree resumed, {} bytes to stream",
                                    self.procs.iter().map(|p| p.pending.bytes()).sum::<u64>()
                                );
                                continue;
                            }
                            Ok(false) => "OK\n".to_string(),
                            Err(e) => format!("ERR {e}\n"),
                        };
                        if let Some(l) = link.as_mut() {
                            let _ = l.write_all(answer.as_bytes());
                        }
                    }
                }
            }
            let readable: Vec<bool> = ready.collect();
            for (i, r) in readable.into_iter().enumerate() {
                if r || !self.procs[i].retry.is_empty() {
                    self.events(i)?;
                }
            }
            if resumed.is_some() && !self.procs.is_empty() {
                rr = (rr + 1) % self.procs.len();
                self.stream(rr)?;
            }
            self.reap()?;
        }
    }

    /// One line from the restorer; Ok(true) for RESUMED.
    fn command(&mut self, text: &str) -> Result<bool, String> {
        let w: Vec<&str> = text.split_whitespace().collect();
        match w.as_slice() {
            ["HELLO", pid] => {
                let pid: i32 = pid.parse().map_err(|_| "bad HELLO")?;
                self.restorer = Some(util::pidfd_open(Pid(pid)).map_err(|e| e.to_string())?);
                Ok(false)
            }
            ["RESUMED"] => Ok(true),
            ["ADD", image_pid, host, fd, ranges] => {
                let image_pid: u32 = image_pid.parse().map_err(|_| "bad pid")?;
                let host: u32 = host.parse().map_err(|_| "bad host pid")?;
                let fd: i32 = fd.parse().map_err(|_| "bad fd")?;
                let rpid = self.restorer.as_ref().ok_or("ADD before HELLO")?;
                let restorer_pid = pidfd_pid(rpid).ok_or("restorer gone")?;
                let u =
                    util::pidfd_getfd(rpid, Pid(restorer_pid), fd).map_err(|e| e.to_string())?;
                let link = std::fs::read_link(format!("/proc/self/fd/{}", u.as_raw_fd()))
                    .map_err(|e| e.to_string())?;
                if link.as_os_str() != "anon_inode:[userfaultfd]" {
                    return Err(format!("fd {fd} of the restorer is {}", link.display()));
                }
                let pending = self
                    .plan
                    .get(&image_pid)
                    .cloned()
                    .ok_or_else(|| format!("process {image_pid} is not in this image"))?;
                // The restorer registered what the same rule gives here.
                let mut regs = Vec::new();
                for r in ranges.split(',').filter(|r| !r.is_empty()) {
                    let (s, e) = r.split_once('-').ok_or("bad range")?;
                    let s = u64::from_str_radix(s, 16).map_err(|_| "bad range")?;
                    let e = u64::from_str_radix(e, 16).map_err(|_| "bad range")?;
                    regs.push((s, e));
                }
                let mut check = Pending::default();
                for &(s, e) in &regs {
                    for (ps, pe, pf, po) in pending.clone().take(s, e) {
                        check.insert(ps, pe, pf, po);
                    }
                }
                if check.bytes() != pending.bytes() {
                    return Err(format!(
                        "process {image_pid}: the registered areas do not cover its lazy pages \
                         (another image, or another stasis version?)"
                    ));
                }
                let pidfd = util::pidfd_open(Pid(host as i32)).map_err(|e| e.to_string())?;
                self.served.push((host, pidfd));
                let key = self.next_key;
                self.next_key += 1;
                if let Some(w) = self.watchdog.as_mut() {
                    w.say(&format!("ADD {key} {host} {}\n", u.as_raw_fd()))?;
                }
                log::debug!(
                    "lazy-pages: pid {image_pid} (host {host}): {} bytes lazy",
                    pending.bytes()
                );
                self.procs.push(Proc {
                    key,
                    image_pid,
                    uffd: u,
                    host,
                    pending,
                    retry: Vec::new(),
                    exited: false,
                });
                Ok(false)
            }
            _ => Err(format!("unknown request {text:?}")),
        }
    }

    /// Reads and handles every message of process `i`'s descriptor.
    fn events(&mut self, i: usize) -> Result<(), String> {
        let retry = std::mem::take(&mut self.procs[i].retry);
        for addr in retry {
            if let Step::Exited = self.fault(i, addr)? {
                self.procs[i].exited = true;
                return Ok(());
            }
        }
        loop {
            let m = uffd::read_msg(self.procs[i].uffd.as_fd()).map_err(|e| e.to_string())?;
            let Some(m) = m else { return Ok(()) };
            match m {
                Msg::Fault { addr } => {
                    self.stats.faults += 1;
                    if let Step::Exited = self.fault(i, addr)? {
                        self.procs[i].exited = true;
                        return Ok(());
                    }
                }
                Msg::Fork { fd } => {
                    self.stats.forks += 1;
                    let key = self.next_key;
                    self.next_key += 1;
                    if let Some(w) = self.watchdog.as_mut() {
                        w.say(&format!("ADD {key} 0 {}\n", fd.as_raw_fd()))?;
                    }
                    let p = &self.procs[i];
                    let child = Proc {
                        key,
                        image_pid: p.image_pid,
                        uffd: fd,
                        host: 0,
                        pending: p.pending.clone(),
                        retry: Vec::new(),
                        exited: false,
                    };
                    log::debug!(
                        "lazy-pages: pid {} forked: {} bytes pending in the child",
                        p.image_pid,
                        child.pending.bytes()
                    );
                    self.procs.push(child);
                }
                Msg::Remap { from, to, len } => self.procs[i].pending.remap(from, to, len),
                Msg::Remove { start, end } | Msg::Unmap { start, end } => {
                    self.procs[i].pending.take(start, end);
                }
                Msg::Other(e) => log::warn!("lazy-pages: unknown userfaultfd event {e:#x}"),
            }
        }
    }

    /// Answers a fault at `addr` in process `i`.
    fn fault(&mut self, i: usize, addr: u64) -> Result<Step, String> {
        let page = addr & !(PAGE_SIZE - 1);
        let p = &self.procs[i];
        if let Some((s, e)) = p.pending.find(page) {
            let win = page & !(FAULT_AROUND - 1);
            let (cs, ce) = (s.max(win), e.min(win + FAULT_AROUND));
            let step = self.fill(i, cs, ce, true)?;
            if let Step::Again = step {
                self.procs[i].retry.push(addr);
            }
            return Ok(step);
        }
        let fd = p.uffd.as_fd();
        match uffd::zeropage(fd, page, PAGE_SIZE).map_err(|e| e.to_string())? {
            Fill::Done(_) => self.stats.zero_pages += 1,
            Fill::Exists | Fill::Gone => {
                let _ = uffd::wake(fd, page, PAGE_SIZE);
            }
            Fill::Again => {
                self.procs[i].retry.push(addr);
                return Ok(Step::Again);
            }
            Fill::Exited => return Ok(Step::Exited),
        }
        Ok(Step::Ok)
    }

    /// Fills [s, e) (pending) of process `i` from the page source.
    fn fill(&mut self, i: usize, s: u64, e: u64, fault: bool) -> Result<Step, String> {
        let pieces = self.procs[i].pending.take(s, e);
        let mut result = Step::Ok;
        for &(ps, pe, pf, po) in &pieces {
            if !matches!(result, Step::Ok) {
                self.procs[i].pending.insert(ps, pe, pf, po);
                continue;
            }
            let len = (pe - ps) as usize;
            self.source
                .read(&self.files[pf], po, &mut self.buf[..len])
                .map_err(|e| format!("page source: {e}"))?;
            let fd = self.procs[i].uffd.as_fd();
            let mut cur = ps;
            while cur < pe {
                let n = (pe - cur).min(COPY_CHUNK);
                let at = (cur - ps) as usize;
                let got = uffd::copy(fd, cur, &self.buf[at..at + n as usize])
                    .map_err(|e| e.to_string())?;
                match got {
                    Fill::Done(d) if d > 0 => {
                        if fault {
                            self.stats.fault_bytes += d;
                        } else {
                            self.stats.streamed_bytes += d;
                        }
                        cur += d;
                    }
                    Fill::Done(_) => cur += n,
                    Fill::Exists => {
                        let _ = uffd::wake(fd, cur, PAGE_SIZE);
                        cur += PAGE_SIZE;
                    }
                    Fill::Gone => cur += PAGE_SIZE,
                    Fill::Again => {
                        result = Step::Again;
                        break;
                    }
                    Fill::Exited => return Ok(Step::Exited),
                }
            }
            if let Step::Again = result {
                self.procs[i].pending.insert(cur, pe, pf, po + (cur - ps));
            }
        }
        Ok(result)
    }

    /// Streams up to [`STREAM_STEP`] bytes of process `i`.
    fn stream(&mut self, i: usize) -> Result<(), String> {
        let Some((&s, &(e, _, _))) = self.procs[i].pending.0.iter().next() else {
            return Ok(());
        };
        let e = e.min(s + STREAM_STEP);
        // Test hook: STASIS_LAZY_THROTTLE_MS=N sleeps N ms per step, so
        // tests can act during the lazy phase (and kill the daemon in it).
        if let Some(ms) = std::env::var("STASIS_LAZY_THROTTLE_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            std::thread::sleep(Duration::from_millis(ms));
        }
        if let Step::Exited = self.fill(i, s, e, false)? {
            self.procs[i].exited = true;
        }
        Ok(())
    }

    /// Drops the processes that are done (every page in place) or gone.
    fn reap(&mut self) -> Result<(), String> {
        let mut k = 0;
        while k < self.procs.len() {
            let p = &self.procs[k];
            if p.exited || (p.pending.0.is_empty() && p.retry.is_empty()) {
                let p = self.procs.remove(k);
                if let Some(w) = self.watchdog.as_mut() {
                    w.say(&format!("DROP {}\n", p.key))?;
                }
                log::debug!(
                    "lazy-pages: pid {} (host {}): {}",
                    p.image_pid,
                    p.host,
                    if p.exited {
                        "gone"
                    } else {
                        "every page in place"
                    }
                );
                drop(p);
            } else {
                k += 1;
            }
        }
        Ok(())
    }
}

/// The PID a pidfd names (its fdinfo's `Pid:` line).
fn pidfd_pid(fd: &OwnedFd) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .filter(|&p: &i32| p > 0)
}
