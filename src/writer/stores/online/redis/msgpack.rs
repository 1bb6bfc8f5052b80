//! The few MessagePack forms the write script reads (arrays, strings,
//! unsigned integers), written by hand: one argument per call parses in
//! Redis faster than thousands of bulk strings.

pub fn array(buf: &mut Vec<u8>, len: usize) {
    match len {
        0..=15 => buf.push(0x90 | len as u8),
        16..=0xffff => {
            buf.push(0xdc);
            buf.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            buf.push(0xdd);
            buf.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
}

fn str_header(buf: &mut Vec<u8>, len: usize) {
    match len {
        0..=31 => buf.push(0xa0 | len as u8),
        32..=0xff => buf.extend_from_slice(&[0xd9, len as u8]),
        0x100..=0xffff => {
            buf.push(0xda);
            buf.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            buf.push(0xdb);
            buf.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
}

pub fn str(buf: &mut Vec<u8>, s: &[u8]) {
    str_header(buf, s.len());
    buf.extend_from_slice(s);
}

/// One string made of `parts`, without joining them first.
pub fn str_parts(buf: &mut Vec<u8>, parts: &[&[u8]]) {
    str_header(buf, parts.iter().map(|p| p.len()).sum());
    for p in parts {
        buf.extend_from_slice(p);
    }
}

pub fn uint(buf: &mut Vec<u8>, n: u64) {
    match n {
        0..=0x7f => buf.push(n as u8),
        0x80..=0xff => buf.extend_from_slice(&[0xcc, n as u8]),
        0x100..=0xffff => {
            buf.push(0xcd);
            buf.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            buf.push(0xce);
            buf.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            buf.push(0xcf);
            buf.extend_from_slice(&n.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_follow_the_spec() {
        let mut b = Vec::new();
        array(&mut b, 3);
        array(&mut b, 16);
        array(&mut b, 70_000);
        assert_eq!(b, [0x93, 0xdc, 0, 16, 0xdd, 0, 1, 0x11, 0x70]);
        let mut b = Vec::new();
        str(&mut b, b"ab");
        str(&mut b, &[b'x'; 32]);
        assert_eq!(&b[..4], &[0xa2, b'a', b'b', 0xd9]);
        assert_eq!(b[4], 32);
        let mut b = Vec::new();
        str(&mut b, &vec![b'y'; 300]);
        assert_eq!(&b[..3], &[0xda, 1, 44]);
        let mut b = Vec::new();
        str_parts(&mut b, &[b"user.age", b"_ts"]);
        assert_eq!(b, b"\xabuser.age_ts");
        let mut b = Vec::new();
        for n in [5, 200, 3600, 86_400 * 365, 1 << 40] {
            uint(&mut b, n);
        }
        assert_eq!(
            b,
            [
                5, 0xcc, 200, 0xcd, 0x0e, 0x10, 0xce, 0x01, 0xe1, 0x33, 0x80, 0xcf, 0, 0, 1, 0, 0,
                0, 0, 0
            ]
        );
    }
}
