//! Contact cards: everything another person needs to write to this
//! identity (its chain of devices) and to start a ratchet session with the
//! device that made the card, exchanged offline (a file, or a QR code),
//! with a fresh half of a pre-shared secret. A card is a secret: whoever
//! holds both people's cards can strip the pre-shared-key layer.
//!
//! Binary form (version 2): `"BSTC" || version (1) || card id (16) ||
//! created_at_ms (u64 BE) || chain length (u32 BE) || identity chain (see
//! [`crate::identity`]) || device key (32) || ratchet one-time key (32) ||
//! pre-shared secret (32) || reply flag (1) || replied-to card id (16, zero
//! without the flag) || nickname length (1) || nickname (UTF-8, at most
//! 64) || Ed25519 signature by the device key (64)` over `"bastet 2026
//! contact card v2" ||` everything before it. The device must be a current
//! device of the chain, allowed to send; its keys and mailbox are its
//! certificate's.
//!
//! Text form: `BASTET-CARD:` and the binary form in RFC 4648 base32 (upper
//! case, no padding: QR codes hold it in their compact alphanumeric mode).
//! A card of an identity with one device fits one QR code; the chain of an
//! identity with more devices makes it too long for one (give the file).

use std::fmt;

use data_encoding::BASE32_NOPAD;
use zeroize::Zeroizing;

use crate::crypto::{self, ClientKeys, PUBLIC_KEY_LEN, SIGNATURE_LEN};
use crate::identity::{CAP_SEND, Chain, DeviceCert, MAX_CHAIN_LEN};
use crate::layers::content::Recipient;
use crate::layers::psk::PSK_LEN;
use crate::{Address, Error, Result};

/// Every card's text form starts with this.
pub const CARD_PREFIX: &str = "BASTET-CARD:";
const MAGIC: &[u8; 4] = b"BSTC";
/// The card format this client writes and reads.
pub const CARD_VERSION: u8 = 2;
/// Bytes of a card id.
pub const CARD_ID_LEN: usize = 16;
/// Longest nickname a card carries, in bytes.
pub const MAX_NICKNAME_LEN: usize = 64;
const FIXED_LEN: usize = 4
    + 1
    + CARD_ID_LEN
    + 8
    + 4
    + 2 * PUBLIC_KEY_LEN
    + PSK_LEN
    + 1
    + CARD_ID_LEN
    + 1
    + SIGNATURE_LEN;
/// Longest binary card.
pub const MAX_CARD_LEN: usize = FIXED_LEN + MAX_CHAIN_LEN + MAX_NICKNAME_LEN;
/// Longest text card (whitespace aside).
pub const MAX_CARD_TEXT_LEN: usize = CARD_PREFIX.len() + (MAX_CARD_LEN * 8).div_ceil(5);
const SIGNATURE_CONTEXT: &[u8] = b"bastet 2026 contact card v2";

/// A contact card, chain and signature checked.
#[derive(Clone, PartialEq, Eq)]
pub struct Card {
    /// Random id; a reply card names the card it answers by it.
    pub card_id: [u8; CARD_ID_LEN],
    /// When it was made (its maker's clock, unix ms).
    pub created_at_ms: u64,
    /// The maker's identity chain: its identity key and devices.
    pub chain: Chain,
    /// The certificate of the device that made the card (a current
    /// device of the chain).
    pub cert: DeviceCert,
    /// A ratchet one-time key of that device, made for this card.
    pub one_time_key: [u8; PUBLIC_KEY_LEN],
    /// This card's half of the pre-shared key.
    pub secret: Zeroizing<[u8; PSK_LEN]>,
    /// The card this one answers, if it is a reply.
    pub reply_to: Option<[u8; CARD_ID_LEN]>,
    /// The name its maker suggests for themself.
    pub nickname: String,
}

impl fmt::Debug for Card {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Card")
            .field("card_id", &hex::encode(self.card_id))
            .field("identity", &hex::encode(self.identity()))
            .field("devices", &self.chain.devices().len())
            .field("nickname", &self.nickname)
            .field("reply_to", &self.reply_to.map(hex::encode))
            .finish_non_exhaustive()
    }
}

