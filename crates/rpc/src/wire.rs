//! A look at the raw protobuf wire format, below prost: which field numbers
//! a message carries. prost skips fields it does not know; criu's RPC must
//! not, so the server refuses an unknown criu_opts field by number.

/// A varint at the front of `buf`, and the bytes it took.
fn varint(buf: &[u8]) -> Result<(u64, usize), String> {
    let mut v = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    Err("truncated or overlong varint".into())
}

/// The fields of one encoded message, in order: (number, the value's bytes
/// for length-delimited fields, empty otherwise).
pub fn fields(mut buf: &[u8]) -> Result<Vec<(u32, &[u8])>, String> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (key, n) = varint(buf)?;
        buf = &buf[n..];
        let number = u32::try_from(key >> 3).map_err(|_| "field number too large")?;
        if number == 0 {
            return Err("field number 0".into());
        }
        let len = match key & 7 {
            0 => varint(buf)?.1,
            1 => 8,
            5 => 4,
            2 => {
                let (l, n) = varint(buf)?;
                buf = &buf[n..];
                usize::try_from(l).map_err(|_| "length too large")?
            }
            w => return Err(format!("field {number}: wire type {w} is not used by criu")),
        };
        if len > buf.len() {
            return Err(format!("field {number}: truncated"));
        }
        let value = if key & 7 == 2 { &buf[..len] } else { &[][..] };
        out.push((number, value));
        buf = &buf[len..];
    }
    Ok(out)
}

/// criu_opts field numbers in an encoded criu_req that stasis does not know.
pub fn unknown_opts_fields(req: &[u8]) -> Result<Vec<u32>, String> {
    let mut unknown = Vec::new();
    for (n, v) in fields(req)? {
        if n != 2 {
            continue;
        }
        for (m, _) in fields(v)? {
            if !crate::Opts::KNOWN_FIELDS.contains(&m) && !unknown.contains(&m) {
                unknown.push(m);
            }
        }
    }
    Ok(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn finds_unknown_opts_fields() {
        let req = crate::Req {
            r#type: crate::ReqType::Dump as i32,
            opts: Some(crate::Opts {
                images_dir_fd: 3,
                shell_job: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut b = req.encode_to_vec();
        assert_eq!(unknown_opts_fields(&b), Ok(vec![]));
        // Append field 99 (varint 1) inside opts: rebuild opts by hand.
        let mut opts = req.opts.clone().unwrap_or_default().encode_to_vec();
        opts.extend_from_slice(&[0x98, 0x06, 0x01]);
        b = vec![0x08, 0x01, 0x12, opts.len() as u8];
        b.extend_from_slice(&opts);
        assert_eq!(unknown_opts_fields(&b), Ok(vec![99]));
        assert!(fields(&[0x12, 0x05, 0x01]).is_err());
        assert!(fields(&[0xff]).is_err());
    }
}
