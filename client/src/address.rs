//! Where a client's mailbox is, in one checksummed line of text: its
//! identity and mailbox (envelope) keys, its mailbox server and mailbox.
//! It routes an outgoing message; writing to someone needs their contact
//! card (`card`), which carries the keys of every layer.

use std::fmt;
use std::str::FromStr;

use bastet_sphinx::{MailboxId, NodeId};
use data_encoding::BASE32_NOPAD;

use crate::crypto::checksum;
use crate::{Error, Result};

/// Every address starts with this.
pub const ADDRESS_PREFIX: &str = "bastet1";
/// The address format version this client writes and reads.
pub const ADDRESS_VERSION: u8 = 1;
const FIELDS_LEN: usize = 4 * 32;
const CHECKSUM_LEN: usize = 4;
const BODY_LEN: usize = 1 + FIELDS_LEN + CHECKSUM_LEN;
/// Characters in every address (prefix included).
pub const ADDRESS_LEN: usize = ADDRESS_PREFIX.len() + (BODY_LEN * 8).div_ceil(5);

/// Where and how to reach a client: its public identity and encryption
/// keys, and the mailbox (on which server) that receives its messages.
///
/// Text form: `bastet1` followed by lower-case base32 (RFC 4648 alphabet, no
/// padding) of `version (1) || identity_key || encryption_key ||
/// mailbox_server || mailbox || checksum (4)`, where the checksum is the
/// first 4 bytes of BLAKE3 over everything before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Address {
    /// Ed25519 identity key: messages from this client are signed by it.
    pub identity_key: [u8; 32],
    /// X25519 key that messages to this client are encrypted to.
    pub encryption_key: [u8; 32],
    /// Node id of the mailbox server holding the mailbox.
    pub mailbox_server: NodeId,
    /// The mailbox that receives this client's messages.
    pub mailbox: MailboxId,
}

impl Address {
    /// Where messages to the device `cert` of identity `identity` go.
    pub fn of_cert(identity: &[u8; 32], cert: &crate::identity::DeviceCert) -> Self {
        Address {
            identity_key: *identity,
            encryption_key: cert.envelope,
            mailbox_server: cert.mailbox_server,
            mailbox: cert.mailbox,
        }
    }

    /// The text form.
    pub fn encode(&self) -> String {
        let mut body = Vec::with_capacity(BODY_LEN);
        body.push(ADDRESS_VERSION);
        body.extend_from_slice(&self.identity_key);
        body.extend_from_slice(&self.encryption_key);
        body.extend_from_slice(self.mailbox_server.as_bytes());
        body.extend_from_slice(self.mailbox.as_bytes());
        let sum = checksum(&body);
        body.extend_from_slice(&sum);
        let mut text = String::with_capacity(ADDRESS_LEN);
        text.push_str(ADDRESS_PREFIX);
        text.push_str(&BASE32_NOPAD.encode(&body).to_ascii_lowercase());
        text
    }