fn card_error(why: impl Into<String>) -> Error {
    Error::Card(why.into())
}

impl Card {
    /// The maker's identity key.
    pub fn identity(&self) -> [u8; PUBLIC_KEY_LEN] {
        *self.chain.identity()
    }

    /// The keys a sender encrypts the content layer to, for the card's
    /// device.
    pub fn recipient(&self) -> Recipient {
        Recipient::of_cert(&self.identity(), &self.cert)
    }

    /// Where messages to the card's device go (the routing part).
    pub fn address(&self) -> Address {
        Address::of_cert(&self.identity(), &self.cert)
    }

    /// The signed binary form. `keys` must be those of the card's device.
    pub fn to_bytes(&self, keys: &ClientKeys) -> Result<Vec<u8>> {
        if keys.identity_public() != self.identity() || keys.device_public() != self.cert.device {
            return Err(card_error("the card's keys are not this client's"));
        }
        if self.chain.device(&self.cert.device).map(|d| &d.cert) != Some(&self.cert) {
            return Err(card_error(
                "the card's device is not in its chain as certified",
            ));
        }
        if self.nickname.len() > MAX_NICKNAME_LEN {
            return Err(card_error(format!(
                "the nickname is longer than {MAX_NICKNAME_LEN} bytes"
            )));
        }
        let chain = self.chain.to_bytes();
        let mut out = Vec::with_capacity(FIXED_LEN + chain.len() + self.nickname.len());
        out.extend_from_slice(MAGIC);
        out.push(CARD_VERSION);
        out.extend_from_slice(&self.card_id);
        out.extend_from_slice(&self.created_at_ms.to_be_bytes());
        out.extend_from_slice(&(chain.len() as u32).to_be_bytes());
        out.extend_from_slice(&chain);
        out.extend_from_slice(&self.cert.device);
        out.extend_from_slice(&self.one_time_key);
        out.extend_from_slice(self.secret.as_ref());
        out.push(u8::from(self.reply_to.is_some()));
        out.extend_from_slice(&self.reply_to.unwrap_or([0; CARD_ID_LEN]));
        out.push(self.nickname.len() as u8);
        out.extend_from_slice(self.nickname.as_bytes());
        let signature = keys.sign_device(&signed(&out));
        out.extend_from_slice(&signature);
        Ok(out)
    }

    /// The text form.
    pub fn to_text(&self, keys: &ClientKeys) -> Result<String> {
        Ok(format!(
            "{CARD_PREFIX}{}",
            BASE32_NOPAD.encode(&self.to_bytes(keys)?)
        ))
    }

