#![forbid(unsafe_code)]
//! criu's RPC as stasis speaks it: the protobuf messages (criu's message
//! and field numbers, our own definitions), a wire-level check for fields
//! we do not know, and a small client for `stasis swrk` / `stasis service`
//! (criu's `swrk FD` and `service --address PATH`).

mod messages;
pub mod wire;

pub use messages::*;
use prost::Message;
use stasis_sys::seqpacket;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command};

/// An error of the client: transport, or a message that does not decode.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<stasis_sys::SysError> for Error {
    fn from(e: stasis_sys::SysError) -> Error {
        Error(e.to_string())
    }
}

/// A connection to a criu-compatible RPC server.
pub struct Client {
    sock: OwnedFd,
    child: Option<Child>,
}

impl Client {
    /// Starts `criu swrk FD` (`bin` is stasis, or a `criu` link to it) on
    /// one end of a fresh SOCK_SEQPACKET socketpair, as go-criu and libcriu
    /// do. Descriptors are inherited by every child started meanwhile.
    pub fn swrk(bin: &Path) -> Result<Client, Error> {
        let (ours, theirs) = stasis_sys::sockdiag::socketpair(libc::SOCK_SEQPACKET)?;
        seqpacket::set_cloexec(&theirs, false)?;
        let child = Command::new(bin)
            .arg("swrk")
            .arg(theirs.as_raw_fd().to_string())
            .spawn()
            .map_err(|e| Error(format!("start {} swrk: {e}", bin.display())))?;
        drop(theirs);
        Ok(Client {
            sock: ours,
            child: Some(child),
        })
    }

    /// Connects to a `service --address PATH` socket.
    pub fn connect(path: &Path) -> Result<Client, Error> {
        let sock = seqpacket::connect_to(&path.to_string_lossy())?;
        Ok(Client { sock, child: None })
    }

    /// A connection over a SOCK_SEQPACKET socket already joined to a
    /// server (libcriu's `criu_set_service_fd`).
    pub fn from_socket(sock: OwnedFd) -> Client {
        Client { sock, child: None }
    }

    /// Sends raw bytes as one record (tests send malformed requests).
    pub fn send_raw(&self, data: &[u8]) -> Result<(), Error> {
        Ok(seqpacket::send_record(&self.sock, data)?)
    }

    /// Receives one response; `Ok(None)` when the server closed.
    pub fn recv(&self) -> Result<Option<Resp>, Error> {
        let Some(b) = seqpacket::recv_record(&self.sock)? else {
            return Ok(None);
        };
        Resp::decode(b.as_slice())
            .map(Some)
            .map_err(|e| Error(format!("bad response: {e}")))
    }

    /// One request and its final response; each notification on the way
    /// goes to `notify`, whose verdict is sent back as the NOTIFY ack.
    pub fn call(&self, req: &Req, mut notify: impl FnMut(&Notify) -> bool) -> Result<Resp, Error> {
        self.send_raw(&req.encode_to_vec())?;
        loop {
            let resp = self.recv()?.ok_or_else(|| Error("server closed".into()))?;
            if resp.r#type != ReqType::Notify as i32 || !resp.success {
                return Ok(resp);
            }
            let ok = notify(resp.notify.as_ref().unwrap_or(&Notify::default()));
            let ack = Req {
                r#type: ReqType::Notify as i32,
                notify_success: Some(ok),
                ..Req::default()
            };
            self.send_raw(&ack.encode_to_vec())?;
        }
    }

    /// Closes the connection and, for `swrk`, waits for the worker: its
    /// exit status.
    pub fn close(self) -> Result<Option<std::process::ExitStatus>, Error> {
        let Client { sock, child } = self;
        drop(sock);
        match child {
            Some(mut c) => c
                .wait()
                .map(Some)
                .map_err(|e| Error(format!("wait for swrk: {e}"))),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// proto2's required fields are on the wire even at their zero value
    /// (go-criu's decoder rejects a criu_resp without `success`).
    #[test]
    fn required_fields_are_encoded() {
        let b = Resp::error(ReqType::Empty as i32, 0, "x").encode_to_vec();
        let f = wire::fields(&b).expect("fields");
        let numbers: Vec<u32> = f.iter().map(|x| x.0).collect();
        assert_eq!(numbers, [1, 2, 7, 9]);
        let r = RestoreResp { pid: 0 }.encode_to_vec();
        assert_eq!(r, [0x08, 0x00]);
        let back = Resp::decode(b.as_slice()).expect("decode");
        assert!(!back.success);
        assert_eq!(back.cr_errmsg.as_deref(), Some("x"));
    }
}
