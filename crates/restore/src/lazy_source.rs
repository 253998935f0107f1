//! Where the lazy-pages daemon reads pages: the local page files, or a
//! remote page server (criu's `dump --lazy-pages --address A --port P`,
//! read by `lazy-pages --page-server --address A --port P`).
//!
//! Remote protocol (TCP, integers little endian): the client sends
//! `STASISLP` and a u32 version (1), then requests: u8 1 (READ), u16 name
//! length, name (a plain `pages-*.img` file name of the dump's image), u64
//! offset, u64 length (at most [`MAX_READ`]) -> u8 0 and the bytes; u8 2
//! (SIZE), u16 length, name -> u8 0 and a u64; u8 3 (DONE) -> u8 0, and
//! the server ends. An error is u8 1, u16 length and a message. With
//! criu's `--tls` the connection is TLS, both ends authenticated (see
//! `tls.rs`).

use crate::tls::Conn;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"STASISLP";
const VERSION: u32 = 1;
const READ: u8 = 1;
const SIZE: u8 = 2;
const DONE: u8 = 3;
/// Largest single read a client may ask for.
pub const MAX_READ: u64 = 64 << 20;

/// A page source: reads bytes of a page file, by name.
pub enum Source {
    Local {
        dir: PathBuf,
        files: Vec<(String, File)>,
    },
    Remote {
        stream: Conn,
        at: String,
    },
}

fn plain_pages_name(name: &str) -> bool {
    stasis_image::is_plain_name(name) && name.starts_with("pages-") && name.ends_with(".img")
}

impl Source {
    /// The page files in `dir`.
    pub fn local(dir: &Path) -> Source {
        Source::Local {
            dir: dir.to_path_buf(),
            files: Vec::new(),
        }
    }

