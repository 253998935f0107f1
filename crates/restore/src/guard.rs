//! The all-or-nothing guarantee of a tree restore: [`TreeGuard`].

use stasis_sys::{spawn, util, Pid};

/// Kills and reaps every process the restore created unless disarmed.
///
/// Invariant: a failed restore leaves no process of the tree behind, not
/// even a zombie. While the tree is built the restorer is a child
/// subreaper, so the orphans of every killed process are reparented to it
/// (never to whoever runs stasis) and reaped here. Only processes that are
/// descendants of our root, or our own children, *and* carry a PID of the
/// image are killed: a PID held by a foreign process (the reason a fork
/// failed) is never touched.
///
/// With `--restore-sibling` the first process forked is our parent's child
/// (CLONE_PARENT), so it and the orphans of its tree go to the caller's
/// reaper, not to us. Then the tree is first stopped (SIGSTOP until a scan
/// finds no new process: a stopped process forks no more), then killed;
/// the root only through its pidfd (the caller may reap it, and its PID be
/// reused, at any time). No process is left alive; the root, and any
/// process we did not trace, is left as a zombie for the caller to reap,
/// as criu leaves it.
pub(crate) struct TreeGuard {
    pub(crate) armed: bool,
    pub(crate) root: Option<Pid>,
    /// Traced tasks: (process, its threads other than the leader).
    pub(crate) traced: Vec<(Pid, Vec<Pid>)>,
    /// Every PID of the image (processes and zombies).
    pub(crate) pids: std::collections::HashSet<i32>,
    /// The subreaper flag to put back when the guard ends.
    pub(crate) was_subreaper: bool,
    /// `--restore-sibling`: a pidfd of the root (the process forked first).
    pub(crate) sibling: Option<std::os::fd::OwnedFd>,
}

impl TreeGuard {
    /// Descendants of `p` (not `p`) with image PIDs, as /proc shows them now.
    fn descendants(&self, p: Pid, out: &mut Vec<Pid>) {
        let mut queue = vec![p];
        while let Some(q) = queue.pop() {
            let tasks = stasis_proc::list_tasks(q.0 as u32).unwrap_or_default();
            for t in tasks {
                for c in stasis_proc::read_children(q.0 as u32, t).unwrap_or_default() {
                    let c = Pid(c as i32);
                    if self.pids.contains(&c.0) && !out.contains(&c) {
                        out.push(c);
                        queue.push(c);
                    }
                }
            }
        }
    }

    /// Sibling mode: stops the root and its descendants until a scan finds
    /// none it has not stopped, then kills them all; returns them.
    fn stop_then_kill(&self, root: Pid, root_fd: &std::os::fd::OwnedFd) -> Vec<Pid> {
        let _ = util::pidfd_kill(root_fd, libc::SIGSTOP);
        wait_stopped(&[root]);
        let mut ours: Vec<Pid> = Vec::new();
        loop {
            let mut now = Vec::new();
            self.descendants(root, &mut now);
            let new: Vec<Pid> = now.into_iter().filter(|p| !ours.contains(p)).collect();
            if new.is_empty() {
                break;
            }
            for &p in &new {
                let _ = util::kill(p, libc::SIGSTOP);
            }
            // Only a process that has stopped forks no more: the next scan
            // then sees every child it made.
            wait_stopped(&new);
            ours.extend(new);
        }
        let _ = util::pidfd_kill(root_fd, libc::SIGKILL);
        for &p in &ours {
            let _ = util::kill(p, libc::SIGKILL);
        }
        ours
    }

    /// Sibling mode: no process of the tree is our child; reap those we
    /// trace (the rest, and the root, go to the caller's reaper as
    /// zombies) and wait until none is alive.
    fn kill_siblings(&mut self, root: Pid, root_fd: &std::os::fd::OwnedFd) {
        let mut ours = self.stop_then_kill(root, root_fd);
        for (p, threads) in self.traced.iter().rev() {
            for &t in threads {
                reap_traced(t);
            }
            reap_traced(*p);
        }
        // The root's PID may be reused once the caller reaps it: its pidfd
        // says when it is gone.
        let _ = util::wait_all_exit(std::slice::from_ref(root_fd));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !ours.is_empty() {
            ours.retain(|&p| util::is_alive(p));
            if std::time::Instant::now() > deadline {
                log::warn!("pid {root}: processes of the failed restore still exist: {ours:?}");
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn kill_all(&mut self) {
        let Some(root) = self.root else { return };
        log::warn!("pid {root}: killing the partly restored tree");
        if let Some(fd) = self.sibling.take() {
            self.kill_siblings(root, &fd);
            return;
        }
        // Found before anything dies, while every process is still where
        // the restore put it.
        let mut ours = vec![root];
        self.descendants(root, &mut ours);
        for &p in &ours {
            let _ = util::kill(p, libc::SIGKILL);
        }
        for (p, threads) in self.traced.iter().rev() {
            if *p != root {
                spawn::kill_and_reap_threads(*p, threads);
            }
        }
        let root_threads = self
            .traced
            .iter()
            .find(|(p, _)| *p == root)
            .map(|(_, t)| t.clone())
            .unwrap_or_default();
        spawn::kill_and_reap_threads(root, &root_threads);
        // Orphans come to us as their parents die: kill (a fork may have
        // been in flight) and reap them until none of ours is left.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let mine: Vec<Pid> = util::own_children()
                .into_iter()
                .filter(|c| self.pids.contains(&c.0))
                .collect();
            for &c in &mine {
                if !ours.contains(&c) {
                    ours.push(c);
                }
                self.descendants(c, &mut ours);
            }
            for &c in &ours {
                let _ = util::kill(c, libc::SIGKILL);
            }
            for &c in &mine {
                let _ = util::waitpid(c, libc::WNOHANG | libc::__WALL);
            }
            ours.retain(|&p| util::pid_exists(p));
            // Done only when a scan after the last death finds no child of
            // ours either: a process is reparented to us before its dead
            // parent can be reaped, so nothing can appear later.
            if ours.is_empty()
                && !util::own_children()
                    .iter()
                    .any(|c| self.pids.contains(&c.0))
            {
                break;
            }
            if std::time::Instant::now() > deadline {
                log::warn!("pid {root}: processes of the failed restore still exist: {ours:?}");
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

impl Drop for TreeGuard {
    fn drop(&mut self) {
        if self.armed {
            self.kill_all();
        }
        if !self.was_subreaper {
            let _ = util::set_child_subreaper(false);
        }
    }
}

/// Waits for a tracee of ours that was sent SIGKILL until its exit is
/// reported (a stop reported first, e.g. of the SIGSTOP that froze it, is
/// passed over); then it goes to its real parent, if that is not us.
fn reap_traced(p: Pid) {
    while let Ok(Some(s)) = util::waitpid(p, libc::__WALL) {
        if libc::WIFEXITED(s) || libc::WIFSIGNALED(s) {
            break;
        }
    }
}

/// Waits (up to 2 s) until each of `pids` is stopped, traced-stopped, a
/// zombie or gone.
fn wait_stopped(pids: &[Pid]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    for &p in pids {
        while !matches!(util::proc_state(p), None | Some('T' | 't' | 'Z' | 'X')) {
            if std::time::Instant::now() > deadline {
                log::warn!("pid {p}: does not stop");
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
