//! criu's page server, for migration: `stasis page-server --address A
//! --port P -D DIR` receives one image over TCP and writes it into DIR;
//! `dump --page-server --address A --port P` sends it.
//!
//! The dump writes its image into its own `-D` as always (complete and
//! committed: nothing is lost if the transfer fails), then sends every
//! file of it. The server writes the files into a partial directory,
//! moves them into DIR with the inventory last (DIR is an image only once
//! everything arrived), verifies the whole image (every checksum) and
//! only then answers `OK`; the dump fails unless it reads that answer.
//!
//! Protocol (integers little endian): `STASISPS` and a u32 version (1);
//! per file: u8 1, u16 name length, the name (a plain file name), u64
//! length, the bytes; then u8 2 (commit). The server answers one line:
//! `OK` or `ERROR: reason`. Not encrypted (criu's `--tls` is refused).

use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

const MAGIC: &[u8; 8] = b"STASISPS";
const VERSION: u32 = 1;
const FILE: u8 = 1;
const COMMIT: u8 = 2;
/// Files in one image, at most (a guard against a hostile peer).
const MAX_FILES: usize = 3 * 4_194_304 + 1;

/// Where the page server is (criu's `--address`, default any, and `--port`).
pub fn endpoint(address: Option<&str>, port: u16) -> String {
    format!("{}:{port}", address.unwrap_or("0.0.0.0"))
}

/// Connects to the page server (before anything is frozen).
pub fn connect(address: Option<&str>, port: u16) -> Result<TcpStream> {
    let at = endpoint(Some(address.unwrap_or("127.0.0.1")), port);
    let addrs: Vec<_> = at
        .to_socket_addrs()
        .with_context(|| format!("page server {at}"))?
        .collect();
    TcpStream::connect(&addrs[..]).with_context(|| format!("page server {at}: connect"))
}

/// Sends the committed image in `dir`: every regular file, the inventory
/// last; waits for the server's verdict.
pub fn send(mut s: TcpStream, dir: &Path) -> Result<u64> {
    s.write_all(MAGIC)?;
    s.write_all(&VERSION.to_le_bytes())?;
    let mut names: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.ends_with(".img"))
        .collect();
    names.sort_by_key(|n| (n == stasis_image::INVENTORY_FILE, n.clone()));
    let mut sent = 0u64;
    for n in &names {
        let mut f = fs::File::open(dir.join(n)).with_context(|| format!("open {n}"))?;
        let len = f.metadata()?.len();
        s.write_all(&[FILE])?;
        s.write_all(&(n.len() as u16).to_le_bytes())?;
        s.write_all(n.as_bytes())?;
        s.write_all(&len.to_le_bytes())?;
        let copied = std::io::copy(&mut (&mut f).take(len), &mut s)?;
        if copied != len {
            bail!("{n}: changed while sending");
        }
        sent += len;
    }
    s.write_all(&[COMMIT])?;
    s.flush()?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    match line.trim_end() {
        "OK" => Ok(sent),
        "" => bail!("page server closed the connection without an answer"),
        other => bail!("page server: {other}"),
    }
}

/// Serves one dump: listens, accepts one connection, writes the image
/// into `dir`, verifies it and answers.
pub fn serve(address: Option<&str>, port: u16, dir: &Path) -> Result<()> {
    let at = endpoint(address, port);
    let l = TcpListener::bind(&at).with_context(|| format!("page server: bind {at}"))?;
    log::info!("page server listening on {at}");
    let (mut s, peer) = l.accept().context("page server: accept")?;
    log::info!("page server: connection from {peer}");
    let res = receive(&mut s, dir);
    let answer = match &res {
        Ok(n) => {
            log::info!(
                "page server: image of {n} bytes written to {}",
                dir.display()
            );
            "OK\n".to_string()
        }
        Err(e) => format!("ERROR: {e:#}\n"),
    };
    let _ = s.write_all(answer.as_bytes());
    res.map(|_| ())
}

fn receive(s: &mut TcpStream, dir: &Path) -> Result<u64> {
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    if &head[..8] != MAGIC || head[8..] != VERSION.to_le_bytes() {
        bail!("not a stasis dump (bad magic or version)");
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let inv = dir.join(stasis_image::INVENTORY_FILE);
    let _ = fs::remove_file(&inv);
    let partial = dir.join(format!(".stasis-partial-ps-{}", std::process::id()));
    let _ = fs::remove_dir_all(&partial);
    fs::DirBuilder::new().mode(0o700).create(&partial)?;
    let got = receive_files(s, &partial);
    let done = got.and_then(|(names, bytes)| {
        commit(&partial, dir, &names)?;
        Ok(bytes)
    });
    let _ = fs::remove_dir_all(&partial);
    let bytes = done?;
    stasis_image::chain::resolve_chain(&stasis_image::ImageDir::open(dir)?)
        .context("the received image does not verify")?;
    Ok(bytes)
}

fn receive_files(s: &mut TcpStream, partial: &Path) -> Result<(Vec<String>, u64)> {
    let (mut names, mut bytes) = (Vec::new(), 0u64);
    loop {
        let mut t = [0u8; 1];
        s.read_exact(&mut t)?;
        match t[0] {
            COMMIT => return Ok((names, bytes)),
            FILE if names.len() < MAX_FILES => {}
            FILE => bail!("too many files"),
            other => bail!("unknown message type {other}"),
        }
        let mut l2 = [0u8; 2];
        s.read_exact(&mut l2)?;
        let mut name = vec![0u8; u16::from_le_bytes(l2) as usize];
        s.read_exact(&mut name)?;
        let name = String::from_utf8(name).context("file name")?;
        if !stasis_image::is_plain_name(&name) && name != stasis_image::INVENTORY_FILE
            || names.contains(&name)
        {
            bail!("bad or repeated file name {name:?}");
        }
        let mut l8 = [0u8; 8];
        s.read_exact(&mut l8)?;
        let len = u64::from_le_bytes(l8);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(partial.join(&name))?;
        let n = std::io::copy(&mut s.take(len), &mut f)?;
        if n != len {
            bail!("{name}: connection closed after {n} of {len} bytes");
        }
        f.sync_all()?;
        bytes += len;
        names.push(name);
    }
}

/// Moves the received files into `dir`, the inventory last.
fn commit(partial: &Path, dir: &Path, names: &[String]) -> Result<()> {
    let inv = stasis_image::INVENTORY_FILE;
    if !names.iter().any(|n| n == inv) {
        bail!("no {inv} received");
    }
    for n in names
        .iter()
        .filter(|n| *n != inv)
        .chain(std::iter::once(&inv.to_string()))
    {
        fs::rename(partial.join(n), dir.join(n)).with_context(|| format!("rename {n}"))?;
    }
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}
