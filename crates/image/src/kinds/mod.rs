//! Validation of each kind of open file, one module per kind. The image
//! type of a kind is its variant of [`FdKind`] (in model.rs: one enum,
//! serialized with a `type` tag, so the JSON names every kind); the rules
//! serde cannot check live here, next to the kind's name.
//!
//! | kind (`FdKind`) | module | rules |
//! |---|---|---|
//! | `Regular` | [`regular`] | path length |
//! | `CharDevice` | [`chardev`] | path length |
//! | `Path` | [`opath`] | path length, O_PATH in flags |
//! | `Pipe` | [`pipe`] | waiting bytes within capacity, capacity capped |
//! | `Fifo` | [`fifo`] | path length, as a pipe |
//! | `Saved` | [`saved`] | id set; `SavedFile` records (extents, owner, times), their page-file spans, references (the deleted cwd too) |
//! | `UnixSocket` | [`unix`] | stream, dgram or seqpacket; queued bytes capped; shutdown mode |
//! | `Epoll` | [`epoll`] | targets are other descriptors of the process |
//! | `Inotify` | [`inotify`] | watches: wd ascending, mount point, handle size |
//! | `Fanotify` | [`fanotify`] | marks: mount point, handle size, a mask |
//! | `UnixBound` | [`unixbound`] | type; an absolute path or an abstract name; queued bytes capped |
//! | `TcpSocket`, `UdpSocket`, `TcpConnection` | [`inet`] | family, addresses of that family, option names, device name; a connection's state ESTABLISHED, queue sizes, window scales |
//! | `NetlinkSocket`, `PacketSocket`, `RawSocket` | [`netsk`] | socket type, option names; netlink protocol and groups; packet memberships and filter size; raw family and addresses, ICMP filter size |
//! | `ProcFile` | [`procfile`] | path length, under `/proc/PID` of its `pid` |
//! | `Pidfd` | [`pidfd`] | pid > 0 |
//! | `Mqueue` | sysvipc | a queue name (no '/', 1 to 255 bytes) |
//! | `PtyMaster`, `PtySlave`, `DevTty` | [`pty`] | index below the kernel's limit, control characters, termios speeds |
//! | `EventFd`, `TimerFd`, `SignalFd` | none | nothing beyond serde |
//!
//! Adding a kind: its variant in `FdKind`, a module here if it has rules,
//! and one arm in [`validate_fd`].

mod chardev;
mod epoll;
pub mod fanotify;
mod fifo;
pub mod inet;
pub mod inotify;
pub mod netsk;
mod opath;
mod pidfd;
mod pipe;
mod procfile;
pub mod pty;
pub(crate) mod regular;
pub(crate) mod saved;
pub mod unix;
mod unixbound;

use crate::checker::Checker;
use crate::error::Result;
use crate::model::{FdEntry, FdKind, ProcessImage};

