//! X.509 test certificates for the page server's TLS, made with the
//! `openssl` command line tool in a test's work directory: a CA, and
//! leaf certificates it signs (both serverAuth and clientAuth), each
//! naming the given subjectAltName.

// Each test file uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA in `dir`: `NAME.pem` (certificate) and `NAME.key`.
pub struct Ca {
    dir: PathBuf,
    name: String,
}

/// A leaf: certificate and key files.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `openssl req` for a new P-256 key `NAME.key`, subject CN `cn`, with
/// `extra` (the output and its kind).
fn req(dir: &Path, name: &str, cn: &str, extra: &[&str]) {
    let (key, subj) = (format!("{name}.key"), format!("/CN={cn}"));
    let mut args = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
    ];
    args.extend(["-nodes", "-keyout", &key, "-subj", &subj]);
    args.extend(extra);
    openssl(dir, &args);
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        std::fs::create_dir_all(dir).expect("certs dir");
        let pem = format!("{name}.pem");
        req(
            dir,
            name,
            name,
            &[
                "-x509",
                "-out",
                &pem,
                "-days",
                "2",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Ca {
            dir: dir.to_path_buf(),
            name: name.to_string(),
        }
    }

    /// The CA's certificate (for `--tls-cacert`).
    pub fn cert(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// A leaf `NAME` signed by this CA, CN `cn`, subjectAltName `san`
    /// (`IP:127.0.0.1`, `DNS:x.example`).
    pub fn leaf(&self, name: &str, cn: &str, san: &str) -> Leaf {
        let ext = format!("{name}.ext");
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={san}\n"
            ),
        )
        .expect("ext file");
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        req(&self.dir, name, cn, &["-out", &csr]);
        // A serial of its own (the name's bytes), for revocation lists.
        let serial: String = "0x"
            .chars()
            .chain(
                name.bytes()
                    .flat_map(|b| format!("{b:02x}").chars().collect::<Vec<_>>()),
            )
            .collect();
        let (ca_pem, ca_key) = (format!("{}.pem", self.name), format!("{}.key", self.name));
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-set_serial",
                &serial,
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ],
        );
        Leaf {
            cert: self.dir.join(pem),
            key: self.dir.join(key),
        }
    }

    /// A revocation list of this CA revoking `leaf` (`openssl ca`).
    pub fn revoke(&self, leaf: &Leaf) -> PathBuf {
        let d = &self.dir;
        std::fs::write(
            d.join("ca.cnf"),
            "[ca]\ndefault_ca = x\n[x]\ndatabase = index.txt\ncrlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 2\n",
        )
        .expect("ca.cnf");
        std::fs::write(d.join("index.txt"), "").expect("index.txt");
        std::fs::write(d.join("crlnumber"), "01\n").expect("crlnumber");
        let (pem, key) = (format!("{}.pem", self.name), format!("{}.key", self.name));
        let cert = leaf.cert.to_str().expect("utf-8 path");
        let common = ["-config", "ca.cnf", "-cert", &pem, "-keyfile", &key];
        let mut args = vec!["ca", "-revoke", cert];
        args.extend(common);
        openssl(d, &args);
        let mut args = vec!["ca", "-gencrl", "-out", "crl.pem"];
        args.extend(common);
        openssl(d, &args);
        d.join("crl.pem")
    }
}

/// `--tls --tls-cacert CA --tls-cert CERT --tls-key KEY`.
pub fn tls_args(ca: &Ca, leaf: &Leaf) -> Vec<String> {
    let p = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    vec![
        "--tls".into(),
        "--tls-cacert".into(),
        p(&ca.cert()),
        "--tls-cert".into(),
        p(&leaf.cert),
        "--tls-key".into(),
        p(&leaf.key),
    ]
}
