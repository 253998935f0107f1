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
//! The connection carries one image stream (see `stream.rs`; an image
//! and, for `stasis migrate`, the pre-copy images of its chain in
//! subdirectories). The server answers one line: `OK` or `ERROR: reason`.
//! Not encrypted (criu's `--tls` is refused).

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;

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
pub fn send(s: TcpStream, dir: &Path) -> Result<u64> {
    let mut tx = crate::stream::Sender::new(s)?;
    tx.send_dir(dir, None)?;
    finish(tx)
}

/// Ends the stream and waits for the server's verdict; returns the bytes
/// sent.
pub fn finish(tx: crate::stream::Sender<TcpStream>) -> Result<u64> {
    let (s, sent) = tx.finish()?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    match line.trim_end() {
        "OK" => Ok(sent),
        "" => bail!("page server closed the connection without an answer"),
        other => bail!("page server: {other}"),
    }
}

/// Listens at `address` (default any) and `port` (0: a free one).
pub fn listen(address: Option<&str>, port: u16) -> Result<TcpListener> {
    let at = endpoint(address, port);
    let l = TcpListener::bind(&at).with_context(|| format!("page server: bind {at}"))?;
    log::info!("page server listening on {:?}", l.local_addr().ok());
    Ok(l)
}

/// [`serve`] on a socket already listening.
pub fn serve_on(l: &TcpListener, dir: &Path) -> Result<()> {
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
    let bytes = crate::stream::receive(s, dir)?;
    stasis_image::chain::resolve_chain(&stasis_image::ImageDir::open(dir)?)
        .context("the received image does not verify")?;
    Ok(bytes)
}
