//! What the mailbox server does with a request's `Authorization` header,
//! path and body: the header as received, and a header validly signed by a
//! fixed key over fuzzer-chosen fields and then possibly tampered with (so
//! that the fuzzer reaches signature verification and the replay cache).
//!
//! Input: `mode || method || skew || nonce (16) || pos (2) || xor ||
//! header '\n' path '\n' body` (short inputs are zero-padded). Checks: a
//! parsed header prints back to itself; a request is never accepted twice;
//! an untampered, fresh request is accepted exactly once; a tampered one is
//! accepted only if nothing it signs changed.
#![no_main]

use bastet_directory::{SigningKey, VerifyingKey};
use bastet_mailbox::api::{
    AuthError, FRESHNESS_SECS, NONCE_LEN, ReplayCache, RequestAuth, SignedRequest, signed_bytes,
    verify_request,
};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_800_000_000;
const FIXED_LEN: usize = 3 + NONCE_LEN + 3;

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

impl Request {
    fn signed<'a>(&'a self, header: &'a str) -> SignedRequest<'a> {
        SignedRequest {
            method: &self.method,
            path_and_query: &self.path,
            authorization: Some(header),
            body: &self.body,
        }
    }
}

/// Checks `header` on `request` at `now` twice with one cache (the second
/// time must never be accepted); returns the first outcome.
fn verify_twice(request: &Request, header: &str, now: u64) -> Result<VerifyingKey, AuthError> {
    let mut cache = ReplayCache::new(8);
    let first = verify_request(&request.signed(header), now, &mut cache);
    let second = verify_request(&request.signed(header), now, &mut cache);
    match (&first, &second) {
        (Ok(_), Ok(_)) => panic!("the same request was accepted twice"),
        (Ok(_), other) => assert_eq!(*other, Err(AuthError::Replayed)),
        (Err(a), Err(b)) => assert_eq!(a, b, "one header, two different refusals"),
        (Err(_), Ok(_)) => panic!("refused, then accepted"),
    }
    first
}

fuzz_target!(|data: &[u8]| {
    let mut fixed = [0u8; FIXED_LEN];
    let n = data.len().min(FIXED_LEN);
    fixed[..n].copy_from_slice(&data[..n]);
    let rest = &data[n..];
    let [mode, method, skew, ref tail @ ..] = fixed;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&tail[..NONCE_LEN]);
    let [p0, p1, xor] = [tail[NONCE_LEN], tail[NONCE_LEN + 1], tail[NONCE_LEN + 2]];
    let pos = usize::from(u16::from_le_bytes([p0, p1]));

    let mut fields = rest.splitn(3, |&b| b == b'\n');
    let header = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let path = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let body = fields.next().unwrap_or_default().to_vec();
    let method = ["GET", "POST", "DELETE", "PUT"][usize::from(method % 4)].to_string();
    let request = Request { method, path, body };

    // 1. The header exactly as a peer sent it.
    let parsed = RequestAuth::parse(&header);
    if let Ok(auth) = &parsed {
        assert_eq!(RequestAuth::parse(&auth.to_header()).as_ref(), Ok(auth));
    }
    let now = parsed.as_ref().map_or(NOW, |a| a.ts);
    let _ = verify_twice(&request, &header, now);

    // 2. A valid header by a fixed key, possibly tampered with.
    let key = SigningKey::from_bytes(&[7u8; 32]);
    // -80..=79 s around the server's clock; 60 s is the limit.
    let ts = NOW
        .checked_add_signed(i64::from(skew % 160) - 80)
        .unwrap_or(NOW);
    let auth = RequestAuth::sign(
        &key,
        &request.method,
        &request.path,
        &request.body,
        ts,
        nonce,
    );
    let good = auth.to_header();
    let mut tampered = request_copy(&request);
    let mut header = good.clone();
    match mode % 5 {
        0 => {}
        1 => header = xor_at(header.as_bytes(), pos, xor),
        2 => tampered.path = xor_at(tampered.path.as_bytes(), pos, xor),
        3 => match tampered.body.len() {
            0 => tampered.body.push(xor),
            len => tampered.body[pos % len] ^= xor,
        },
        _ => tampered.method = xor_at(tampered.method.as_bytes(), pos, xor),
    }
    let first = verify_twice(&tampered, &header, NOW);
    let fresh = ts.abs_diff(NOW) <= FRESHNESS_SECS;
    if mode % 5 == 0 {
        let expected = if fresh {
            Ok(key.verifying_key())
        } else {
            Err(AuthError::Stale)
        };
        assert_eq!(first, expected);
    }
    if first.is_ok() {
        // Accepted: the header says what was signed, and the request is the
        // one that was signed (the same signed bytes).
        let seen = RequestAuth::parse(&header).expect("accepted but unparseable");
        assert_eq!(seen, auth, "accepted a header whose fields changed");
        assert!(fresh, "accepted a stale request");
        assert_eq!(
            signed_bytes(
                &tampered.method,
                &tampered.path,
                &tampered.body,
                seen.ts,
                &seen.nonce
            ),
            signed_bytes(&request.method, &request.path, &request.body, ts, &nonce),
            "accepted a request that differs from the signed one"
        );
    }
});

fn request_copy(r: &Request) -> Request {
    Request {
        method: r.method.clone(),
        path: r.path.clone(),
        body: r.body.clone(),
    }
}

/// `text` with one byte changed (or appended when empty), as text again.
fn xor_at(text: &[u8], pos: usize, xor: u8) -> String {
    let mut bytes = text.to_vec();
    if bytes.is_empty() {
        bytes.push(xor);
    } else {
        let i = pos % bytes.len();
        bytes[i] ^= xor;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}