    /// Connects to the lazy page server at `address:port` (over TLS if
    /// `tls` is given).
    pub fn remote(
        address: &str,
        port: u16,
        tls: Option<&crate::tls::TlsOptions>,
    ) -> Result<Source, String> {
        let cfg = tls.map(|t| t.client_config()).transpose()?;
        let at = format!("{address}:{port}");
        let addrs: Vec<_> = at
            .to_socket_addrs()
            .map_err(|e| format!("page server {at}: {e}"))?
            .collect();
        let tcp = TcpStream::connect(&addrs[..])
            .map_err(|e| format!("page server {at}: connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let mut stream = Conn::connect(tcp, address, cfg.as_ref())
            .map_err(|e| format!("page server {at}: {e}"))?;
        if cfg.is_some() {
            log::info!("page server {at}: TLS, its certificate verified");
        }
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&VERSION.to_le_bytes());
        stream
            .write_all(&hello)
            .map_err(|e| format!("page server {at}: {e}"))?;
        Ok(Source::Remote { stream, at })
    }

    /// Reads `buf.len()` bytes of page file `name` at byte `off`.
    pub fn read(&mut self, name: &str, off: u64, buf: &mut [u8]) -> Result<(), String> {
        match self {
            Source::Local { dir, files } => {
                let i = match files.iter().position(|(n, _)| n == name) {
                    Some(i) => i,
                    None => {
                        let p = dir.join(name);
                        let f = File::open(&p).map_err(|e| format!("open {}: {e}", p.display()))?;
                        files.push((name.to_string(), f));
                        files.len() - 1
                    }
                };
                files[i]
                    .1
                    .read_exact_at(buf, off)
                    .map_err(|e| format!("read {name} at {off}: {e}"))
            }
            Source::Remote { stream, at } => {
                let mut req = vec![READ];
                push_name(&mut req, name);
                req.extend_from_slice(&off.to_le_bytes());
                req.extend_from_slice(&(buf.len() as u64).to_le_bytes());
                let r = stream
                    .write_all(&req)
                    .and_then(|_| answer(stream))
                    .map_err(|e| format!("page server {at}: {e}"))?;
                r.map_err(|e| format!("page server {at}: {e}"))?;
                stream
                    .read_exact(buf)
                    .map_err(|e| format!("page server {at}: {name} at {off}: {e}"))
            }
        }
    }

    /// The size of page file `name`.
    pub fn size(&mut self, name: &str) -> Result<u64, String> {
        match self {
            Source::Local { dir, .. } => std::fs::metadata(dir.join(name))
                .map(|m| m.len())
                .map_err(|e| format!("{name}: {e}")),
            Source::Remote { stream, at } => {
                let mut req = vec![SIZE];
                push_name(&mut req, name);
                let mut b = [0u8; 8];
                stream
                    .write_all(&req)
                    .and_then(|_| answer(stream))
                    .map_err(|e| format!("page server {at}: {e}"))?
                    .map_err(|e| format!("page server {at}: {e}"))?;
                stream
                    .read_exact(&mut b)
                    .map_err(|e| format!("page server {at}: {e}"))?;
                Ok(u64::from_le_bytes(b))
            }
        }
    }

    /// Tells a remote server that every page arrived (it ends).
    pub fn done(&mut self) {
        if let Source::Remote { stream, .. } = self {
            if stream.write_all(&[DONE]).is_ok() {
                let _ = answer(stream);
            }
            stream.close();
        }
    }
}

fn push_name(req: &mut Vec<u8>, name: &str) {
    req.extend_from_slice(&(name.len() as u16).to_le_bytes());
    req.extend_from_slice(name.as_bytes());
}

/// Reads a status byte: Ok(Ok) for 0, Ok(Err(message)) for an error.
fn answer(s: &mut Conn) -> std::io::Result<Result<(), String>> {
    let mut st = [0u8; 1];
    s.read_exact(&mut st)?;
    if st[0] == 0 {
        return Ok(Ok(()));
    }
    let mut l = [0u8; 2];
    s.read_exact(&mut l)?;
    let mut m = vec![0u8; u16::from_le_bytes(l) as usize];
    s.read_exact(&mut m)?;
    Ok(Err(String::from_utf8_lossy(&m).into_owned()))
}

fn error(s: &mut Conn, msg: &str) -> std::io::Result<()> {
    let m = &msg.as_bytes()[..msg.len().min(1000)];
    let mut b = vec![1u8];
    b.extend_from_slice(&(m.len() as u16).to_le_bytes());
    b.extend_from_slice(m);
    s.write_all(&b)
}

/// The page server of `dump --lazy-pages`: listens at `address:port`,
/// serves the page files of the image in `dir` to one lazy-pages daemon
/// until it says DONE (Ok) or goes away (an error: pages were left);
/// over TLS if `tls` is given.
pub fn serve(
    address: &str,
    port: u16,
    dir: &Path,
    tls: Option<&crate::tls::TlsOptions>,
) -> Result<u64, String> {
    let at = format!("{address}:{port}");
    let cfg: Option<Arc<_>> = tls
        .map(|t| t.server_config())
        .transpose()
        .map_err(|e| format!("lazy page server: {e}"))?;
    let l = TcpListener::bind(&at).map_err(|e| format!("lazy page server: bind {at}: {e}"))?;
    log::info!("lazy page server listening on {at}");
    let (tcp, peer) = l
        .accept()
        .map_err(|e| format!("lazy page server: accept: {e}"))?;
    let _ = tcp.set_nodelay(true);
    log::info!("lazy page server: connection from {peer}");
    let mut s =
        Conn::accept(tcp, cfg.as_ref()).map_err(|e| format!("lazy page server: {peer}: {e}"))?;
    if cfg.is_some() {
        log::info!("lazy page server: TLS with {peer}, its certificate verified");
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head)
        .map_err(|e| format!("lazy page server: {e}"))?;
    if &head[..8] != MAGIC || head[8..] != VERSION.to_le_bytes() {
        return Err(
            "lazy page server: not a stasis lazy-pages daemon (bad magic or version)".into(),
        );
    }
    let mut files: Vec<(String, File)> = Vec::new();
    let mut sent = 0u64;
    let mut buf = Vec::new();
    loop {
        let mut op = [0u8; 1];
        if s.read_exact(&mut op).is_err() {
            return Err(format!(
                "lazy page server: the lazy-pages daemon went away after {sent} bytes, before it had every page"
            ));
        }
        let io = |e: std::io::Error| format!("lazy page server: {e}");
        match op[0] {
            DONE => {
                let _ = s.write_all(&[0]);
                s.close();
                log::info!("lazy page server: done, {sent} bytes served");
                return Ok(sent);
            }
            READ | SIZE => {}
            other => return Err(format!("lazy page server: unknown request {other}")),
        }
        let mut l2 = [0u8; 2];
        s.read_exact(&mut l2).map_err(io)?;
        let mut name = vec![0u8; u16::from_le_bytes(l2) as usize];
        s.read_exact(&mut name).map_err(io)?;
        let name = String::from_utf8_lossy(&name).into_owned();
        let (mut off, mut len) = (0u64, 0u64);
        if op[0] == READ {
            let mut b = [0u8; 16];
            s.read_exact(&mut b).map_err(io)?;
            off = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
            len = u64::from_le_bytes(b[8..].try_into().unwrap_or_default());
        }
        if !plain_pages_name(&name) {
            error(&mut s, &format!("{name:?} is not a page file name")).map_err(io)?;
            continue;
        }
        let i = match files.iter().position(|(n, _)| *n == name) {
            Some(i) => i,
            None => match File::open(dir.join(&name)) {
                Ok(f) => {
                    files.push((name.clone(), f));
                    files.len() - 1
                }
                Err(e) => {
                    error(&mut s, &format!("open {name}: {e}")).map_err(io)?;
                    continue;
                }
            },
        };
        if op[0] == SIZE {
            match files[i].1.metadata() {
                Ok(m) => {
                    let mut b = vec![0u8];
                    b.extend_from_slice(&m.len().to_le_bytes());
                    s.write_all(&b).map_err(io)?;
                }
                Err(e) => error(&mut s, &format!("{name}: {e}")).map_err(io)?,
            }
            continue;
        }
        if len > MAX_READ {
            error(&mut s, &format!("read of {len} bytes is too large")).map_err(io)?;
            continue;
        }
        buf.resize(len as usize + 1, 0);
        match files[i].1.read_exact_at(&mut buf[1..], off) {
            Ok(()) => {
                buf[0] = 0;
                s.write_all(&buf).map_err(io)?;
                sent += len;
            }
            Err(e) => error(&mut s, &format!("read {name} at {off}: {e}")).map_err(io)?,
        }
    }
}
