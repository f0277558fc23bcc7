//! Fixed client keys for targets that need one device (built once per
//! process).

use std::sync::OnceLock;

use bastet_client::{ClientKeys, DeviceSecrets};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The same keys in every run, so that crashes reproduce.
pub fn fixed_keys() -> &'static ClientKeys {
    static KEYS: OnceLock<ClientKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        ClientKeys::from_secrets(
            &[1; 32],
            &[2; 32],
            &[3; 32],
            &DeviceSecrets::generate(&mut StdRng::from_seed([4; 32])),
        )
    })
}
