//! WireGuard keys: the model's ([`kokoa_model::key`]), re-exported so tunnel users keep one
//! import path. The tunnel reads the x25519 secret through [`PrivateKey::secret`].

pub use kokoa_model::key::{KeyError, PrivateKey, PublicKey};
