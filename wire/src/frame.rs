//! Checksummed frames for append-only files: `[length: u32 LE][crc32: u32 LE][body]`. The
//! agent's spool and the aggregator's window log both write them; a reader tells a clean end
//! from a torn or corrupt frame, which the file's owner then cuts off (and counts).

/// Bytes before each body.
pub const HEADER: usize = 8;

/// Appends one frame holding `body` to `out`.
pub fn put(out: &mut Vec<u8>, body: &[u8]) {
    put_with(out, |o| o.extend_from_slice(body));
}

/// Appends one frame whose body `write` appends to `out` (no copy of a body built in parts).
pub fn put_with(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    write(out);
    let body = &out[start + HEADER..];
    let (len, crc) = (body.len() as u32, crc32fast::hash(body));
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// Reads one frame from `r`: `Ok(None)` at a clean end, `Ok(Some(Err(why)))` for a frame cut
/// short, implausibly long or failing its checksum; `Err` for the reader's own errors.
pub fn read(
    r: &mut impl std::io::Read,
    max_body: u32,
) -> std::io::Result<Option<Result<Vec<u8>, String>>> {
    let mut head = [0u8; HEADER];
    let got = fill(r, &mut head)?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER {
        return Ok(Some(Err(format!("frame header cut after {got} bytes"))));
    }
    let (len, crc) = match header(head, max_body) {
        Ok(h) => h,
        Err(e) => return Ok(Some(Err(e))),
    };
    // Grown as the bytes arrive, not allocated from the length read: a damaged length must
    // not allocate what the file does not hold.
    use std::io::Read;
    let mut body = Vec::new();
    let got = r.take(len as u64).read_to_end(&mut body)?;
    if got < len {
        return Ok(Some(Err(format!(
            "frame body cut after {got} of {len} bytes"
        ))));
    }
    Ok(Some(check(&body, crc).map(|()| body)))
}

/// Reads until `buf` is full or the end; returns the bytes read.
fn fill(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A frame's header: its body length and checksum; `Err` when the length passes `max_body`.
pub fn header(head: [u8; HEADER], max_body: u32) -> Result<(usize, u32), String> {
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > max_body {
        return Err(format!("frame length {len} is implausible"));
    }
    Ok((len as usize, crc))
}

/// Whether `body` is what the header's checksum says.
pub fn check(body: &[u8], crc: u32) -> Result<(), String> {
    if crc32fast::hash(body) == crc {
        Ok(())
    } else {
        Err("frame checksum mismatch".into())
    }
}

/// The frame at the start of `buf`: `Ok(None)` when `buf` is empty (a clean end),
/// `Ok(Some((body, frame length)))`, or `Err` for a frame cut short or failing its checksum.
pub fn next(buf: &[u8], max_body: u32) -> Result<Option<(&[u8], usize)>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    let Some(head) = buf.first_chunk::<HEADER>() else {
        return Err(format!("frame header cut after {} bytes", buf.len()));
    };
    let (len, crc) = header(*head, max_body)?;
    let Some(body) = buf[HEADER..].get(..len) else {
        return Err(format!(
            "frame body cut after {} of {len} bytes",
            buf.len() - HEADER
        ));
    };
    check(body, crc)?;
    Ok(Some((body, HEADER + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_and_damage_is_named() {
        let mut buf = Vec::new();
        put(&mut buf, b"one");
        put(&mut buf, b"");
        put(&mut buf, b"three");
        let mut rest = &buf[..];
        let mut bodies = Vec::new();
        while let Some((body, n)) = next(rest, 1 << 20).unwrap() {
            bodies.push(body.to_vec());
            rest = &rest[n..];
        }
        assert_eq!(bodies, [b"one".to_vec(), vec![], b"three".to_vec()]);
        // Every cut inside the last frame is torn, never a shorter valid frame.
        let last = buf.len() - (HEADER + 5);
        for cut in last + 1..buf.len() {
            assert!(next(&buf[last..cut], 1 << 20).is_err(), "cut at {cut}");
        }
        let mut bad = buf.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            next(&bad[last..], 1 << 20),
            Err("frame checksum mismatch".into())
        );
        assert!(next(&buf, 2).is_err());
        // The streaming reader agrees.
        let mut r = &buf[..];
        let mut n = 0;
        while let Some(f) = read(&mut r, 1 << 20).unwrap() {
            f.unwrap();
            n += 1;
        }
        assert_eq!(n, 3);
        let mut r = &buf[..buf.len() - 1];
        let all: Vec<_> = std::iter::from_fn(|| read(&mut r, 1 << 20).unwrap()).collect();
        assert!(all[2].is_err());
    }
}