/// The rules of descriptor `f` (entry `i` of `img.files`), by kind.
pub(crate) fn validate_fd(
    c: &Checker<'_>,
    img: &ProcessImage,
    i: usize,
    f: &FdEntry,
) -> Result<()> {
    let field = format!("files[{i}].kind");
    match &f.kind {
        FdKind::Regular { file, .. } => regular::validate(c, &field, file),
        FdKind::CharDevice { path, .. } => chardev::validate(c, &field, path),
        FdKind::Saved { id, .. } => saved::validate_fd(c, &field, *id),
        FdKind::Path { path, flags, .. } => opath::validate(c, &field, path, *flags),
        FdKind::Fifo {
            path,
            data,
            capacity,
            ..
        } => fifo::validate(c, &field, path, data, *capacity),
        FdKind::EventFd { .. } | FdKind::TimerFd { .. } | FdKind::SignalFd { .. } => Ok(()),
        FdKind::ExternalFile { key, .. } => c.ensure(
            key.strip_prefix("file[")
                .and_then(|k| k.strip_suffix(']'))
                .and_then(|k| k.split_once(':'))
                .is_some_and(|(m, i)| {
                    u64::from_str_radix(m, 16).is_ok() && u64::from_str_radix(i, 16).is_ok()
                }),
            || format!("{field}.key: {key:?} is not file[MNT_ID:INODE]"),
        ),
        FdKind::Epoll { targets, .. } => epoll::validate(c, &field, img, f.fd, targets),
        FdKind::UnixSocket {
            sock_type,
            queued,
            shutdown,
            name,
            ext_peer,
            external,
            peercred,
            connector,
            ..
        } => {
            c.ensure(
                connector
                    .as_ref()
                    .is_none_or(|p| p.groups.len() <= unix::MAX_GROUPS),
                || format!("{field}.connector.groups: more than {}", unix::MAX_GROUPS),
            )?;
            c.ensure(
                ext_peer.is_empty()
                    || (*sock_type == libc::SOCK_DGRAM as u32
                        && queued.is_empty()
                        && ext_peer.len() <= 108),
                || format!("{field}.ext_peer: only an idle datagram socket has one"),
            )?;
            c.ensure(
                !*external
                    || (*sock_type == libc::SOCK_STREAM as u32
                        && queued.is_empty()
                        && ext_peer.is_empty()),
                || format!("{field}.external: only an idle stream socket is external"),
            )?;
            unix::validate(
                c,
                &field,
                *sock_type,
                queued,
                *shutdown,
                name,
                peercred.as_ref(),
            )
        }
        FdKind::Pipe { data, capacity, .. } => pipe::validate(c, &field, data, *capacity),
        FdKind::Inotify { watches, .. } => inotify::validate(c, &field, watches),
        FdKind::Fanotify { marks, .. } => fanotify::validate(c, &field, marks),
        FdKind::UnixBound {
            sock_type,
            name,
            queued,
            ..
        } => unixbound::validate(c, &field, *sock_type, name, queued),
        FdKind::TcpSocket {
            family,
            local,
            opts,
            device,
            extra,
            ..
        } => inet::validate(c, &field, *family, [local.as_ref(), None], opts, device)
            .and_then(|()| inet::validate_extra(c, &field, extra)),
        FdKind::TcpConnection {
            family,
            local,
            peer,
            stream,
            opts,
            device,
            extra,
            ..
        } => {
            inet::validate(c, &field, *family, [Some(local), Some(peer)], opts, device)?;
            inet::validate_extra(c, &field, extra)?;
            stream
                .as_ref()
                .map_or(Ok(()), |s| inet::validate_stream(c, &field, s))
        }
        FdKind::UdpSocket {
            family,
            local,
            peer,
            opts,
            device,
            queued,
            extra,
            ..
        } => inet::validate(
            c,
            &field,
            *family,
            [local.as_ref(), peer.as_ref()],
            opts,
            device,
        )
        .and_then(|()| inet::validate_queued(c, &field, queued))
        .and_then(|()| inet::validate_extra(c, &field, extra)),
        FdKind::NetlinkSocket {
            sock_type,
            protocol,
            groups,
            opts,
            filter,
            ..
        } => netsk::validate_netlink(c, &field, *sock_type, *protocol, groups, opts)
            .and_then(|()| netsk::validate_filter(c, &field, filter)),
        FdKind::PacketSocket {
            sock_type,
            members,
            opts,
            filter,
            ..
        } => netsk::validate_packet(c, &field, *sock_type, members, opts, filter),
        FdKind::RawSocket {
            family,
            sock_type,
            local,
            peer,
            opts,
            device,
            icmp_filter,
            extra,
            ..
        } => netsk::validate_raw(
            c,
            &field,
            *family,
            *sock_type,
            [local.as_ref(), peer.as_ref()],
            opts,
            device,
            icmp_filter,
        )
        .and_then(|()| inet::validate_extra(c, &field, extra)),
        FdKind::ProcFile { path, pid, .. } => procfile::validate(c, &field, path, *pid),
        FdKind::Pidfd { pid, .. } => pidfd::validate(c, &field, *pid),
        FdKind::PtyMaster { index, pty, .. } => pty::validate(c, &field, *index, Some(pty)),
        FdKind::PtySlave { index, .. } | FdKind::DevTty { index, .. } => {
            pty::validate(c, &field, *index, None)
        }
        FdKind::Mqueue { name, .. } => c.ensure(crate::sysvipc::mq_name_ok(name), || {
            format!("{field}: POSIX message queue name {name:?}")
        }),
    }
}
