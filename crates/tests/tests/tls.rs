//! The page server over TLS (issue 13, criu's `--tls`): `dump
//! --page-server --tls` to `page-server --tls`, then a restore from what
//! arrived, the program checking its whole memory; `stasis migrate` over
//! TLS. Certificates are made here with `openssl` (a CA, server and
//! client certificates). Negative controls: a client certificate of
//! another CA, a server certificate naming another host (accepted only
//! with `--tls-no-cn-verify`), a plain client against a TLS server and a
//! TLS client against a plain one all fail with a clear error, the
//! target left running where the failure comes before the freeze.

#[path = "common/certs.rs"]
mod certs;
mod common;

use certs::{tls_args, Ca, Leaf};
use common::*;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The certificates of one test: CA `ca` signs the server's (for
/// 127.0.0.1) and the client's.
struct Pki {
    ca: Ca,
    server: Leaf,
    client: Leaf,
}

fn pki(work: &Work) -> Pki {
    let ca = Ca::new(&work.path("certs"), "ca");
    let server = ca.leaf("server", "127.0.0.1", "IP:127.0.0.1");
    let client = ca.leaf("client", "stasis-client", "DNS:stasis-client");
    Pki { ca, server, client }
}

/// A free port on 127.0.0.1.
fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port().to_string()
}