    /// Parses and verifies the binary form: exact lengths, known version,
    /// the whole chain, the device's place in it, its signature (strict
    /// Ed25519).
    pub fn from_bytes(bytes: &[u8]) -> Result<Card> {
        if bytes.len() < FIXED_LEN || bytes.len() > MAX_CARD_LEN {
            return Err(card_error(format!(
                "{} bytes, but a card has {FIXED_LEN} to {MAX_CARD_LEN}: was it copied whole?",
                bytes.len()
            )));
        }
        let mut r = Reader(bytes);
        if r.take::<4>()? != *MAGIC {
            return Err(card_error("not a Bastet contact card"));
        }
        let [version] = r.take::<1>()?;
        if version != CARD_VERSION {
            return Err(card_error(format!(
                "format version {version} is not supported by this version of bastet{}",
                if version < CARD_VERSION {
                    " (a card made before identities had several devices: ask for a fresh one)"
                } else {
                    ""
                }
            )));
        }
        let card_id = r.take()?;
        let created_at_ms = u64::from_be_bytes(r.take()?);
        let chain_len = u32::from_be_bytes(r.take()?) as usize;
        if chain_len > r.0.len() {
            return Err(card_error("shorter than its chain"));
        }
        let (chain_bytes, rest) = r.0.split_at(chain_len);
        r.0 = rest;
        let chain = Chain::from_bytes(chain_bytes, None)
            .map_err(|e| card_error(format!("its identity chain: {e}")))?;
        let device: [u8; PUBLIC_KEY_LEN] = r.take()?;
        let one_time_key = r.take()?;
        let secret = Zeroizing::new(r.take::<PSK_LEN>()?);
        let [flag] = r.take::<1>()?;
        let replied = r.take::<CARD_ID_LEN>()?;
        let reply_to = match flag {
            0 if replied == [0; CARD_ID_LEN] => None,
            1 => Some(replied),
            _ => return Err(card_error("malformed reply field")),
        };
        let [nick_len] = r.take::<1>()?;
        let nick_len = usize::from(nick_len);
        if nick_len > MAX_NICKNAME_LEN || r.0.len() != nick_len + SIGNATURE_LEN {
            return Err(card_error("the nickname length does not match the card"));
        }
        let nickname = std::str::from_utf8(&r.0[..nick_len])
            .map_err(|_| card_error("the nickname is not UTF-8"))?
            .to_string();
        let cert = match chain.device(&device) {
            Some(d) if d.is_current() && d.cert.caps & CAP_SEND != 0 => d.cert.clone(),
            Some(d) if !d.is_current() => {
                return Err(card_error(
                    "made by a device its identity has revoked: ask for a fresh card",
                ));
            }
            Some(_) => return Err(card_error("made by a device that may not send")),
            None => return Err(card_error("made by a device that is not in its chain")),
        };
        let device_signed = &bytes[..bytes.len() - SIGNATURE_LEN];
        let mut sig = [0u8; SIGNATURE_LEN];
        sig.copy_from_slice(&bytes[bytes.len() - SIGNATURE_LEN..]);
        if !crypto::verify(&device, &signed(device_signed), &sig) {
            return Err(card_error(
                "the device signature does not verify: the card was altered",
            ));
        }
        Ok(Card {
            card_id,
            created_at_ms,
            chain,
            cert,
            one_time_key,
            secret,
            reply_to,
            nickname,
        })
    }

    /// Parses the text form; whitespace anywhere (a wrapped line) is
    /// ignored, and lower case is accepted.
    pub fn parse(text: &str) -> Result<Card> {
        if text.len() > 2 * MAX_CARD_TEXT_LEN {
            return Err(card_error("far longer than any card"));
        }
        let compact = normalize(text);
        let body = compact
            .strip_prefix(CARD_PREFIX)
            .ok_or_else(|| card_error(format!("a card starts with {CARD_PREFIX}")))?;
        let bytes = BASE32_NOPAD
            .decode(body.as_bytes())
            .map_err(|e| card_error(format!("not base32 ({e}): was it copied whole?")))?;
        Card::from_bytes(&bytes)
    }
}

/// The canonical text of a card given as `text` (whitespace removed, upper
/// case), for keeping.
pub fn normalize(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase()
}

fn signed(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNATURE_CONTEXT.len() + bytes.len());
    out.extend_from_slice(SIGNATURE_CONTEXT);
    out.extend_from_slice(bytes);
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(|| card_error("shorter than its fields"))?;
        self.0 = rest;
        Ok(*head)
    }
}