    /// Parses the text form, telling a wrong prefix, a wrong length, a bad
    /// character, a checksum mismatch and an unknown version apart.
    /// Surrounding whitespace is ignored; the address itself is lower case.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let encoded = text
            .strip_prefix(ADDRESS_PREFIX)
            .ok_or(Error::AddressPrefix {
                expected: ADDRESS_PREFIX,
            })?;
        if text.len() != ADDRESS_LEN {
            return Err(Error::AddressLength {
                got: text.chars().count(),
                expected: ADDRESS_LEN,
            });
        }
        if !encoded
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
        {
            return Err(Error::AddressCharacters);
        }
        // Only the unused low bits of the last character can still fail to
        // decode here: that is a typo the checksum would have caught.
        let body = BASE32_NOPAD
            .decode(encoded.to_ascii_uppercase().as_bytes())
            .map_err(|_| Error::AddressChecksum)?;
        if body.len() != BODY_LEN {
            return Err(Error::AddressChecksum);
        }
        let (content, sum) = body.split_at(BODY_LEN - CHECKSUM_LEN);
        if checksum(content) != sum {
            return Err(Error::AddressChecksum);
        }
        if content[0] != ADDRESS_VERSION {
            return Err(Error::AddressVersion(content[0]));
        }
        let field = |i: usize| {
            let mut out = [0u8; 32];
            out.copy_from_slice(&content[1 + 32 * i..1 + 32 * (i + 1)]);
            out
        };
        Ok(Address {
            identity_key: field(0),
            encryption_key: field(1),
            mailbox_server: NodeId(field(2)),
            mailbox: MailboxId(field(3)),
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl FromStr for Address {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Address::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn address(seed: [u8; 4]) -> Address {
        Address {
            identity_key: [seed[0]; 32],
            encryption_key: [seed[1]; 32],
            mailbox_server: NodeId([seed[2]; 32]),
            mailbox: MailboxId([seed[3]; 32]),
        }
    }

    #[test]
    fn text_form_has_the_documented_shape() {
        let text = address([1, 2, 3, 4]).encode();
        assert_eq!(text.len(), ADDRESS_LEN);
        assert_eq!(ADDRESS_LEN, 7 + 213);
        assert!(text.starts_with("bastet1"));
        assert!(
            text[7..]
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
    }

    #[test]
    fn each_kind_of_mistake_has_its_own_error() {
        let text = address([1, 2, 3, 4]).encode();
        assert!(matches!(
            Address::parse(&text.replacen("bastet1", "bastet2", 1)),
            Err(Error::AddressPrefix { .. })
        ));
        assert!(matches!(
            Address::parse(&text[..text.len() - 1]),
            Err(Error::AddressLength { .. })
        ));
        assert!(matches!(
            Address::parse(&format!("{text}a")),
            Err(Error::AddressLength { .. })
        ));
        let mut bad_char = text.clone().into_bytes();
        bad_char[10] = b'1';
        assert!(matches!(
            Address::parse(&String::from_utf8(bad_char).unwrap()),
            Err(Error::AddressCharacters)
        ));
        assert!(matches!(
            Address::parse(&text.to_ascii_uppercase()),
            Err(Error::AddressPrefix { .. })
        ));
        let mut typo = text.clone().into_bytes();
        typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
        assert!(matches!(
            Address::parse(&String::from_utf8(typo).unwrap()),
            Err(Error::AddressChecksum)
        ));
        assert_eq!(
            Address::parse(&format!("  {text}\n")).unwrap(),
            address([1, 2, 3, 4])
        );
    }

    #[test]
    fn unknown_versions_are_named() {
        let a = address([5, 6, 7, 8]);
        let mut body = vec![2u8];
        for field in [
            a.identity_key,
            a.encryption_key,
            a.mailbox_server.0,
            a.mailbox.0,
        ] {
            body.extend_from_slice(&field);
        }
        let sum = checksum(&body);
        body.extend_from_slice(&sum);
        let text = format!(
            "{ADDRESS_PREFIX}{}",
            BASE32_NOPAD.encode(&body).to_ascii_lowercase()
        );
        assert!(matches!(
            Address::parse(&text),
            Err(Error::AddressVersion(2))
        ));
    }

    fn arb_address() -> impl Strategy<Value = Address> {
        any::<([u8; 32], [u8; 32], [u8; 32], [u8; 32])>().prop_map(|(i, e, s, m)| Address {
            identity_key: i,
            encryption_key: e,
            mailbox_server: NodeId(s),
            mailbox: MailboxId(m),
        })
    }

    proptest! {
        #[test]
        fn round_trips(a in arb_address()) {
            prop_assert_eq!(Address::parse(&a.encode()).unwrap(), a);
        }

        #[test]
        fn any_single_character_change_is_rejected(
            a in arb_address(),
            pos in 0..ADDRESS_LEN,
            replacement in any::<char>(),
        ) {
            let text = a.encode();
            let original = text.as_bytes()[pos] as char;
            prop_assume!(replacement != original);
            let mut changed: Vec<char> = text.chars().collect();
            changed[pos] = replacement;
            let changed: String = changed.into_iter().collect();
            prop_assert!(Address::parse(&changed).is_err(), "accepted {changed}");
        }

        #[test]
        fn any_single_alphabet_substitution_is_rejected(
            a in arb_address(),
            pos in ADDRESS_PREFIX.len()..ADDRESS_LEN,
            replacement in proptest::sample::select(
                b"abcdefghijklmnopqrstuvwxyz234567".to_vec()
            ),
        ) {
            let mut text = a.encode().into_bytes();
            prop_assume!(replacement != text[pos]);
            text[pos] = replacement;
            let changed = String::from_utf8(text).unwrap();
            prop_assert!(Address::parse(&changed).is_err(), "accepted {changed}");
        }

        #[test]
        fn any_single_character_deletion_or_insertion_is_rejected(
            a in arb_address(),
            pos in 0..ADDRESS_LEN,
            inserted in proptest::sample::select(b"abcdefghijklmnopqrstuvwxyz234567".to_vec()),
        ) {
            let text = a.encode();
            let mut deleted = text.clone();
            deleted.remove(pos);
            prop_assert!(Address::parse(&deleted).is_err());
            let mut longer = text;
            longer.insert(pos, inserted as char);
            prop_assert!(Address::parse(&longer).is_err());
        }
    }
}