/// `stasis page-server --address 127.0.0.1 --port P -D DEST EXTRA` in a
/// thread, once it listens.
fn page_server(
    work: &Work,
    tag: &str,
    port: &str,
    dest: &Path,
    extra: &[String],
) -> JoinHandle<CmdOut> {
    let log = work.path(&format!("{tag}.log"));
    let mut cmd = Command::new(stasis_bin());
    cmd.args([
        "page-server",
        "--address",
        "127.0.0.1",
        "--port",
        port,
        "-D",
        s(dest),
    ])
    .args(["-o", s(&log), "-v4"])
    .args(extra);
    let (o, e) = (
        work.path(&format!("{tag}.stdout")),
        work.path(&format!("{tag}.stderr")),
    );
    let h = std::thread::spawn(move || run_captured(&mut cmd, &o, &e, Stdio::null(), T));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("listening")
    {
        if h.is_finished() || Instant::now() > deadline {
            let out = h.join().expect("page server thread");
            fail(work, format!("page server never listened: {out:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    h
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `dump --page-server --address 127.0.0.1 --port P EXTRA` of `p`.
fn dump_to(work: &Work, p: &Proc, port: &str, extra: &[String]) -> CmdOut {
    let mut args = vec!["--page-server", "--address", "127.0.0.1", "--port", port];
    args.extend(strs(extra));
    dump(work, p.pid, &args, T)
}

/// After a dump or migrate `out` to the page server `srv`: both
/// succeeded (else the program is killed and the test fails), and the
/// program restored from what arrived passes.
fn transferred(
    work: &Work,
    p: &mut Proc,
    out: &CmdOut,
    (srv, tag): (JoinHandle<CmdOut>, &str),
    dest: &Path,
) {
    let srv = srv.join().expect("page server thread");
    if !out.success() || !srv.success() {
        // SAFETY: plain kill of the program this test started.
        unsafe { libc::kill(p.pid, libc::SIGKILL) };
        fail(work, format!("transfer: {out:?}\npage server: {srv:?}"));
    }
    let log = fs::read_to_string(work.path(&format!("{tag}.log"))).unwrap_or_default();
    assert!(
        log.contains("TLS with"),
        "the page server did not log TLS: {log}"
    );
    restore_arrived(work, p, dest);
}

/// After a successful dump to the page server: the image that arrived in
/// `dest` replaces the dump's own, and the program restored from it
/// checks its memory.
fn restore_arrived(work: &Work, p: &mut Proc, dest: &Path) {
    check_gone(work, p);
    fs::remove_dir_all(work.img()).expect("remove the source image");
    fs::rename(dest, work.img()).expect("the arrived image");
    let mut r = restore_and_adopt(work, p.pid, &Opts::default());
    finish(work, &mut r, T).assert_pass(work);
}

/// A failed transfer: both ends failed, the dump's error is one line
/// with `expect` in it, the program runs on untouched and passes, and no
/// image arrived.
fn refused(
    work: &Work,
    mut p: Proc,
    dump: &CmdOut,
    server: JoinHandle<CmdOut>,
    dest: &Path,
    expect: &str,
) -> CmdOut {
    let srv = server.join().expect("page server thread");
    eprintln!("dump: {dump:?}\npage server: {srv:?}");
    assert!(!dump.success(), "the dump should have failed");
    assert!(
        !srv.success(),
        "the page server should have failed: {srv:?}"
    );
    let err = dump.stderr.trim();
    assert!(
        err.contains(expect) && err.lines().count() == 1,
        "want one line naming {expect:?}: {err}"
    );
    assert!(!dest.join("inventory.img").exists(), "an image arrived");
    step(
        work,
        "the program after a refused dump",
        p.check_running_untraced(),
    );
    finish(work, &mut p, T).assert_pass(work);
    srv
}

/// One transfer: a page server (its log `TAG.log`) with `server` into
/// WORK/dest, tp_memory dumped to it with `client`.
struct Attempt {
    p: Proc,
    out: CmdOut,
    srv: JoinHandle<CmdOut>,
    dest: std::path::PathBuf,
}

fn attempt(work: &Work, tag: &str, server: &[String], client: &[String]) -> Attempt {
    let (port, dest) = (free_port(), work.path("dest"));
    let srv = page_server(work, tag, &port, &dest, server);
    let p = memory(work);
    let out = dump_to(work, &p, &port, client);
    Attempt { p, out, srv, dest }
}

impl Attempt {
    fn refused(self, work: &Work, expect: &str) -> CmdOut {
        refused(work, self.p, &self.out, self.srv, &self.dest, expect)
    }

    fn transferred(mut self, work: &Work, tag: &str) {
        transferred(work, &mut self.p, &self.out, (self.srv, tag), &self.dest)
    }
}

fn memory(work: &Work) -> Proc {
    start_ready(
        work,
        Program::Bin("tp_memory"),
        &["--size-mib", "16"],
        &Opts::default(),
    )
}

#[test]
fn tls_page_server_dump_restore() {
    let work = Work::new("tls_dump");
    let k = pki(&work);
    let (server, client) = (tls_args(&k.ca, &k.server), tls_args(&k.ca, &k.client));
    attempt(&work, "ps", &server, &client).transferred(&work, "ps");
}

/// `stasis migrate --page-server --tls`: pre-copy rounds and the final
/// image over one TLS connection; the chain that arrived restores.
#[test]
fn tls_migrate_to_page_server() {
    let work = Work::new("tls_migrate");
    let k = pki(&work);
    let (port, dest) = (free_port(), work.path("dest"));
    let srv = page_server(&work, "ps", &port, &dest, &tls_args(&k.ca, &k.server));
    let mut p = memory(&work);
    let pid = p.pid.to_string();
    let img = work.img();
    let mut args = vec!["migrate", "-t", &pid, "-D", s(&img)];
    args.extend(["--page-server", "--address", "127.0.0.1", "--port", &port]);
    args.extend(["-o", "migrate.log", "-v4"]);
    let tls = tls_args(&k.ca, &k.client);
    args.extend(strs(&tls));
    fs::create_dir_all(work.img()).expect("img");
    let out = stasis(&work, &args, T);
    transferred(&work, &mut p, &out, (srv, "ps"), &dest);
    // What arrived (now in img) holds the pre-copy chain.
    assert!(
        work.img().join("round-1/inventory.img").exists(),
        "no pre-copy round arrived"
    );
}

/// A client certificate signed by another CA: the page server refuses it
/// during the handshake, before the dump freezes anything.
#[test]
fn negative_tls_client_of_other_ca() {
    let work = Work::new("tls_other_ca");
    let k = pki(&work);
    let other = Ca::new(&work.path("certs2"), "other-ca");
    let intruder = other.leaf("intruder", "stasis-client", "DNS:stasis-client");
    // The intruder trusts the right CA, but its own certificate is not of it.
    let (server, client) = (tls_args(&k.ca, &k.server), tls_args(&k.ca, &intruder));
    let srv = attempt(&work, "ps", &server, &client).refused(&work, "TLS");
    assert!(srv.stderr.contains("UnknownIssuer"), "{srv:?}");
}

/// A client certificate of the right CA but revoked: a page server
/// given the CA's revocation list (`--tls-cacrl`) refuses it; the same
/// client is accepted by one without the list (the list is what refuses).
#[test]
fn negative_tls_revoked_client() {
    let work = Work::new("tls_crl");
    let k = pki(&work);
    let crl = k.ca.revoke(&k.client);
    let (server, client) = (tls_args(&k.ca, &k.server), tls_args(&k.ca, &k.client));
    let mut with_crl = server.clone();
    with_crl.extend(["--tls-cacrl".to_string(), s(&crl).to_string()]);
    let srv = attempt(&work, "ps", &with_crl, &client).refused(&work, "TLS");
    assert!(srv.stderr.contains("Revoked"), "{srv:?}");
    attempt(&work, "ps2", &server, &client).transferred(&work, "ps2");
}

/// A server certificate naming another host: refused by the client,
/// before the freeze; accepted with `--tls-no-cn-verify`.
#[test]
fn negative_tls_server_name_mismatch() {
    let work = Work::new("tls_cn");
    let k = pki(&work);
    let wrong =
        k.ca.leaf("wrong", "elsewhere.example", "DNS:elsewhere.example");
    let (server, mut client) = (tls_args(&k.ca, &wrong), tls_args(&k.ca, &k.client));
    attempt(&work, "ps", &server, &client).refused(&work, "not valid for name");
    // The same certificate with --tls-no-cn-verify: CA checked, name not.
    client.push("--tls-no-cn-verify".into());
    attempt(&work, "ps2", &server, &client).transferred(&work, "ps2");
}

/// A TLS client against a plain page server fails at connect (before the
/// freeze); a plain client against a TLS server is refused by the server
/// (the dump, with --leave-running, fails and the program runs on).
#[test]
fn negative_tls_plain_mismatch() {
    let work = Work::new("tls_plain");
    let k = pki(&work);
    let (server, client) = (tls_args(&k.ca, &k.server), tls_args(&k.ca, &k.client));
    attempt(&work, "ps", &[], &client).refused(&work, "does not speak TLS");
    let plain = ["--leave-running".to_string()];
    let srv = attempt(&work, "ps2", &server, &plain).refused(&work, "page server");
    assert!(srv.stderr.contains("does not speak TLS"), "{srv:?}");
}

/// Bad TLS files are refused by name before anything is done.
#[test]
fn negative_tls_missing_files() {
    let work = Work::new("tls_files");
    let k = pki(&work);
    let mut p = memory(&work);
    let mut extra = tls_args(&k.ca, &k.client);
    extra[2] = s(&work.path("no-such-ca.pem")).to_string();
    let out = dump_to(&work, &p, &free_port(), &extra);
    assert!(!out.success());
    assert!(out.stderr.contains("--tls-cacert"), "{}", out.stderr);
    step(
        &work,
        "the program after a refused dump",
        p.check_running_untraced(),
    );
    finish(&work, &mut p, T).assert_pass(&work);
}