/// The safety number of two identities: 60 digits in 12 groups, the same
/// whichever side computes it. Two people who read the same number to each
/// other (in person, or over a channel they trust) hold each other's real
/// identity keys.
pub fn safety_number(a: &[u8; PUBLIC_KEY_LEN], b: &[u8; PUBLIC_KEY_LEN]) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut hasher = blake3::Hasher::new_derive_key("bastet 2026 safety number v1");
    hasher.update(lo);
    hasher.update(hi);
    let mut bytes = [0u8; 60];
    hasher.finalize_xof().fill(&mut bytes);
    bytes
        .chunks(5)
        .map(|c| {
            let v = c.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            format!("{:05}", v % 100_000)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The card text as a QR code for a terminal: two rows of modules per line
/// of text, dark on light. A card needs a QR code of about 160 modules a
/// side for an identity with one device: a terminal at least 170 columns
/// wide.
pub fn qr_terminal(text: &str) -> Result<String> {
    let code = qr_code(text)?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// The card text as a QR code in a PNG image (8 pixels per module, 4
/// modules of quiet zone).
pub fn qr_png(text: &str) -> Result<Vec<u8>> {
    const SCALE: usize = 8;
    const QUIET: usize = 4;
    let code = qr_code(text)?;
    let width = code.width();
    let colors = code.to_colors();
    let side = (width + 2 * QUIET) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color == qrcode::Color::Dark {
            let (x, y) = (i % width + QUIET, i / width + QUIET);
            for dy in 0..SCALE {
                let row = (y * SCALE + dy) * side;
                pixels[row + x * SCALE..row + (x + 1) * SCALE].fill(0);
            }
        }
    }
    let mut out = Vec::new();
    let side32 = u32::try_from(side).map_err(|_| card_error("QR code too large"))?;
    let mut encoder = png::Encoder::new(&mut out, side32, side32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .map_err(|e| card_error(format!("PNG: {e}")))?;
    writer
        .write_image_data(&pixels)
        .map_err(|e| card_error(format!("PNG: {e}")))?;
    writer
        .finish()
        .map_err(|e| card_error(format!("PNG: {e}")))?;
    Ok(out)
}

fn qr_code(text: &str) -> Result<qrcode::QrCode> {
    qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::L)
        .map_err(|e| card_error(format!("too long for a QR code: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bastet_sphinx::NodeId;

    fn keys() -> ClientKeys {
        ClientKeys::generate(&mut rand::rng())
    }

    fn chain(keys: &ClientKeys) -> Chain {
        let cert = DeviceCert::of(
            keys,
            [0x02; PUBLIC_KEY_LEN],
            [0x06; PUBLIC_KEY_LEN],
            NodeId([0x04; 32]),
            CAP_SEND,
            "phone",
        )
        .unwrap();
        Chain::genesis_of(keys, cert, 1).unwrap()
    }

    fn card(keys: &ClientKeys, nickname: &str, reply_to: Option<[u8; CARD_ID_LEN]>) -> Card {
        let chain = chain(keys);
        Card {
            card_id: [0x01; CARD_ID_LEN],
            created_at_ms: 1_700_000_000_000,
            cert: chain.devices()[0].cert.clone(),
            chain,
            one_time_key: [0x03; PUBLIC_KEY_LEN],
            secret: Zeroizing::new([0x05; PSK_LEN]),
            reply_to,
            nickname: nickname.to_string(),
        }
    }

    fn is_card_error<T: std::fmt::Debug>(r: &Result<T>) -> bool {
        matches!(r, Err(Error::Card(_)))
    }

    #[test]
    fn text_and_bytes_round_trip() {
        let k = keys();
        for c in [
            card(&k, "alice", None),
            card(&k, "", Some([9; CARD_ID_LEN])),
            card(&k, &"é".repeat(32), None),
        ] {
            let bytes = c.to_bytes(&k).unwrap();
            assert_eq!(
                bytes.len(),
                FIXED_LEN + c.chain.to_bytes().len() + c.nickname.len()
            );
            assert_eq!(Card::from_bytes(&bytes).unwrap(), c);
            let text = c.to_text(&k).unwrap();
            assert!(text.starts_with(CARD_PREFIX));
            assert!(text.len() <= MAX_CARD_TEXT_LEN);
            assert_eq!(Card::parse(&text).unwrap(), c);
            assert_eq!(normalize(&text), text);
            assert_eq!(c.recipient().kem, c.cert.kem);
            assert_eq!(c.address().encryption_key, k.encryption_public());
            assert_eq!(c.identity(), k.identity_public());
        }
    }

    #[test]
    fn any_altered_byte_is_refused() {
        let k = keys();
        let bytes = card(&k, "bob", None).to_bytes(&k).unwrap();
        for i in 0..bytes.len() {
            for mask in [0x01u8, 0x80] {
                let mut bad = bytes.clone();
                bad[i] ^= mask;
                assert!(
                    is_card_error(&Card::from_bytes(&bad)),
                    "byte {i} ^ {mask:#x}"
                );
            }
        }
    }

    #[test]
    fn truncated_or_extended_cards_are_refused() {
        let k = keys();
        let c = card(&k, "bob", None);
        let bytes = c.to_bytes(&k).unwrap();
        for len in 0..bytes.len() {
            assert!(
                is_card_error(&Card::from_bytes(&bytes[..len])),
                "cut to {len}"
            );
        }
        for extra in [&[0u8][..], &[0; 64], &[0xff; 200]] {
            let mut longer = bytes.clone();
            longer.extend_from_slice(extra);
            assert!(is_card_error(&Card::from_bytes(&longer)));
        }
        let text = c.to_text(&k).unwrap();
        for cut in [
            0,
            CARD_PREFIX.len(),
            CARD_PREFIX.len() + 1,
            text.len() / 2,
            text.len() - 1,
        ] {
            assert!(
                is_card_error(&Card::parse(&text[..cut])),
                "text cut to {cut}"
            );
        }
        assert!(is_card_error(&Card::parse(&format!("{text}A"))));
        assert!(is_card_error(&Card::parse(&format!("{text}AAAAAAAA"))));
        assert!(is_card_error(&Card::parse(
            &text.replace(CARD_PREFIX, "BASTET-CART:")
        )));
        assert!(is_card_error(&Card::parse(&format!("{text}1"))));
        assert!(is_card_error(&Card::parse(
            &"A".repeat(3 * MAX_CARD_TEXT_LEN)
        )));
    }

    #[test]
    fn lower_case_and_wrapped_text_is_accepted() {
        let k = keys();
        let c = card(&k, "carol", None);
        let text = c.to_text(&k).unwrap();
        assert_eq!(Card::parse(&text.to_lowercase()).unwrap(), c);
        let wrapped: String = text
            .as_bytes()
            .chunks(60)
            .map(|l| format!("  {}\r\n", std::str::from_utf8(l).unwrap()))
            .collect();
        assert_eq!(Card::parse(&wrapped).unwrap(), c);
        assert_eq!(normalize(&wrapped), text);
        assert_eq!(
            Card::parse(&format!("\n\t{}\n", text.to_lowercase())).unwrap(),
            c
        );
    }

    #[test]
    fn a_card_needs_the_keys_it_names_and_a_short_nickname() {
        let (k, other) = (keys(), keys());
        assert!(is_card_error(&card(&k, "x", None).to_bytes(&other)));
        assert!(is_card_error(
            &card(&k, &"x".repeat(MAX_NICKNAME_LEN + 1), None).to_bytes(&k)
        ));
        assert!(
            card(&k, &"x".repeat(MAX_NICKNAME_LEN), None)
                .to_bytes(&k)
                .is_ok()
        );
    }

    /// Sets the byte at `at` and signs again with `k`, so that only the
    /// field checks can refuse it.
    fn resigned(k: &ClientKeys, mut bytes: Vec<u8>, at: usize, value: u8) -> Vec<u8> {
        bytes[at] = value;
        let end = bytes.len() - SIGNATURE_LEN;
        bytes.truncate(end);
        let sig = k.sign_device(&signed(&bytes));
        bytes.extend_from_slice(&sig);
        bytes
    }

    #[test]
    fn well_signed_malformed_fields_are_refused() {
        let k = keys();
        let bytes = card(&k, "dave", None).to_bytes(&k).unwrap();
        assert!(Card::from_bytes(&resigned(&k, bytes.clone(), 0, b'B')).is_ok());
        // Magic, version, reply flag, zero reply id, nickname length, UTF-8.
        let nick_len = bytes.len() - SIGNATURE_LEN - "dave".len() - 1;
        let flag = nick_len - CARD_ID_LEN - 1;
        for (at, value, why) in [
            (0, b'X', "not a Bastet"),
            (4, 3, "version 3"),
            (4, 1, "ask for a fresh one"),
            (flag, 2, "reply field"),
            (flag + 1, 1, "reply field"),
            (nick_len, 5, "nickname length"),
            (nick_len + 1, 0xff, "UTF-8"),
        ] {
            let r = Card::from_bytes(&resigned(&k, bytes.clone(), at, value));
            match r {
                Err(Error::Card(e)) => assert!(e.contains(why), "{at}: {e}"),
                other => panic!("{at}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_cards_device_must_be_a_current_sender_of_its_chain() {
        let k = keys();
        let c = card(&k, "erin", None);
        let bytes = c.to_bytes(&k).unwrap();
        let device_at =
            FIXED_LEN - SIGNATURE_LEN - 1 - CARD_ID_LEN - 1 - PSK_LEN - 2 * PUBLIC_KEY_LEN
                + c.chain.to_bytes().len();
        assert_eq!(&bytes[device_at..device_at + 32], &k.device_public());
        // Another device key, well signed by it: not in the chain.
        let other = keys();
        let mut bad = bytes.clone();
        bad[device_at..device_at + 32].copy_from_slice(&other.device_public());
        let bad = resigned(&other, bad, 0, b'B');
        match Card::from_bytes(&bad) {
            Err(Error::Card(e)) => assert!(e.contains("not in its chain"), "{e}"),
            other => panic!("{other:?}"),
        }
        // A device the chain revoked.
        let mut revoked = c.clone();
        revoked
            .chain
            .extend_signed(
                2,
                k.identity_public(),
                crate::identity::LinkKind::RevokeDevice {
                    device: k.device_public(),
                    reason: String::new(),
                },
                &|m| k.sign_identity(m).unwrap(),
            )
            .unwrap();
        let mut out = Vec::new();
        out.extend_from_slice(&bytes[..4 + 1 + CARD_ID_LEN + 8]);
        let chain = revoked.chain.to_bytes();
        out.extend_from_slice(&(chain.len() as u32).to_be_bytes());
        out.extend_from_slice(&chain);
        out.extend_from_slice(&bytes[device_at..bytes.len() - SIGNATURE_LEN]);
        out.extend_from_slice(&k.sign_device(&signed(&out)));
        match Card::from_bytes(&out) {
            Err(Error::Card(e)) => assert!(e.contains("revoked"), "{e}"),
            other => panic!("{other:?}"),
        }
        // The card's claimed certificate must be its chain's.
        let mut wrong = c.clone();
        wrong.cert.name = "other".into();
        assert!(matches!(wrong.to_bytes(&k), Err(Error::Card(_))));
    }

    #[test]
    fn safety_numbers_are_symmetric_and_well_formed() {
        let (a, b) = ([1u8; PUBLIC_KEY_LEN], [2u8; PUBLIC_KEY_LEN]);
        let n = safety_number(&a, &b);
        assert_eq!(n, safety_number(&b, &a));
        let groups: Vec<&str> = n.split(' ').collect();
        assert_eq!(groups.len(), 12);
        assert!(
            groups
                .iter()
                .all(|g| g.len() == 5 && g.bytes().all(|c| c.is_ascii_digit()))
        );
        assert_ne!(n, safety_number(&a, &[3u8; PUBLIC_KEY_LEN]));
        for _ in 0..20 {
            let (x, y) = (keys().identity_public(), keys().identity_public());
            let n = safety_number(&x, &y);
            assert_eq!(n, safety_number(&y, &x));
            assert_eq!(n.len(), 12 * 5 + 11);
        }
        // Regression vector of our own derivation.
        assert_eq!(
            safety_number(&a, &b),
            "78743 83786 25448 15199 59012 26897 89697 41193 74570 87752 57296 37338"
        );
    }

    #[test]
    fn qr_codes_render() {
        let k = keys();
        let text = card(&k, "erin", None).to_text(&k).unwrap();
        let png = qr_png(&text).unwrap();
        assert!(png.starts_with(&[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a]));
        let term = qr_terminal(&text).unwrap();
        assert!(!term.is_empty());
        assert!(term.lines().count() > 50);
        // The longest card still fits a QR code.
        let longest = card(&k, &"x".repeat(MAX_NICKNAME_LEN), None)
            .to_text(&k)
            .unwrap();
        assert!(qr_png(&longest).is_ok());
        assert!(is_card_error(&qr_terminal(&"x".repeat(10_000))));
    }
}
